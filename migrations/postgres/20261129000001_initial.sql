-- The keyward schema (PostgreSQL): the same tables and rules as the three
-- SQLite migrations up to 20261129000003, in one step.
-- Times are BIGINT milliseconds since the Unix epoch, UTC.
-- Ids and names compare byte-wise (COLLATE "C"), as in SQLite, so pages and
-- cursors order the same on both databases.
-- Never edit this file once shipped: add a new migration instead.

-- One row once the database has been initialised (built-in roles and the
-- first admin key exist). `keywardctl init` refuses to run twice because of it.
CREATE TABLE keyward_meta (
    name  TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE roles (
    name           TEXT COLLATE "C" PRIMARY KEY,
    description    TEXT NOT NULL DEFAULT '',
    -- 1 for `admin` and `validator`: they cannot be changed or deleted.
    builtin        SMALLINT NOT NULL DEFAULT 0 CHECK (builtin IN (0, 1)),
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    -- Longest lifetime (milliseconds) of a key holding the role; NULL: no cap.
    max_ttl_ms     BIGINT CHECK (max_ttl_ms > 0),
    -- Default rate limit of keys holding the role that have none of their own.
    rate_requests  BIGINT CHECK (rate_requests > 0),
    rate_period_ms BIGINT CHECK (rate_period_ms > 0),
    rate_burst     BIGINT CHECK (rate_burst > 0)
);

CREATE TABLE role_permissions (
    role       TEXT COLLATE "C" NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    -- A permission in keyward's grammar, e.g. `deploy:write` or `deploy:*`.
    permission TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (role, permission)
);

CREATE TABLE api_keys (
    -- Public key id (the selector): 11 base62 characters, also visible in the key.
    id             TEXT COLLATE "C" PRIMARY KEY,
    prefix         TEXT NOT NULL,
    -- BLAKE3 derive_key digest of prefix, id and secret (32 bytes). The
    -- plaintext key is never stored.
    digest         BYTEA NOT NULL CHECK (length(digest) = 32),
    owner          TEXT COLLATE "C" NOT NULL DEFAULT '',
    description    TEXT NOT NULL DEFAULT '',
    created_at     BIGINT NOT NULL,
    -- Id of the key that minted this one; NULL for the first admin key.
    created_by     TEXT COLLATE "C",
    -- NULL: never expires. Rotation with a grace period sets it.
    expires_at     BIGINT,
    -- Set once, never cleared.
    revoked_at     BIGINT,
    revoke_reason  TEXT,
    -- Rotation links: the key this one replaced, and the key that replaced it.
    rotated_from   TEXT COLLATE "C" REFERENCES api_keys (id),
    rotated_to     TEXT COLLATE "C" REFERENCES api_keys (id),
    -- A key's own rate limit: `rate_requests` per `rate_period_ms`, bursts of
    -- `rate_burst`. All three NULL: none of its own.
    rate_requests  BIGINT CHECK (rate_requests > 0),
    rate_period_ms BIGINT CHECK (rate_period_ms > 0),
    rate_burst     BIGINT CHECK (rate_burst > 0),
    -- Usage cap: NULL for an uncapped key. `uses_remaining` is decremented,
    -- durably and conditionally, before a capped key's validation is
    -- answered, so the cap holds across replicas.
    max_uses       BIGINT CHECK (max_uses > 0),
    uses_remaining BIGINT CHECK (uses_remaining >= 0),
    -- Written in batches off the hot path; may lag by the flush interval.
    last_used_at   BIGINT,
    use_count      BIGINT NOT NULL DEFAULT 0
);

-- ListKeys pages newest first.
CREATE INDEX api_keys_created ON api_keys (created_at DESC, id DESC);
CREATE INDEX api_keys_owner ON api_keys (owner);

CREATE TABLE key_roles (
    key_id TEXT COLLATE "C" NOT NULL REFERENCES api_keys (id),
    role   TEXT COLLATE "C" NOT NULL REFERENCES roles (name),
    PRIMARY KEY (key_id, role)
);
CREATE INDEX key_roles_role ON key_roles (role);

-- Permissions granted to a key directly, besides its roles'.
CREATE TABLE key_permissions (
    key_id     TEXT COLLATE "C" NOT NULL REFERENCES api_keys (id),
    permission TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (key_id, permission)
);

-- A key with rows here validates only for a client_ip inside one range.
CREATE TABLE key_cidrs (
    key_id TEXT COLLATE "C" NOT NULL REFERENCES api_keys (id),
    -- Normalised range, e.g. `10.0.0.0/8`, `2001:db8::/32`.
    cidr   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (key_id, cidr)
);

CREATE TABLE key_labels (
    key_id TEXT COLLATE "C" NOT NULL REFERENCES api_keys (id),
    name   TEXT COLLATE "C" NOT NULL,
    value  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (key_id, name)
);
CREATE INDEX key_labels_name_value ON key_labels (name, value);

-- Append-only: one record per change, written in the change's transaction.
-- It never holds a secret.
CREATE TABLE audit_log (
    seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     BIGINT NOT NULL,
    -- Key id of the caller; NULL for the local operator (init, first start).
    actor  TEXT COLLATE "C",
    -- e.g. `key.mint`, `key.revoke`; see AuditAction in src/model.rs.
    action TEXT NOT NULL,
    -- The key id (or role name) the change was made to.
    target TEXT COLLATE "C",
    reason TEXT
);
CREATE INDEX audit_log_target ON audit_log (target, seq);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
