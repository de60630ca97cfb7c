-- Every query of the worker, each under a "-- name: NAME" header with a one-line description.
-- Loaded once by worker/db/sql.py (Q); values always go through $n parameters.

-- name: fold_pending
-- Claim up to $1 pending metric updates and fold them into ab_variant_stats, in one statement.
-- Rows with a metric_id (ab_record_metric, schema/0009) are folded into ab_metric_stats by the same statement, and
-- count in their variant's updates_folded (the statistics version) like any other update; variants = rows written.
-- The claimed rows are deleted by their ctid (a TID scan of exactly the rows the sub-select locked, which nobody else
-- can change or move until this commits) rather than by "id IN (...)", which the planner ran as a hash join over the
-- whole queue for every batch: 3x faster on a 1,000,000-row backlog.
-- A group of claimed rows whose addition would take a total past the caps (2^53 counts, |sum| 1e150: the statistics
-- square the sums) is not folded: its rows move to ab_metric_dead_letters with the reason, in the same statement, so
-- one bad producer cannot stop the fold of every other experiment (schema/0009). The check reads the totals in the
-- statement's snapshot; a concurrent fold of the same variant can overshoot a cap by its own batch at most, far
-- inside the range of bigint and float8. parked = rows moved to the dead letters, per experiment. The parked rows are
-- found from the offending groups (LATERAL: none in the common case, so the claimed rows are not scanned again).
-- fold_pending_for and fold_pending_relaxed below are the same statement (tests/test_sql_loader.py checks it).
WITH claimed AS (
    DELETE FROM ab_metric_updates
     WHERE ctid = ANY(ARRAY(SELECT ctid FROM ab_metric_updates ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
    RETURNING *
), base AS (
    SELECT variant_id, min(experiment_id) AS experiment_id, count(*) AS n, sum(exposures) AS exposures,
           sum(conversions) AS conversions, sum(errors) AS errors,
           coalesce(sum(value_sum), 0) AS value_sum, coalesce(sum(value_sum_sq), 0) AS value_sum_sq,
           ab_sketch_sum(latency_sketch) FILTER (WHERE latency_sketch IS NOT NULL) AS latency_sketch,
           sum(latency_count) AS latency_count,
           coalesce(sum(exposures) FILTER (WHERE pre_sum IS NOT NULL), 0) AS pre_units,
           coalesce(sum(pre_sum), 0) AS pre_sum, coalesce(sum(pre_sum_sq), 0) AS pre_sum_sq,
           coalesce(sum(pre_value_product_sum), 0) AS pre_value_product_sum,
           max(recorded_at) AS last_recorded_at
      FROM claimed WHERE metric_id IS NULL GROUP BY variant_id
), base_checked AS (
    SELECT b.*,
           CASE WHEN coalesce(s.exposures, 0) + b.exposures > 9007199254740992 THEN 'exposures'
                WHEN abs(coalesce(s.value_sum, 0) + b.value_sum) > 1e150::float8 THEN 'value_sum'
                WHEN coalesce(s.value_sum_sq, 0) + b.value_sum_sq > 1e150::float8 THEN 'value_sum_sq'
                WHEN abs(coalesce(s.pre_sum, 0) + b.pre_sum) > 1e150::float8 THEN 'pre_sum'
                WHEN coalesce(s.pre_sum_sq, 0) + b.pre_sum_sq > 1e150::float8 THEN 'pre_sum_sq'
                WHEN abs(coalesce(s.pre_value_product_sum, 0) + b.pre_value_product_sum) > 1e150::float8
                THEN 'pre_value_product_sum'
           END AS overflow
      FROM base b LEFT JOIN ab_variant_stats s ON s.variant_id = b.variant_id
), metric_base AS (
    SELECT metric_id, variant_id, min(experiment_id) AS experiment_id, count(*) AS n, sum(exposures) AS units,
           sum(value_sum) AS value_sum, sum(value_sum_sq) AS value_sum_sq,
           coalesce(sum(denominator_sum), 0) AS denominator_sum,
           coalesce(sum(denominator_sum_sq), 0) AS denominator_sum_sq,
           coalesce(sum(value_denominator_product_sum), 0) AS value_denominator_product_sum,
           coalesce(sum(exposures) FILTER (WHERE pre_sum IS NOT NULL), 0) AS pre_units,
           coalesce(sum(pre_sum), 0) AS pre_sum, coalesce(sum(pre_sum_sq), 0) AS pre_sum_sq,
           coalesce(sum(pre_value_product_sum), 0) AS pre_value_product_sum,
           max(recorded_at) AS last_recorded_at
      FROM claimed WHERE metric_id IS NOT NULL GROUP BY metric_id, variant_id
), metric_checked AS (
    SELECT m.*,
           CASE WHEN coalesce(s.units, 0) + m.units > 9007199254740992 THEN 'units'
                WHEN abs(coalesce(s.value_sum, 0) + m.value_sum) > 1e150::float8 THEN 'value_sum'
                WHEN coalesce(s.value_sum_sq, 0) + m.value_sum_sq > 1e150::float8 THEN 'value_sum_sq'
                WHEN abs(coalesce(s.denominator_sum, 0) + m.denominator_sum) > 1e150::float8 THEN 'denominator_sum'
                WHEN coalesce(s.denominator_sum_sq, 0) + m.denominator_sum_sq > 1e150::float8
                THEN 'denominator_sum_sq'
                WHEN abs(coalesce(s.value_denominator_product_sum, 0) + m.value_denominator_product_sum)
                     > 1e150::float8 THEN 'value_denominator_product_sum'
                WHEN abs(coalesce(s.pre_sum, 0) + m.pre_sum) > 1e150::float8 THEN 'pre_sum'
                WHEN coalesce(s.pre_sum_sq, 0) + m.pre_sum_sq > 1e150::float8 THEN 'pre_sum_sq'
                WHEN abs(coalesce(s.pre_value_product_sum, 0) + m.pre_value_product_sum) > 1e150::float8
                THEN 'pre_value_product_sum'
           END AS overflow
      FROM metric_base m LEFT JOIN ab_metric_stats s ON s.metric_id = m.metric_id AND s.variant_id = m.variant_id
), agg AS (
    SELECT coalesce(b.variant_id, mv.variant_id) AS variant_id,
           coalesce(b.experiment_id, mv.experiment_id) AS experiment_id,
           coalesce(b.n, 0) + coalesce(mv.n, 0) AS n, coalesce(b.exposures, 0) AS exposures,
           coalesce(b.conversions, 0) AS conversions, coalesce(b.errors, 0) AS errors,
           coalesce(b.value_sum, 0) AS value_sum, coalesce(b.value_sum_sq, 0) AS value_sum_sq,
           b.latency_sketch, coalesce(b.latency_count, 0) AS latency_count, coalesce(b.pre_units, 0) AS pre_units,
           coalesce(b.pre_sum, 0) AS pre_sum, coalesce(b.pre_sum_sq, 0) AS pre_sum_sq,
           coalesce(b.pre_value_product_sum, 0) AS pre_value_product_sum,
           greatest(b.last_recorded_at, mv.last_recorded_at) AS last_recorded_at
      FROM (SELECT * FROM base_checked WHERE overflow IS NULL) b
      FULL JOIN (SELECT variant_id, min(experiment_id) AS experiment_id, sum(n) AS n,
                        max(last_recorded_at) AS last_recorded_at
                   FROM metric_checked WHERE overflow IS NULL GROUP BY variant_id) mv ON mv.variant_id = b.variant_id
), upserted AS (
    INSERT INTO ab_variant_stats AS s (variant_id, experiment_id, exposures, conversions, errors, value_sum,
                                      value_sum_sq, latency_sketch, latency_count, pre_units, pre_sum, pre_sum_sq,
                                      pre_value_product_sum, updates_folded, updated_at)
    SELECT variant_id, experiment_id, exposures, conversions, errors, value_sum, value_sum_sq,
           coalesce(latency_sketch, '{}'::jsonb), latency_count, pre_units, pre_sum, pre_sum_sq,
           pre_value_product_sum, n, now()
      FROM agg ORDER BY variant_id
    ON CONFLICT (variant_id) DO UPDATE SET
        exposures = s.exposures + EXCLUDED.exposures,
        conversions = s.conversions + EXCLUDED.conversions,
        errors = s.errors + EXCLUDED.errors,
        value_sum = s.value_sum + EXCLUDED.value_sum,
        value_sum_sq = s.value_sum_sq + EXCLUDED.value_sum_sq,
        latency_sketch = ab_sketch_merge(s.latency_sketch, EXCLUDED.latency_sketch),
        latency_count = s.latency_count + EXCLUDED.latency_count,
        pre_units = s.pre_units + EXCLUDED.pre_units,
        pre_sum = s.pre_sum + EXCLUDED.pre_sum,
        pre_sum_sq = s.pre_sum_sq + EXCLUDED.pre_sum_sq,
        pre_value_product_sum = s.pre_value_product_sum + EXCLUDED.pre_value_product_sum,
        updates_folded = s.updates_folded + EXCLUDED.updates_folded,
        updated_at = now()
    RETURNING 1
), metric_upserted AS (
    INSERT INTO ab_metric_stats AS s (metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq,
                                     denominator_sum, denominator_sum_sq, value_denominator_product_sum, pre_units,
                                     pre_sum, pre_sum_sq, pre_value_product_sum, updates_folded, updated_at)
    SELECT metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq, denominator_sum,
           denominator_sum_sq, value_denominator_product_sum, pre_units, pre_sum, pre_sum_sq, pre_value_product_sum,
           n, now()
      FROM metric_checked WHERE overflow IS NULL ORDER BY metric_id, variant_id
    ON CONFLICT (metric_id, variant_id) DO UPDATE SET
        units = s.units + EXCLUDED.units,
        value_sum = s.value_sum + EXCLUDED.value_sum,
        value_sum_sq = s.value_sum_sq + EXCLUDED.value_sum_sq,
        denominator_sum = s.denominator_sum + EXCLUDED.denominator_sum,
        denominator_sum_sq = s.denominator_sum_sq + EXCLUDED.denominator_sum_sq,
        value_denominator_product_sum = s.value_denominator_product_sum + EXCLUDED.value_denominator_product_sum,
        pre_units = s.pre_units + EXCLUDED.pre_units,
        pre_sum = s.pre_sum + EXCLUDED.pre_sum,
        pre_sum_sq = s.pre_sum_sq + EXCLUDED.pre_sum_sq,
        pre_value_product_sum = s.pre_value_product_sum + EXCLUDED.pre_value_product_sum,
        updates_folded = s.updates_folded + EXCLUDED.updates_folded,
        updated_at = now()
    RETURNING 1
), parked AS (
    INSERT INTO ab_metric_dead_letters
    SELECT c.*, 'folding it would take the ' || b.overflow || ' total of its variant past the cap (2^53 counts, '
                || '1e150 sums): the statistics would overflow', now()
      FROM base_checked b,
           LATERAL (SELECT * FROM claimed WHERE variant_id = b.variant_id AND metric_id IS NULL) c
     WHERE b.overflow IS NOT NULL
    UNION ALL
    SELECT c.*, 'folding it would take the ' || m.overflow || ' total of its metric and variant past the cap '
                || '(2^53 units, 1e150 sums): the statistics would overflow', now()
      FROM metric_checked m,
           LATERAL (SELECT * FROM claimed WHERE metric_id = m.metric_id AND variant_id = m.variant_id) c
     WHERE m.overflow IS NOT NULL
    RETURNING experiment_id
)
SELECT experiment_id, sum(n)::bigint AS updates, max(last_recorded_at) AS last_recorded_at,
       (SELECT count(*) FROM upserted) + (SELECT count(*) FROM metric_upserted) AS variants,
       count(*) FILTER (WHERE n = 0) AS parked
  FROM (SELECT experiment_id, n, last_recorded_at FROM agg
        UNION ALL SELECT experiment_id, 0, NULL FROM parked) folded
 GROUP BY experiment_id;

-- name: fold_pending_for
-- fold_pending for the experiments $2 only (a check or promotion folds its own experiment first).
WITH claimed AS (
    DELETE FROM ab_metric_updates
     WHERE ctid = ANY(ARRAY(SELECT ctid FROM ab_metric_updates WHERE experiment_id = ANY($2::bigint[]) ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
    RETURNING *
), base AS (
    SELECT variant_id, min(experiment_id) AS experiment_id, count(*) AS n, sum(exposures) AS exposures,
           sum(conversions) AS conversions, sum(errors) AS errors,
           coalesce(sum(value_sum), 0) AS value_sum, coalesce(sum(value_sum_sq), 0) AS value_sum_sq,
           ab_sketch_sum(latency_sketch) FILTER (WHERE latency_sketch IS NOT NULL) AS latency_sketch,
           sum(latency_count) AS latency_count,
           coalesce(sum(exposures) FILTER (WHERE pre_sum IS NOT NULL), 0) AS pre_units,
           coalesce(sum(pre_sum), 0) AS pre_sum, coalesce(sum(pre_sum_sq), 0) AS pre_sum_sq,
           coalesce(sum(pre_value_product_sum), 0) AS pre_value_product_sum,
           max(recorded_at) AS last_recorded_at
      FROM claimed WHERE metric_id IS NULL GROUP BY variant_id
), base_checked AS (
    SELECT b.*,
           CASE WHEN coalesce(s.exposures, 0) + b.exposures > 9007199254740992 THEN 'exposures'
                WHEN abs(coalesce(s.value_sum, 0) + b.value_sum) > 1e150::float8 THEN 'value_sum'
                WHEN coalesce(s.value_sum_sq, 0) + b.value_sum_sq > 1e150::float8 THEN 'value_sum_sq'
                WHEN abs(coalesce(s.pre_sum, 0) + b.pre_sum) > 1e150::float8 THEN 'pre_sum'
                WHEN coalesce(s.pre_sum_sq, 0) + b.pre_sum_sq > 1e150::float8 THEN 'pre_sum_sq'
                WHEN abs(coalesce(s.pre_value_product_sum, 0) + b.pre_value_product_sum) > 1e150::float8
                THEN 'pre_value_product_sum'
           END AS overflow
      FROM base b LEFT JOIN ab_variant_stats s ON s.variant_id = b.variant_id
), metric_base AS (
    SELECT metric_id, variant_id, min(experiment_id) AS experiment_id, count(*) AS n, sum(exposures) AS units,
           sum(value_sum) AS value_sum, sum(value_sum_sq) AS value_sum_sq,
           coalesce(sum(denominator_sum), 0) AS denominator_sum,
           coalesce(sum(denominator_sum_sq), 0) AS denominator_sum_sq,
           coalesce(sum(value_denominator_product_sum), 0) AS value_denominator_product_sum,
           coalesce(sum(exposures) FILTER (WHERE pre_sum IS NOT NULL), 0) AS pre_units,
           coalesce(sum(pre_sum), 0) AS pre_sum, coalesce(sum(pre_sum_sq), 0) AS pre_sum_sq,
           coalesce(sum(pre_value_product_sum), 0) AS pre_value_product_sum,
           max(recorded_at) AS last_recorded_at
      FROM claimed WHERE metric_id IS NOT NULL GROUP BY metric_id, variant_id
), metric_checked AS (
    SELECT m.*,
           CASE WHEN coalesce(s.units, 0) + m.units > 9007199254740992 THEN 'units'
                WHEN abs(coalesce(s.value_sum, 0) + m.value_sum) > 1e150::float8 THEN 'value_sum'
                WHEN coalesce(s.value_sum_sq, 0) + m.value_sum_sq > 1e150::float8 THEN 'value_sum_sq'
                WHEN abs(coalesce(s.denominator_sum, 0) + m.denominator_sum) > 1e150::float8 THEN 'denominator_sum'
                WHEN coalesce(s.denominator_sum_sq, 0) + m.denominator_sum_sq > 1e150::float8
                THEN 'denominator_sum_sq'
                WHEN abs(coalesce(s.value_denominator_product_sum, 0) + m.value_denominator_product_sum)
                     > 1e150::float8 THEN 'value_denominator_product_sum'
                WHEN abs(coalesce(s.pre_sum, 0) + m.pre_sum) > 1e150::float8 THEN 'pre_sum'
                WHEN coalesce(s.pre_sum_sq, 0) + m.pre_sum_sq > 1e150::float8 THEN 'pre_sum_sq'
                WHEN abs(coalesce(s.pre_value_product_sum, 0) + m.pre_value_product_sum) > 1e150::float8
                THEN 'pre_value_product_sum'
           END AS overflow
      FROM metric_base m LEFT JOIN ab_metric_stats s ON s.metric_id = m.metric_id AND s.variant_id = m.variant_id
), agg AS (
    SELECT coalesce(b.variant_id, mv.variant_id) AS variant_id,
           coalesce(b.experiment_id, mv.experiment_id) AS experiment_id,
           coalesce(b.n, 0) + coalesce(mv.n, 0) AS n, coalesce(b.exposures, 0) AS exposures,
           coalesce(b.conversions, 0) AS conversions, coalesce(b.errors, 0) AS errors,
           coalesce(b.value_sum, 0) AS value_sum, coalesce(b.value_sum_sq, 0) AS value_sum_sq,
           b.latency_sketch, coalesce(b.latency_count, 0) AS latency_count, coalesce(b.pre_units, 0) AS pre_units,
           coalesce(b.pre_sum, 0) AS pre_sum, coalesce(b.pre_sum_sq, 0) AS pre_sum_sq,
           coalesce(b.pre_value_product_sum, 0) AS pre_value_product_sum,
           greatest(b.last_recorded_at, mv.last_recorded_at) AS last_recorded_at
      FROM (SELECT * FROM base_checked WHERE overflow IS NULL) b
      FULL JOIN (SELECT variant_id, min(experiment_id) AS experiment_id, sum(n) AS n,
                        max(last_recorded_at) AS last_recorded_at
                   FROM metric_checked WHERE overflow IS NULL GROUP BY variant_id) mv ON mv.variant_id = b.variant_id
), upserted AS (
    INSERT INTO ab_variant_stats AS s (variant_id, experiment_id, exposures, conversions, errors, value_sum,
                                      value_sum_sq, latency_sketch, latency_count, pre_units, pre_sum, pre_sum_sq,
                                      pre_value_product_sum, updates_folded, updated_at)
    SELECT variant_id, experiment_id, exposures, conversions, errors, value_sum, value_sum_sq,
           coalesce(latency_sketch, '{}'::jsonb), latency_count, pre_units, pre_sum, pre_sum_sq,
           pre_value_product_sum, n, now()
      FROM agg ORDER BY variant_id
    ON CONFLICT (variant_id) DO UPDATE SET
        exposures = s.exposures + EXCLUDED.exposures,
        conversions = s.conversions + EXCLUDED.conversions,
        errors = s.errors + EXCLUDED.errors,
        value_sum = s.value_sum + EXCLUDED.value_sum,
        value_sum_sq = s.value_sum_sq + EXCLUDED.value_sum_sq,
        latency_sketch = ab_sketch_merge(s.latency_sketch, EXCLUDED.latency_sketch),
        latency_count = s.latency_count + EXCLUDED.latency_count,
        pre_units = s.pre_units + EXCLUDED.pre_units,
        pre_sum = s.pre_sum + EXCLUDED.pre_sum,
        pre_sum_sq = s.pre_sum_sq + EXCLUDED.pre_sum_sq,
        pre_value_product_sum = s.pre_value_product_sum + EXCLUDED.pre_value_product_sum,
        updates_folded = s.updates_folded + EXCLUDED.updates_folded,
        updated_at = now()
    RETURNING 1
), metric_upserted AS (
    INSERT INTO ab_metric_stats AS s (metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq,
                                     denominator_sum, denominator_sum_sq, value_denominator_product_sum, pre_units,
                                     pre_sum, pre_sum_sq, pre_value_product_sum, updates_folded, updated_at)
    SELECT metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq, denominator_sum,
           denominator_sum_sq, value_denominator_product_sum, pre_units, pre_sum, pre_sum_sq, pre_value_product_sum,
           n, now()
      FROM metric_checked WHERE overflow IS NULL ORDER BY metric_id, variant_id
    ON CONFLICT (metric_id, variant_id) DO UPDATE SET
        units = s.units + EXCLUDED.units,
        value_sum = s.value_sum + EXCLUDED.value_sum,
        value_sum_sq = s.value_sum_sq + EXCLUDED.value_sum_sq,
        denominator_sum = s.denominator_sum + EXCLUDED.denominator_sum,
        denominator_sum_sq = s.denominator_sum_sq + EXCLUDED.denominator_sum_sq,
        value_denominator_product_sum = s.value_denominator_product_sum + EXCLUDED.value_denominator_product_sum,
        pre_units = s.pre_units + EXCLUDED.pre_units,
        pre_sum = s.pre_sum + EXCLUDED.pre_sum,
        pre_sum_sq = s.pre_sum_sq + EXCLUDED.pre_sum_sq,
        pre_value_product_sum = s.pre_value_product_sum + EXCLUDED.pre_value_product_sum,
        updates_folded = s.updates_folded + EXCLUDED.updates_folded,
        updated_at = now()
    RETURNING 1
), parked AS (
    INSERT INTO ab_metric_dead_letters
    SELECT c.*, 'folding it would take the ' || b.overflow || ' total of its variant past the cap (2^53 counts, '
                || '1e150 sums): the statistics would overflow', now()
      FROM base_checked b,
           LATERAL (SELECT * FROM claimed WHERE variant_id = b.variant_id AND metric_id IS NULL) c
     WHERE b.overflow IS NOT NULL
    UNION ALL
    SELECT c.*, 'folding it would take the ' || m.overflow || ' total of its metric and variant past the cap '
                || '(2^53 units, 1e150 sums): the statistics would overflow', now()
      FROM metric_checked m,
           LATERAL (SELECT * FROM claimed WHERE metric_id = m.metric_id AND variant_id = m.variant_id) c
     WHERE m.overflow IS NOT NULL
    RETURNING experiment_id
)
SELECT experiment_id, sum(n)::bigint AS updates, max(last_recorded_at) AS last_recorded_at,
       (SELECT count(*) FROM upserted) + (SELECT count(*) FROM metric_upserted) AS variants,
       count(*) FILTER (WHERE n = 0) AS parked
  FROM (SELECT experiment_id, n, last_recorded_at FROM agg
        UNION ALL SELECT experiment_id, 0, NULL FROM parked) folded
 GROUP BY experiment_id;

-- name: fold_pending_relaxed
-- fold_pending with a relaxed commit (the daemon's folder; see RELAXED_COMMIT in worker/db/fold.py).
WITH claimed AS (
    DELETE FROM ab_metric_updates
     WHERE ctid = ANY(ARRAY(SELECT ctid FROM ab_metric_updates ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))
    RETURNING *
), base AS (
    SELECT variant_id, min(experiment_id) AS experiment_id, count(*) AS n, sum(exposures) AS exposures,
           sum(conversions) AS conversions, sum(errors) AS errors,
           coalesce(sum(value_sum), 0) AS value_sum, coalesce(sum(value_sum_sq), 0) AS value_sum_sq,
           ab_sketch_sum(latency_sketch) FILTER (WHERE latency_sketch IS NOT NULL) AS latency_sketch,
           sum(latency_count) AS latency_count,
           coalesce(sum(exposures) FILTER (WHERE pre_sum IS NOT NULL), 0) AS pre_units,
           coalesce(sum(pre_sum), 0) AS pre_sum, coalesce(sum(pre_sum_sq), 0) AS pre_sum_sq,
           coalesce(sum(pre_value_product_sum), 0) AS pre_value_product_sum,
           max(recorded_at) AS last_recorded_at
      FROM claimed WHERE metric_id IS NULL GROUP BY variant_id
), base_checked AS (
    SELECT b.*,
           CASE WHEN coalesce(s.exposures, 0) + b.exposures > 9007199254740992 THEN 'exposures'
                WHEN abs(coalesce(s.value_sum, 0) + b.value_sum) > 1e150::float8 THEN 'value_sum'
                WHEN coalesce(s.value_sum_sq, 0) + b.value_sum_sq > 1e150::float8 THEN 'value_sum_sq'
                WHEN abs(coalesce(s.pre_sum, 0) + b.pre_sum) > 1e150::float8 THEN 'pre_sum'
                WHEN coalesce(s.pre_sum_sq, 0) + b.pre_sum_sq > 1e150::float8 THEN 'pre_sum_sq'
                WHEN abs(coalesce(s.pre_value_product_sum, 0) + b.pre_value_product_sum) > 1e150::float8
                THEN 'pre_value_product_sum'
           END AS overflow
      FROM base b LEFT JOIN ab_variant_stats s ON s.variant_id = b.variant_id
), metric_base AS (
    SELECT metric_id, variant_id, min(experiment_id) AS experiment_id, count(*) AS n, sum(exposures) AS units,
           sum(value_sum) AS value_sum, sum(value_sum_sq) AS value_sum_sq,
           coalesce(sum(denominator_sum), 0) AS denominator_sum,
           coalesce(sum(denominator_sum_sq), 0) AS denominator_sum_sq,
           coalesce(sum(value_denominator_product_sum), 0) AS value_denominator_product_sum,
           coalesce(sum(exposures) FILTER (WHERE pre_sum IS NOT NULL), 0) AS pre_units,
           coalesce(sum(pre_sum), 0) AS pre_sum, coalesce(sum(pre_sum_sq), 0) AS pre_sum_sq,
           coalesce(sum(pre_value_product_sum), 0) AS pre_value_product_sum,
           max(recorded_at) AS last_recorded_at
      FROM claimed WHERE metric_id IS NOT NULL GROUP BY metric_id, variant_id
), metric_checked AS (
    SELECT m.*,
           CASE WHEN coalesce(s.units, 0) + m.units > 9007199254740992 THEN 'units'
                WHEN abs(coalesce(s.value_sum, 0) + m.value_sum) > 1e150::float8 THEN 'value_sum'
                WHEN coalesce(s.value_sum_sq, 0) + m.value_sum_sq > 1e150::float8 THEN 'value_sum_sq'
                WHEN abs(coalesce(s.denominator_sum, 0) + m.denominator_sum) > 1e150::float8 THEN 'denominator_sum'
                WHEN coalesce(s.denominator_sum_sq, 0) + m.denominator_sum_sq > 1e150::float8
                THEN 'denominator_sum_sq'
                WHEN abs(coalesce(s.value_denominator_product_sum, 0) + m.value_denominator_product_sum)
                     > 1e150::float8 THEN 'value_denominator_product_sum'
                WHEN abs(coalesce(s.pre_sum, 0) + m.pre_sum) > 1e150::float8 THEN 'pre_sum'
                WHEN coalesce(s.pre_sum_sq, 0) + m.pre_sum_sq > 1e150::float8 THEN 'pre_sum_sq'
                WHEN abs(coalesce(s.pre_value_product_sum, 0) + m.pre_value_product_sum) > 1e150::float8
                THEN 'pre_value_product_sum'
           END AS overflow
      FROM metric_base m LEFT JOIN ab_metric_stats s ON s.metric_id = m.metric_id AND s.variant_id = m.variant_id
), agg AS (
    SELECT coalesce(b.variant_id, mv.variant_id) AS variant_id,
           coalesce(b.experiment_id, mv.experiment_id) AS experiment_id,
           coalesce(b.n, 0) + coalesce(mv.n, 0) AS n, coalesce(b.exposures, 0) AS exposures,
           coalesce(b.conversions, 0) AS conversions, coalesce(b.errors, 0) AS errors,
           coalesce(b.value_sum, 0) AS value_sum, coalesce(b.value_sum_sq, 0) AS value_sum_sq,
           b.latency_sketch, coalesce(b.latency_count, 0) AS latency_count, coalesce(b.pre_units, 0) AS pre_units,
           coalesce(b.pre_sum, 0) AS pre_sum, coalesce(b.pre_sum_sq, 0) AS pre_sum_sq,
           coalesce(b.pre_value_product_sum, 0) AS pre_value_product_sum,
           greatest(b.last_recorded_at, mv.last_recorded_at) AS last_recorded_at
      FROM (SELECT * FROM base_checked WHERE overflow IS NULL) b
      FULL JOIN (SELECT variant_id, min(experiment_id) AS experiment_id, sum(n) AS n,
                        max(last_recorded_at) AS last_recorded_at
                   FROM metric_checked WHERE overflow IS NULL GROUP BY variant_id) mv ON mv.variant_id = b.variant_id
), upserted AS (
    INSERT INTO ab_variant_stats AS s (variant_id, experiment_id, exposures, conversions, errors, value_sum,
                                      value_sum_sq, latency_sketch, latency_count, pre_units, pre_sum, pre_sum_sq,
                                      pre_value_product_sum, updates_folded, updated_at)
    SELECT variant_id, experiment_id, exposures, conversions, errors, value_sum, value_sum_sq,
           coalesce(latency_sketch, '{}'::jsonb), latency_count, pre_units, pre_sum, pre_sum_sq,
           pre_value_product_sum, n, now()
      FROM agg ORDER BY variant_id
    ON CONFLICT (variant_id) DO UPDATE SET
        exposures = s.exposures + EXCLUDED.exposures,
        conversions = s.conversions + EXCLUDED.conversions,
        errors = s.errors + EXCLUDED.errors,
        value_sum = s.value_sum + EXCLUDED.value_sum,
        value_sum_sq = s.value_sum_sq + EXCLUDED.value_sum_sq,
        latency_sketch = ab_sketch_merge(s.latency_sketch, EXCLUDED.latency_sketch),
        latency_count = s.latency_count + EXCLUDED.latency_count,
        pre_units = s.pre_units + EXCLUDED.pre_units,
        pre_sum = s.pre_sum + EXCLUDED.pre_sum,
        pre_sum_sq = s.pre_sum_sq + EXCLUDED.pre_sum_sq,
        pre_value_product_sum = s.pre_value_product_sum + EXCLUDED.pre_value_product_sum,
        updates_folded = s.updates_folded + EXCLUDED.updates_folded,
        updated_at = now()
    RETURNING 1
), metric_upserted AS (
    INSERT INTO ab_metric_stats AS s (metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq,
                                     denominator_sum, denominator_sum_sq, value_denominator_product_sum, pre_units,
                                     pre_sum, pre_sum_sq, pre_value_product_sum, updates_folded, updated_at)
    SELECT metric_id, variant_id, experiment_id, units, value_sum, value_sum_sq, denominator_sum,
           denominator_sum_sq, value_denominator_product_sum, pre_units, pre_sum, pre_sum_sq, pre_value_product_sum,
           n, now()
      FROM metric_checked WHERE overflow IS NULL ORDER BY metric_id, variant_id
    ON CONFLICT (metric_id, variant_id) DO UPDATE SET
        units = s.units + EXCLUDED.units,
        value_sum = s.value_sum + EXCLUDED.value_sum,
        value_sum_sq = s.value_sum_sq + EXCLUDED.value_sum_sq,
        denominator_sum = s.denominator_sum + EXCLUDED.denominator_sum,
        denominator_sum_sq = s.denominator_sum_sq + EXCLUDED.denominator_sum_sq,
        value_denominator_product_sum = s.value_denominator_product_sum + EXCLUDED.value_denominator_product_sum,
        pre_units = s.pre_units + EXCLUDED.pre_units,
        pre_sum = s.pre_sum + EXCLUDED.pre_sum,
        pre_sum_sq = s.pre_sum_sq + EXCLUDED.pre_sum_sq,
        pre_value_product_sum = s.pre_value_product_sum + EXCLUDED.pre_value_product_sum,
        updates_folded = s.updates_folded + EXCLUDED.updates_folded,
        updated_at = now()
    RETURNING 1
), parked AS (
    INSERT INTO ab_metric_dead_letters
    SELECT c.*, 'folding it would take the ' || b.overflow || ' total of its variant past the cap (2^53 counts, '
                || '1e150 sums): the statistics would overflow', now()
      FROM base_checked b,
           LATERAL (SELECT * FROM claimed WHERE variant_id = b.variant_id AND metric_id IS NULL) c
     WHERE b.overflow IS NOT NULL
    UNION ALL
    SELECT c.*, 'folding it would take the ' || m.overflow || ' total of its metric and variant past the cap '
                || '(2^53 units, 1e150 sums): the statistics would overflow', now()
      FROM metric_checked m,
           LATERAL (SELECT * FROM claimed WHERE metric_id = m.metric_id AND variant_id = m.variant_id) c
     WHERE m.overflow IS NOT NULL
    RETURNING experiment_id
)
SELECT experiment_id, sum(n)::bigint AS updates, max(last_recorded_at) AS last_recorded_at,
       (SELECT count(*) FROM upserted) + (SELECT count(*) FROM metric_upserted) AS variants, set_config('synchronous_commit', 'off', true) AS relaxed,
       count(*) FILTER (WHERE n = 0) AS parked
  FROM (SELECT experiment_id, n, last_recorded_at FROM agg
        UNION ALL SELECT experiment_id, 0, NULL FROM parked) folded
 GROUP BY experiment_id;

-- name: queue_backlog
-- Approximate number of pending metric updates (cheap: no full count on a large queue).
SELECT CASE WHEN (SELECT count(*) FROM (SELECT 1 FROM ab_metric_updates LIMIT 100001) s) <= 100000
            THEN (SELECT count(*) FROM ab_metric_updates)
            ELSE (SELECT reltuples::bigint FROM pg_class WHERE oid = 'ab_metric_updates'::regclass) END;

-- name: experiment_by_name
-- One experiment by name.
SELECT * FROM ab_experiments WHERE name = $1;

-- name: experiment_by_id
-- One experiment by id.
SELECT * FROM ab_experiments WHERE id = $1;

-- name: running_experiments
-- Every running experiment (the scan's input).
SELECT * FROM ab_experiments WHERE status = 'running' ORDER BY id;

-- name: insert_audit
-- Append one audit row.
INSERT INTO ab_promotion_audit_log (actor, action, experiment_id, experiment_name, promotion_id, details)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id;

-- name: promotion_by_id
-- One promotion.
SELECT * FROM experiment_promotions WHERE id = $1;

-- name: pending_rollback_requests
-- Rollbacks asked for with ab_request_rollback that nobody has carried out yet.
SELECT id, experiment_name, rollback_request_reason, rollback_requested_by FROM experiment_promotions
 WHERE rollback_requested_at IS NOT NULL AND rollback_at IS NULL ORDER BY rollback_requested_at;

-- name: experiment_snapshot
-- Everything a decision reads about experiment $1, in one round trip; $2 = critical-alert lookback in seconds.
-- promotion_targets: the notification_configs rows a promotion would be routed over (so that a promotion needs no
-- read of its own). stats_version and read_snapshot say what this read saw (schema/0007): the decision stores them
-- with its result, so that what committed after this statement's snapshot is known to be new, whenever its
-- transaction started. try_lock_snapshot and lock_running_snapshots below share its select list.
-- metrics (schema/0009): the experiment's ab_metrics rows in creation order, each with "sums", variant name -> its
-- ab_metric_stats row (variants without data are left out); NULL when it has none. The variants carry the built-in
-- metric's covariate sums (pre_*; NULL while no exposure sent one).
SELECT e.id, e.name, e.status, e.started_at, e.metric_type, e.priority, e.config, now() AS now,
       ab_stats_version(e.id) AS stats_version, pg_current_snapshot()::text AS read_snapshot,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', v.name, 'is_control', v.is_control, 'weight', v.traffic_weight::float8,
                   'exposures', coalesce(s.exposures, 0), 'conversions', coalesce(s.conversions, 0),
                   'errors', coalesce(s.errors, 0), 'value_sum', coalesce(s.value_sum, 0),
                   'value_sum_sq', coalesce(s.value_sum_sq, 0),
                   'latency_sketch', coalesce(s.latency_sketch, '{}'::jsonb),
                   'pre_units', coalesce(s.pre_units, 0), 'pre_sum', CASE WHEN s.pre_units > 0 THEN s.pre_sum END,
                   'pre_sum_sq', CASE WHEN s.pre_units > 0 THEN s.pre_sum_sq END,
                   'pre_value_product_sum', CASE WHEN s.pre_units > 0 THEN s.pre_value_product_sum END)
                   ORDER BY v.is_control DESC, v.id), '[]'::json)
          FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id
         WHERE v.experiment_id = e.id) AS variants,
       (SELECT p.id FROM experiment_promotions p WHERE p.experiment_id = e.id AND p.rollback_at IS NULL)
           AS active_promotion_id,
       (SELECT coalesce(json_agg(json_build_object('id', a.id, 'message', a.message, 'created_at', a.created_at,
                                                   'global', a.experiment_id IS NULL)
                                 ORDER BY a.created_at DESC), '[]'::json)
          FROM ab_alerts a
         WHERE a.severity = 'critical' AND a.resolved_at IS NULL
           AND (a.experiment_id = e.id OR a.experiment_id IS NULL)
           AND a.created_at >= now() - make_interval(secs => $2)) AS critical_alerts,
       (SELECT count(*) FROM experiment_promotions p WHERE p.rollback_at IS NULL
           AND (p.guard_until > now() OR EXISTS (SELECT 1 FROM experiment_rollouts r WHERE r.promotion_id = p.id
                                                     AND r.state NOT IN ('complete', 'rolled_back'))))
           AS promotions_in_guard_window,
       (SELECT coalesce(json_agg(json_build_object('id', c.id, 'name', c.name, 'channel', c.channel,
                                                   'target', c.target, 'events', c.events,
                                                   'min_priority', c.min_priority) ORDER BY c.id), '[]'::json)
          FROM notification_configs c WHERE c.enabled AND 'promotion.promoted' = ANY (c.events))
           AS promotion_targets,
       (SELECT json_agg(json_build_object(
                   'name', m.name, 'kind', m.kind, 'role', m.role, 'direction', m.direction, 'margin', m.margin,
                   'description', m.description, 'cuped', m.cuped,
                   'sums', (SELECT coalesce(json_object_agg(mv.name, json_build_object(
                                'units', ms.units, 'value_sum', ms.value_sum, 'value_sum_sq', ms.value_sum_sq,
                                'denominator_sum', CASE WHEN m.kind = 'ratio' THEN ms.denominator_sum END,
                                'denominator_sum_sq', CASE WHEN m.kind = 'ratio' THEN ms.denominator_sum_sq END,
                                'value_denominator_product_sum',
                                    CASE WHEN m.kind = 'ratio' THEN ms.value_denominator_product_sum END,
                                'pre_units', ms.pre_units, 'pre_sum', CASE WHEN ms.pre_units > 0 THEN ms.pre_sum END,
                                'pre_sum_sq', CASE WHEN ms.pre_units > 0 THEN ms.pre_sum_sq END,
                                'pre_value_product_sum',
                                    CASE WHEN ms.pre_units > 0 THEN ms.pre_value_product_sum END)), '{}'::json)
                              FROM ab_metric_stats ms JOIN ab_variants mv ON mv.id = ms.variant_id
                             WHERE ms.metric_id = m.id))
                   ORDER BY m.id)
          FROM ab_metrics m WHERE m.experiment_id = e.id) AS metrics
  FROM ab_experiments e WHERE e.id = $1;

-- name: all_open_critical_alerts
-- Unresolved critical alerts raised within the last $1 seconds (the scan's bulk input).
SELECT id, experiment_id, message, created_at FROM ab_alerts
 WHERE severity = 'critical' AND resolved_at IS NULL AND created_at >= now() - make_interval(secs => $1)
 ORDER BY created_at DESC;

-- name: all_active_promotions
-- Every active promotion: experiment id, promotion id, whether still inside its guard window (a ramp still under
-- way counts as inside it).
SELECT experiment_id, id,
       (p.guard_until > now() OR EXISTS (SELECT 1 FROM experiment_rollouts r WHERE r.promotion_id = p.id
                                              AND r.state NOT IN ('complete', 'rolled_back'))) AS in_guard
  FROM experiment_promotions p WHERE rollback_at IS NULL;

-- name: lock_experiment
-- Lock one experiment row until the end of the transaction. NO KEY UPDATE: producers' foreign-key checks (KEY
-- SHARE) never wait for it.
SELECT id, name, status, config, priority FROM ab_experiments WHERE id = $1 FOR NO KEY UPDATE;

-- name: promote_write
-- Everything a promotion writes, in one statement: the promotion row $15 (only when ab_take_promotion_slot, under
-- advisory lock $32, finds fewer than $14 promotions inside their guard window), the winner's weight 100 and the
-- others' 0, status 'promoted', the audit row, the notification outbox rows (one per route: $16..$20 arrays, $21
-- payload, $22 priority, $23 detailed), the last decision ($12) and its history snapshot per treatment ($24..$30
-- arrays, $31 control exposures). $33, $34: the snapshot (text) and statistics version the decision was read in:
-- the guard treats the critical alerts that snapshot could not see as raised after the promotion (schema/0007).
-- $35: the ramp (rollout.mode = ramp, schema/0010) as JSON text, NULL for an instant promotion: {"steps", "holdback",
-- "testShare", "control", "state", "weights"}; the weights are then the first step's instead of 100/0, and the
-- experiment_rollouts row and its first step row are written too, with $10 as the statistics at the step's start.
-- No row back means the concurrency limit was reached and nothing was written. The parameters are built in this
-- order in one place only: worker.db.store.PromotionWrite.params.
WITH p AS (
    INSERT INTO experiment_promotions (id, experiment_id, experiment_name, promoted_variant_name,
                                       control_variant_name, confidence, improvement, method, promoted_by,
                                       previous_weights, baseline_stats, guard_until, decision, decision_snapshot)
    SELECT $15, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11), $12,
           $33::text::pg_snapshot
     -- A ramp still under way holds its slot even once a long step outlasted its guard window (schema/0010):
     -- ab_take_promotion_slot (schema/0005) counts guard windows only, so those ramps come off the limit.
     WHERE ab_take_promotion_slot($32, $14 - (SELECT count(*)::int FROM experiment_promotions lp
                                               JOIN experiment_rollouts lr ON lr.promotion_id = lp.id
                                              WHERE lp.rollback_at IS NULL AND lp.guard_until <= now()
                                                AND lr.state NOT IN ('complete', 'rolled_back')))
    RETURNING id, promoted_at
), w AS (
    UPDATE ab_variants
       SET traffic_weight = CASE WHEN $35::text IS NULL THEN CASE WHEN name = $3 THEN 100 ELSE 0 END
                                 ELSE coalesce(($35::text::jsonb -> 'weights' ->> name)::numeric, 0) END
     WHERE experiment_id = $1 AND EXISTS (SELECT 1 FROM p)
    RETURNING 1
), ro AS (
    INSERT INTO experiment_rollouts (promotion_id, experiment_id, experiment_name, winner_variant, control_variant,
                                     steps, holdback, test_share, step, state, step_stats)
    SELECT p.id, $1, $2, $3, $35::text::jsonb ->> 'control',
           ARRAY(SELECT x::float8 FROM jsonb_array_elements_text($35::text::jsonb -> 'steps') WITH ORDINALITY AS t(x, i)
                  ORDER BY i),
           ($35::text::jsonb ->> 'holdback')::float8, ($35::text::jsonb ->> 'testShare')::float8, 1,
           $35::text::jsonb ->> 'state', $10
      FROM p WHERE $35::text IS NOT NULL
    RETURNING id
), ros AS (
    INSERT INTO experiment_rollout_steps (rollout_id, step, share, kind, stats)
    SELECT ro.id, 1, ($35::text::jsonb -> 'steps' ->> 0)::float8, $35::text::jsonb ->> 'state', $10 FROM ro
    RETURNING 1
), s AS (
    UPDATE ab_experiments SET status = 'promoted' WHERE id = $1 AND EXISTS (SELECT 1 FROM p) RETURNING 1
), a AS (
    INSERT INTO ab_promotion_audit_log (actor, action, experiment_id, experiment_name, promotion_id, details)
    SELECT $8, 'promoted', $1, $2, p.id, $13 FROM p
    RETURNING 1
), o AS (
    INSERT INTO notification_outbox (event, channel, config_id, target_ref, target_label, experiment_name,
                                     promotion_id, priority, payload, action, detailed)
    SELECT 'promotion.promoted', r.channel, r.config_id, r.target_ref, r.target_label, $2, p.id, $22,
           $21::text::jsonb, r.action, $23
      FROM p, unnest($16::text[], $17::bigint[], $18::text[], $19::text[], $20::text[])
              AS r(channel, config_id, target_ref, target_label, action)
    RETURNING 1
), st AS (
    INSERT INTO ab_experiment_state AS st (experiment_id, last_evaluated_at, evaluations, eligible, decision,
                                           evaluated_version, evaluated_snapshot)
    SELECT $1, now(), 1, true, $12, $34::bigint, $33::text::pg_snapshot FROM p
    ON CONFLICT (experiment_id) DO UPDATE SET last_evaluated_at = now(), evaluations = st.evaluations + 1,
        eligible = true, decision = EXCLUDED.decision,
        evaluated_version = EXCLUDED.evaluated_version, evaluated_snapshot = EXCLUDED.evaluated_snapshot
    RETURNING evaluations
), h AS (
    INSERT INTO ab_evaluation_snapshots (experiment_id, variant_name, exposures, control_exposures, lift, ci_low,
                                         ci_high, confidence, eligible)
    SELECT $1, u.*, true
      FROM p, unnest($24::text[], $25::bigint[], $26::bigint[], $27::float8[], $28::float8[], $29::float8[],
                     $30::float8[]) AS u
     WHERE $31::bigint > 0
    RETURNING 1
)
SELECT p.id, p.promoted_at, (SELECT evaluations FROM st) AS evaluations, (SELECT count(*) FROM h) AS snapshots,
       (SELECT id FROM ro) AS rollout_id, (SELECT count(*) FROM ros) AS rollout_steps
  FROM p;

-- name: record_evaluation
-- Remember the last decision ($2 eligible, $3 check data) and, when due, append a history snapshot per treatment
-- ($4..$10 arrays, $11 control exposures): due when there is none yet, the last is $12 seconds old, the control
-- grew by a quarter, or the decision is eligible. $13: commit without waiting for the WAL flush when the stored
-- eligibility does not change (only for a transaction that writes nothing but decisions: see RELAXED_COMMIT in
-- fold.py). $14, $15: the statistics version and the snapshot (text) the decision was read in (NULL: unknown, the
-- experiment stays due). Nothing is written when the stored decision already covers that read (ab_decision_covered:
-- another replica decided on the same statistics and alerts while this one waited for the row) and has the same
-- eligibility (a change of eligibility is always stored: it is what dry-run reports are deduplicated on). Returns the previous
-- eligibility, the evaluation count (NULL: nothing written) and whether a snapshot was added.
WITH prev AS (
    SELECT eligible FROM ab_experiment_state WHERE experiment_id = $1
), up AS (
    INSERT INTO ab_experiment_state AS st (experiment_id, last_evaluated_at, evaluations, eligible, decision,
                                           evaluated_version, evaluated_snapshot)
    VALUES ($1, now(), 1, $2, $3, $14::bigint, $15::text::pg_snapshot)
    ON CONFLICT (experiment_id) DO UPDATE SET last_evaluated_at = now(), evaluations = st.evaluations + 1,
        eligible = EXCLUDED.eligible, decision = EXCLUDED.decision,
        evaluated_version = EXCLUDED.evaluated_version, evaluated_snapshot = EXCLUDED.evaluated_snapshot
     WHERE st.eligible IS DISTINCT FROM EXCLUDED.eligible
        OR NOT ab_decision_covered($1, st.evaluated_version, st.evaluated_snapshot, EXCLUDED.evaluated_version,
                                   EXCLUDED.evaluated_snapshot)
    RETURNING evaluations
), last AS (
    SELECT created_at, control_exposures FROM ab_evaluation_snapshots WHERE experiment_id = $1
     ORDER BY created_at DESC, id DESC LIMIT 1
), ins AS (
    INSERT INTO ab_evaluation_snapshots (experiment_id, variant_name, exposures, control_exposures, lift, ci_low,
                                         ci_high, confidence, eligible)
    SELECT $1, u.*, $2 FROM unnest($4::text[], $5::bigint[], $6::bigint[], $7::float8[], $8::float8[],
                                   $9::float8[], $10::float8[]) AS u
     WHERE $11::bigint > 0 AND EXISTS (SELECT 1 FROM up)
       AND (NOT EXISTS (SELECT 1 FROM last)
            OR (SELECT created_at FROM last) <= now() - make_interval(secs => $12)
            OR $11::bigint >= 1.25 * (SELECT greatest(control_exposures, 1) FROM last)
            OR $2)
    RETURNING 1
)
SELECT (SELECT eligible FROM prev) AS previous, (SELECT evaluations FROM up) AS evaluations,
       (SELECT count(*) FROM ins) AS snapshots,
       CASE WHEN $13 AND (SELECT eligible FROM prev) IS NOT DISTINCT FROM $2
            THEN set_config('synchronous_commit', 'off', true) END AS relaxed;

-- name: thin_snapshots
-- Keep the snapshot history of one experiment bounded.
SELECT ab_thin_evaluation_snapshots($1, $2);

-- name: set_status
-- Change an experiment's status.
UPDATE ab_experiments SET status = $2 WHERE id = $1;

-- name: variants_with_stats_for
-- Variants and folded statistics of the experiments $1, control first; an experiment's statistics version is the
-- sum of its variants' updates_folded (ab_stats_version). The control's row also carries the experiment's metrics
-- (NULL on the other rows, and when it has none), read by the same statement, so in the same snapshot as the
-- version. In arrays, not JSON, for 10,000 experiments at once (worker/db/metric_reads.py reads them):
-- metric_defs text[][]: [id, name, kind, role, direction, margin, description, cuped] per metric, in creation order;
-- metric_sums float8[][]: [metric id, variant id, units, value_sum, value_sum_sq, denominator_sum,
-- denominator_sum_sq, value_denominator_product_sum, pre_units, pre_sum, pre_sum_sq, pre_value_product_sum] per
-- ab_metric_stats row (ids and counts are exact in a float8 below 2^53).
WITH sums AS (
    SELECT ms.experiment_id,
           array_agg(ARRAY[ms.metric_id, ms.variant_id, ms.units, ms.value_sum, ms.value_sum_sq, ms.denominator_sum,
                           ms.denominator_sum_sq, ms.value_denominator_product_sum, ms.pre_units, ms.pre_sum,
                           ms.pre_sum_sq, ms.pre_value_product_sum]::float8[]
                     ORDER BY ms.metric_id, ms.variant_id) AS metric_sums
      FROM ab_metric_stats ms
     WHERE ms.experiment_id = ANY($1::bigint[])
     GROUP BY ms.experiment_id
), defs AS (
    SELECT m.experiment_id,
           array_agg(ARRAY[m.id::text, m.name, m.kind, m.role, m.direction, m.margin::text, m.description, m.cuped]
                     ORDER BY m.id) AS metric_defs
      FROM ab_metrics m
     WHERE m.experiment_id = ANY($1::bigint[])
     GROUP BY m.experiment_id
)
SELECT v.experiment_id, v.id AS variant_id, v.name, v.is_control, v.traffic_weight::float8 AS weight,
       coalesce(s.updates_folded, 0) AS updates_folded,
       coalesce(s.exposures, 0) AS exposures, coalesce(s.conversions, 0) AS conversions,
       coalesce(s.errors, 0) AS errors, coalesce(s.value_sum, 0) AS value_sum,
       coalesce(s.value_sum_sq, 0) AS value_sum_sq,
       nullif(s.latency_sketch, '{}'::jsonb) AS latency_sketch,  -- NULL when empty: nothing to decode
       coalesce(s.pre_units, 0) AS pre_units, CASE WHEN s.pre_units > 0 THEN s.pre_sum END AS pre_sum,
       CASE WHEN s.pre_units > 0 THEN s.pre_sum_sq END AS pre_sum_sq,
       CASE WHEN s.pre_units > 0 THEN s.pre_value_product_sum END AS pre_value_product_sum,
       CASE WHEN v.is_control THEN d.metric_defs END AS metric_defs,
       CASE WHEN v.is_control THEN ms.metric_sums END AS metric_sums
  FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id
  LEFT JOIN defs d ON d.experiment_id = v.experiment_id
  LEFT JOIN sums ms ON ms.experiment_id = v.experiment_id
 WHERE v.experiment_id = ANY($1::bigint[])
 ORDER BY v.experiment_id, v.is_control DESC, v.id;

-- name: record_evaluations_bulk
-- record_evaluation for many experiments: states ($1 ids, $2 eligible, $3 check data) and the history snapshots
-- that are due ($4.. one element per treatment; $13 = minimum seconds between snapshots; $14 = relaxed commit, as
-- in record_evaluation: when no stored eligibility changes; $15, $16 = per experiment, the statistics version and
-- the snapshot (text) its decision was read in, as in record_evaluation: nothing is written for an experiment whose
-- stored decision covers that read). Returns the experiments written, each with whether its history should be
-- thinned now.
WITH prev AS (
    SELECT experiment_id, eligible FROM ab_experiment_state WHERE experiment_id = ANY($1::bigint[])
), up AS (
    INSERT INTO ab_experiment_state AS st (experiment_id, last_evaluated_at, evaluations, eligible, decision,
                                           evaluated_version, evaluated_snapshot)
    SELECT id, now(), 1, el, d, ver, snap::pg_snapshot
      FROM unnest($1::bigint[], $2::boolean[], $3::jsonb[], $15::bigint[], $16::text[]) AS u(id, el, d, ver, snap)
    ON CONFLICT (experiment_id) DO UPDATE SET last_evaluated_at = now(), evaluations = st.evaluations + 1,
        eligible = EXCLUDED.eligible, decision = EXCLUDED.decision,
        evaluated_version = EXCLUDED.evaluated_version, evaluated_snapshot = EXCLUDED.evaluated_snapshot
     WHERE st.eligible IS DISTINCT FROM EXCLUDED.eligible
        OR NOT ab_decision_covered(st.experiment_id, st.evaluated_version, st.evaluated_snapshot,
                                   EXCLUDED.evaluated_version, EXCLUDED.evaluated_snapshot)
    RETURNING experiment_id, evaluations
), ins AS (
    INSERT INTO ab_evaluation_snapshots (experiment_id, variant_name, exposures, control_exposures, lift, ci_low,
                                         ci_high, confidence, eligible)
    SELECT u.* FROM unnest($4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::float8[], $9::float8[],
                           $10::float8[], $11::float8[], $12::boolean[])
                    AS u(experiment_id, variant_name, exposures, control_exposures, lift, ci_low, ci_high,
                         confidence, eligible)
      LEFT JOIN LATERAL (SELECT s.created_at, s.control_exposures FROM ab_evaluation_snapshots s
                          WHERE s.experiment_id = u.experiment_id ORDER BY s.created_at DESC, s.id DESC LIMIT 1)
           AS last ON true
     WHERE u.control_exposures > 0 AND u.experiment_id IN (SELECT experiment_id FROM up)
       AND (last.created_at IS NULL OR last.created_at <= now() - make_interval(secs => $13)
            OR u.control_exposures >= 1.25 * greatest(last.control_exposures, 1) OR u.eligible)
    RETURNING experiment_id
)
SELECT up.experiment_id,
       up.evaluations % 25 = 0 AND EXISTS (SELECT 1 FROM ins WHERE ins.experiment_id = up.experiment_id) AS thin
  FROM up
UNION ALL
SELECT NULL, NULL WHERE CASE WHEN $14 AND NOT EXISTS (
                           SELECT 1 FROM unnest($1::bigint[], $2::boolean[]) AS u(id, el)
                             LEFT JOIN prev ON prev.experiment_id = u.id
                            WHERE prev.eligible IS DISTINCT FROM u.el)
                       THEN set_config('synchronous_commit', 'off', true) IS NULL ELSE false END;

-- name: covered_states
-- Of the experiments $1, read at the statistics versions $2 in the snapshot $3 (text): those whose stored decision
-- covers that read (ab_decision_covered, schema/0007), with the stored eligibility. record_evaluations_bulk would
-- write nothing for one of them whose eligibility is unchanged, so a scan need not build or send its decision.
SELECT st.experiment_id, st.eligible
  FROM unnest($1::bigint[], $2::bigint[]) AS u(id, ver)
  JOIN ab_experiment_state st ON st.experiment_id = u.id
 WHERE ab_decision_covered(st.experiment_id, st.evaluated_version, st.evaluated_snapshot, u.ver,
                           $3::text::pg_snapshot);

-- name: fresh_states
-- Experiments among $1 whose last decision was stored less than $2 seconds ago, with its eligibility.
SELECT experiment_id, eligible FROM ab_experiment_state
 WHERE experiment_id = ANY($1::bigint[]) AND last_evaluated_at > now() - make_interval(secs => $2::float8);

-- name: unlocked_experiments
-- Why the daemon's lock-and-read returned no row for some of the experiments $1: not running (skipped), nothing
-- new since the last stored decision (ab_evaluation_due false: fresh), or held by another transaction (busy).
SELECT id, name, status, ab_evaluation_due(id) AS due FROM ab_experiments WHERE id = ANY($1::bigint[]);

-- name: current_snapshot
-- The statement's snapshot (text): taken before the scan's reads, so every alert visible in it was seen by them.
SELECT now() AS now, pg_current_snapshot()::text AS snapshot;

-- name: try_lock_snapshot
-- experiment_snapshot, locked: the daemon's evaluation locks the experiment and reads its snapshot in one round
-- trip; a row another transaction holds is skipped (no row back). A running experiment whose stored decision
-- already covers what this statement sees (ab_evaluation_due, schema/0007) is neither locked nor read: the replicas
-- that hear the same NOTIFY evaluate a change once between them. The filter runs before the row lock, so such a
-- check never makes another replica's evaluation wait or come back busy. The select list must stay that of
-- experiment_snapshot (tests/test_sql_loader.py checks it).
SELECT e.id, e.name, e.status, e.started_at, e.metric_type, e.priority, e.config, now() AS now,
       ab_stats_version(e.id) AS stats_version, pg_current_snapshot()::text AS read_snapshot,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', v.name, 'is_control', v.is_control, 'weight', v.traffic_weight::float8,
                   'exposures', coalesce(s.exposures, 0), 'conversions', coalesce(s.conversions, 0),
                   'errors', coalesce(s.errors, 0), 'value_sum', coalesce(s.value_sum, 0),
                   'value_sum_sq', coalesce(s.value_sum_sq, 0),
                   'latency_sketch', coalesce(s.latency_sketch, '{}'::jsonb),
                   'pre_units', coalesce(s.pre_units, 0), 'pre_sum', CASE WHEN s.pre_units > 0 THEN s.pre_sum END,
                   'pre_sum_sq', CASE WHEN s.pre_units > 0 THEN s.pre_sum_sq END,
                   'pre_value_product_sum', CASE WHEN s.pre_units > 0 THEN s.pre_value_product_sum END)
                   ORDER BY v.is_control DESC, v.id), '[]'::json)
          FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id
         WHERE v.experiment_id = e.id) AS variants,
       (SELECT p.id FROM experiment_promotions p WHERE p.experiment_id = e.id AND p.rollback_at IS NULL)
           AS active_promotion_id,
       (SELECT coalesce(json_agg(json_build_object('id', a.id, 'message', a.message, 'created_at', a.created_at,
                                                   'global', a.experiment_id IS NULL)
                                 ORDER BY a.created_at DESC), '[]'::json)
          FROM ab_alerts a
         WHERE a.severity = 'critical' AND a.resolved_at IS NULL
           AND (a.experiment_id = e.id OR a.experiment_id IS NULL)
           AND a.created_at >= now() - make_interval(secs => $2)) AS critical_alerts,
       (SELECT count(*) FROM experiment_promotions p WHERE p.rollback_at IS NULL
           AND (p.guard_until > now() OR EXISTS (SELECT 1 FROM experiment_rollouts r WHERE r.promotion_id = p.id
                                                     AND r.state NOT IN ('complete', 'rolled_back'))))
           AS promotions_in_guard_window,
       (SELECT coalesce(json_agg(json_build_object('id', c.id, 'name', c.name, 'channel', c.channel,
                                                   'target', c.target, 'events', c.events,
                                                   'min_priority', c.min_priority) ORDER BY c.id), '[]'::json)
          FROM notification_configs c WHERE c.enabled AND 'promotion.promoted' = ANY (c.events))
           AS promotion_targets,
       (SELECT json_agg(json_build_object(
                   'name', m.name, 'kind', m.kind, 'role', m.role, 'direction', m.direction, 'margin', m.margin,
                   'description', m.description, 'cuped', m.cuped,
                   'sums', (SELECT coalesce(json_object_agg(mv.name, json_build_object(
                                'units', ms.units, 'value_sum', ms.value_sum, 'value_sum_sq', ms.value_sum_sq,
                                'denominator_sum', CASE WHEN m.kind = 'ratio' THEN ms.denominator_sum END,
                                'denominator_sum_sq', CASE WHEN m.kind = 'ratio' THEN ms.denominator_sum_sq END,
                                'value_denominator_product_sum',
                                    CASE WHEN m.kind = 'ratio' THEN ms.value_denominator_product_sum END,
                                'pre_units', ms.pre_units, 'pre_sum', CASE WHEN ms.pre_units > 0 THEN ms.pre_sum END,
                                'pre_sum_sq', CASE WHEN ms.pre_units > 0 THEN ms.pre_sum_sq END,
                                'pre_value_product_sum',
                                    CASE WHEN ms.pre_units > 0 THEN ms.pre_value_product_sum END)), '{}'::json)
                              FROM ab_metric_stats ms JOIN ab_variants mv ON mv.id = ms.variant_id
                             WHERE ms.metric_id = m.id))
                   ORDER BY m.id)
          FROM ab_metrics m WHERE m.experiment_id = e.id) AS metrics
  FROM ab_experiments e WHERE e.id = $1 AND (e.status <> 'running' OR ab_evaluation_due(e.id))
   FOR NO KEY UPDATE OF e SKIP LOCKED;

-- name: lock_running_snapshots
-- The same for the running experiments among $1 (the daemon's batch evaluation).
SELECT e.id, e.name, e.status, e.started_at, e.metric_type, e.priority, e.config, now() AS now,
       ab_stats_version(e.id) AS stats_version, pg_current_snapshot()::text AS read_snapshot,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', v.name, 'is_control', v.is_control, 'weight', v.traffic_weight::float8,
                   'exposures', coalesce(s.exposures, 0), 'conversions', coalesce(s.conversions, 0),
                   'errors', coalesce(s.errors, 0), 'value_sum', coalesce(s.value_sum, 0),
                   'value_sum_sq', coalesce(s.value_sum_sq, 0),
                   'latency_sketch', coalesce(s.latency_sketch, '{}'::jsonb),
                   'pre_units', coalesce(s.pre_units, 0), 'pre_sum', CASE WHEN s.pre_units > 0 THEN s.pre_sum END,
                   'pre_sum_sq', CASE WHEN s.pre_units > 0 THEN s.pre_sum_sq END,
                   'pre_value_product_sum', CASE WHEN s.pre_units > 0 THEN s.pre_value_product_sum END)
                   ORDER BY v.is_control DESC, v.id), '[]'::json)
          FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id
         WHERE v.experiment_id = e.id) AS variants,
       (SELECT p.id FROM experiment_promotions p WHERE p.experiment_id = e.id AND p.rollback_at IS NULL)
           AS active_promotion_id,
       (SELECT coalesce(json_agg(json_build_object('id', a.id, 'message', a.message, 'created_at', a.created_at,
                                                   'global', a.experiment_id IS NULL)
                                 ORDER BY a.created_at DESC), '[]'::json)
          FROM ab_alerts a
         WHERE a.severity = 'critical' AND a.resolved_at IS NULL
           AND (a.experiment_id = e.id OR a.experiment_id IS NULL)
           AND a.created_at >= now() - make_interval(secs => $2)) AS critical_alerts,
       (SELECT count(*) FROM experiment_promotions p WHERE p.rollback_at IS NULL
           AND (p.guard_until > now() OR EXISTS (SELECT 1 FROM experiment_rollouts r WHERE r.promotion_id = p.id
                                                     AND r.state NOT IN ('complete', 'rolled_back'))))
           AS promotions_in_guard_window,
       (SELECT coalesce(json_agg(json_build_object('id', c.id, 'name', c.name, 'channel', c.channel,
                                                   'target', c.target, 'events', c.events,
                                                   'min_priority', c.min_priority) ORDER BY c.id), '[]'::json)
          FROM notification_configs c WHERE c.enabled AND 'promotion.promoted' = ANY (c.events))
           AS promotion_targets,
       (SELECT json_agg(json_build_object(
                   'name', m.name, 'kind', m.kind, 'role', m.role, 'direction', m.direction, 'margin', m.margin,
                   'description', m.description, 'cuped', m.cuped,
                   'sums', (SELECT coalesce(json_object_agg(mv.name, json_build_object(
                                'units', ms.units, 'value_sum', ms.value_sum, 'value_sum_sq', ms.value_sum_sq,
                                'denominator_sum', CASE WHEN m.kind = 'ratio' THEN ms.denominator_sum END,
                                'denominator_sum_sq', CASE WHEN m.kind = 'ratio' THEN ms.denominator_sum_sq END,
                                'value_denominator_product_sum',
                                    CASE WHEN m.kind = 'ratio' THEN ms.value_denominator_product_sum END,
                                'pre_units', ms.pre_units, 'pre_sum', CASE WHEN ms.pre_units > 0 THEN ms.pre_sum END,
                                'pre_sum_sq', CASE WHEN ms.pre_units > 0 THEN ms.pre_sum_sq END,
                                'pre_value_product_sum',
                                    CASE WHEN ms.pre_units > 0 THEN ms.pre_value_product_sum END)), '{}'::json)
                              FROM ab_metric_stats ms JOIN ab_variants mv ON mv.id = ms.variant_id
                             WHERE ms.metric_id = m.id))
                   ORDER BY m.id)
          FROM ab_metrics m WHERE m.experiment_id = e.id) AS metrics
  FROM ab_experiments e WHERE e.id = ANY($1::bigint[]) AND e.status = 'running' AND ab_evaluation_due(e.id)
 ORDER BY e.id FOR NO KEY UPDATE OF e SKIP LOCKED;

-- name: database_writable
-- /readyz: the server accepts writes (a hot standby after a failover, or default_transaction_read_only, does not).
SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off';

-- name: metric_definitions
-- The ab_metrics rows of experiment $1 in creation order, each with its units per variant (variant name -> units,
-- from ab_metric_stats; {} before any was folded).
SELECT m.id, m.name, m.kind, m.role, m.direction, m.margin, m.description, m.cuped, m.created_at, m.updated_at,
       (SELECT coalesce(json_object_agg(v.name, ms.units ORDER BY v.id), '{}'::json)
          FROM ab_metric_stats ms JOIN ab_variants v ON v.id = ms.variant_id WHERE ms.metric_id = m.id) AS units
  FROM ab_metrics m WHERE m.experiment_id = $1
 ORDER BY m.id;

-- name: builtin_metric_units
-- The built-in metric's units per variant of experiment $1 (its exposures, from ab_variant_stats).
SELECT coalesce(json_object_agg(v.name, coalesce(s.exposures, 0) ORDER BY v.id), '{}'::json)
  FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id WHERE v.experiment_id = $1;

-- name: insert_metric
-- Add one ab_metrics row to experiment $1 ($2 name, $3 kind, $4 role, $5 direction, $6 margin, $7 description,
-- $8 cuped); the table's trigger refuses a bad definition with a message and a hint.
INSERT INTO ab_metrics (experiment_id, name, kind, role, direction, margin, description, cuped)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id, name, kind, role, direction, margin, description, cuped, created_at, updated_at;

-- name: delete_metric_updates
-- The queued updates of metric $2 of experiment $1, deleted before the metric itself (delete_metric) in the order the
-- fold takes its locks: a fold claims queue rows first and then needs the metric row (a FOR KEY SHARE, by the foreign
-- key of ab_metric_stats), so deleting the metric row first and its queue rows by the cascade deadlocks with a fold
-- holding some of them. The metric row is first locked FOR NO KEY UPDATE: that stops new updates (ab_record_metric
-- takes FOR SHARE on it) until the removal commits, yet lets a fold's FOR KEY SHARE through; then a fold holding
-- queued updates of the metric is waited for here, and none can arrive before delete_metric.
WITH m AS (
    SELECT id FROM ab_metrics WHERE experiment_id = $1 AND name = $2 FOR NO KEY UPDATE
)
DELETE FROM ab_metric_updates u USING m WHERE u.metric_id = m.id;

-- name: delete_metric
-- Remove the metric $2 of experiment $1 with its statistics (ON DELETE CASCADE).
DELETE FROM ab_metrics m WHERE m.experiment_id = $1 AND m.name = $2
RETURNING id, name, kind, role, direction, margin, description, cuped, created_at, updated_at;
