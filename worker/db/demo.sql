-- The demo's own statements (worker/demo.py, `autopromote demo`), each under a "-- name: NAME" header.
-- Loaded once by worker/db/sql.py (DEMO); values go through $n parameters.

-- name: create_experiment
-- A demo experiment, running for two days already.
INSERT INTO ab_experiments (name, status, started_at, description, config)
     VALUES ($1, 'running', now() - interval '2 days', $2, $3) RETURNING id;

-- name: create_mean_experiment
-- A demo experiment on a mean metric (the CUPED twins), running for two days already.
INSERT INTO ab_experiments (name, status, started_at, description, config, metric_type)
     VALUES ($1, 'running', now() - interval '2 days', $2, $3, 'mean') RETURNING id;

-- name: create_variant
-- One arm of a demo experiment.
INSERT INTO ab_variants (experiment_id, name, is_control, traffic_weight) VALUES ($1, $2, $3, $4);

-- name: create_guardrail
-- A demo experiment's revenue guardrail: a mean metric that may be at most $3 (relative) worse.
INSERT INTO ab_metrics (experiment_id, name, kind, role, direction, margin, description)
     VALUES ($1, $2, 'mean', 'guardrail', 'increase', $3, $4);

-- name: record_metrics
-- The simulated producers' writes.
SELECT ab_record_metrics($1, $2, $3, $4, $5, $6);

-- name: record_metric
-- The simulated producers' writes of another metric: units, Σx, Σx².
SELECT ab_record_metric($1, $2, $3, $4, $5, $6);

-- name: record_metrics_covariate
-- The CUPED twins' writes: order value sums, and for the CUPED one each user's pre-exposure value (else NULLs).
SELECT ab_record_metrics(experiment_name => $1, variant_name => $2, exposures => $3, conversions => 0,
                         value_sum => $4, value_sum_sq => $5,
                         pre_sum => $6, pre_sum_sq => $7, pre_value_product_sum => $8);

-- name: promotions_to_roll_back
-- Active promotions of the experiments $1 that no one has asked to roll back yet, with their age.
SELECT id, experiment_name, extract(epoch FROM now() - promoted_at) AS age FROM experiment_promotions
 WHERE experiment_name = ANY($1::text[]) AND rollback_at IS NULL AND rollback_requested_at IS NULL;

-- name: request_rollback
-- What an operator would run from psql.
SELECT ab_request_rollback($1, $2, 'demo-operator');

-- name: status
-- One line per experiment for the demo's table: exposures per variant, last decision, last promotion (with the
-- decision it was made on), its ramp.
SELECT e.name, e.status,
       coalesce((SELECT json_agg(json_build_object('name', v.name, 'n', coalesce(s.exposures, 0)) ORDER BY v.id)
                   FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id
                  WHERE v.experiment_id = e.id), '[]'::json) AS variants,
       st.decision,
       (SELECT json_build_object('variant', p.promoted_variant_name, 'confidence', p.confidence,
                                 'improvement', p.improvement, 'rollback_reason', p.rollback_reason,
                                 'rolled_back_by', p.rolled_back_by, 'decision', p.decision)
          FROM experiment_promotions p WHERE p.experiment_id = e.id ORDER BY p.promoted_at DESC LIMIT 1) AS promotion,
       (SELECT json_build_object('state', r.state, 'step', r.step, 'steps', r.steps)
          FROM experiment_rollouts r WHERE r.experiment_id = e.id ORDER BY r.created_at DESC LIMIT 1) AS rollout
  FROM ab_experiments e LEFT JOIN ab_experiment_state st ON st.experiment_id = e.id
 ORDER BY e.id;
