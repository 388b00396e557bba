-- The initial keyward schema (SQLite).
-- Times are INTEGER milliseconds since the Unix epoch, UTC.
-- Never edit this file once shipped: add a new migration instead.

-- One row once the database has been initialised (built-in roles and the
-- first admin key exist). `keywardctl init` refuses to run twice because of it.
CREATE TABLE keyward_meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE roles (
    name        TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    -- 1 for `admin` and `validator`: they cannot be changed or deleted.
    builtin     INTEGER NOT NULL DEFAULT 0 CHECK (builtin IN (0, 1)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE role_permissions (
    role       TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    -- A permission in keyward's grammar, e.g. `deploy:write` or `deploy:*`.
    permission TEXT NOT NULL,
    PRIMARY KEY (role, permission)
) STRICT;

CREATE TABLE api_keys (
    -- Public key id (the selector): 11 base62 characters, also visible in the key.
    id            TEXT PRIMARY KEY NOT NULL,
    prefix        TEXT NOT NULL,
    -- BLAKE3 derive_key digest of prefix, id and secret (32 bytes). The
    -- plaintext key is never stored.
    digest        BLOB NOT NULL CHECK (length(digest) = 32),
    owner         TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    -- Id of the key that minted this one; NULL for the first admin key.
    created_by    TEXT,
    -- NULL: never expires. Rotation with a grace period sets it.
    expires_at    INTEGER,
    -- Set once, never cleared.
    revoked_at    INTEGER,
    revoke_reason TEXT,
    -- Rotation links: the key this one replaced, and the key that replaced it.
    rotated_from  TEXT REFERENCES api_keys (id),
    rotated_to    TEXT REFERENCES api_keys (id)
) STRICT;

-- ListKeys pages newest first.
CREATE INDEX api_keys_created ON api_keys (created_at DESC, id DESC);
CREATE INDEX api_keys_owner ON api_keys (owner);

CREATE TABLE key_roles (
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    role   TEXT NOT NULL REFERENCES roles (name),
    PRIMARY KEY (key_id, role)
) STRICT;
CREATE INDEX key_roles_role ON key_roles (role);

CREATE TABLE key_labels (
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    name   TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (key_id, name)
) STRICT;
CREATE INDEX key_labels_name_value ON key_labels (name, value);

-- Append-only: one record per change, written in the change's transaction.
-- It never holds a secret.
CREATE TABLE audit_log (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    -- Key id of the caller; NULL for the local operator (init, first start).
    actor  TEXT,
    -- e.g. `key.mint`, `key.revoke`; see AuditAction in src/model.rs.
    action TEXT NOT NULL,
    -- The key id (or role name) the change was made to.
    target TEXT,
    reason TEXT
) STRICT;
CREATE INDEX audit_log_target ON audit_log (target, seq);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
