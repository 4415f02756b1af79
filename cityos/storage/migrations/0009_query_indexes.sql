-- Indexes that let queries over many entities read narrow index entries rather than rows
-- (bench/million.py: 1,000,000 entities). A query first finds the rids of its page, checking
-- types and attribute values in indexes only, then reads the documents of that page alone.

-- the type test of a candidate entity without reading its document
CREATE INDEX entities_tenant_rid_types ON entities(tenant, rid) INCLUDE (types);
DROP INDEX entities_tenant_rid;

-- number comparisons yield their entities without visiting the index rows
CREATE INDEX attr_index_number_rid ON attr_index(pid, t, n) INCLUDE (rid) WHERE n IS NOT NULL;
DROP INDEX attr_index_number;

-- text equality by attribute, in place of the hash index on s, which knows no attribute: a
-- btree entry has a size limit, so it holds the first 200 characters, which decide equality
-- with a shorter value on their own (pg_query.PgDialect.equal)
CREATE INDEX attr_index_text ON attr_index(pid, t, left(s, 200)) INCLUDE (rid)
    WHERE s IS NOT NULL;
DROP INDEX attr_index_string;
