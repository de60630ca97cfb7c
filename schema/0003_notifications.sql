-- Notification delivery: where a row's secret is found at send time, the channel action decided at routing, and
-- the index behind per-(target, promotion) ordering. Adds to 0001's notification_outbox; renames nothing.

-- 'env:SLACK_WEBHOOK_URL' or 'config:<id>'. Unlike config_id (set to NULL when the config row is deleted) it
-- still says where the secret came from, so a deleted config is never mistaken for the environment default.
ALTER TABLE notification_outbox ADD COLUMN target_ref text NOT NULL DEFAULT '';

-- Channel-specific action decided when the row is written. PagerDuty: 'trigger' or 'resolve'; NULL elsewhere.
ALTER TABLE notification_outbox ADD COLUMN action text CHECK (action IS NULL OR action IN ('trigger', 'resolve'));

-- The effective config's notifications.includeDetailedMetrics when the row was written (per-experiment overrides
-- included): the dispatcher has no config of its own.
ALTER TABLE notification_outbox ADD COLUMN detailed boolean NOT NULL DEFAULT false;

-- The dispatcher holds back a row while an earlier pending row for the same target and promotion exists, so a
-- receiver sees a promotion's events in the order they happened (a PagerDuty resolve never overtakes its trigger).
CREATE INDEX notification_outbox_pending_promotion_idx ON notification_outbox (promotion_id, id)
    WHERE status = 'pending';
