-- Approvals (approval.require = promote | every_step): an eligible promotion, or a rollout step ready to advance,
-- waits as a pending approval that an operator approves or declines (CLI, API, dashboard, Slack buttons), and that
-- expires as declined after approval.timeoutHours. Adds to 0001-0010; renames nothing.
--
-- Contract (add, never rename):
--   ab_approvals           one row per request for approval; at most one pending per experiment.
--   ab_slack_interactions  one row per Slack interaction acted on, keyed by its signature, so that a request
--                          replayed within Slack's five-minute window is refused instead of acted on twice.
--
-- Every transition of an approval locks the experiment row first, then the approval row (the order promotions,
-- rollbacks and rollouts lock in), and changes only a row still 'pending': each approval is decided exactly once,
-- whichever replica, operator or expiry gets there first.

CREATE TABLE ab_approvals (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    experiment_id   bigint NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    experiment_name text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('promote', 'step')),
    -- pending: waiting; approved: acted on (promoted, or the step advanced); declined: by an operator, or expired;
    -- closed: approved too late, the decision re-checked at approval time no longer allowed it (reason says why).
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'declined', 'closed')),
    variant         text,                         -- the winner the request is about
    step            integer,                      -- kind 'step': the rollout step waiting to start
    subject         jsonb NOT NULL DEFAULT '{}',  -- kind 'step': what the rollout needs to act (its id, the shares)
    decision        jsonb NOT NULL DEFAULT '{}',  -- the decision (the check's data) the request was made on
    requested_at    timestamptz NOT NULL DEFAULT now(),
    requested_by    text NOT NULL,
    expires_at      timestamptz NOT NULL,
    decided_at      timestamptz,
    decided_by      text,
    reason          text,
    expired         boolean NOT NULL DEFAULT false,
    promotion_id    uuid,                         -- approved kind 'promote': the promotion it made
    CHECK ((status = 'pending') = (decided_at IS NULL)),
    CHECK (NOT expired OR status = 'declined'),
    CHECK (kind = 'promote' OR step IS NOT NULL)
);
CREATE UNIQUE INDEX ab_approvals_one_pending ON ab_approvals (experiment_id) WHERE status = 'pending';
CREATE INDEX ab_approvals_due_idx ON ab_approvals (expires_at) WHERE status = 'pending';
CREATE INDEX ab_approvals_experiment_idx ON ab_approvals (experiment_id, requested_at DESC);
CREATE INDEX ab_approvals_requested_idx ON ab_approvals (requested_at DESC);

CREATE TABLE ab_slack_interactions (
    request_key text PRIMARY KEY,              -- the request's X-Slack-Signature (unique per timestamp and body)
    received_at timestamptz NOT NULL DEFAULT now(),
    slack_user  text NOT NULL,
    action      text NOT NULL,
    value       text NOT NULL,
    outcome     text                           -- what was done, filled in after acting
);
CREATE INDEX ab_slack_interactions_received_idx ON ab_slack_interactions (received_at);
