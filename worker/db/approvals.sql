-- The approvals' statements (schema/0011): requesting, deciding, expiring and listing approvals, and the Slack
-- interactions' replay guard. Loaded once by worker/db/sql.py (AQ); values always go through $n parameters.

-- name: open_approval
-- A pending approval for experiment $1 ($2 its name), kind $3, winner $4, step $5, subject $6, decision $7,
-- requested by $8, expiring in $9 seconds. Nothing when one is pending already (the partial unique index), nor,
-- unless $10 (a new eligibility), when the experiment has had an approval of this kind and step before: an
-- approval is requested once per eligibility. The caller holds the experiment's row lock.
INSERT INTO ab_approvals (experiment_id, experiment_name, kind, variant, step, subject, decision, requested_by,
                          expires_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9)
 WHERE $10 OR NOT EXISTS (SELECT 1 FROM ab_approvals a
                           WHERE a.experiment_id = $1 AND a.kind = $3 AND a.step IS NOT DISTINCT FROM $5)
ON CONFLICT (experiment_id) WHERE status = 'pending' DO NOTHING
RETURNING *;

-- name: pending_approval_for
-- The pending approval of experiment $1, if any.
SELECT * FROM ab_approvals WHERE experiment_id = $1 AND status = 'pending';

-- name: approval_by_id
-- One approval.
SELECT * FROM ab_approvals WHERE id = $1;

-- name: lock_approval
-- Lock one approval (after its experiment's row), with whether it is past its expiry now.
SELECT *, expires_at <= now() AS due FROM ab_approvals WHERE id = $1 FOR UPDATE;

-- name: decide_approval
-- Decide pending approval $1: status $2 by $3 with reason $4 ($5 the promotion an approval made, $6 expired).
-- No row back when it was no longer pending.
UPDATE ab_approvals SET status = $2, decided_at = now(), decided_by = $3, reason = $4, promotion_id = $5,
                        expired = $6
 WHERE id = $1 AND status = 'pending'
RETURNING *;

-- name: due_approvals
-- Pending approvals past their expiry, oldest first (the expiry scan's input; each is then decided on its locks).
SELECT id, experiment_id FROM ab_approvals WHERE status = 'pending' AND expires_at <= now()
 ORDER BY expires_at LIMIT $1;

-- name: list_approvals
-- Approvals with status $1 (NULL: all) of experiment $2 (NULL: all), newest first, page $3/$4, with the total.
SELECT a.*, count(*) OVER () AS total FROM ab_approvals a
 WHERE ($1::text IS NULL OR a.status = $1) AND ($2::text IS NULL OR a.experiment_name = $2)
 ORDER BY a.requested_at DESC, a.id
 LIMIT $3 OFFSET $4;

-- name: record_slack_interaction
-- Remember one Slack interaction by its signature; no row back when it was seen before (a replay).
INSERT INTO ab_slack_interactions (request_key, slack_user, action, value) VALUES ($1, $2, $3, $4)
ON CONFLICT (request_key) DO NOTHING
RETURNING received_at;

-- name: slack_interaction_outcome
-- What was done for interaction $1.
UPDATE ab_slack_interactions SET outcome = $2 WHERE request_key = $1;

-- name: prune_slack_interactions
-- Forget interactions older than $1 seconds: older requests are refused as stale by their timestamp anyway.
DELETE FROM ab_slack_interactions WHERE received_at < now() - make_interval(secs => $1);
