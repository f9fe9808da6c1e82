"""The pipeline: plain functions (select, de-identify, preprocess) and the Prefect flows."""
