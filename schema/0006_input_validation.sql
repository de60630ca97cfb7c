-- Producer input that no real sample can produce is refused at the door, with a message and a hint, writing
-- nothing: a mean update whose sum of squares is below value_sum^2 / exposures, or sums with 0 exposures. The
-- queue's totals only grow, so one such update would make the experiment's statistics impossible for good.
-- Replaces ab_record_metrics (same signature); every check of 0001 stays as it was.

CREATE OR REPLACE FUNCTION ab_record_metrics(
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
        -- Sums describe the values of the exposures recorded with them: none without exposures.
        IF ab_record_metrics.exposures = 0
           AND (ab_record_metrics.value_sum <> 0 OR ab_record_metrics.value_sum_sq <> 0) THEN
            RAISE EXCEPTION 'ab_record_metrics: value_sum (%) and value_sum_sq (%) recorded with 0 exposures',
                ab_record_metrics.value_sum, ab_record_metrics.value_sum_sq
                USING ERRCODE = '22023',
                      HINT = 'value_sum and value_sum_sq sum the values of the exposures recorded in the same call: '
                             || 'record those exposures with them, or pass 0 for both sums';
        END IF;
        -- n values x_i always have sum(x_i^2) >= sum(x_i)^2 / n (their variance is never negative). Beyond float
        -- round-off (a relative 1e-9, the tolerance the statistics apply to the folded totals) such sums come from
        -- no real sample, and since totals only grow, one such update would spoil the experiment for good.
        -- numeric, not float8: value_sum^2 overflows float8 for |value_sum| > 1e154 even when the data are fine.
        IF ab_record_metrics.exposures > 0
           AND ab_record_metrics.value_sum_sq::numeric * ab_record_metrics.exposures * 1.000000001
               < ab_record_metrics.value_sum::numeric * ab_record_metrics.value_sum::numeric THEN
            RAISE EXCEPTION 'ab_record_metrics: value_sum_sq (%) is smaller than value_sum^2 / exposures (%^2 / %): no real values have these sums',
                ab_record_metrics.value_sum_sq, ab_record_metrics.value_sum, ab_record_metrics.exposures
                USING ERRCODE = '22023',
                      HINT = 'value_sum_sq is the sum of the squared values (x1^2 + x2^2 + ...), not the square of '
                             || 'value_sum; both sums cover exactly the exposures of this call';
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

-- A traffic weight must be a finite number: numeric accepts 'NaN' and 'Infinity', which pass `>= 0` and would hand a
-- variant all traffic (or none) wherever weights are normalised. NOT VALID: existing rows are not re-checked here
-- (an operator fixes any such row by hand); every new or changed weight is.
ALTER TABLE ab_variants ADD CONSTRAINT ab_variants_traffic_weight_finite
    CHECK (traffic_weight <> 'NaN'::numeric AND traffic_weight < 'Infinity'::numeric) NOT VALID;
