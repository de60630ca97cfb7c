-- Order by what a transaction could see, not by when it started. Adds to 0001-0005; renames nothing.
--
-- now() is the start of a transaction, so "created_at >= promoted_at" and "stats updated_at >= last_evaluated_at"
-- compare start times of transactions that commit in another order: an alert (or a fold) whose transaction began
-- before a promotion's (an evaluation's) snapshot and committed after it was seen by neither side. Ids from a
-- sequence do not fix that on their own either: they are taken at insert time, so alert 10 can commit after alert
-- 11, and "id > the highest id the promotion saw" would skip 10 for good. What is exact is the snapshot itself:
--
-- * every alert row records the id of the transaction that wrote it (xact_id, 64-bit, never wraps);
-- * a promotion stores the snapshot its decision read the alerts in (decision_snapshot), and an evaluation the
--   snapshot it read everything in (ab_experiment_state.evaluated_snapshot);
-- * "new since" is then NOT pg_visible_in_snapshot(alert.xact_id, stored snapshot): exactly the alerts the decision
--   could not see, whatever their created_at, id or commit order (an alert is only read by a later statement
--   once it has committed, and a committed transaction that is not visible in a snapshot committed after it).
--
-- Statistics get a version instead: the sum of ab_variant_stats.updates_folded over the experiment's variants,
-- which every fold raises (by the number of updates it folds), and which an evaluation reads in the same statement,
-- so the same snapshot, as the statistics it decides on. It stores that version (evaluated_version); the
-- statistics are newer than the last evaluation exactly when the current version differs from it, however the
-- fold and the evaluation interleaved. Deriving it from updates_folded needs no extra row for the folds to update
-- (no new lock between concurrent folds of one experiment) and cannot drift from the statistics it versions.

-- The writing transaction of each alert. Existing rows get this migration's transaction id, committed before any
-- snapshot stored by the code that reads the column (the worker refuses to run with pending migrations).
ALTER TABLE ab_alerts ADD COLUMN xact_id xid8 NOT NULL DEFAULT pg_current_xact_id();

-- The snapshot the promotion's decision read the critical alerts in (NULL for promotions written before 0007:
-- the guard falls back to created_at >= promoted_at for those).
ALTER TABLE experiment_promotions ADD COLUMN decision_snapshot pg_snapshot;

-- What the last stored decision saw: the statistics version and the snapshot of its read (NULL: before 0007, or
-- an evaluation that did not say; such an experiment counts as due for evaluation).
ALTER TABLE ab_experiment_state ADD COLUMN evaluated_version bigint;
ALTER TABLE ab_experiment_state ADD COLUMN evaluated_snapshot pg_snapshot;

-- The functions below are STABLE, so that they read the calling statement's snapshot (the one the evaluation reads
-- its statistics in), and PL/pgSQL, so that their plans are cached for the session: a SQL function that cannot be
-- inlined is planned again in every statement that calls it, which cost the daemon's lock-and-read 0.6 ms.

-- The statistics version of experiment exp_id (see above).
CREATE FUNCTION ab_stats_version(exp_id bigint) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT coalesce(sum(s.updates_folded), 0)::bigint FROM ab_variant_stats s WHERE s.experiment_id = exp_id);
END $$;

-- True when the stored last decision of exp_id does not cover what the caller's snapshot shows: it was never
-- evaluated (and has statistics or an open critical alert), its statistics version changed since, or an open
-- critical alert (its own or a global one) was not visible to the last evaluation. The daemon evaluates an
-- experiment only while this holds, so replicas that all hear the same NOTIFY evaluate each change once: the first
-- evaluates and stores what it saw, the others find nothing new.
CREATE FUNCTION ab_evaluation_due(exp_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    st ab_experiment_state%ROWTYPE;
BEGIN
    SELECT * INTO st FROM ab_experiment_state WHERE experiment_id = exp_id;
    IF NOT FOUND THEN
        RETURN ab_stats_version(exp_id) > 0
            OR EXISTS (SELECT 1 FROM ab_alerts a
                        WHERE a.severity = 'critical' AND a.resolved_at IS NULL
                          AND (a.experiment_id = exp_id OR a.experiment_id IS NULL));
    END IF;
    IF st.evaluated_version IS NULL OR st.evaluated_snapshot IS NULL THEN
        RETURN true;  -- stored without saying what it saw (before 0007)
    END IF;
    RETURN st.evaluated_version IS DISTINCT FROM ab_stats_version(exp_id)
        OR EXISTS (SELECT 1 FROM ab_alerts a
                    WHERE a.severity = 'critical' AND a.resolved_at IS NULL
                      AND (a.experiment_id = exp_id OR a.experiment_id IS NULL)
                      AND NOT pg_visible_in_snapshot(a.xact_id, st.evaluated_snapshot));
END $$;

-- True when a stored decision (stored_version, stored_snapshot) covers a read of exp_id at (version, snapshot): the
-- same statistics version, and no open critical alert visible to the read that the stored decision could not see.
-- Two replicas can both pass ab_evaluation_due: the second one's statement takes its snapshot just before the first
-- commits, and its row lock just after. Its write then finds the first one's decision (ON CONFLICT DO UPDATE sees the
-- latest committed row) and, covered, writes nothing: a change is stored once. NULL anywhere: not covered.
CREATE FUNCTION ab_decision_covered(exp_id bigint, stored_version bigint, stored_snapshot pg_snapshot,
                                    version bigint, snapshot pg_snapshot) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    IF stored_version IS NULL OR version IS NULL OR stored_snapshot IS NULL OR snapshot IS NULL
       OR stored_version <> version THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (SELECT 1 FROM ab_alerts a
                        WHERE a.severity = 'critical' AND a.resolved_at IS NULL
                          AND (a.experiment_id = exp_id OR a.experiment_id IS NULL)
                          AND pg_visible_in_snapshot(a.xact_id, snapshot)
                          AND NOT pg_visible_in_snapshot(a.xact_id, stored_snapshot));
END $$;

-- A critical alert that stops blocking (resolved, deleted, or no longer critical) changes the decision of the
-- experiments it applied to without a new statistics version: forget what their stored decisions saw, so that they are
-- due again (the daemon evaluates them at its next wake-up, the scan at the latest). The experiment rows are locked
-- first (FOR NO KEY UPDATE, in id order, as an evaluation locks them): an evaluation that read the alert as open
-- still holds its row, so this waits for it to store its decision and then forgets it; without the lock the stale
-- decision could be stored after this ran and stand. Global alerts touch every experiment with a stored decision.
CREATE FUNCTION ab_alert_unblocked() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    alert_experiment bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.experiment_id ELSE NEW.experiment_id END;
BEGIN
    PERFORM 1 FROM ab_experiments e
      WHERE e.id IN (SELECT s.experiment_id FROM ab_experiment_state s
                      WHERE s.evaluated_version IS NOT NULL
                        AND (alert_experiment IS NULL OR s.experiment_id = alert_experiment))
      ORDER BY e.id FOR NO KEY UPDATE OF e;
    UPDATE ab_experiment_state st SET evaluated_version = NULL
     WHERE st.evaluated_version IS NOT NULL
       AND (alert_experiment IS NULL OR st.experiment_id = alert_experiment);
    RETURN NULL;
END $$;

CREATE TRIGGER ab_alerts_unblocked AFTER UPDATE OF resolved_at, severity ON ab_alerts
    FOR EACH ROW
    WHEN (OLD.severity = 'critical' AND OLD.resolved_at IS NULL
          AND (NEW.resolved_at IS NOT NULL OR NEW.severity <> 'critical'))
    EXECUTE FUNCTION ab_alert_unblocked();

CREATE TRIGGER ab_alerts_deleted AFTER DELETE ON ab_alerts
    FOR EACH ROW
    WHEN (OLD.severity = 'critical' AND OLD.resolved_at IS NULL)
    EXECUTE FUNCTION ab_alert_unblocked();

-- An alert that starts to block by an update (escalated to critical, or reopened) is new to every decision and
-- promotion from then on: it takes the updating transaction's id, as an inserted alert does.
CREATE FUNCTION ab_alert_now_blocking() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.xact_id := pg_current_xact_id();
    RETURN NEW;
END $$;

CREATE TRIGGER ab_alerts_now_blocking BEFORE UPDATE OF resolved_at, severity ON ab_alerts
    FOR EACH ROW
    WHEN (NEW.severity = 'critical' AND NEW.resolved_at IS NULL
          AND (OLD.severity <> 'critical' OR OLD.resolved_at IS NOT NULL))
    EXECUTE FUNCTION ab_alert_now_blocking();
