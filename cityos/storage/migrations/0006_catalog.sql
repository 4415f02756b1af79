-- The open data catalog's metadata: organizations and groups, datasets with the columns searched,
-- sorted and faceted on, their tags, groups and resource formats, the search text, the result
-- cache's generation counter and the API tokens (sha256 only). Names, tags and formats use the
-- "C" collation, so they sort by code point as on SQLite.

-- organizations and groups share one table and one name space, as in CKAN
CREATE TABLE catalog_groups(
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,
    name text COLLATE "C" NOT NULL UNIQUE,
    is_org boolean NOT NULL,
    title text COLLATE "C" NOT NULL,
    created text NOT NULL,
    state text NOT NULL,
    doc text NOT NULL
);

-- rid plays SQLite's rowid: the key of the join tables and of the search rows
CREATE TABLE catalog_datasets(
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,
    name text COLLATE "C" NOT NULL UNIQUE,
    title text NOT NULL,
    title_sort text COLLATE "C" NOT NULL,
    owner_org text COLLATE "C",
    org_name text COLLATE "C",
    private boolean NOT NULL,
    state text COLLATE "C" NOT NULL,
    license_id text COLLATE "C",
    type text COLLATE "C" NOT NULL,
    metadata_created text COLLATE "C" NOT NULL,
    metadata_modified text COLLATE "C" NOT NULL,
    num_resources integer NOT NULL,
    num_tags integer NOT NULL
);
CREATE INDEX catalog_datasets_list ON catalog_datasets(state, private, name);
CREATE INDEX catalog_datasets_modified ON catalog_datasets(state, private, metadata_modified);
CREATE INDEX catalog_datasets_org ON catalog_datasets(owner_org);

-- the CKAN dict as text (byte for byte what was stored), apart from the narrow rows
CREATE TABLE catalog_dataset_docs(
    ds bigint PRIMARY KEY REFERENCES catalog_datasets(rid) ON DELETE CASCADE,
    doc text NOT NULL
);

CREATE TABLE catalog_dataset_tags(
    tag text COLLATE "C" NOT NULL,
    ds bigint NOT NULL REFERENCES catalog_datasets(rid) ON DELETE CASCADE,
    PRIMARY KEY(tag, ds)
);
CREATE INDEX catalog_dataset_tags_ds ON catalog_dataset_tags(ds);

CREATE TABLE catalog_dataset_groups(
    grp text COLLATE "C" NOT NULL,
    ds bigint NOT NULL REFERENCES catalog_datasets(rid) ON DELETE CASCADE,
    PRIMARY KEY(grp, ds)
);
CREATE INDEX catalog_dataset_groups_ds ON catalog_dataset_groups(ds);

CREATE TABLE catalog_resources(
    id text COLLATE "C" PRIMARY KEY,
    ds bigint NOT NULL REFERENCES catalog_datasets(rid) ON DELETE CASCADE,
    format text COLLATE "C" NOT NULL
);
CREATE INDEX catalog_resources_ds_format ON catalog_resources(ds, format);
CREATE INDEX catalog_resources_format ON catalog_resources(format, ds);

-- the search text, already tokenized (cityos/catalog/text.py) and joined by single spaces:
-- a phrase is found with strpos, counted with regexp_count (as FTS5 counts its instances for
-- bm25); `lexemes` (each distinct token once) lets the GIN index find the candidate rows
CREATE TABLE catalog_fts(
    ds bigint PRIMARY KEY REFERENCES catalog_datasets(rid) ON DELETE CASCADE,
    title text NOT NULL,
    notes text NOT NULL,
    body text NOT NULL,
    -- tokens in the three columns: the document length of bm25
    ntok integer NOT NULL,
    lexemes tsvector NOT NULL
);
CREATE INDEX catalog_fts_lexemes ON catalog_fts USING gin(lexemes);

-- bumped by every change to datasets or groups (from any worker), in the writing transaction:
-- search results cached under one generation are what a search would find while it lasts
CREATE TABLE catalog_generation(
    id integer PRIMARY KEY CHECK (id = 1),
    n bigint NOT NULL
);
INSERT INTO catalog_generation(id, n) VALUES (1, 0);

CREATE FUNCTION catalog_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_generation SET n = n + 1 WHERE id = 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER catalog_datasets_gen AFTER INSERT OR UPDATE OR DELETE ON catalog_datasets
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_bump_generation();
CREATE TRIGGER catalog_groups_gen AFTER INSERT OR UPDATE OR DELETE ON catalog_groups
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_bump_generation();

CREATE TABLE catalog_tokens(
    rid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    hash text COLLATE "C" PRIMARY KEY,
    prefix text COLLATE "C" NOT NULL,
    user_name text NOT NULL,
    created text COLLATE "C" NOT NULL,
    last_used text
);
