#!/bin/sh
# Initialise the cluster on first start with the official image's variables, then run the server.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > "$pwfile"
  # UTF-8 as the official image (a bare initdb in a minimal system gives SQL_ASCII, which Airflow cannot use)
  initdb --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" --auth-host=scram-sha-256 --auth-local=trust \
    --encoding=UTF8 --locale=C.UTF-8
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "${POSTGRES_DB:-}" ] && [ "${POSTGRES_DB}" != "${POSTGRES_USER:-postgres}" ]; then
    postgres --single -D "$PGDATA" -E postgres <<SQL
CREATE DATABASE "${POSTGRES_DB}" OWNER "${POSTGRES_USER:-postgres}";
SQL
  elif [ "${POSTGRES_USER:-postgres}" != postgres ]; then
    postgres --single -D "$PGDATA" -E postgres <<SQL
CREATE DATABASE "${POSTGRES_USER}" OWNER "${POSTGRES_USER}";
SQL
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
