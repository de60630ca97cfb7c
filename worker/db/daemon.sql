-- The long-running worker's own queries (worker/daemon.py, guard.py, scanner.py), each under a "-- name: NAME"
-- header with a one-line description. Loaded once by worker/db/sql.py (DQ); values go through $n parameters.

-- name: stale_experiments
-- Running experiments whose statistics changed since their last evaluation: the durable trace of a wake-up lost
-- between a committed fold and its evaluation (a crash, a kill -9, another replica dying). "Changed" compares the
-- statistics version (ab_stats_version: every fold raises it) with the one the last evaluation read its statistics
-- at, not timestamps: a fold whose transaction started before an evaluation and committed after its snapshot has
-- an older updated_at than the evaluation's now(), yet the evaluation never saw it (schema/0007).
SELECT e.id
  FROM ab_experiments e
  LEFT JOIN ab_experiment_state st ON st.experiment_id = e.id
 WHERE e.status = 'running'
   AND (ab_stats_version(e.id) IS DISTINCT FROM coalesce(st.evaluated_version, CASE WHEN st.experiment_id IS NULL
                                                                                 THEN 0 END)
        -- a metric definition changed that the last evaluation could not see (schema/0009)
        OR (e.metrics_changed_xact IS NOT NULL AND st.evaluated_snapshot IS NOT NULL
            AND NOT pg_visible_in_snapshot(e.metrics_changed_xact, st.evaluated_snapshot)))
 ORDER BY e.id;

-- name: guarded_promotions
-- Active promotions inside their guard window (all, or those of the experiments in $1), with everything the guard
-- reads: the baseline, the current per-variant totals, critical alerts raised since, breaches already reported.
-- "Raised since" = written by a transaction the promotion's decision snapshot could not see (schema/0007), not
-- created_at >= promoted_at: an alert whose transaction began before the promotion and committed after its
-- snapshot has the older created_at, and was seen by neither the decision nor a timestamp comparison. Promotions
-- written before 0007 have no snapshot and keep the timestamp rule.
SELECT p.id, p.experiment_id, p.experiment_name, p.promoted_variant_name, p.control_variant_name, p.promoted_at,
       p.guard_until, p.confidence, p.improvement, p.method, p.baseline_stats, e.config, e.priority, now() AS now,
       (SELECT coalesce(json_object_agg(v.name, json_build_object(
                   'exposures', coalesce(s.exposures, 0), 'conversions', coalesce(s.conversions, 0),
                   'errors', coalesce(s.errors, 0), 'valueSum', coalesce(s.value_sum, 0),
                   'valueSumSq', coalesce(s.value_sum_sq, 0),
                   'latencySketch', coalesce(s.latency_sketch, '{}'::jsonb))), '{}'::json)
          FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id
         WHERE v.experiment_id = p.experiment_id) AS current_stats,
       (SELECT coalesce(json_agg(json_build_object('id', a.id, 'message', a.message, 'created_at', a.created_at,
                                                   'global', a.experiment_id IS NULL)
                                 ORDER BY a.created_at, a.id), '[]'::json)
          FROM ab_alerts a
         WHERE a.severity = 'critical' AND a.resolved_at IS NULL
           AND (a.experiment_id = p.experiment_id OR a.experiment_id IS NULL)
           AND CASE WHEN p.decision_snapshot IS NULL THEN a.created_at >= p.promoted_at
                    ELSE NOT pg_visible_in_snapshot(a.xact_id, p.decision_snapshot) END) AS new_alerts,
       ARRAY(SELECT b.metric FROM ab_guard_breaches b WHERE b.promotion_id = p.id ORDER BY b.metric)
           AS reported_metrics
  FROM experiment_promotions p JOIN ab_experiments e ON e.id = p.experiment_id
 WHERE p.rollback_at IS NULL AND p.guard_until > now()
   AND ($1::bigint[] IS NULL OR p.experiment_id = ANY($1::bigint[]))
   -- A ramped promotion is guarded step by step against the concurrent control (rollouts.sql), not here.
   AND NOT EXISTS (SELECT 1 FROM experiment_rollouts r WHERE r.promotion_id = p.id)
 ORDER BY p.promoted_at;

-- name: record_guard_breach
-- Remember that a breach of promotion $1 on metric $2 was reported; returns a row only the first time.
INSERT INTO ab_guard_breaches (promotion_id, metric, detected_by, reason, details)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (promotion_id, metric) DO NOTHING
RETURNING detected_at;

-- name: take_lease
-- Take or renew lease $1 for holder $2 for $3 seconds; returns a row only when $2 holds it afterwards.
INSERT INTO ab_worker_leases AS l (name, holder, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
 WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
RETURNING expires_at;

-- name: release_lease
-- Give lease $1 up if holder $2 has it.
DELETE FROM ab_worker_leases WHERE name = $1 AND holder = $2;

-- name: listening_channels
-- The channels this session LISTENs on (the listener's liveness probe).
SELECT coalesce(array_agg(c ORDER BY c), '{}') FROM pg_listening_channels() AS c;


-- name: ping
-- The scan leader's check that its session (and so its advisory lock) is still there.
SELECT 1;

-- name: try_advisory_lock
-- Scan leadership: the session-level advisory lock $1, without waiting.
SELECT pg_try_advisory_lock($1);
