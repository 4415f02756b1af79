-- API keys, staff accounts and their sessions, and the hash-chained audit log.
-- Times are seconds since the epoch in double precision, as the SQLite engine's REAL; names
-- that are listed in order use the "C" collation, so they sort by code point as on SQLite.

CREATE TABLE auth_keys(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prefix text COLLATE "C" NOT NULL UNIQUE,
    -- sha256 of the whole key: a key is never stored in clear
    digest text NOT NULL,
    name text NOT NULL,
    roles text[] NOT NULL,
    tenants text[] NOT NULL,
    scopes text[] NOT NULL,
    created double precision NOT NULL,
    expires double precision,
    revoked double precision,
    last_used double precision
);

CREATE TABLE auth_users(
    name text COLLATE "C" PRIMARY KEY,
    display_name text NOT NULL,
    roles text[] NOT NULL,
    tenants text[] NOT NULL,
    -- the argon2id hash
    password text NOT NULL,
    created double precision NOT NULL,
    disabled boolean NOT NULL DEFAULT false,
    last_login double precision,
    failures integer NOT NULL DEFAULT 0,
    first_failure double precision,
    locked_until double precision,
    -- creation order, in which dumps list the accounts (as SQLite's rowid)
    rid bigint GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE auth_sessions(
    -- sha256 of the cookie's token
    digest text COLLATE "C" PRIMARY KEY,
    user_name text COLLATE "C" NOT NULL REFERENCES auth_users(name) ON DELETE CASCADE,
    csrf text NOT NULL,
    created double precision NOT NULL,
    last_seen double precision NOT NULL
);
CREATE INDEX auth_sessions_user ON auth_sessions(user_name);

-- detail is text, not json or jsonb: it must come back byte for byte as it was hashed, and
-- a damaged value must still be readable so that verification can say where it is. No index
-- on hash: verification looks a hash up (a scan) only once it has found a problem.
CREATE TABLE audit_log(
    seq bigint PRIMARY KEY,
    at text NOT NULL,
    actor text NOT NULL,
    action text COLLATE "C" NOT NULL,
    target text NOT NULL,
    tenant text NOT NULL,
    outcome text NOT NULL,
    detail text NOT NULL,
    prev text NOT NULL,
    hash text NOT NULL
);
-- "the latest record of an action" (the policy in force) without a scan
CREATE INDEX audit_log_action ON audit_log(action, seq);

-- one row: the latest (seq, hash), so a deleted last record is noticed
CREATE TABLE audit_head(
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    hash text NOT NULL
);
INSERT INTO audit_head(id, seq, hash) VALUES (1, 0, repeat('0', 64));
