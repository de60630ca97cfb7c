-- The long-running worker (`autopromote run`): what it must remember across restarts and replicas.
-- Adds to 0001; renames nothing.

-- Post-promotion guard breaches reported without a rollback (guard.autoRollback off): one row per promotion and
-- metric, so that a breach is notified once, whichever replica sees it first and however often it is seen again.
CREATE TABLE ab_guard_breaches (
    promotion_id uuid        NOT NULL REFERENCES experiment_promotions (id) ON DELETE CASCADE,
    metric       text        NOT NULL CHECK (metric IN ('error_rate', 'latency', 'critical_alert')),
    detected_at  timestamptz NOT NULL DEFAULT now(),
    detected_by  text        NOT NULL,
    reason       text        NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (promotion_id, metric)
);

-- Time-limited leases. The reconciliation scan is led by whoever holds a session advisory lock; behind PgBouncer
-- in transaction pooling (poll-only mode) session locks do not work, so the scan is led by a lease row instead.
CREATE TABLE ab_worker_leases (
    name       text PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
