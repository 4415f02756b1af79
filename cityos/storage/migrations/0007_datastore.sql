-- The datastore: one table per resource. Its metadata lives beside the other cityos tables;
-- the resource tables live in a schema of their own ("datastore", or "<schema>_datastore"
-- when cityos is not in public), so datastore_search_sql can run as a role that may read that
-- schema and nothing else of cityos.

CREATE TABLE datastore_tables(
    resource_id text COLLATE "C" PRIMARY KEY,
    fields text NOT NULL,       -- [{id, type, info}] as JSON, in column order
    primary_key text NOT NULL,  -- [field id] as JSON
    indexes text NOT NULL       -- [field id] as JSON
);

CREATE TABLE datastore_aliases(
    alias text COLLATE "C" PRIMARY KEY,
    resource_id text COLLATE "C" NOT NULL
);
CREATE INDEX datastore_aliases_resource ON datastore_aliases(resource_id);

-- one row: the resource tables' schema and the read-only role of datastore_search_sql (NULL
-- when the migrating user may not create roles: see docs/postgres.md)
CREATE TABLE datastore_config(
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    schema_name text NOT NULL,
    reader_role text
);

DO $$
DECLARE
    ds text := CASE WHEN current_schema() = 'public' THEN 'datastore'
                    ELSE current_schema() || '_datastore' END;
    -- roles belong to the whole server: one per database, sharing its name
    reader text := left(current_database(), 40) || '_datastore_reader';
BEGIN
    EXECUTE format('CREATE SCHEMA %I', ds);
    -- an administrator may have made the role (and granted it to us) beforehand
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = reader) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', reader);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- made meanwhile
            WHEN insufficient_privilege THEN reader := NULL;
        END;
    END IF;
    IF reader IS NOT NULL AND NOT pg_has_role(current_user, reader, 'MEMBER') THEN
        BEGIN
            -- members may SET ROLE to it
            EXECUTE format('GRANT %I TO %I', reader, current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            reader := NULL;
        END;
    END IF;
    IF reader IS NOT NULL THEN
        -- it may look up names in the datastore schema; each table grants it SELECT
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', ds, reader);
    END IF;
    INSERT INTO datastore_config(schema_name, reader_role) VALUES (ds, reader);
END
$$;
