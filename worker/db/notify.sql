-- Notification outbox queries. Each query sits under a `-- name: <name>` header followed by a one-line
-- description; worker/db/sql.py loads them once (NQ) for worker/notify/outbox.py. Values always go through $n parameters.

-- name: routable_configs
-- Enabled notification_configs rows subscribed to event $1 (the secret column is not read here); a ramped
-- promotion's rollout.rolled_back also reaches the rows subscribed to promotion.rolled_back (routing.py says so too).
SELECT id, name, channel, target, events, min_priority
  FROM notification_configs
 WHERE enabled AND ($1::text = ANY (events)
                    OR ($1::text = 'rollout.rolled_back' AND 'promotion.rolled_back' = ANY (events)))
 ORDER BY id;

-- name: breach_triggered_refs
-- PagerDuty targets that already got a trigger for a guard breach of promotion $1 (this transaction or earlier).
SELECT DISTINCT target_ref
  FROM notification_outbox
 WHERE promotion_id = $1::uuid AND channel = 'pagerduty' AND event = 'guard.breached' AND action = 'trigger';

-- name: insert_outbox
-- One outbox row per routed target; the payload is passed as text so the connection's JSON codec does not matter.
INSERT INTO notification_outbox (event, channel, config_id, target_ref, target_label, experiment_name,
                                 promotion_id, priority, payload, action, detailed)
VALUES ($1::text, $2::text, $3::bigint, $4::text, $5::text, $6::text, $7::uuid, $8::text, $9::text::jsonb, $10::text,
        $11::boolean);

-- name: claim_due
-- Lease up to $1 due rows, at most $2 per target, oldest first; a row waits while an earlier pending row for the
-- same target and promotion exists. The attempt is counted and next_attempt_at pushed past the lease
-- ($3 seconds plus the row's place in its target's queue divided by the rate $4) in the same statement, so the
-- rows of a worker that dies mid-send come back when the lease ends.
WITH candidates AS (
    SELECT o.id,
           row_number() OVER (PARTITION BY o.channel, o.target_ref ORDER BY o.next_attempt_at, o.id) AS position
      FROM notification_outbox o
     WHERE o.status = 'pending'
       AND o.next_attempt_at <= now()
       AND NOT EXISTS (SELECT 1
                         FROM notification_outbox earlier
                        WHERE earlier.status = 'pending'
                          AND earlier.promotion_id = o.promotion_id
                          AND earlier.channel = o.channel
                          AND earlier.target_ref = o.target_ref
                          AND earlier.id < o.id)
), claimed AS (
    SELECT o.id, c.position
      FROM notification_outbox o
      JOIN candidates c ON c.id = o.id
     WHERE c.position <= $2::bigint
       AND o.status = 'pending'
       AND o.next_attempt_at <= now()
     ORDER BY o.next_attempt_at, o.id
     LIMIT $1::int
       FOR UPDATE OF o SKIP LOCKED
)
UPDATE notification_outbox o
   SET attempts = o.attempts + 1,
       next_attempt_at = now() + make_interval(secs => $3::float8 + claimed.position::float8 / $4::float8)
  FROM claimed
 WHERE o.id = claimed.id
RETURNING o.id, o.event, o.channel, o.config_id, o.target_ref, o.target_label, o.experiment_name,
          o.promotion_id::text AS promotion_id, o.priority, o.payload::text AS payload, o.action, o.detailed,
          o.attempts,
          extract(epoch FROM o.next_attempt_at - now())::float8 AS lease_seconds;

-- name: next_due_in
-- Seconds until the next row the claim could take (NULL when nothing is pending); negative when one is due.
SELECT extract(epoch FROM min(o.next_attempt_at) - now())::float8
  FROM notification_outbox o
 WHERE o.status = 'pending'
   AND NOT EXISTS (SELECT 1
                     FROM notification_outbox earlier
                    WHERE earlier.status = 'pending'
                      AND earlier.promotion_id = o.promotion_id
                      AND earlier.channel = o.channel
                      AND earlier.target_ref = o.target_ref
                      AND earlier.id < o.id);

-- name: configs_by_id
-- The secret-bearing columns of the configs a claimed batch refers to, read at send time only.
SELECT id, channel, target, secret, enabled FROM notification_configs WHERE id = ANY ($1::bigint[]);

-- name: mark_sent
-- Delivered: final, whoever holds the lease now (a late success still beats a pending retry or a dead letter).
UPDATE notification_outbox
   SET status = 'sent', sent_at = now(), last_error = NULL
 WHERE id = $1::bigint AND status <> 'sent'
RETURNING id;

-- name: mark_retry
-- Failed attempt $2: retry in $3 seconds, unless another worker has claimed the row since (fenced by attempts).
UPDATE notification_outbox
   SET next_attempt_at = now() + make_interval(secs => $3::float8), last_error = $4::text
 WHERE id = $1::bigint AND attempts = $2::int AND status = 'pending'
RETURNING id;

-- name: mark_dead
-- Last attempt $2 failed (or the failure is permanent): dead-letter, fenced like mark_retry.
UPDATE notification_outbox
   SET status = 'dead', last_error = $3::text
 WHERE id = $1::bigint AND attempts = $2::int AND status = 'pending'
RETURNING id;

-- name: release
-- Give back a claimed row that was never attempted (its target is paused): uncount the attempt, retry in $3 s.
UPDATE notification_outbox
   SET attempts = attempts - 1, next_attempt_at = now() + make_interval(secs => $3::float8)
 WHERE id = $1::bigint AND attempts = $2::int AND status = 'pending'
RETURNING id;

-- name: insert_log
-- One row per delivery attempt; the target is the redacted label and the error text is already scrubbed.
INSERT INTO notification_logs (outbox_id, channel, target, event, status, attempt, http_status, smtp_reply, error,
                               duration_ms)
VALUES ($1::bigint, $2::text, $3::text, $4::text, $5::text, $6::int, $7::int, $8::text, $9::text, $10::float8);

-- name: requeue_dead
-- Give dead rows (all, or the ids in $1) a fresh set of attempts, due now.
UPDATE notification_outbox
   SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL
 WHERE status = 'dead' AND ($1::bigint[] IS NULL OR id = ANY ($1::bigint[]))
RETURNING id;
