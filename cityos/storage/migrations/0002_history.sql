-- The temporal history (cityos/storage/pg_history.py): entities with a history, their types,
-- and every recorded attribute instance. Times are integer microseconds since the epoch (UTC).
CREATE TABLE history_entities(
    hid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    eid text COLLATE "C" NOT NULL,
    UNIQUE(tenant, eid)
);

CREATE TABLE history_types(
    tenant text COLLATE "C" NOT NULL,
    type text COLLATE "C" NOT NULL,
    hid bigint NOT NULL,
    -- keeps the entity's types in the order they were written
    pos bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY(tenant, type, hid)
);
CREATE INDEX history_types_hid ON history_types(hid, pos);

-- instanceIds come from a sequence: never reused after their instance was deleted
CREATE SEQUENCE attr_history_iid_seq AS bigint;

-- Partitioned by observedAt, one partition per calendar month (UTC), named
-- attr_history_yYYYYmMM and created on demand; retention drops whole partitions.
CREATE TABLE attr_history(
    iid bigint NOT NULL DEFAULT nextval('attr_history_iid_seq'),
    hid bigint NOT NULL,
    attr text COLLATE "C" NOT NULL,
    ds text COLLATE "C" NOT NULL,        -- datasetId, '' for the default instance
    t_obs bigint NOT NULL,               -- observedAt, else the time of the change
    t_cre bigint NOT NULL,
    t_mod bigint NOT NULL,
    num double precision,                -- a numeric value (aggregation); NULL otherwise
    val text COLLATE "C",                -- any other value as JSON (distinctCount)
    inst json NOT NULL
) PARTITION BY RANGE (t_obs);
ALTER SEQUENCE attr_history_iid_seq OWNED BY attr_history.iid;
-- val stays out of the index: a btree entry cannot hold a long text
CREATE INDEX attr_history_obs ON attr_history(hid, attr, t_obs, ds) INCLUDE (num);
CREATE INDEX attr_history_cre ON attr_history(hid, attr, t_cre);
CREATE INDEX attr_history_iid ON attr_history(iid);
CREATE INDEX attr_history_age ON attr_history(t_obs);
