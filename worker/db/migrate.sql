-- The migrator's own bookkeeping (worker/db/migrate.py), each under a "-- name: NAME" header.
-- Loaded once by worker/db/sql.py (MQ); values go through $n parameters.

-- name: migrations_table_exists
-- Before the first migrate there is no bookkeeping table.
SELECT to_regclass('ab_schema_migrations') IS NOT NULL;

-- name: applied_migrations
-- version -> checksum of every applied migration.
SELECT version, checksum FROM ab_schema_migrations;

-- name: lock
-- One migrator at a time (session-level advisory lock $1).
SELECT pg_advisory_lock($1);

-- name: unlock
-- Release lock.
SELECT pg_advisory_unlock($1);

-- name: create_migrations_table
-- The bookkeeping table, made by the first migrate.
CREATE TABLE IF NOT EXISTS ab_schema_migrations (
    version    text PRIMARY KEY,
    filename   text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: record_migration
-- A migration applied, in the transaction that applied it.
INSERT INTO ab_schema_migrations (version, filename, checksum) VALUES ($1, $2, $3);
