-- The core entity store: documents, their types and attributes, the attribute-value index,
-- the geo index and small blobs. Text that is compared or sorted uses the "C" collation so
-- that PostgreSQL orders strings by code point, as the SQLite engine does.
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE tenants(name text COLLATE "C" PRIMARY KEY);

CREATE TABLE entities(
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    -- json, not jsonb: the document comes back with its members in the order they were written
    doc json NOT NULL,
    types text[] COLLATE "C" NOT NULL,
    created_at text NOT NULL,
    modified_at text NOT NULL,
    UNIQUE(tenant, id)
);
-- "WHERE tenant=$1 ORDER BY rid LIMIT n" stops after n rows
CREATE INDEX entities_tenant_rid ON entities(tenant, rid);
CREATE INDEX entities_types ON entities USING gin(types);

CREATE TABLE entity_attrs(
    rid bigint NOT NULL REFERENCES entities(rid) ON DELETE CASCADE,
    attr text COLLATE "C" NOT NULL,
    atype text COLLATE "C" NOT NULL,
    PRIMARY KEY(rid, attr, atype)
);
CREATE INDEX entity_attrs_attr ON entity_attrs(attr, rid);

-- Attribute paths are interned: index rows carry a small integer.
CREATE TABLE attr_paths(
    pid integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path text COLLATE "C" NOT NULL UNIQUE
);

-- One row per comparable value (see cityos/storage/sqlite_attrindex.py for the kinds t):
-- numbers and booleans in n, strings and canonical DateTimes in s, JSON values in j.
CREATE TABLE attr_index(
    rid bigint NOT NULL REFERENCES entities(rid) ON DELETE CASCADE,
    pid integer NOT NULL REFERENCES attr_paths(pid),
    t smallint NOT NULL,
    n double precision,
    s text COLLATE "C",
    j jsonb
);
CREATE INDEX attr_index_rid ON attr_index(rid, pid, t);
CREATE INDEX attr_index_number ON attr_index(pid, t, n) WHERE n IS NOT NULL;
-- a hash index has no size limit per value, unlike a btree (a long description would not fit)
CREATE INDEX attr_index_string ON attr_index USING hash(s);

-- One row per GeoProperty instance.
CREATE TABLE geo_index(
    gid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rid bigint NOT NULL REFERENCES entities(rid) ON DELETE CASCADE,
    attr text COLLATE "C" NOT NULL,
    geom geometry(Geometry, 4326) NOT NULL
);
CREATE INDEX geo_index_rid ON geo_index(rid, attr);
CREATE INDEX geo_index_geom ON geo_index USING gist(geom);
-- near queries measure on the spheroid
CREATE INDEX geo_index_geog ON geo_index USING gist((geom::geography));

CREATE TABLE kv(
    ns text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY(ns, key)
);
