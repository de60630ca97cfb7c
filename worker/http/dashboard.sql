-- Dashboard reads. Each query sits under a `-- name: <name>` header followed by a one-line description;
-- worker/http/dashboard.py loads them once. Read-only, and values always go through $n parameters.

-- name: experiments_overview
-- Experiments (every one, or only the one named $2) with their variants' folded statistics, last decision and
-- active promotion (at most $1): the overview list, an experiment card and the experiment page.
SELECT e.id, e.name, e.status, e.priority, e.metric_type, e.started_at, e.description,
       s.last_evaluated_at, s.evaluations, s.eligible, s.decision,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'name', v.name, 'isControl', v.is_control, 'weight', v.traffic_weight,
                   'exposures', coalesce(vs.exposures, 0), 'conversions', coalesce(vs.conversions, 0),
                   'errors', coalesce(vs.errors, 0), 'valueSum', coalesce(vs.value_sum, 0))
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

-- name: evaluation_snapshots
-- The thinned evaluation history of experiment $1, oldest first (bounded by ab_thin_evaluation_snapshots).
SELECT created_at, variant_name, exposures, control_exposures, lift, ci_low, ci_high, confidence, eligible
  FROM ab_evaluation_snapshots
 WHERE experiment_id = $1
 ORDER BY created_at, id;

-- name: experiment_promotions
-- Promotions of experiment $1, newest first.
SELECT id, promoted_variant_name, control_variant_name, confidence, improvement, method, promoted_at, promoted_by,
       guard_until, rollback_requested_at, rollback_requested_by, rollback_request_reason,
       rollback_at, rollback_reason, rolled_back_by
  FROM experiment_promotions
 WHERE experiment_id = $1
 ORDER BY promoted_at DESC, id;

-- name: experiment_audit
-- The newest $2 audit rows of experiment $1 (by name: the log outlives a deleted experiment).
SELECT id, created_at, actor, action, promotion_id, details
  FROM ab_promotion_audit_log
 WHERE experiment_name = $1
 ORDER BY id DESC
 LIMIT $2;

-- name: promotion_stats
-- get_promotion_stats() over the last $1 days.
SELECT * FROM get_promotion_stats($1);

-- name: promotions_per_day
-- get_promotions_per_day() over the last $1 days, oldest first.
SELECT day, promotions, rollbacks FROM get_promotions_per_day($1);

-- name: active_promotions
-- Promotions not rolled back, newest first, at most $1.
SELECT id, experiment_name, promoted_variant_name, control_variant_name, confidence, improvement, promoted_at,
       promoted_by, guard_until, rollback_requested_at, rollback_requested_by, rollback_request_reason
  FROM experiment_promotions
 WHERE rollback_at IS NULL
 ORDER BY promoted_at DESC, id
 LIMIT $1;

-- name: rolled_back_promotions
-- Rolled-back promotions, most recent rollback first, at most $1.
SELECT id, experiment_name, promoted_variant_name, confidence, improvement, promoted_at, promoted_by,
       rollback_at, rollback_reason, rolled_back_by
  FROM experiment_promotions
 WHERE rollback_at IS NOT NULL
 ORDER BY rollback_at DESC, id
 LIMIT $1;
