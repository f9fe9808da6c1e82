#!/bin/sh
# Run once by the postgres image on an empty data volume: one role and one
# database per application, each role owning its database (so it may create
# tables in the public schema, which PostgreSQL 15+ no longer grants to all).
# The roles share POSTGRES_PASSWORD; neither is a superuser.
set -e
for name in ${APP_DATABASES:-prelim prefect}; do
    psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
        --dbname postgres -v name="$name" -v password="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
done
