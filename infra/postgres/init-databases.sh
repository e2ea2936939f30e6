#!/bin/sh
# One role and one database each for MLflow and Prefect, owned by that role.
#
# The postgres image runs the scripts in /docker-entrypoint-initdb.d once, when its data volume
# is empty, as the superuser POSTGRES_USER over the local socket. The passwords come from the
# environment (infra/.env through infra/docker-compose.yml): psql reads them with \getenv and
# quotes them as SQL literals (:'name'), so they appear neither in this file nor in any argv.
# Changing a password later: ALTER ROLE mlflow PASSWORD '...'; and update infra/.env.
set -e

: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set: add it to infra/.env}"
: "${PREFECT_DB_PASSWORD:?PREFECT_DB_PASSWORD is not set: add it to infra/.env}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv prefect_password PREFECT_DB_PASSWORD
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
SQL
