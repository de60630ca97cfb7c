-- Several metrics per experiment (issue "Several metrics per experiment") and pre-exposure covariates for CUPED
-- (issue "Decide with fewer users"). Adds to 0001-0008; renames nothing.
--
-- * ab_metrics: the metrics an experiment is decided on beside its built-in metric_type metric, which is reported
--   under the name "primary" (a row named "primary" changes only its role, direction or margin).
-- * ab_record_metric(): a producer's per-variant sums of one metric. Its rows go to the same durable queue as
--   ab_record_metrics (ab_metric_updates, with metric_id set) and wake the worker on the same channel, so the one
--   folder claims both kinds of update in one statement and one transaction: exactly once, as before.
-- * ab_metric_stats: the folded per-metric, per-variant sufficient statistics. A metric update also raises its
--   variant's ab_variant_stats.updates_folded, so the statistics version (ab_stats_version, schema/0007) covers
--   every metric and an evaluation stays due until it has seen them.
-- * ab_record_metrics gains optional pre_sum, pre_sum_sq, pre_value_product_sum (a covariate for the built-in
--   metric), folded into new ab_variant_stats columns; existing callers are unchanged.

-- ---------------------------------------------------------------------------------------------------
-- The metric definitions
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ab_metrics (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id bigint NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$'),
    kind          text NOT NULL CHECK (kind IN ('proportion', 'mean', 'ratio')),
    role          text NOT NULL DEFAULT 'secondary' CHECK (role IN ('primary', 'guardrail', 'secondary')),
    direction     text NOT NULL DEFAULT 'increase' CHECK (direction IN ('increase', 'decrease')),
    margin        double precision NOT NULL DEFAULT 0
                  CHECK (margin >= 0 AND margin < 1 AND margin <> 'NaN'::float8),
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    cuped         text NOT NULL DEFAULT 'auto' CHECK (cuped IN ('auto', 'off')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, name)
);
COMMENT ON TABLE ab_metrics IS
    'Metrics an experiment is decided on beside its built-in one (reported as "primary"); fed by ab_record_metric';
COMMENT ON COLUMN ab_metrics.margin IS
    'relative non-inferiority margin of a guardrail: 0.02 = the treatment may be at most 2% worse';

-- Refuses a definition the decision could not use, with a message and a hint (before the CHECKs, which only back
-- this up), and keeps updated_at honest.
CREATE FUNCTION ab_metrics_validate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    metric_type text;
    builtin_kind text;
BEGIN
    IF NEW.name IS NULL OR NEW.name !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        RAISE EXCEPTION 'ab_metrics: invalid metric name "%"', coalesce(NEW.name, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'a name is 1-100 letters, digits, "_", ".", ":" or "-", starting with a letter or digit, '
                         || 'e.g. revenue_per_user';
    END IF;
    IF NEW.kind IS NULL OR NEW.kind NOT IN ('proportion', 'mean', 'ratio') THEN
        RAISE EXCEPTION 'ab_metrics: metric "%" has an unknown kind "%"', NEW.name, coalesce(NEW.kind, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'kind is proportion (converted units / units), mean (a value per unit) or ratio '
                         || '(a sum per unit over another sum per unit, e.g. revenue per session)';
    END IF;
    IF NEW.role IS NULL OR NEW.role NOT IN ('primary', 'guardrail', 'secondary') THEN
        RAISE EXCEPTION 'ab_metrics: metric "%" has an unknown role "%"', NEW.name, coalesce(NEW.role, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'role is primary (must win), guardrail (must not lose beyond its margin) or secondary '
                         || '(reported, never decides)';
    END IF;
    IF NEW.direction IS NULL OR NEW.direction NOT IN ('increase', 'decrease') THEN
        RAISE EXCEPTION 'ab_metrics: metric "%" has an unknown direction "%"', NEW.name,
            coalesce(NEW.direction, 'NULL')
            USING ERRCODE = '22023', HINT = 'direction says which way is better: increase or decrease';
    END IF;
    IF NEW.margin IS NULL OR NEW.margin = 'NaN'::float8 OR NEW.margin < 0 OR NEW.margin >= 1 THEN
        RAISE EXCEPTION 'ab_metrics: metric "%" has margin %, outside [0, 1)', NEW.name,
            coalesce(NEW.margin::text, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'margin is relative: 0.02 lets a guardrail be at most 2% worse than control; 0 (the default) '
                         || 'means not significantly worse';
    END IF;
    IF NEW.cuped IS NULL OR NEW.cuped NOT IN ('auto', 'off') THEN
        RAISE EXCEPTION 'ab_metrics: metric "%" has cuped "%"', NEW.name, coalesce(NEW.cuped, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'cuped is auto (adjust for the pre-exposure covariate when every variant sent one) or off';
    END IF;
    NEW.description := coalesce(NEW.description, '');
    IF length(NEW.description) > 2000 THEN
        RAISE EXCEPTION 'ab_metrics: the description of metric "%" is % characters long', NEW.name,
            length(NEW.description)
            USING ERRCODE = '22023', HINT = 'keep it to 2,000 characters';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.experiment_id IS DISTINCT FROM OLD.experiment_id OR NEW.kind IS DISTINCT FROM OLD.kind THEN
            RAISE EXCEPTION 'ab_metrics: the experiment or kind of metric "%" cannot change', OLD.name
                USING ERRCODE = '22023',
                      HINT = 'its statistics were recorded for that experiment and kind: remove the metric and add '
                             || 'a new one';
        END IF;
        NEW.updated_at := now();
        -- A row named "primary" stands for the built-in metric, so the statistics recorded under its old name would
        -- be hidden (never reported, never decided on) while still kept.
        IF NEW.name = 'primary' AND OLD.name <> 'primary'
           AND (EXISTS (SELECT 1 FROM ab_metric_stats s WHERE s.metric_id = OLD.id)
                OR EXISTS (SELECT 1 FROM ab_metric_updates u WHERE u.metric_id = OLD.id)) THEN
            RAISE EXCEPTION 'ab_metrics: metric "%" has recorded data and cannot be renamed "primary"', OLD.name
                USING ERRCODE = '22023',
                      HINT = '"primary" is the experiment''s built-in metric, so its data would be hidden: keep the '
                             || 'name and set its role to primary, or add a row named "primary" to change the '
                             || 'built-in metric';
        END IF;
    END IF;
    IF NEW.name = 'primary' THEN
        SELECT e.metric_type INTO metric_type FROM ab_experiments e WHERE e.id = NEW.experiment_id;
        builtin_kind := CASE metric_type WHEN 'conversion' THEN 'proportion' ELSE 'mean' END;
        IF metric_type IS NOT NULL AND NEW.kind <> builtin_kind THEN
            RAISE EXCEPTION 'ab_metrics: "primary" is the experiment''s % metric, so its kind is %, not %',
                metric_type, builtin_kind, NEW.kind
                USING ERRCODE = '22023',
                      HINT = 'a row named "primary" only sets the role, direction or margin of the built-in metric: '
                             || 'give it kind ' || builtin_kind || ', or choose another name for a new metric';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ab_metrics_validate BEFORE INSERT OR UPDATE ON ab_metrics
    FOR EACH ROW EXECUTE FUNCTION ab_metrics_validate();

-- A row named "primary" keeps the kind of the built-in metric: its experiment's metric_type cannot change under it.
CREATE FUNCTION ab_experiments_metric_type_kept() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    primary_kind text;
BEGIN
    SELECT m.kind INTO primary_kind FROM ab_metrics m WHERE m.experiment_id = NEW.id AND m.name = 'primary';
    IF FOUND AND primary_kind <> (CASE NEW.metric_type WHEN 'conversion' THEN 'proportion' ELSE 'mean' END) THEN
        RAISE EXCEPTION 'ab_experiments: experiment "%" has a metric row "primary" of kind %, which metric_type % '
                        'would contradict', NEW.name, primary_kind, NEW.metric_type
            USING ERRCODE = '22023', HINT = 'remove the "primary" row from ab_metrics first, or keep the metric_type';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ab_experiments_metric_type_kept BEFORE UPDATE OF metric_type ON ab_experiments
    FOR EACH ROW WHEN (OLD.metric_type IS DISTINCT FROM NEW.metric_type)
    EXECUTE FUNCTION ab_experiments_metric_type_kept();

-- Adding, removing or changing a metric changes the decision without a new statistics version (a guardrail without
-- data blocks, a margin moves the bar). Forgetting the stored decision (evaluated_version = NULL) is not enough on
-- its own: the scan reads without the experiment's row lock, so a scan that read the old definitions can store its
-- decision after this commits, and it would stand. As for alerts (schema/0007), the change records the id of its
-- transaction on the experiment (metrics_changed_xact), and a stored decision covers the definitions only when that
-- transaction is visible in the snapshot it was read in (ab_evaluation_due, ab_decision_covered below): whatever
-- the order of the commits, a decision that could not see the change leaves the experiment due. The experiment row
-- is updated (so locked) first, as before: an evaluation holding it is waited for. The worker is woken for it.
ALTER TABLE ab_experiments ADD COLUMN metrics_changed_xact xid8;
COMMENT ON COLUMN ab_experiments.metrics_changed_xact IS
    'the transaction that last changed the experiment''s ab_metrics rows (NULL: never); see ab_evaluation_due';

CREATE FUNCTION ab_metrics_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    exp_id bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.experiment_id ELSE NEW.experiment_id END;
BEGIN
    UPDATE ab_experiments e SET metrics_changed_xact = pg_current_xact_id()
     WHERE e.id = exp_id AND e.metrics_changed_xact IS DISTINCT FROM pg_current_xact_id();
    UPDATE ab_experiment_state st SET evaluated_version = NULL
     WHERE st.experiment_id = exp_id AND st.evaluated_version IS NOT NULL;
    PERFORM pg_notify('ab_metrics', exp_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER ab_metrics_changed AFTER INSERT OR DELETE ON ab_metrics
    FOR EACH ROW EXECUTE FUNCTION ab_metrics_changed();
CREATE TRIGGER ab_metrics_changed_update AFTER UPDATE ON ab_metrics
    FOR EACH ROW
    WHEN ((OLD.name, OLD.role, OLD.direction, OLD.margin, OLD.cuped)
          IS DISTINCT FROM (NEW.name, NEW.role, NEW.direction, NEW.margin, NEW.cuped))
    EXECUTE FUNCTION ab_metrics_changed();

-- schema/0007's ab_evaluation_due and ab_decision_covered, with the metric definitions (see ab_metrics_changed):
-- a definition change whose transaction the stored decision's snapshot could not see leaves the experiment due, and
-- a read that can see it is not covered by a stored decision that could not.
CREATE OR REPLACE FUNCTION ab_evaluation_due(exp_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    st ab_experiment_state%ROWTYPE;
    changed xid8;
BEGIN
    SELECT * INTO st FROM ab_experiment_state WHERE experiment_id = exp_id;
    IF NOT FOUND THEN
        RETURN ab_stats_version(exp_id) > 0
            OR EXISTS (SELECT 1 FROM ab_alerts a
                        WHERE a.severity = 'critical' AND a.resolved_at IS NULL
                          AND (a.experiment_id = exp_id OR a.experiment_id IS NULL));
    END IF;
    IF st.evaluated_version IS NULL OR st.evaluated_snapshot IS NULL THEN
        RETURN true;  -- stored without saying what it saw (before 0007), or forgotten
    END IF;
    SELECT e.metrics_changed_xact INTO changed FROM ab_experiments e WHERE e.id = exp_id;
    RETURN st.evaluated_version IS DISTINCT FROM ab_stats_version(exp_id)
        OR (changed IS NOT NULL AND NOT pg_visible_in_snapshot(changed, st.evaluated_snapshot))
        OR EXISTS (SELECT 1 FROM ab_alerts a
                    WHERE a.severity = 'critical' AND a.resolved_at IS NULL
                      AND (a.experiment_id = exp_id OR a.experiment_id IS NULL)
                      AND NOT pg_visible_in_snapshot(a.xact_id, st.evaluated_snapshot));
END $$;

CREATE OR REPLACE FUNCTION ab_decision_covered(exp_id bigint, stored_version bigint, stored_snapshot pg_snapshot,
                                               version bigint, snapshot pg_snapshot) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    changed xid8;
BEGIN
    IF stored_version IS NULL OR version IS NULL OR stored_snapshot IS NULL OR snapshot IS NULL
       OR stored_version <> version THEN
        RETURN false;
    END IF;
    SELECT e.metrics_changed_xact INTO changed FROM ab_experiments e WHERE e.id = exp_id;
    IF changed IS NOT NULL AND pg_visible_in_snapshot(changed, snapshot)
       AND NOT pg_visible_in_snapshot(changed, stored_snapshot) THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (SELECT 1 FROM ab_alerts a
                        WHERE a.severity = 'critical' AND a.resolved_at IS NULL
                          AND (a.experiment_id = exp_id OR a.experiment_id IS NULL)
                          AND pg_visible_in_snapshot(a.xact_id, snapshot)
                          AND NOT pg_visible_in_snapshot(a.xact_id, stored_snapshot));
END $$;

-- ---------------------------------------------------------------------------------------------------
-- The queue: ab_metric_updates carries metric updates too
-- ---------------------------------------------------------------------------------------------------
-- A row with metric_id set is one ab_record_metric call: exposures holds its units, value_sum/value_sum_sq its
-- Σx/Σx², conversions and errors are 0. A row without is one ab_record_metrics call, as before. The pre_* sums are
-- a covariate (Σx_pre, Σx_pre², Σx·x_pre) over all the units of the row, or NULL when it sent none.
ALTER TABLE ab_metric_updates
    ADD COLUMN metric_id bigint REFERENCES ab_metrics (id) ON DELETE CASCADE,
    ADD COLUMN denominator_sum double precision,
    ADD COLUMN denominator_sum_sq double precision,
    ADD COLUMN value_denominator_product_sum double precision,
    ADD COLUMN pre_sum double precision,
    ADD COLUMN pre_sum_sq double precision,
    ADD COLUMN pre_value_product_sum double precision;
COMMENT ON COLUMN ab_metric_updates.metric_id IS
    'NULL: an ab_record_metrics update of the built-in metric; else an ab_record_metric update (exposures = units)';
-- Removing a metric deletes its queued updates (ON DELETE CASCADE) through this index, not a scan of the queue.
CREATE INDEX ab_metric_updates_metric_idx ON ab_metric_updates (metric_id) WHERE metric_id IS NOT NULL;

-- The caps every queued update keeps (the producer functions refuse more with a message and a hint; these CHECKs
-- back them up for rows written by other means): a count of at most 2^53 (exact as a float8, where the statistics
-- compute) and sums of at most 1e150 in absolute value (their squares and products stay finite). A batch of the
-- fold then always sums to finite numbers, and the fold checks the totals it would store (worker/db/queries.sql).
ALTER TABLE ab_metric_updates
    ADD CONSTRAINT ab_metric_updates_caps CHECK (
        exposures <= 9007199254740992
        AND abs(value_sum) <= 1e150::float8 AND abs(value_sum_sq) <= 1e150::float8
        AND abs(denominator_sum) <= 1e150::float8 AND abs(denominator_sum_sq) <= 1e150::float8
        AND abs(value_denominator_product_sum) <= 1e150::float8
        AND abs(pre_sum) <= 1e150::float8 AND abs(pre_sum_sq) <= 1e150::float8
        AND abs(pre_value_product_sum) <= 1e150::float8);

-- Updates the fold could not add: their variant's (or metric's) totals would pass the caps above. The fold moves
-- them here with the reason in the statement that claimed them (exactly once: a row is either folded or parked) and
-- goes on with every other update; the folder logs each batch that parked rows and counts them
-- (autopromote_fold_parked_updates_total). The rows are kept for an operator: no foreign keys, so removing the
-- metric or experiment leaves them. The fold inserts "claimed.*, reason, parked_at": a column added to
-- ab_metric_updates later must be added here too, at the same place.
CREATE TABLE ab_metric_dead_letters (LIKE ab_metric_updates INCLUDING DEFAULTS);
ALTER TABLE ab_metric_dead_letters
    ADD COLUMN reason text NOT NULL,
    ADD COLUMN parked_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX ab_metric_dead_letters_experiment_idx ON ab_metric_dead_letters (experiment_id);
COMMENT ON TABLE ab_metric_dead_letters IS
    'metric updates the fold parked because folding them would overflow their totals (see the reason)';

-- ---------------------------------------------------------------------------------------------------
-- Folded statistics
-- ---------------------------------------------------------------------------------------------------
-- The built-in metric's covariate: pre_units of the exposures came with a pre-exposure value (CUPED applies only
-- when pre_units = exposures; see worker/domain/metrics.py).
ALTER TABLE ab_variant_stats
    ADD COLUMN pre_units bigint NOT NULL DEFAULT 0,
    ADD COLUMN pre_sum double precision NOT NULL DEFAULT 0,
    ADD COLUMN pre_sum_sq double precision NOT NULL DEFAULT 0,
    ADD COLUMN pre_value_product_sum double precision NOT NULL DEFAULT 0;

-- Per metric and variant: the sums of ab_record_metric (see MetricSums in worker/domain/metrics.py). A proportion's
-- value_sum_sq equals its value_sum; the denominator sums are 0 except for ratio metrics; the pre_* sums cover the
-- pre_units units that sent a covariate.
CREATE TABLE ab_metric_stats (
    metric_id                     bigint NOT NULL REFERENCES ab_metrics (id) ON DELETE CASCADE,
    variant_id                    bigint NOT NULL REFERENCES ab_variants (id) ON DELETE CASCADE,
    experiment_id                 bigint NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    units                         bigint NOT NULL DEFAULT 0,
    value_sum                     double precision NOT NULL DEFAULT 0,
    value_sum_sq                  double precision NOT NULL DEFAULT 0,
    denominator_sum               double precision NOT NULL DEFAULT 0,
    denominator_sum_sq            double precision NOT NULL DEFAULT 0,
    value_denominator_product_sum double precision NOT NULL DEFAULT 0,
    pre_units                     bigint NOT NULL DEFAULT 0,
    pre_sum                       double precision NOT NULL DEFAULT 0,
    pre_sum_sq                    double precision NOT NULL DEFAULT 0,
    pre_value_product_sum         double precision NOT NULL DEFAULT 0,
    updates_folded                bigint NOT NULL DEFAULT 0,
    updated_at                    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (metric_id, variant_id)
);
CREATE INDEX ab_metric_stats_experiment_idx ON ab_metric_stats (experiment_id);
CREATE INDEX ab_metric_stats_variant_idx ON ab_metric_stats (variant_id);

-- ---------------------------------------------------------------------------------------------------
-- Sums no real sample can have. Totals only grow, so one such update would spoil a metric for good: each is
-- refused at the door. Tolerance: a relative 1e-9 of float round-off, as in schema/0006. numeric, not float8:
-- products of large sums overflow float8 even when the data are fine.
-- ---------------------------------------------------------------------------------------------------

-- n values x_i have Σx_i² >= (Σx_i)² / n. caller names the function in the message; what names the sums.
CREATE FUNCTION ab_check_square_sum(caller text, sum_name text, sq_name text, n bigint,
                                    s double precision, ss double precision) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF ss < 0 THEN
        RAISE EXCEPTION '%: % (%) must not be negative', caller, sq_name, ss
            USING ERRCODE = '22023', HINT = sq_name || ' is a sum of squared values';
    END IF;
    IF n > 0 AND ss::numeric * n * 1.000000001 < s::numeric * s::numeric THEN
        RAISE EXCEPTION '%: % (%) is smaller than %^2 / units (%^2 / %): no real values have these sums',
            caller, sq_name, ss, sum_name, s, n
            USING ERRCODE = '22023',
                  HINT = sq_name || ' is the sum of the squared values (x1^2 + x2^2 + ...), not the square of '
                         || sum_name || '; both sums cover exactly the units of this call';
    END IF;
END $$;

-- Cauchy-Schwarz on the centred sums: (nΣxy − ΣxΣy)² <= (nΣx² − (Σx)²)(nΣy² − (Σy)²), each factor loosened by the
-- same relative 1e-9 as ab_check_square_sum (perfectly correlated data sit on the bound).
CREATE FUNCTION ab_check_product_sum(caller text, product_name text, x_name text, y_name text, n bigint,
                                     sx double precision, sxx double precision, sy double precision,
                                     syy double precision, sxy double precision) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    cxx numeric;
    cyy numeric;
    cxy numeric;
BEGIN
    IF n <= 0 THEN
        RETURN;
    END IF;
    cxx := n * sxx::numeric - sx::numeric * sx::numeric + 0.000000001 * n * sxx::numeric;
    cyy := n * syy::numeric - sy::numeric * sy::numeric + 0.000000001 * n * syy::numeric;
    cxy := n * sxy::numeric - sx::numeric * sy::numeric;
    IF cxy * cxy > cxx * cyy THEN
        RAISE EXCEPTION '%: % (%) is impossible for these sums of % and % (Cauchy-Schwarz): no real values have them',
            caller, product_name, sxy, x_name, y_name
            USING ERRCODE = '22023',
                  HINT = product_name || ' is the sum over units of ' || x_name || ' times ' || y_name
                         || ' (x1*y1 + x2*y2 + ...), over exactly the units of this call';
    END IF;
END $$;

-- NULL, NaN or an infinity in a sum that must be a finite number.
CREATE FUNCTION ab_check_finite(caller text, arg_name text, x double precision) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF x IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8) THEN
        RAISE EXCEPTION '%: % must be a finite number, got %', caller, arg_name, x
            USING ERRCODE = '22023', HINT = 'drop NaN or infinite values before summing';
    END IF;
    IF abs(x) > 1e150::float8 THEN
        RAISE EXCEPTION '%: % (%) is beyond the cap of 1e150 in absolute value', caller, arg_name, x
            USING ERRCODE = '22023',
                  HINT = 'the statistics square the sums, which must stay finite: record the values in a larger '
                         || 'unit (e.g. thousands), or check the producer for a runaway value';
    END IF;
END $$;

-- A count of units beyond 2^53 (exact as a float8, where the statistics compute; and bigint totals stay far from
-- overflowing).
CREATE FUNCTION ab_check_units(caller text, arg_name text, n bigint) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF n > 9007199254740992 THEN
        RAISE EXCEPTION '%: % (%) is beyond the cap of 2^53 (9007199254740992) per call', caller, arg_name, n
            USING ERRCODE = '22023',
                  HINT = 'record the units of new events only (a delta, not a running total), and check the '
                         || 'producer for a runaway count';
    END IF;
END $$;

-- The covariate sums of one update of n units whose values have sums sx, sxx: all three or none, finite, possible.
CREATE FUNCTION ab_check_covariate(caller text, n bigint, sx double precision, sxx double precision,
                                   pre_sum double precision, pre_sum_sq double precision,
                                   pre_value_product_sum double precision) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF pre_sum IS NULL AND pre_sum_sq IS NULL AND pre_value_product_sum IS NULL THEN
        RETURN;
    END IF;
    IF pre_sum IS NULL OR pre_sum_sq IS NULL OR pre_value_product_sum IS NULL THEN
        RAISE EXCEPTION '%: pre_sum, pre_sum_sq and pre_value_product_sum go together (got %, %, %)', caller,
            coalesce(pre_sum::text, 'NULL'), coalesce(pre_sum_sq::text, 'NULL'),
            coalesce(pre_value_product_sum::text, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'send all three sums of the pre-exposure values over the same units (Σx_pre, Σx_pre², '
                         || 'Σx·x_pre), or none of them';
    END IF;
    PERFORM ab_check_finite(caller, 'pre_sum', pre_sum);
    PERFORM ab_check_finite(caller, 'pre_sum_sq', pre_sum_sq);
    PERFORM ab_check_finite(caller, 'pre_value_product_sum', pre_value_product_sum);
    IF n = 0 AND (pre_sum <> 0 OR pre_sum_sq <> 0 OR pre_value_product_sum <> 0) THEN
        RAISE EXCEPTION '%: covariate sums (%, %, %) recorded with 0 units', caller, pre_sum, pre_sum_sq,
            pre_value_product_sum
            USING ERRCODE = '22023',
                  HINT = 'the pre_* sums cover the units recorded in the same call: record those units with them';
    END IF;
    PERFORM ab_check_square_sum(caller, 'pre_sum', 'pre_sum_sq', n, pre_sum, pre_sum_sq);
    PERFORM ab_check_product_sum(caller, 'pre_value_product_sum', 'the value', 'the pre-exposure value', n,
                                 sx, sxx, pre_sum, pre_sum_sq, pre_value_product_sum);
END $$;

-- ---------------------------------------------------------------------------------------------------
-- Producer entry points
-- ---------------------------------------------------------------------------------------------------

-- ab_record_metrics with the covariate arguments. Dropped and created (not replaced): a second overload with three
-- more defaulted arguments would make every existing call ambiguous. Every check of 0006 stays as it was.
DROP FUNCTION ab_record_metrics(text, text, bigint, bigint, bigint, double precision[], double precision,
                                double precision);

CREATE FUNCTION ab_record_metrics(
    experiment_name       text,
    variant_name          text,
    exposures             bigint,
    conversions           bigint,
    errors                bigint DEFAULT 0,
    latencies_ms          double precision[] DEFAULT NULL,
    value_sum             double precision DEFAULT NULL,
    value_sum_sq          double precision DEFAULT NULL,
    pre_sum               double precision DEFAULT NULL,
    pre_sum_sq            double precision DEFAULT NULL,
    pre_value_product_sum double precision DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    exp ab_experiments%ROWTYPE;
    var_id bigint;
    sketch jsonb;
    n_lat bigint := 0;
    bad double precision;
    new_id bigint;
BEGIN
    IF experiment_name IS NULL OR variant_name IS NULL THEN
        RAISE EXCEPTION 'ab_record_metrics: experiment_name and variant_name are required'
            USING ERRCODE = '22004';
    END IF;
    SELECT * INTO exp FROM ab_experiments e WHERE e.name = experiment_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ab_record_metrics: unknown experiment "%"', experiment_name
            USING ERRCODE = '22023', HINT = 'create it in ab_experiments first, or check the spelling';
    END IF;
    SELECT v.id INTO var_id FROM ab_variants v WHERE v.experiment_id = exp.id AND v.name = variant_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ab_record_metrics: experiment "%" has no variant "%"', experiment_name, variant_name
            USING ERRCODE = '22023',
                  HINT = 'known variants: ' || coalesce((SELECT string_agg(v.name, ', ' ORDER BY v.id)
                                                          FROM ab_variants v WHERE v.experiment_id = exp.id), 'none');
    END IF;
    IF ab_record_metrics.exposures IS NULL OR ab_record_metrics.conversions IS NULL
       OR ab_record_metrics.errors IS NULL THEN
        RAISE EXCEPTION 'ab_record_metrics: exposures, conversions and errors must not be NULL (use 0)'
            USING ERRCODE = '22004';
    END IF;
    IF ab_record_metrics.exposures < 0 OR ab_record_metrics.conversions < 0 OR ab_record_metrics.errors < 0 THEN
        RAISE EXCEPTION 'ab_record_metrics: counts must not be negative (exposures %, conversions %, errors %)',
            ab_record_metrics.exposures, ab_record_metrics.conversions, ab_record_metrics.errors
            USING ERRCODE = '22023', HINT = 'record deltas of new events only; counts never go down';
    END IF;
    PERFORM ab_check_units('ab_record_metrics', 'exposures', ab_record_metrics.exposures);
    IF ab_record_metrics.conversions > ab_record_metrics.exposures THEN
        RAISE EXCEPTION 'ab_record_metrics: conversions (%) greater than exposures (%)',
            ab_record_metrics.conversions, ab_record_metrics.exposures
            USING ERRCODE = '22023', HINT = 'a conversion counts a converted exposure, so it cannot exceed exposures';
    END IF;
    IF ab_record_metrics.errors > ab_record_metrics.exposures THEN
        RAISE EXCEPTION 'ab_record_metrics: errors (%) greater than exposures (%)',
            ab_record_metrics.errors, ab_record_metrics.exposures
            USING ERRCODE = '22023', HINT = 'an error counts a failed exposure, so it cannot exceed exposures';
    END IF;
    IF latencies_ms IS NOT NULL THEN
        SELECT x INTO bad FROM unnest(latencies_ms) AS x
         WHERE x IS NULL OR x = 'NaN'::float8 OR x = 'Infinity'::float8 OR x = '-Infinity'::float8 OR x < 0
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ab_record_metrics: invalid latency % ms (latencies must be finite and >= 0)',
                coalesce(bad::text, 'NULL')
                USING ERRCODE = '22023', HINT = 'drop NULL, NaN, infinite or negative samples before recording';
        END IF;
        n_lat := coalesce(cardinality(latencies_ms), 0);
        IF n_lat > 0 THEN
            sketch := ab_latency_sketch(latencies_ms);
        END IF;
    END IF;
    IF exp.metric_type = 'conversion' THEN
        IF ab_record_metrics.value_sum IS NOT NULL OR ab_record_metrics.value_sum_sq IS NOT NULL THEN
            RAISE EXCEPTION 'ab_record_metrics: experiment "%" is a conversion experiment; value_sum and value_sum_sq must be NULL',
                experiment_name
                USING ERRCODE = '22023', HINT = 'pass conversions only, or set metric_type = ''mean'' on the experiment';
        END IF;
    ELSE
        IF ab_record_metrics.value_sum IS NULL OR ab_record_metrics.value_sum_sq IS NULL THEN
            RAISE EXCEPTION 'ab_record_metrics: experiment "%" is a mean experiment; value_sum and value_sum_sq are required',
                experiment_name
                USING ERRCODE = '22023', HINT = 'pass the sum of the metric values and the sum of their squares';
        END IF;
        IF ab_record_metrics.value_sum IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
           OR ab_record_metrics.value_sum_sq IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8) THEN
            RAISE EXCEPTION 'ab_record_metrics: value_sum and value_sum_sq must be finite'
                USING ERRCODE = '22023';
        END IF;
        IF ab_record_metrics.value_sum_sq < 0 THEN
            RAISE EXCEPTION 'ab_record_metrics: value_sum_sq (%) must not be negative', ab_record_metrics.value_sum_sq
                USING ERRCODE = '22023', HINT = 'value_sum_sq is the sum of squared values';
        END IF;
        IF ab_record_metrics.exposures = 0
           AND (ab_record_metrics.value_sum <> 0 OR ab_record_metrics.value_sum_sq <> 0) THEN
            RAISE EXCEPTION 'ab_record_metrics: value_sum (%) and value_sum_sq (%) recorded with 0 exposures',
                ab_record_metrics.value_sum, ab_record_metrics.value_sum_sq
                USING ERRCODE = '22023',
                      HINT = 'value_sum and value_sum_sq sum the values of the exposures recorded in the same call: '
                             || 'record those exposures with them, or pass 0 for both sums';
        END IF;
        IF ab_record_metrics.exposures > 0
           AND ab_record_metrics.value_sum_sq::numeric * ab_record_metrics.exposures * 1.000000001
               < ab_record_metrics.value_sum::numeric * ab_record_metrics.value_sum::numeric THEN
            RAISE EXCEPTION 'ab_record_metrics: value_sum_sq (%) is smaller than value_sum^2 / exposures (%^2 / %): no real values have these sums',
                ab_record_metrics.value_sum_sq, ab_record_metrics.value_sum, ab_record_metrics.exposures
                USING ERRCODE = '22023',
                      HINT = 'value_sum_sq is the sum of the squared values (x1^2 + x2^2 + ...), not the square of '
                             || 'value_sum; both sums cover exactly the exposures of this call';
        END IF;
        -- After the checks of 0006 (their messages stay as they were), the caps (see ab_check_finite).
        PERFORM ab_check_finite('ab_record_metrics', 'value_sum', ab_record_metrics.value_sum);
        PERFORM ab_check_finite('ab_record_metrics', 'value_sum_sq', ab_record_metrics.value_sum_sq);
    END IF;
    -- The covariate of the built-in metric: its value per exposure is the conversion (0/1, so Σx² = Σx) or the
    -- mean metric's value.
    IF ab_record_metrics.pre_sum IS NOT NULL OR ab_record_metrics.pre_sum_sq IS NOT NULL
       OR ab_record_metrics.pre_value_product_sum IS NOT NULL THEN
        PERFORM ab_check_covariate('ab_record_metrics', ab_record_metrics.exposures,
                                   coalesce(ab_record_metrics.value_sum, ab_record_metrics.conversions),
                                   coalesce(ab_record_metrics.value_sum_sq, ab_record_metrics.conversions),
                                   ab_record_metrics.pre_sum, ab_record_metrics.pre_sum_sq,
                                   ab_record_metrics.pre_value_product_sum);
    END IF;

    INSERT INTO ab_metric_updates (experiment_id, variant_id, exposures, conversions, errors,
                                   value_sum, value_sum_sq, latency_sketch, latency_count,
                                   pre_sum, pre_sum_sq, pre_value_product_sum)
    VALUES (exp.id, var_id, ab_record_metrics.exposures, ab_record_metrics.conversions, ab_record_metrics.errors,
            ab_record_metrics.value_sum, ab_record_metrics.value_sum_sq, sketch, n_lat,
            ab_record_metrics.pre_sum, ab_record_metrics.pre_sum_sq, ab_record_metrics.pre_value_product_sum)
    RETURNING id INTO new_id;

    -- Postgres folds identical payloads within one transaction: one wake-up per experiment per commit.
    PERFORM pg_notify('ab_metrics', exp.id::text);
    RETURN new_id;
END $$;

-- One update of one metric (an ab_metrics row) for one variant: per-unit sums over `units` new units.
--   proportion: value_sum = converted units (a whole number, <= units); value_sum_sq NULL or equal to value_sum.
--   mean:       value_sum = Σx, value_sum_sq = Σx².
--   ratio:      Σx, Σx², Σy, Σy², Σxy of numerator x and denominator y per unit (e.g. revenue and sessions per user).
-- pre_sum, pre_sum_sq, pre_value_product_sum: optional covariate (proportion and mean metrics).
-- Same queue and NOTIFY channel as ab_record_metrics: one wake-up per experiment per transaction.
CREATE FUNCTION ab_record_metric(
    experiment_name               text,
    variant_name                  text,
    metric_name                   text,
    units                         bigint,
    value_sum                     double precision,
    value_sum_sq                  double precision DEFAULT NULL,
    denominator_sum               double precision DEFAULT NULL,
    denominator_sum_sq            double precision DEFAULT NULL,
    value_denominator_product_sum double precision DEFAULT NULL,
    pre_sum                       double precision DEFAULT NULL,
    pre_sum_sq                    double precision DEFAULT NULL,
    pre_value_product_sum         double precision DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    fn CONSTANT text := 'ab_record_metric';
    exp_id bigint;
    var_id bigint;
    m ab_metrics%ROWTYPE;
    sq double precision := ab_record_metric.value_sum_sq;
    has_denominator boolean := ab_record_metric.denominator_sum IS NOT NULL
                               OR ab_record_metric.denominator_sum_sq IS NOT NULL
                               OR ab_record_metric.value_denominator_product_sum IS NOT NULL;
    has_pre boolean := ab_record_metric.pre_sum IS NOT NULL OR ab_record_metric.pre_sum_sq IS NOT NULL
                       OR ab_record_metric.pre_value_product_sum IS NOT NULL;
    new_id bigint;
BEGIN
    IF experiment_name IS NULL OR variant_name IS NULL OR metric_name IS NULL THEN
        RAISE EXCEPTION 'ab_record_metric: experiment_name, variant_name and metric_name are required'
            USING ERRCODE = '22004', HINT = 'name the experiment, the variant and the metric (a row of ab_metrics)';
    END IF;
    SELECT e.id INTO exp_id FROM ab_experiments e WHERE e.name = experiment_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ab_record_metric: unknown experiment "%"', experiment_name
            USING ERRCODE = '22023', HINT = 'create it in ab_experiments first, or check the spelling';
    END IF;
    SELECT v.id INTO var_id FROM ab_variants v WHERE v.experiment_id = exp_id AND v.name = variant_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ab_record_metric: experiment "%" has no variant "%"', experiment_name, variant_name
            USING ERRCODE = '22023',
                  HINT = 'known variants: ' || coalesce((SELECT string_agg(v.name, ', ' ORDER BY v.id)
                                                          FROM ab_variants v WHERE v.experiment_id = exp_id), 'none');
    END IF;
    -- FOR SHARE: a removal of the metric (which locks it FOR NO KEY UPDATE, see delete_metric_updates in
    -- worker/db/queries.sql) is waited for, and then the metric is gone; no update slips in behind it.
    SELECT * INTO m FROM ab_metrics am WHERE am.experiment_id = exp_id AND am.name = metric_name FOR SHARE;
    IF NOT FOUND OR m.name = 'primary' THEN
        IF metric_name = 'primary' THEN
            RAISE EXCEPTION 'ab_record_metric: "primary" is experiment "%"''s built-in metric', experiment_name
                USING ERRCODE = '22023',
                      HINT = 'record the built-in metric with ab_record_metrics(experiment_name, variant_name, '
                             || 'exposures, conversions, ...)';
        END IF;
        RAISE EXCEPTION 'ab_record_metric: experiment "%" has no metric "%"', experiment_name, metric_name
            USING ERRCODE = '22023',
                  HINT = 'known metrics: ' || coalesce((SELECT string_agg(am.name, ', ' ORDER BY am.id)
                                                          FROM ab_metrics am
                                                         WHERE am.experiment_id = exp_id AND am.name <> 'primary'),
                                                        'none')
                         || '; add one with: autopromote metrics add ' || experiment_name || ' ' || metric_name
                         || ' --kind proportion|mean|ratio';
    END IF;
    IF ab_record_metric.units IS NULL OR ab_record_metric.value_sum IS NULL THEN
        RAISE EXCEPTION 'ab_record_metric: units and value_sum are required (metric "%")', metric_name
            USING ERRCODE = '22004', HINT = 'pass the number of new units and the sum of their values (0 for none)';
    END IF;
    IF ab_record_metric.units < 0 THEN
        RAISE EXCEPTION 'ab_record_metric: units must not be negative (got %)', ab_record_metric.units
            USING ERRCODE = '22023', HINT = 'record the sums of new units only; counts never go down';
    END IF;
    PERFORM ab_check_units(fn, 'units', ab_record_metric.units);
    PERFORM ab_check_finite(fn, 'value_sum', ab_record_metric.value_sum);
    PERFORM ab_check_finite(fn, 'value_sum_sq', ab_record_metric.value_sum_sq);
    PERFORM ab_check_finite(fn, 'denominator_sum', ab_record_metric.denominator_sum);
    PERFORM ab_check_finite(fn, 'denominator_sum_sq', ab_record_metric.denominator_sum_sq);
    PERFORM ab_check_finite(fn, 'value_denominator_product_sum', ab_record_metric.value_denominator_product_sum);

    IF m.kind = 'proportion' THEN
        IF has_denominator THEN
            RAISE EXCEPTION 'ab_record_metric: metric "%" is a proportion; the denominator sums must be NULL',
                metric_name
                USING ERRCODE = '22023',
                      HINT = 'a proportion counts converted units: pass units and value_sum (the converted ones) only';
        END IF;
        IF ab_record_metric.value_sum < 0 OR ab_record_metric.value_sum > ab_record_metric.units
           OR ab_record_metric.value_sum <> trunc(ab_record_metric.value_sum) THEN
            RAISE EXCEPTION 'ab_record_metric: metric "%" is a proportion; value_sum (%) must be a whole number of '
                            'converted units between 0 and units (%)', metric_name, ab_record_metric.value_sum,
                ab_record_metric.units
                USING ERRCODE = '22023',
                      HINT = 'value_sum counts the units that converted, so it cannot exceed units';
        END IF;
        IF ab_record_metric.value_sum_sq IS NOT NULL AND ab_record_metric.value_sum_sq <> ab_record_metric.value_sum THEN
            RAISE EXCEPTION 'ab_record_metric: metric "%" is a proportion; value_sum_sq (%) must be NULL or equal '
                            'value_sum (%)', metric_name, ab_record_metric.value_sum_sq, ab_record_metric.value_sum
                USING ERRCODE = '22023', HINT = 'a 0/1 value is its own square: leave value_sum_sq out';
        END IF;
        sq := ab_record_metric.value_sum;
    ELSIF m.kind = 'mean' THEN
        IF ab_record_metric.value_sum_sq IS NULL THEN
            RAISE EXCEPTION 'ab_record_metric: metric "%" is a mean; value_sum_sq is required', metric_name
                USING ERRCODE = '22023',
                      HINT = 'pass the sum of the values (value_sum) and the sum of their squares (value_sum_sq)';
        END IF;
        IF has_denominator THEN
            RAISE EXCEPTION 'ab_record_metric: metric "%" is a mean; the denominator sums must be NULL', metric_name
                USING ERRCODE = '22023',
                      HINT = 'a value per unit needs value_sum and value_sum_sq only; a sum over another sum is a '
                             || 'ratio metric';
        END IF;
    ELSE
        IF ab_record_metric.value_sum_sq IS NULL OR ab_record_metric.denominator_sum IS NULL
           OR ab_record_metric.denominator_sum_sq IS NULL OR ab_record_metric.value_denominator_product_sum IS NULL THEN
            RAISE EXCEPTION 'ab_record_metric: metric "%" is a ratio; value_sum, value_sum_sq, denominator_sum, '
                            'denominator_sum_sq and value_denominator_product_sum are all required', metric_name
                USING ERRCODE = '22023',
                      HINT = 'with numerator x and denominator y per unit pass Σx, Σx², Σy, Σy² and Σxy over the units';
        END IF;
        IF ab_record_metric.denominator_sum < 0 THEN
            RAISE EXCEPTION 'ab_record_metric: metric "%" is a ratio; denominator_sum (%) must not be negative',
                metric_name, ab_record_metric.denominator_sum
                USING ERRCODE = '22023',
                      HINT = 'the denominator counts or sums something a unit has (sessions, orders, items), never '
                             || 'below 0; record the sum over the units of this call';
        END IF;
        IF has_pre THEN
            RAISE EXCEPTION 'ab_record_metric: metric "%" is a ratio; a pre-exposure covariate is for proportion and '
                            'mean metrics only', metric_name
                USING ERRCODE = '22023', HINT = 'leave pre_sum, pre_sum_sq and pre_value_product_sum out';
        END IF;
    END IF;

    IF ab_record_metric.units = 0
       AND (ab_record_metric.value_sum <> 0 OR sq <> 0 OR coalesce(ab_record_metric.denominator_sum, 0) <> 0
            OR coalesce(ab_record_metric.denominator_sum_sq, 0) <> 0
            OR coalesce(ab_record_metric.value_denominator_product_sum, 0) <> 0) THEN
        RAISE EXCEPTION 'ab_record_metric: sums recorded with 0 units (metric "%")', metric_name
            USING ERRCODE = '22023',
                  HINT = 'the sums cover the units recorded in the same call: record those units with them';
    END IF;
    IF m.kind <> 'proportion' THEN
        PERFORM ab_check_square_sum(fn, 'value_sum', 'value_sum_sq', ab_record_metric.units,
                                    ab_record_metric.value_sum, ab_record_metric.value_sum_sq);
    END IF;
    IF m.kind = 'ratio' THEN
        PERFORM ab_check_square_sum(fn, 'denominator_sum', 'denominator_sum_sq', ab_record_metric.units,
                                    ab_record_metric.denominator_sum, ab_record_metric.denominator_sum_sq);
        PERFORM ab_check_product_sum(fn, 'value_denominator_product_sum', 'the value', 'the denominator',
                                     ab_record_metric.units, ab_record_metric.value_sum, ab_record_metric.value_sum_sq,
                                     ab_record_metric.denominator_sum, ab_record_metric.denominator_sum_sq,
                                     ab_record_metric.value_denominator_product_sum);
    END IF;
    IF has_pre THEN
        PERFORM ab_check_covariate(fn, ab_record_metric.units, ab_record_metric.value_sum, sq,
                                   ab_record_metric.pre_sum, ab_record_metric.pre_sum_sq,
                                   ab_record_metric.pre_value_product_sum);
    END IF;

    INSERT INTO ab_metric_updates (experiment_id, variant_id, metric_id, exposures, conversions, errors,
                                   value_sum, value_sum_sq, denominator_sum, denominator_sum_sq,
                                   value_denominator_product_sum, pre_sum, pre_sum_sq, pre_value_product_sum)
    VALUES (exp_id, var_id, m.id, ab_record_metric.units, 0, 0, ab_record_metric.value_sum, sq,
            ab_record_metric.denominator_sum, ab_record_metric.denominator_sum_sq,
            ab_record_metric.value_denominator_product_sum, ab_record_metric.pre_sum, ab_record_metric.pre_sum_sq,
            ab_record_metric.pre_value_product_sum)
    RETURNING id INTO new_id;

    -- The same channel and payload as ab_record_metrics: one wake-up per experiment per commit, whichever was called.
    PERFORM pg_notify('ab_metrics', exp_id::text);
    RETURN new_id;
END $$;
