-- The progressive rollout's queries (worker/services/rollout.py), each under a "-- name: NAME" header with a
-- one-line description. Loaded once by worker/db/sql.py (RLQ); values go through $n parameters. Schema:
-- schema/0010_rollouts.sql.

-- name: active_rollouts
-- Every unfinished rollout (or those of the experiments $1, or of the experiments named $2), with everything its guard
-- and state machine read:
-- the rollout row, the experiment's config, the per-variant totals now (camelCase, as baseline_stats), the
-- critical alerts the promotion's decision could not see (schema/0007), the ab_metrics rows with their sums
-- (schema/0009, as experiment_snapshot reads them: the step's guardrails), and what a rollback writes its
-- notifications from (the routes, computed once per read; the PagerDuty triggers to resolve, by schema/0012's
-- index), so a breach needs no other read. A transition reads it again under rollout_locked.
SELECT r.id, r.promotion_id, r.experiment_id, r.experiment_name, r.winner_variant, r.control_variant, r.steps,
       r.holdback, r.test_share, r.step, r.state, r.paused_from, r.step_started_at, r.step_stats, r.transitions,
       r.reason, e.config, e.priority, e.metric_type, now() AS now,
       (SELECT coalesce(json_object_agg(v.name, json_build_object(
                   'exposures', coalesce(s.exposures, 0), 'conversions', coalesce(s.conversions, 0),
                   'errors', coalesce(s.errors, 0), 'valueSum', coalesce(s.value_sum, 0),
                   'valueSumSq', coalesce(s.value_sum_sq, 0),
                   'latencySketch', coalesce(s.latency_sketch, '{}'::jsonb))), '{}'::json)
          FROM ab_variants v LEFT JOIN ab_variant_stats s ON s.variant_id = v.id
         WHERE v.experiment_id = r.experiment_id) AS current_stats,
       (SELECT coalesce(json_agg(json_build_object('id', a.id, 'message', a.message, 'created_at', a.created_at,
                                                   'global', a.experiment_id IS NULL)
                                 ORDER BY a.created_at, a.id), '[]'::json)
          FROM ab_alerts a
         WHERE a.severity = 'critical' AND a.resolved_at IS NULL
           AND (a.experiment_id = r.experiment_id OR a.experiment_id IS NULL)
           AND CASE WHEN p.decision_snapshot IS NULL THEN a.created_at >= p.promoted_at
                    ELSE NOT pg_visible_in_snapshot(a.xact_id, p.decision_snapshot) END) AS new_alerts,
       (SELECT json_agg(json_build_object(
                   'name', m.name, 'kind', m.kind, 'role', m.role, 'direction', m.direction, 'margin', m.margin,
                   'description', m.description, 'cuped', m.cuped,
                   'sums', (SELECT coalesce(json_object_agg(mv.name, json_build_object(
                                'units', ms.units, 'value_sum', ms.value_sum, 'value_sum_sq', ms.value_sum_sq,
                                'denominator_sum', CASE WHEN m.kind = 'ratio' THEN ms.denominator_sum END,
                                'denominator_sum_sq', CASE WHEN m.kind = 'ratio' THEN ms.denominator_sum_sq END,
                                'value_denominator_product_sum',
                                    CASE WHEN m.kind = 'ratio' THEN ms.value_denominator_product_sum END)), '{}'::json)
                              FROM ab_metric_stats ms JOIN ab_variants mv ON mv.id = ms.variant_id
                             WHERE ms.metric_id = m.id))
                   ORDER BY m.id)
          FROM ab_metrics m WHERE m.experiment_id = r.experiment_id) AS metrics,
       p.confidence AS promotion_confidence, p.improvement AS promotion_improvement,
       (SELECT coalesce(json_agg(json_build_object('id', c.id, 'name', c.name, 'channel', c.channel,
                                                   'target', c.target, 'events', c.events,
                                                   'min_priority', c.min_priority) ORDER BY c.id), '[]'::json)
          FROM notification_configs c
         WHERE c.enabled AND ('rollout.rolled_back' = ANY (c.events) OR 'promotion.rolled_back' = ANY (c.events)))
           AS rollback_targets,
       ARRAY(SELECT DISTINCT o.target_ref FROM notification_outbox o
              WHERE o.promotion_id = r.promotion_id AND o.channel = 'pagerduty' AND o.event = 'guard.breached'
                AND o.action = 'trigger') AS breach_refs
  FROM experiment_rollouts r
  JOIN experiment_promotions p ON p.id = r.promotion_id
  JOIN ab_experiments e ON e.id = r.experiment_id
 WHERE r.state NOT IN ('complete', 'rolled_back')
   AND ($1::bigint[] IS NULL OR r.experiment_id = ANY($1::bigint[]))
   AND ($2::text[] IS NULL OR r.experiment_name = ANY($2::text[]))
 ORDER BY r.step_started_at;

-- name: rollout_locked
-- One rollout ($1), its row locked until the end of the transaction, after its experiment's row (the lock order of
-- promotions and rollbacks: the EXISTS below locks the experiment while the rollout row is scanned, before LockRows
-- locks the rollout; a caller that locked the experiment already holds it, so that is a no-op). A rollout changed
-- while the experiment was waited for comes back as committed (EvalPlanQual re-reads the locked row). Finished ones
-- come back too. The rollout's own columns: what its guard reads comes from active_rollouts, read after the lock
-- (worker/services/rollout.py, _locked_read), so it sees what the lock waited for.
SELECT r.id, r.promotion_id, r.experiment_id, r.experiment_name, r.steps, r.step, r.state, r.paused_from,
       r.transitions, r.reason
  FROM experiment_rollouts r
 WHERE r.id = $1
   AND EXISTS (SELECT 1 FROM ab_experiments x WHERE x.id = r.experiment_id FOR NO KEY UPDATE)
   FOR NO KEY UPDATE OF r;

-- name: rollout_step_write
-- A rollout moves to step $3 in state $4 (advance, hold, complete), in one statement, only if it is still at
-- transition $2 (the compare-and-set that makes a transition happen once): the rollout row (the step's start and
-- the totals $5 at it), the traffic weights ($6 names, $7 weights), the ended step's row (outcome $8, guard $9),
-- the new step's row (share $10, kind $11), the promotion's guard window ($12 seconds from now; complete: ends
-- now), and the audit row (actor $13, action $14, details $15). Returns the new transition count, or no row.
WITH r AS (
    UPDATE experiment_rollouts
       SET step = $3, state = $4, step_started_at = now(), step_stats = $5, transitions = transitions + 1,
           completed_at = CASE WHEN $4 = 'complete' THEN now() END, paused_from = NULL, reason = NULL
     WHERE id = $1 AND transitions = $2
    RETURNING id, promotion_id, experiment_id, experiment_name, transitions
), w AS (
    UPDATE ab_variants v SET traffic_weight = u.weight
      FROM r, unnest($6::text[], $7::float8[]) AS u(name, weight)
     WHERE v.experiment_id = r.experiment_id AND v.name = u.name
    RETURNING 1
), ended AS (
    UPDATE experiment_rollout_steps st SET ended_at = now(), outcome = $8, guard = $9
      FROM r
     WHERE st.rollout_id = r.id AND st.ended_at IS NULL AND st.step <> $3
    RETURNING 1
), started AS (
    -- A conflict is a rollout that completes on the step it held at (holdback 0: holding is at 100% already):
    -- that row becomes the complete one and keeps the holding window's guard (one statement must not both end
    -- and re-start the same row: ON CONFLICT cannot affect a row the ended CTE updated).
    INSERT INTO experiment_rollout_steps (rollout_id, step, share, kind, stats)
    SELECT r.id, $3, $10, $11, $5 FROM r
    ON CONFLICT (rollout_id, step) DO UPDATE SET started_at = now(), stats = EXCLUDED.stats, share = EXCLUDED.share,
        kind = EXCLUDED.kind, ended_at = NULL, outcome = NULL, guard = $9
    RETURNING 1
), g AS (
    UPDATE experiment_promotions p
       SET guard_until = CASE WHEN $4 = 'complete' THEN least(p.guard_until, now())
                              ELSE greatest(p.guard_until, now() + make_interval(secs => $12)) END
      FROM r WHERE p.id = r.promotion_id
    RETURNING 1
), a AS (
    INSERT INTO ab_promotion_audit_log (actor, action, experiment_id, experiment_name, promotion_id, details)
    SELECT $13, $14, r.experiment_id, r.experiment_name, r.promotion_id, $15 FROM r
    RETURNING 1
)
SELECT r.transitions, (SELECT count(*) FROM w) AS weights, (SELECT count(*) FROM ended) AS ended,
       (SELECT count(*) FROM started) AS started, (SELECT count(*) FROM g) AS promotions,
       (SELECT count(*) FROM a) AS audited
  FROM r;

-- name: rollout_set_state
-- Pause ($3 = 'paused', $4 = the state resume returns to, $5 = why), resume ($3 = the state to return to, $4 NULL)
-- or wait for an approval, only if still at transition $2; audit row: actor $6, action $7, details $8. Returns the
-- new transition count, or no row.
WITH r AS (
    UPDATE experiment_rollouts
       SET state = $3, paused_from = $4, reason = $5, transitions = transitions + 1
     WHERE id = $1 AND transitions = $2
    RETURNING id, promotion_id, experiment_id, experiment_name, transitions
), a AS (
    INSERT INTO ab_promotion_audit_log (actor, action, experiment_id, experiment_name, promotion_id, details)
    SELECT $6, $7, r.experiment_id, r.experiment_name, r.promotion_id, $8 FROM r
    RETURNING 1
)
SELECT r.transitions, (SELECT count(*) FROM a) AS audited FROM r;

-- name: rollout_of_experiment
-- The latest rollout of experiment $1 (any state), for check, the API and the dashboard.
SELECT r.id, r.promotion_id, r.experiment_id, r.experiment_name, r.winner_variant, r.control_variant, r.steps,
       r.holdback, r.test_share, r.step, r.state, r.paused_from, r.step_started_at, r.step_stats, r.transitions,
       r.reason, r.created_at, r.completed_at, r.rolled_back_at
  FROM experiment_rollouts r
 WHERE r.experiment_id = $1
 ORDER BY r.created_at DESC
 LIMIT 1;

-- name: rollout_steps
-- The steps of rollout $1 in order: the dashboard's timeline.
SELECT step, share, kind, started_at, ended_at, outcome, guard
  FROM experiment_rollout_steps WHERE rollout_id = $1 ORDER BY step;

-- name: experiment_id_by_name
-- The id of experiment $1 (NULL when there is none).
SELECT id FROM ab_experiments WHERE name = $1;

-- name: rollback_write
-- Everything a rollback writes, in one statement (the experiment row is locked already): promotion $1 marked rolled
-- back (reason $2, actor $3) only if it is not yet, the weights from before the promotion, status 'rolled_back',
-- its rollout (if it ramped) closed with its current step's guard $5, the audit row (the restored weights, the
-- promoted variant, details $4, and the rollout's step when it ramped), and the notification outbox rows when the
-- caller planned them already (event $14, one per route: $6..$10 arrays, $11 payload, $12 priority, $13 detailed;
-- empty arrays: the caller queues them after). No row back: already rolled back, or no such promotion. Serves
-- every rollback: a breach, ab_request_rollback, the API, the CLI, the dashboard.
-- A ramp's guard rolls back in this one statement alone, with no transaction around it (the breach path's round
-- trips: the check's read, this write): $15 names the rollout it decided on and $16 the transition it read. The
-- EXISTS below locks the experiment's row, then the rollout's (the lock order of every transaction here; a caller
-- that holds the experiment already passes NULLs), and the rollback happens only if the rollout is still at that
-- transition and unfinished, and the experiment's config is still $17 (the guard's settings, autoRollback among
-- them): a rollout or config that changed meanwhile is re-checked on the new row (EvalPlanQual), no row comes back,
-- and the caller decides again under the locks.
WITH p AS (
    UPDATE experiment_promotions SET rollback_at = now(), rollback_reason = $2, rolled_back_by = $3
     WHERE id = $1 AND rollback_at IS NULL
       AND ($15::uuid IS NULL
            OR EXISTS (SELECT 1 FROM experiment_rollouts cas
                        WHERE cas.id = $15 AND cas.promotion_id = $1 AND cas.transitions = $16::bigint
                          AND cas.state NOT IN ('complete', 'rolled_back')
                          AND EXISTS (SELECT 1 FROM ab_experiments x
                                       WHERE x.id = cas.experiment_id AND x.config = $17::jsonb
                                         FOR NO KEY UPDATE)
                          FOR NO KEY UPDATE OF cas))
    RETURNING id, experiment_id, experiment_name, previous_weights, promoted_variant_name, control_variant_name,
              confidence, improvement, rollback_at
), w AS (
    UPDATE ab_variants v SET traffic_weight = pw.value::numeric
      FROM p, jsonb_each_text(p.previous_weights) AS pw
     WHERE v.experiment_id = p.experiment_id AND v.name = pw.key
    RETURNING 1
), s AS (
    UPDATE ab_experiments e SET status = 'rolled_back' FROM p WHERE e.id = p.experiment_id RETURNING 1
), r AS (
    UPDATE experiment_rollouts ro
       SET state = 'rolled_back', paused_from = NULL, reason = $2, rolled_back_at = now(),
           transitions = ro.transitions + 1
      FROM p
     WHERE ro.promotion_id = p.id AND ro.state <> 'rolled_back'
    RETURNING ro.id, ro.step, ro.steps
), ended AS (
    UPDATE experiment_rollout_steps st SET ended_at = now(), outcome = 'rolled_back', guard = $5
      FROM r
     WHERE st.rollout_id = r.id AND st.ended_at IS NULL
    RETURNING 1
), a AS (
    INSERT INTO ab_promotion_audit_log (actor, action, experiment_id, experiment_name, promotion_id, details)
    SELECT $3, 'rolled_back', p.experiment_id, p.experiment_name, p.id,
           jsonb_build_object('restoredWeights', p.previous_weights, 'promotedVariant', p.promoted_variant_name)
           || $4::jsonb || CASE WHEN r.id IS NULL THEN '{}'::jsonb
                             ELSE jsonb_build_object('rollout', jsonb_build_object(
                                      'step', r.step, 'steps', to_jsonb(r.steps),
                                      'treatmentShare', r.steps[r.step])) END
      FROM p LEFT JOIN r ON true
    RETURNING 1
), o AS (
    INSERT INTO notification_outbox (event, channel, config_id, target_ref, target_label, experiment_name,
                                     promotion_id, priority, payload, action, detailed)
    SELECT $14, u.channel, u.config_id, u.target_ref, u.target_label, p.experiment_name, p.id, $12,
           $11::text::jsonb, u.action, $13
      FROM p, unnest($6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[])
              AS u(channel, config_id, target_ref, target_label, action)
    RETURNING 1
)
SELECT p.*, r.id AS rollout_id, r.step AS rollout_step, r.steps AS rollout_steps,
       (SELECT count(*) FROM w) AS weights, (SELECT count(*) FROM ended) AS ended, (SELECT count(*) FROM a) AS audited,
       (SELECT count(*) FROM o) AS queued
  FROM p LEFT JOIN r ON true;
