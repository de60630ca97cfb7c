-- ab-autopromote core schema.
-- The table, function and channel names in this file are a public contract: producers, operators and
-- dashboards program against them. Add, never rename.

-- ---------------------------------------------------------------------------------------------------
-- Experiments and variants
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ab_experiments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE
                CHECK (name <> '' AND length(name) <= 200),
    status      text        NOT NULL DEFAULT 'draft'
                CHECK (status IN ('draft', 'running', 'paused', 'promoted', 'rolled_back', 'stopped')),
    started_at  timestamptz,
    metric_type text        NOT NULL DEFAULT 'conversion' CHECK (metric_type IN ('conversion', 'mean')),
    priority    text        NOT NULL DEFAULT 'normal' CHECK (priority IN ('normal', 'high', 'critical')),
    config      jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    description text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ab_experiments_running_idx ON ab_experiments (id) WHERE status = 'running';

-- Keeps updated_at honest and stamps started_at the first time an experiment starts running.
CREATE FUNCTION ab_experiments_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF NEW.status = 'running' AND NEW.started_at IS NULL THEN
        NEW.started_at := now();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ab_experiments_touch BEFORE INSERT OR UPDATE ON ab_experiments
    FOR EACH ROW EXECUTE FUNCTION ab_experiments_touch();

CREATE TABLE ab_variants (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id  bigint  NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    name           text    NOT NULL CHECK (name <> '' AND length(name) <= 200),
    is_control     boolean NOT NULL DEFAULT false,
    traffic_weight numeric NOT NULL DEFAULT 1 CHECK (traffic_weight >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, name)
);
-- At most one control per experiment ...
CREATE UNIQUE INDEX ab_variants_one_control ON ab_variants (experiment_id) WHERE is_control;

-- ... and at least one once the transaction that creates the variants commits.
CREATE FUNCTION ab_variants_check_control() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    exp_id bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.experiment_id ELSE NEW.experiment_id END;
    n_variants int;
    n_controls int;
BEGIN
    SELECT count(*), count(*) FILTER (WHERE is_control) INTO n_variants, n_controls
      FROM ab_variants WHERE experiment_id = exp_id;
    IF n_variants > 0 AND n_controls <> 1 THEN
        RAISE EXCEPTION 'experiment % must have exactly one control variant, found %', exp_id, n_controls
            USING ERRCODE = '23514',
                  HINT = 'mark exactly one row of ab_variants with is_control = true';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ab_variants_exactly_one_control
    AFTER INSERT OR UPDATE OR DELETE ON ab_variants
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ab_variants_check_control();

-- ---------------------------------------------------------------------------------------------------
-- Latency sketch (DDSketch-style, 1% relative accuracy). Serialised as jsonb {"<bucket>": count, "z": zeros}.
-- The bucket of x > 0 is ceil(ln x / ln gamma) with gamma = (1 + 0.01) / (1 - 0.01); worker/stats computes
-- the same formula, so sketches built here and in Python merge by adding counts.
-- ---------------------------------------------------------------------------------------------------
CREATE FUNCTION ab_latency_sketch(latencies double precision[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(k, c), '{}'::jsonb)
      FROM (SELECT CASE WHEN x = 0 THEN 'z'
                        ELSE ceil(ln(x) / ln((1.0::float8 + 0.01::float8) / (1.0::float8 - 0.01::float8)))::bigint::text
                   END AS k,
                   count(*) AS c
              FROM unnest(latencies) AS x
             GROUP BY 1) AS buckets
$$;

CREATE FUNCTION ab_sketch_merge(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL OR a = '{}'::jsonb THEN coalesce(b, '{}'::jsonb)
        WHEN b IS NULL OR b = '{}'::jsonb THEN a
        ELSE (SELECT jsonb_object_agg(key, total)
                FROM (SELECT key, sum(value::bigint) AS total
                        FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b)) AS u
                       GROUP BY key) AS s)
    END
$$;

CREATE AGGREGATE ab_sketch_sum(jsonb) (SFUNC = ab_sketch_merge, STYPE = jsonb, INITCOND = '{}');

-- ---------------------------------------------------------------------------------------------------
-- Producer ingest: the durable queue and the per-variant sufficient statistics it is folded into
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ab_metric_updates (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id  bigint NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    variant_id     bigint NOT NULL REFERENCES ab_variants (id) ON DELETE CASCADE,
    exposures      bigint NOT NULL,
    conversions    bigint NOT NULL,
    errors         bigint NOT NULL,
    value_sum      double precision,
    value_sum_sq   double precision,
    latency_sketch jsonb,
    latency_count  bigint NOT NULL DEFAULT 0,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ab_metric_updates_experiment_idx ON ab_metric_updates (experiment_id, id);

CREATE TABLE ab_variant_stats (
    variant_id     bigint PRIMARY KEY REFERENCES ab_variants (id) ON DELETE CASCADE,
    experiment_id  bigint NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    exposures      bigint NOT NULL DEFAULT 0,
    conversions    bigint NOT NULL DEFAULT 0,
    errors         bigint NOT NULL DEFAULT 0,
    value_sum      double precision NOT NULL DEFAULT 0,
    value_sum_sq   double precision NOT NULL DEFAULT 0,
    latency_sketch jsonb NOT NULL DEFAULT '{}',
    latency_count  bigint NOT NULL DEFAULT 0,
    updates_folded bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ab_variant_stats_experiment_idx ON ab_variant_stats (experiment_id);

CREATE FUNCTION ab_record_metrics(
    experiment_name text,
    variant_name    text,
    exposures       bigint,
    conversions     bigint,
    errors          bigint DEFAULT 0,
    latencies_ms    double precision[] DEFAULT NULL,
    value_sum       double precision DEFAULT NULL,
    value_sum_sq    double precision DEFAULT NULL
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
    END IF;

    INSERT INTO ab_metric_updates (experiment_id, variant_id, exposures, conversions, errors,
                                   value_sum, value_sum_sq, latency_sketch, latency_count)
    VALUES (exp.id, var_id, ab_record_metrics.exposures, ab_record_metrics.conversions, ab_record_metrics.errors,
            ab_record_metrics.value_sum, ab_record_metrics.value_sum_sq, sketch, n_lat)
    RETURNING id INTO new_id;

    -- Postgres folds identical payloads within one transaction: one wake-up per experiment per commit.
    PERFORM pg_notify('ab_metrics', exp.id::text);
    RETURN new_id;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- Alerts
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ab_alerts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id bigint REFERENCES ab_experiments (id) ON DELETE CASCADE,  -- NULL: a global alert
    severity      text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message       text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz
);
CREATE INDEX ab_alerts_open_idx ON ab_alerts (created_at) WHERE resolved_at IS NULL;

CREATE FUNCTION ab_raise_alert(experiment_name text, severity text, message text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    exp_id bigint;
    new_id bigint;
BEGIN
    IF severity IS NULL OR severity NOT IN ('info', 'warning', 'critical') THEN
        RAISE EXCEPTION 'ab_raise_alert: severity must be info, warning or critical, got %', coalesce(severity, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF message IS NULL OR btrim(message) = '' THEN
        RAISE EXCEPTION 'ab_raise_alert: message must not be empty' USING ERRCODE = '22023';
    END IF;
    IF experiment_name IS NOT NULL THEN
        SELECT e.id INTO exp_id FROM ab_experiments e WHERE e.name = experiment_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'ab_raise_alert: unknown experiment "%"', experiment_name
                USING ERRCODE = '22023', HINT = 'pass NULL for a global alert';
        END IF;
    END IF;
    INSERT INTO ab_alerts (experiment_id, severity, message)
    VALUES (exp_id, ab_raise_alert.severity, ab_raise_alert.message) RETURNING id INTO new_id;
    -- A critical alert can breach a post-promotion guard: wake the worker for that experiment (or all, if global).
    IF ab_raise_alert.severity = 'critical' THEN
        PERFORM pg_notify('ab_metrics', coalesce(exp_id::text, '*'));
    END IF;
    RETURN new_id;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- Promotions
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE experiment_promotions (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    experiment_id           bigint NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    experiment_name         text NOT NULL,
    promoted_variant_name   text NOT NULL,
    control_variant_name    text,
    confidence              double precision NOT NULL,
    improvement             double precision NOT NULL,
    method                  text NOT NULL DEFAULT 'sequential',
    promoted_at             timestamptz NOT NULL DEFAULT now(),
    promoted_by             text NOT NULL,
    previous_weights        jsonb NOT NULL,
    -- Per-variant sufficient statistics at promotion time: the guard watches what came after.
    baseline_stats          jsonb NOT NULL DEFAULT '{}',
    guard_until             timestamptz,
    decision                jsonb NOT NULL DEFAULT '{}',
    rollback_requested_at   timestamptz,
    rollback_requested_by   text,
    rollback_request_reason text,
    rollback_at             timestamptz,
    rollback_reason         text,
    rolled_back_by          text,
    CHECK ((rollback_at IS NULL) = (rollback_reason IS NULL))
);
CREATE UNIQUE INDEX experiment_promotions_one_active ON experiment_promotions (experiment_id)
    WHERE rollback_at IS NULL;
CREATE INDEX experiment_promotions_promoted_at_idx ON experiment_promotions (promoted_at DESC);
CREATE INDEX experiment_promotions_rollback_pending_idx ON experiment_promotions (rollback_requested_at)
    WHERE rollback_requested_at IS NOT NULL AND rollback_at IS NULL;

-- A small JSON wake-up, never the row (NOTIFY payloads are limited to 8000 bytes).
CREATE FUNCTION notify_promotion_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ev text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        ev := 'promoted';
    ELSIF NEW.rollback_at IS NOT NULL AND OLD.rollback_at IS NULL THEN
        ev := 'rolled_back';
    ELSIF NEW.rollback_requested_at IS NOT NULL AND OLD.rollback_requested_at IS NULL THEN
        ev := 'rollback_requested';
    ELSE
        RETURN NULL;
    END IF;
    PERFORM pg_notify('ab_promotion_events',
                      json_build_object('event', ev, 'promotion_id', NEW.id,
                                        'experiment_name', NEW.experiment_name)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER experiment_promotions_notify AFTER INSERT OR UPDATE ON experiment_promotions
    FOR EACH ROW EXECUTE FUNCTION notify_promotion_event();

-- ---------------------------------------------------------------------------------------------------
-- Audit log: append-only
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ab_promotion_audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    action          text NOT NULL,
    experiment_id   bigint,
    experiment_name text,
    promotion_id    uuid,
    details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ab_promotion_audit_log_experiment_idx ON ab_promotion_audit_log (experiment_name, id DESC);
CREATE INDEX ab_promotion_audit_log_action_idx ON ab_promotion_audit_log (action, created_at);

CREATE FUNCTION ab_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ab_promotion_audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = '42501', HINT = 'insert a new row that records the correction instead';
END $$;
CREATE TRIGGER ab_promotion_audit_log_no_update BEFORE UPDATE OR DELETE ON ab_promotion_audit_log
    FOR EACH ROW EXECUTE FUNCTION ab_audit_log_append_only();
CREATE TRIGGER ab_promotion_audit_log_no_truncate BEFORE TRUNCATE ON ab_promotion_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION ab_audit_log_append_only();

-- ---------------------------------------------------------------------------------------------------
-- Rollback requests from any SQL client
-- ---------------------------------------------------------------------------------------------------
CREATE FUNCTION ab_request_rollback(promotion_id uuid, reason text, requested_by text DEFAULT current_user)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    p experiment_promotions%ROWTYPE;
BEGIN
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION 'ab_request_rollback: a reason is required'
            USING ERRCODE = '22023', HINT = 'say why, e.g. ''checkout errors up since the promotion''';
    END IF;
    SELECT * INTO p FROM experiment_promotions ep WHERE ep.id = promotion_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ab_request_rollback: no promotion with id %', promotion_id USING ERRCODE = '22023';
    END IF;
    IF p.rollback_at IS NOT NULL THEN
        RAISE EXCEPTION 'ab_request_rollback: promotion % was already rolled back at %', promotion_id, p.rollback_at
            USING ERRCODE = '22023';
    END IF;
    IF p.rollback_requested_at IS NOT NULL THEN
        RETURN p.id;  -- already requested: the worker will carry out the first request
    END IF;
    UPDATE experiment_promotions ep
       SET rollback_requested_at = now(),
           rollback_requested_by = coalesce(nullif(btrim(requested_by), ''), current_user),
           rollback_request_reason = reason
     WHERE ep.id = promotion_id;
    INSERT INTO ab_promotion_audit_log (actor, action, experiment_id, experiment_name, promotion_id, details)
    VALUES (coalesce(nullif(btrim(requested_by), ''), current_user), 'rollback_requested', p.experiment_id,
            p.experiment_name, p.id, jsonb_build_object('reason', reason));
    RETURN p.id;
END $$;

-- ---------------------------------------------------------------------------------------------------
-- Worker state: the last decision per experiment
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ab_experiment_state (
    experiment_id     bigint PRIMARY KEY REFERENCES ab_experiments (id) ON DELETE CASCADE,
    last_evaluated_at timestamptz NOT NULL DEFAULT now(),
    evaluations       bigint NOT NULL DEFAULT 0,
    eligible          boolean NOT NULL DEFAULT false,
    decision          jsonb NOT NULL DEFAULT '{}'
);

-- ---------------------------------------------------------------------------------------------------
-- Notifications
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE notification_configs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL DEFAULT '',
    channel      text NOT NULL CHECK (channel IN ('slack', 'email', 'pagerduty', 'webhook')),
    target       text NOT NULL CHECK (target <> ''),  -- webhook URL, email address(es), or routing key
    secret       text,                                -- webhook signing secret (never shown)
    events       text[] NOT NULL DEFAULT ARRAY['promotion.promoted', 'promotion.rolled_back',
                                               'guard.breached', 'promotion.failed'],
    min_priority text NOT NULL DEFAULT 'normal' CHECK (min_priority IN ('normal', 'high', 'critical')),
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notification_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event           text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('slack', 'email', 'pagerduty', 'webhook')),
    config_id       bigint REFERENCES notification_configs (id) ON DELETE SET NULL,  -- NULL: environment default
    target_label    text NOT NULL DEFAULT '',       -- redacted description of the target, safe to show
    experiment_name text,
    promotion_id    uuid,
    priority        text NOT NULL DEFAULT 'normal',
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX notification_outbox_due_idx ON notification_outbox (next_attempt_at) WHERE status = 'pending';

CREATE TABLE notification_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id   bigint REFERENCES notification_outbox (id) ON DELETE SET NULL,
    channel     text NOT NULL,
    target      text NOT NULL DEFAULT '',            -- redacted
    event       text,
    status      text NOT NULL,                       -- sent | retry | dead
    attempt     int NOT NULL DEFAULT 1,
    http_status int,
    smtp_reply  text,
    error       text,
    duration_ms double precision,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_logs_outbox_idx ON notification_logs (outbox_id);

-- ---------------------------------------------------------------------------------------------------
-- Reporting
-- ---------------------------------------------------------------------------------------------------
CREATE FUNCTION get_promotion_stats(days integer DEFAULT 30)
RETURNS TABLE (
    period_days              integer,
    total_promotions         bigint,
    promotions_per_day       double precision,
    successful_promotions    bigint,
    failed_promotions        bigint,
    avg_confidence           double precision,
    avg_improvement          double precision,
    avg_hours_to_promotion   double precision,
    rollback_count           bigint,
    rollback_rate            double precision,
    active_promotions        bigint
) LANGUAGE sql STABLE AS $$
    WITH p AS (
        SELECT ep.*, e.started_at
          FROM experiment_promotions ep JOIN ab_experiments e ON e.id = ep.experiment_id
         WHERE ep.promoted_at >= now() - make_interval(days => days)
    ), failed AS (
        SELECT count(*) AS n FROM ab_promotion_audit_log a
         WHERE a.action = 'promotion_failed' AND a.created_at >= now() - make_interval(days => days)
    )
    SELECT days,
           count(*),
           count(*)::float8 / greatest(days, 1),
           count(*) FILTER (WHERE p.rollback_at IS NULL),
           (SELECT n FROM failed),
           avg(p.confidence),
           avg(p.improvement),
           avg(extract(epoch FROM p.promoted_at - p.started_at) / 3600.0) FILTER (WHERE p.started_at IS NOT NULL),
           count(*) FILTER (WHERE p.rollback_at IS NOT NULL),
           CASE WHEN count(*) = 0 THEN 0.0
                ELSE (count(*) FILTER (WHERE p.rollback_at IS NOT NULL))::float8 / count(*) END,
           (SELECT count(*) FROM experiment_promotions a WHERE a.rollback_at IS NULL)
      FROM p
$$;

-- Promotions per calendar day, for charts.
CREATE FUNCTION get_promotions_per_day(days integer DEFAULT 30)
RETURNS TABLE (day date, promotions bigint, rollbacks bigint) LANGUAGE sql STABLE AS $$
    SELECT d::date,
           (SELECT count(*) FROM experiment_promotions ep WHERE ep.promoted_at::date = d::date),
           (SELECT count(*) FROM experiment_promotions ep WHERE ep.rollback_at::date = d::date)
      FROM generate_series(current_date - (days - 1), current_date, interval '1 day') AS d
     ORDER BY 1
$$;
