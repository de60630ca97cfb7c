-- Serving the decision: deterministic assignment of units to variants, the same in SQL and in the
-- OpenFeature provider (clients/openfeature-python), compatible with GrowthBook's SDKs (hash version 2).
--
-- Contract (add, never rename):
--   ab_experiments.hash_seed        nullable; NULL means "the experiment's name" (GrowthBook's `seed || key`).
--   ab_fnv1a32(s text[, state])     FNV-1a 32 over the UTF-16 code units of s, as the JavaScript SDK hashes.
--   ab_hash_v2(seed, unit_id)       GrowthBook hash v2: fnv1a32(str(fnv1a32(seed || unit_id))) % 10000 / 10000.
--   ab_hash_v2_from_state(fnv1a32(seed), unit_id)   the same, the seed already hashed.
--   ab_assign(experiment, unit_id)  the variant name the unit sees now; NULL unless running or promoted.
--   ab_serving                      one row per experiment: what servers serve (variants, weights, ranges).
--   NOTIFY channel ab_serving_changed, payload {"experiment_id", "experiment_name", "status"} (status
--                                   "deleted" when the experiment is gone): sent when a commit changes what
--                                   ab_assign returns for an experiment (weights, variants, status, seed,
--                                   name), whoever made the change: the worker, the API or psql.

ALTER TABLE ab_experiments ADD COLUMN hash_seed text
    CHECK (hash_seed IS NULL OR (hash_seed <> '' AND length(hash_seed) <= 200));
COMMENT ON COLUMN ab_experiments.hash_seed IS
    'Seed of the assignment hash; NULL uses the name. Set it before renaming an experiment to keep every unit in its variant.';

-- ---------------------------------------------------------------------------------------------------
-- Hashing. plpgsql runs about one expression per microsecond, so the common case (ASCII ids, where one
-- byte is one UTF-16 code unit) hashes eight bytes per expression; anything else decodes UTF-8 into code
-- points and feeds astral-plane characters as their surrogate pair, exactly as String.charCodeAt does.
-- h stays below 2^32 and the prime below 2^25, so every product fits a bigint before the mask.
-- ---------------------------------------------------------------------------------------------------
CREATE FUNCTION ab_fnv1a32(s text, state bigint DEFAULT 2166136261) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    b bytea := convert_to(s, 'UTF8');
    n int := length(b);
    i int := 0;
    h bigint := state;
    c int;
    cp int;
BEGIN
    IF n = char_length(s) THEN
        WHILE i + 8 <= n LOOP
            h := (((((((((h # get_byte(b, i)) * 16777619 & 4294967295
                    # get_byte(b, i + 1)) * 16777619 & 4294967295
                    # get_byte(b, i + 2)) * 16777619 & 4294967295
                    # get_byte(b, i + 3)) * 16777619 & 4294967295
                    # get_byte(b, i + 4)) * 16777619 & 4294967295
                    # get_byte(b, i + 5)) * 16777619 & 4294967295
                    # get_byte(b, i + 6)) * 16777619 & 4294967295
                    # get_byte(b, i + 7)) * 16777619 & 4294967295);
            i := i + 8;
        END LOOP;
        IF i + 4 <= n THEN
            h := (((((h # get_byte(b, i)) * 16777619 & 4294967295
                    # get_byte(b, i + 1)) * 16777619 & 4294967295
                    # get_byte(b, i + 2)) * 16777619 & 4294967295
                    # get_byte(b, i + 3)) * 16777619 & 4294967295);
            i := i + 4;
        END IF;
        IF i + 2 <= n THEN
            h := (((h # get_byte(b, i)) * 16777619 & 4294967295
                    # get_byte(b, i + 1)) * 16777619 & 4294967295);
            i := i + 2;
        END IF;
        IF i < n THEN
            h := (h # get_byte(b, i)) * 16777619 & 4294967295;
        END IF;
        RETURN h;
    END IF;
    WHILE i < n LOOP
        c := get_byte(b, i);
        IF c < 128 THEN
            cp := c;
            i := i + 1;
        ELSIF c < 224 THEN
            cp := ((c & 31) << 6) | (get_byte(b, i + 1) & 63);
            i := i + 2;
        ELSIF c < 240 THEN
            cp := ((c & 15) << 12) | ((get_byte(b, i + 1) & 63) << 6) | (get_byte(b, i + 2) & 63);
            i := i + 3;
        ELSE
            cp := ((c & 7) << 18) | ((get_byte(b, i + 1) & 63) << 12) | ((get_byte(b, i + 2) & 63) << 6)
                  | (get_byte(b, i + 3) & 63);
            i := i + 4;
            -- Outside the BMP: the high surrogate first, then the low one continues below.
            h := (h # (55296 + ((cp - 65536) >> 10))) * 16777619 & 4294967295;
            cp := 56320 + ((cp - 65536) & 1023);
        END IF;
        h := (h # cp) * 16777619 & 4294967295;
    END LOOP;
    RETURN h;
END $$;

-- GrowthBook hash v2 of seed || unit_id, the seed given as its FNV state (ab_fnv1a32(seed)): hashing the seed
-- once per experiment instead of once per call. The ASCII path and the second round (always ASCII digits) are
-- inlined: a call of ab_fnv1a32 costs about as much as hashing ten bytes.
CREATE FUNCTION ab_hash_v2_from_state(seed_state bigint, unit_id text)
RETURNS double precision LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    h bigint := seed_state;
    b bytea := convert_to(unit_id, 'UTF8');
    n int := length(b);
    i int := 0;
BEGIN
    IF n = char_length(unit_id) THEN
        WHILE i + 8 <= n LOOP
            h := (((((((((h # get_byte(b, i)) * 16777619 & 4294967295
                    # get_byte(b, i + 1)) * 16777619 & 4294967295
                    # get_byte(b, i + 2)) * 16777619 & 4294967295
                    # get_byte(b, i + 3)) * 16777619 & 4294967295
                    # get_byte(b, i + 4)) * 16777619 & 4294967295
                    # get_byte(b, i + 5)) * 16777619 & 4294967295
                    # get_byte(b, i + 6)) * 16777619 & 4294967295
                    # get_byte(b, i + 7)) * 16777619 & 4294967295);
            i := i + 8;
        END LOOP;
        IF i + 4 <= n THEN
            h := (((((h # get_byte(b, i)) * 16777619 & 4294967295
                    # get_byte(b, i + 1)) * 16777619 & 4294967295
                    # get_byte(b, i + 2)) * 16777619 & 4294967295
                    # get_byte(b, i + 3)) * 16777619 & 4294967295);
            i := i + 4;
        END IF;
        IF i + 2 <= n THEN
            h := (((h # get_byte(b, i)) * 16777619 & 4294967295
                    # get_byte(b, i + 1)) * 16777619 & 4294967295);
            i := i + 2;
        END IF;
        IF i < n THEN
            h := (h # get_byte(b, i)) * 16777619 & 4294967295;
        END IF;
    ELSE
        h := ab_fnv1a32(unit_id, h);
    END IF;
    -- Second round, over the decimal digits of h (1 to 10 ASCII bytes).
    b := convert_to(h::text, 'UTF8');
    n := length(b);
    h := 2166136261;
    i := 0;
    IF n >= 8 THEN
        h := (((((((((h # get_byte(b, 0)) * 16777619 & 4294967295
                # get_byte(b, 1)) * 16777619 & 4294967295
                # get_byte(b, 2)) * 16777619 & 4294967295
                # get_byte(b, 3)) * 16777619 & 4294967295
                # get_byte(b, 4)) * 16777619 & 4294967295
                # get_byte(b, 5)) * 16777619 & 4294967295
                # get_byte(b, 6)) * 16777619 & 4294967295
                # get_byte(b, 7)) * 16777619 & 4294967295);
        i := 8;
    END IF;
    IF i + 2 <= n THEN
        h := (((h # get_byte(b, i)) * 16777619 & 4294967295
                # get_byte(b, i + 1)) * 16777619 & 4294967295);
        i := i + 2;
    END IF;
    WHILE i < n LOOP
        h := (h # get_byte(b, i)) * 16777619 & 4294967295;
        i := i + 1;
    END LOOP;
    RETURN (h % 10000)::double precision / 10000;
END $$;

CREATE FUNCTION ab_hash_v2(seed text, unit_id text) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ab_hash_v2_from_state(ab_fnv1a32(seed), unit_id)
$$;

-- ---------------------------------------------------------------------------------------------------
-- What servers serve, one row per experiment. ab_assign reads one row by index instead of aggregating the
-- variants on every call (that alone costs 30 us). Kept by deferred triggers: they run at commit, after the
-- transaction's last row lock, so that serialising the refreshes of one experiment cannot deadlock with the
-- row locks of concurrent writers; the cost is that a transaction sees its own weight changes in ab_assign
-- only once it has committed, which is also when every server sees them.
-- ---------------------------------------------------------------------------------------------------
CREATE TABLE ab_serving (
    experiment_id   bigint PRIMARY KEY REFERENCES ab_experiments (id) ON DELETE CASCADE,
    experiment_name text NOT NULL,
    status          text NOT NULL,
    hash_seed       text NOT NULL,
    seed_state      bigint NOT NULL,             -- ab_fnv1a32(hash_seed): the hash continues from here
    variants        text[] NOT NULL,             -- control first, then by id (GrowthBook's fixed order)
    weights         double precision[] NOT NULL, -- traffic_weight as stored, same order
    range_ends      double precision[] NOT NULL, -- variant i gets buckets in [range_ends[i-1], range_ends[i])
    version         bigint NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Not unique: two experiments that swap names in one transaction pass through a moment where both rows
-- carry the same name (ab_experiments.name stays the unique one).
CREATE INDEX ab_serving_name_idx ON ab_serving (experiment_name);

CREATE FUNCTION ab_serving_refresh(exp_id bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    e ab_experiments%ROWTYPE;
    prev ab_serving%ROWTYPE;
    names text[];
    ws double precision[];
    ends double precision[] := '{}';
    total double precision := 0;
    cumulative double precision := 0;
    w double precision;
    seed text;
BEGIN
    -- One refresh at a time; under READ COMMITTED the statements below then see every commit that refreshed
    -- before us (the two-key form keeps clear of the single-key locks elsewhere). One key for all experiments,
    -- not one each: a transaction that changes several experiments takes it once, so two such transactions
    -- cannot deadlock at COMMIT by refreshing the same experiments in opposite orders. Serving changes are rare.
    PERFORM pg_advisory_xact_lock(1633842806, 0);
    SELECT * INTO e FROM ab_experiments WHERE id = exp_id;
    IF NOT FOUND THEN
        DELETE FROM ab_serving WHERE experiment_id = exp_id;
        PERFORM pg_notify('ab_serving_changed',
                          json_build_object('experiment_id', exp_id, 'experiment_name', NULL, 'status', 'deleted')::text);
        RETURN;
    END IF;
    SELECT coalesce(array_agg(v.name ORDER BY v.is_control DESC, v.id), '{}'),
           -- numeric holds weights double precision cannot: beyond its range a weight is clamped (below
           -- 1e-300: no traffic) instead of failing the commit that wrote it
           coalesce(array_agg(CASE WHEN v.traffic_weight < 1e-300 THEN 0
                                   ELSE least(v.traffic_weight, 1e300)::double precision END
                              ORDER BY v.is_control DESC, v.id), '{}')
      INTO names, ws
      FROM ab_variants v WHERE v.experiment_id = exp_id;
    -- Normalise in this order with double precision, as the Python client does, so both agree to the bit.
    FOREACH w IN ARRAY ws LOOP
        total := total + w;
    END LOOP;
    FOREACH w IN ARRAY ws LOOP
        IF total > 0 THEN
            cumulative := cumulative + w / total;
        END IF;
        ends := ends || cumulative;  -- no weight at all: every range is empty and nobody is assigned
    END LOOP;
    seed := coalesce(e.hash_seed, e.name);
    SELECT * INTO prev FROM ab_serving WHERE experiment_id = exp_id;
    IF FOUND AND prev.experiment_name = e.name AND prev.status = e.status AND prev.hash_seed = seed
       AND prev.variants = names AND prev.weights = ws THEN
        RETURN;  -- nothing a server would serve differently: no notification
    END IF;
    INSERT INTO ab_serving AS s (experiment_id, experiment_name, status, hash_seed, seed_state, variants, weights,
                                 range_ends)
    VALUES (exp_id, e.name, e.status, seed, ab_fnv1a32(seed), names, ws, ends)
    ON CONFLICT (experiment_id) DO UPDATE
       SET experiment_name = EXCLUDED.experiment_name, status = EXCLUDED.status, hash_seed = EXCLUDED.hash_seed,
           seed_state = EXCLUDED.seed_state, variants = EXCLUDED.variants, weights = EXCLUDED.weights,
           range_ends = EXCLUDED.range_ends, version = s.version + 1, updated_at = now();
    PERFORM pg_notify('ab_serving_changed',
                      json_build_object('experiment_id', exp_id, 'experiment_name', e.name, 'status', e.status)::text);
END $$;

CREATE FUNCTION ab_serving_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'ab_variants' THEN
        IF TG_OP <> 'INSERT' THEN
            PERFORM ab_serving_refresh(OLD.experiment_id);
        END IF;
        IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.experiment_id <> OLD.experiment_id) THEN
            PERFORM ab_serving_refresh(NEW.experiment_id);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM ab_serving_refresh(OLD.id);
    ELSE
        PERFORM ab_serving_refresh(NEW.id);
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ab_variants_serving
    AFTER INSERT OR DELETE OR UPDATE OF experiment_id, name, is_control, traffic_weight ON ab_variants
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ab_serving_changed();
CREATE CONSTRAINT TRIGGER ab_experiments_serving
    AFTER INSERT OR DELETE OR UPDATE OF name, status, hash_seed ON ab_experiments
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ab_serving_changed();

-- The experiments that exist before this migration.
SELECT ab_serving_refresh(id) FROM ab_experiments;

-- ---------------------------------------------------------------------------------------------------
-- Assignment: GrowthBook's bucket ranges over the normalised weights. range_ends is non-decreasing, so the
-- variant whose range [end(i-1), end(i)) holds the bucket is the one after the ends <= bucket, which is what
-- width_bucket counts (a binary search in C); zero-weight variants have empty ranges and are never chosen, and
-- an index past the last variant (no traffic at all) is NULL. Raising the last variant's share at the expense of
-- the first only moves units into it, which keeps ramps monotonic. A SQL function: its one indexed read costs
-- less than the same read through plpgsql.
-- ---------------------------------------------------------------------------------------------------
CREATE FUNCTION ab_assign(experiment_name text, unit_id text) RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT s.variants[width_bucket(ab_hash_v2_from_state(s.seed_state, unit_id), s.range_ends) + 1]
      FROM ab_serving s
     WHERE s.experiment_name = ab_assign.experiment_name AND s.status IN ('running', 'promoted')
$$;
