#!/usr/bin/env bash
# Creates the relay's least-privilege role: runs sql/900_relay_role.sql (mounted at
# /outbox-sql) with the psql variable it needs. The official postgres image runs this from
# /docker-entrypoint-initdb.d after the 00x_*.sql files (name order), against the
# temporary init server (unix socket). Works whether the entrypoint executes or sources it.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v relay_password="${OUTBOX_RELAY_DB_PASSWORD:?set OUTBOX_RELAY_DB_PASSWORD for the outbox_relay role}" \
    -f /outbox-sql/900_relay_role.sql
