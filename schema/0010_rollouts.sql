-- Progressive rollout (rollout.mode = ramp): a promotion moves the winner to its first step instead of 100%, and
-- each step is guarded against the concurrent control before the next. Adds to 0001-0008; renames nothing.
--
-- Contract (add, never rename):
--   experiment_rollouts       one row per ramped promotion: the plan, the current step, its state, when the step
--                             began and the per-variant statistics at that moment.
--   experiment_rollout_steps  one row per step entered: its share, when it began and ended, the statistics
--                             snapshot at its start, how it ended and the guard's verdicts then.
--   experiment_promotions     still gets its row for every promotion (the seed's queries keep working); a ramped
--                             one is rolled back exactly like an instant one (ab_request_rollback, the API).
--
-- States: ramping (on a step below 100 - holdback), holding (at 100 - holdback until guard.guardHours pass),
-- complete (100%), rolled_back, paused (held where it is by an operator, or by a breach under
-- guard.autoRollback = false), awaiting_approval (a step ready to advance waits for an approval). Transitions lock
-- the experiment row, then the rollout row, and re-decide on what they read after the locks, so each happens once
-- whichever replica gets there first.

CREATE TABLE experiment_rollouts (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    promotion_id     uuid NOT NULL UNIQUE REFERENCES experiment_promotions (id) ON DELETE CASCADE,
    experiment_id    bigint NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    experiment_name  text NOT NULL,
    winner_variant   text NOT NULL,
    control_variant  text NOT NULL,
    -- Every treatment share the winner goes through, in percent, in order: the ramp's steps above the test share,
    -- then 100 - holdback (holding), then 100 (complete; the same element as holding when the holdback is 0).
    steps            double precision[] NOT NULL
                     CHECK (cardinality(steps) >= 1 AND steps[cardinality(steps)] = 100),
    holdback         double precision NOT NULL CHECK (holdback >= 0 AND holdback <= 50),
    test_share       double precision NOT NULL,  -- the winner's share of traffic during the test, in percent
    step             integer NOT NULL DEFAULT 1 CHECK (step >= 1 AND step <= cardinality(steps)),
    state            text NOT NULL DEFAULT 'ramping'
                     CHECK (state IN ('ramping', 'holding', 'complete', 'rolled_back', 'paused', 'awaiting_approval')),
    -- While paused: the state resume returns to.
    paused_from      text CHECK (paused_from IS NULL OR paused_from IN ('ramping', 'holding', 'awaiting_approval')),
    step_started_at  timestamptz NOT NULL DEFAULT now(),
    -- Per-variant totals (the camelCase form of experiment_promotions.baseline_stats) when the current step began:
    -- the guard judges current minus this, so each step is judged on its own data.
    step_stats       jsonb NOT NULL DEFAULT '{}',
    reason           text,                        -- why it was paused or rolled back
    transitions      bigint NOT NULL DEFAULT 0,   -- raised by every transition (a compare-and-set token)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    rolled_back_at   timestamptz,
    CHECK ((state = 'paused') = (paused_from IS NOT NULL))
);
-- One unfinished rollout per experiment (the promotion's own partial index says the same of promotions).
CREATE UNIQUE INDEX experiment_rollouts_one_active ON experiment_rollouts (experiment_id)
    WHERE state NOT IN ('complete', 'rolled_back');
CREATE INDEX experiment_rollouts_active_idx ON experiment_rollouts (step_started_at)
    WHERE state NOT IN ('complete', 'rolled_back');

CREATE TABLE experiment_rollout_steps (
    rollout_id  uuid NOT NULL REFERENCES experiment_rollouts (id) ON DELETE CASCADE,
    step        integer NOT NULL CHECK (step >= 1),
    share       double precision NOT NULL CHECK (share > 0 AND share <= 100),
    kind        text NOT NULL CHECK (kind IN ('ramping', 'holding', 'complete')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    stats       jsonb NOT NULL DEFAULT '{}',     -- per-variant totals when the step began
    ended_at    timestamptz,
    outcome     text CHECK (outcome IS NULL OR outcome IN ('advanced', 'completed', 'rolled_back')),
    guard       jsonb NOT NULL DEFAULT '[]',     -- the guard's verdicts when the step ended
    PRIMARY KEY (rollout_id, step)
);

CREATE FUNCTION experiment_rollouts_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER experiment_rollouts_touch BEFORE UPDATE ON experiment_rollouts
    FOR EACH ROW EXECUTE FUNCTION experiment_rollouts_touch();

-- A wake-up for dashboards and the other replicas' timers (a small JSON payload, never the row), on the channel
-- promotions already use: {"event": "rollout_<state>", "promotion_id", "experiment_name", "step"}.
CREATE FUNCTION notify_rollout_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.step = OLD.step AND NEW.state = OLD.state THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('ab_promotion_events',
                      json_build_object('event', 'rollout_' || NEW.state, 'promotion_id', NEW.promotion_id,
                                        'experiment_name', NEW.experiment_name, 'step', NEW.step)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER experiment_rollouts_notify AFTER INSERT OR UPDATE ON experiment_rollouts
    FOR EACH ROW EXECUTE FUNCTION notify_rollout_event();
