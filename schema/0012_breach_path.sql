-- The ramp's breach path (worker/services/rollout.py): the check's one read of every unfinished rollout carries what
-- its rollback writes its notifications from, so that a breach costs that read and the rollback's one statement.
-- Adds to 0001-0011; renames nothing.
--
-- The PagerDuty incidents a rollback resolves are the guard-breach triggers sent for its promotion: this index finds
-- them per rollout without reading the whole outbox (which keeps sent rows).
CREATE INDEX notification_outbox_breach_trigger_idx ON notification_outbox (promotion_id)
    WHERE channel = 'pagerduty' AND event = 'guard.breached' AND action = 'trigger';
