"""The database: tables, migrations and the queue operations."""
