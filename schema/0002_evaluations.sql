-- Evaluation history for the dashboard's lift-over-time chart: one row per variant per kept evaluation.
-- Thinned on write (see ab_record_evaluation) so that storage per experiment stays bounded.
CREATE TABLE ab_evaluation_snapshots (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id bigint NOT NULL REFERENCES ab_experiments (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    variant_name  text NOT NULL,
    exposures     bigint NOT NULL,
    control_exposures bigint NOT NULL,
    lift          double precision,
    ci_low        double precision,
    ci_high       double precision,
    confidence    double precision,
    eligible      boolean NOT NULL DEFAULT false
);
CREATE INDEX ab_evaluation_snapshots_exp_idx ON ab_evaluation_snapshots (experiment_id, created_at);

-- Keeps at most max_rows snapshots per experiment and variant. When the cap is reached every other row of the
-- older half is dropped, so the history stays spread over the whole run at a coarser resolution.
CREATE FUNCTION ab_thin_evaluation_snapshots(exp_id bigint, max_rows integer DEFAULT 400) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    removed integer := 0;
BEGIN
    WITH ranked AS (
        SELECT id, variant_name,
               row_number() OVER (PARTITION BY variant_name ORDER BY created_at, id) AS rn,
               count(*) OVER (PARTITION BY variant_name) AS total
          FROM ab_evaluation_snapshots WHERE experiment_id = exp_id
    ), doomed AS (
        DELETE FROM ab_evaluation_snapshots s USING ranked r
         WHERE s.id = r.id AND r.total > max_rows AND r.rn <= r.total / 2 AND r.rn % 2 = 0 AND r.rn > 1
        RETURNING 1
    )
    SELECT count(*) INTO removed FROM doomed;
    RETURN removed;
END $$;
