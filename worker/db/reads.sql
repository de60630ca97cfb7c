-- The read side of the HTTP API and the dashboard: each query sits under a "-- name: NAME" header followed by a
-- one-line description, and worker/db/reads.py (the read service) is the only module that runs them.
-- Read-only, and values always go through $n parameters.

-- name: experiments_page
-- Experiments with live per-variant statistics, last decision and active promotion; $1 status or NULL,
-- $2 name or NULL, $3 limit, $4 offset. Newest first. pending_updates (not folded yet) is capped at 10,001.
SELECT e.id, e.name, e.status, e.metric_type, e.priority, e.description, e.config, e.started_at, e.created_at,
       e.updated_at,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', v.name, 'is_control', v.is_control, 'weight', v.traffic_weight::float8,
                   'exposures', coalesce(s.exposures, 0), 'conversions', coalesce(s.conversions, 0),
                   'errors', coalesce(s.errors, 0), 'value_sum', coalesce(s.value_sum, 0),
                   'latency_sketch', coalesce(s.latency_sketch, '{}'::jsonb),
                   'latency_count', coalesce(s.latency_count, 0), 'updated_at', s.updated_at)
                   ORDER BY v.is_control DESC, v.id), '[]'::json)
          FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id
         WHERE v.experiment_id = e.id) AS variants,
       st.last_evaluated_at, st.evaluations, st.eligible, st.decision,
       (SELECT p.id FROM experiment_promotions p WHERE p.experiment_id = e.id AND p.rollback_at IS NULL)
           AS active_promotion_id,
       (SELECT count(*) FROM (SELECT 1 FROM ab_metric_updates u WHERE u.experiment_id = e.id LIMIT 10001) q)
           AS pending_updates
  FROM ab_experiments e LEFT JOIN ab_experiment_state st ON st.experiment_id = e.id
 WHERE ($1::text IS NULL OR e.status = $1) AND ($2::text IS NULL OR e.name = $2)
 ORDER BY e.id DESC
 LIMIT $3 OFFSET $4;

-- name: experiments_count
-- Number of experiments matching experiments_page's filters ($1 status or NULL).
SELECT count(*) FROM ab_experiments e WHERE ($1::text IS NULL OR e.status = $1);

-- name: experiments_overview
-- The dashboard's list: experiments (every one, or only the one named $2) with their variants' folded statistics,
-- last decision and active promotion (at most $1), running ones first. Leaves out experiments_page's config,
-- latency sketches and pending count, which the dashboard does not show.
SELECT e.id, e.name, e.status, e.priority, e.metric_type, e.started_at, e.description,
       s.last_evaluated_at, s.evaluations, s.eligible, s.decision,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'name', v.name, 'is_control', v.is_control, 'weight', v.traffic_weight::float8,
                   'exposures', coalesce(vs.exposures, 0), 'conversions', coalesce(vs.conversions, 0),
                   'errors', coalesce(vs.errors, 0), 'value_sum', coalesce(vs.value_sum, 0))
                 ORDER BY v.is_control DESC, v.id), '[]'::jsonb)
          FROM ab_variants v LEFT JOIN ab_variant_stats vs ON vs.variant_id = v.id
         WHERE v.experiment_id = e.id) AS variants,
       (SELECT p.id FROM experiment_promotions p WHERE p.experiment_id = e.id AND p.rollback_at IS NULL) AS active_promotion_id
  FROM ab_experiments e
  LEFT JOIN ab_experiment_state s ON s.experiment_id = e.id
 WHERE $2::text IS NULL OR e.name = $2::text
 ORDER BY CASE e.status WHEN 'running' THEN 0 WHEN 'promoted' THEN 1 WHEN 'paused' THEN 2 WHEN 'draft' THEN 3
                        ELSE 4 END, e.name
 LIMIT $1;

-- name: experiment_summary
-- Experiments per status, and how many of them the last decision found eligible.
SELECT e.status, count(*) AS experiments, count(*) FILTER (WHERE s.eligible) AS eligible
  FROM ab_experiments e
  LEFT JOIN ab_experiment_state s ON s.experiment_id = e.id
 GROUP BY e.status
 ORDER BY CASE e.status WHEN 'running' THEN 0 WHEN 'promoted' THEN 1 WHEN 'paused' THEN 2 WHEN 'draft' THEN 3
                        ELSE 4 END, e.status;

-- name: evaluation_history
-- The thinned evaluation snapshots of experiment $1, oldest first (at most $2 rows; NULL: all of them, which
-- ab_thin_evaluation_snapshots keeps bounded).
SELECT created_at, variant_name, exposures, control_exposures, lift, ci_low, ci_high, confidence, eligible
  FROM ab_evaluation_snapshots WHERE experiment_id = $1
 ORDER BY created_at, id
 LIMIT $2;

-- name: experiment_promotions
-- Promotions of experiment $1 (by id), newest first.
SELECT id, experiment_id, experiment_name, promoted_variant_name, control_variant_name, confidence, improvement,
       method, promoted_at, promoted_by, guard_until, rollback_requested_at, rollback_requested_by,
       rollback_request_reason, rollback_at, rollback_reason, rolled_back_by
  FROM experiment_promotions
 WHERE experiment_id = $1
 ORDER BY promoted_at DESC, id;

-- name: promotions_page
-- Promotions, newest first; $1 'active', 'rolled_back' or NULL for both, $2 experiment name or NULL,
-- $3 limit, $4 offset. Leaves out the large baseline_stats and decision columns.
SELECT id, experiment_id, experiment_name, promoted_variant_name, control_variant_name, confidence, improvement,
       method, promoted_at, promoted_by, previous_weights, guard_until, rollback_requested_at,
       rollback_requested_by, rollback_request_reason, rollback_at, rollback_reason, rolled_back_by
  FROM experiment_promotions
 WHERE ($1::text IS NULL OR ($1 = 'active') = (rollback_at IS NULL))
   AND ($2::text IS NULL OR experiment_name = $2)
 ORDER BY promoted_at DESC, id
 LIMIT $3 OFFSET $4;

-- name: promotions_count
-- Number of promotions matching promotions_page's filters ($1, $2).
SELECT count(*) FROM experiment_promotions
 WHERE ($1::text IS NULL OR ($1 = 'active') = (rollback_at IS NULL))
   AND ($2::text IS NULL OR experiment_name = $2);

-- name: rolled_back_promotions
-- Rolled-back promotions, most recent rollback first, at most $1.
SELECT id, experiment_id, experiment_name, promoted_variant_name, control_variant_name, confidence, improvement,
       method, promoted_at, promoted_by, rollback_at, rollback_reason, rolled_back_by
  FROM experiment_promotions
 WHERE rollback_at IS NOT NULL
 ORDER BY rollback_at DESC, id
 LIMIT $1;

-- name: promotion_stats
-- The reporting function's one row for the last $1 days.
SELECT * FROM get_promotion_stats($1);

-- name: promotions_per_day
-- Promotions and rollbacks per calendar day for the last $1 days, oldest first.
SELECT day, promotions, rollbacks FROM get_promotions_per_day($1);

-- name: audit_page
-- Audit rows, newest first; $1 experiment name or NULL, $2 action or NULL, $3 limit, $4 offset.
SELECT id, created_at, actor, action, experiment_id, experiment_name, promotion_id, details
  FROM ab_promotion_audit_log
 WHERE ($1::text IS NULL OR experiment_name = $1) AND ($2::text IS NULL OR action = $2)
 ORDER BY id DESC
 LIMIT $3 OFFSET $4;

-- name: audit_count
-- Number of audit rows matching audit_page's filters ($1, $2).
SELECT count(*) FROM ab_promotion_audit_log
 WHERE ($1::text IS NULL OR experiment_name = $1) AND ($2::text IS NULL OR action = $2);

-- name: experiment_alerts
-- Unresolved alerts of experiment $1 and global ones, newest first (at most $2).
SELECT id, experiment_id IS NULL AS global, severity, message, created_at
  FROM ab_alerts
 WHERE resolved_at IS NULL AND (experiment_id = $1 OR experiment_id IS NULL)
 ORDER BY created_at DESC, id DESC
 LIMIT $2;
