-- What keeps the daemon's evaluation path short: promotions take their slot inside the statement that writes them
-- (one round trip less), and an index for the alerts every evaluation reads.
-- Adds to 0001; renames nothing.

-- True when a promotion may be written now: fewer than max_active promotions are inside their guard window.
-- The transaction-level advisory lock lock_key serialises promotions until commit, and the count runs after the
-- lock is held, on a snapshot of its own (a VOLATILE function's query in READ COMMITTED sees what committed
-- before it started), so that two concurrent promotions can never both slip under the limit.
CREATE FUNCTION ab_take_promotion_slot(lock_key bigint, max_active integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN (SELECT count(*) FROM experiment_promotions WHERE rollback_at IS NULL AND guard_until > now()) < max_active;
END
$$;

-- The daemon reads an experiment's unresolved critical alerts with every evaluation, over the longest lookback a
-- config may set (90 days): this index keeps that proportional to the experiment's own alerts plus global ones,
-- however many other alerts are open.
CREATE INDEX ab_alerts_open_critical_idx ON ab_alerts (experiment_id, created_at)
    WHERE severity = 'critical' AND resolved_at IS NULL;
