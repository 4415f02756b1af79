-- A query by type walks that type's entities in creation order and checks each candidate's
-- attribute values in narrow index entries, stopping once a page is full
-- (pg_walk.py; bench/million.py). Rewrites the entities table once: about 30 s per million.

-- the first type of an entity, kept by PostgreSQL itself; most entities have one type
ALTER TABLE entities ADD COLUMN type1 text COLLATE "C" GENERATED ALWAYS AS (types[1]) STORED;
CREATE INDEX entities_type1 ON entities(tenant, type1, rid);
-- the few entities with more types: a walk by first type misses those whose other type is
-- asked for, so it first checks there are none (pg_walk.py)
CREATE INDEX entities_multitype ON entities(tenant, rid) INCLUDE (types)
    WHERE cardinality(types) > 1;
-- without statistics of the number of types, PostgreSQL takes a third of all entities to
-- have several and scans the table for one rather than this small index
CREATE STATISTICS entities_type_count ON (cardinality(types)) FROM entities;

-- a candidate's number checked without visiting its index row
CREATE INDEX attr_index_rid_n ON attr_index(rid, pid, t) INCLUDE (n);
DROP INDEX attr_index_rid;
ALTER INDEX attr_index_rid_n RENAME TO attr_index_rid;

-- text equality: values under 200 characters (nearly all) in full, so that an equality is
-- answered from the index alone and in creation order; longer ones by their first 200
-- characters (a btree entry has a size limit), compared whole after (pg_query.PgDialect.equal)
CREATE INDEX attr_index_short ON attr_index(pid, t, s, rid) WHERE length(s) < 200;
CREATE INDEX attr_index_long ON attr_index(pid, t, left(s, 200)) INCLUDE (rid)
    WHERE length(s) >= 200;
DROP INDEX attr_index_text;

-- statistics of the new column and index expressions, so that plans use them at once
ANALYZE entities;
ANALYZE attr_index;
