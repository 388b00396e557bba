-- Roles get a lifetime cap; keys get direct permissions and a CIDR allow-list.

-- Longest lifetime (milliseconds) of a key holding the role; NULL: no cap.
ALTER TABLE roles ADD COLUMN max_ttl_ms INTEGER CHECK (max_ttl_ms > 0);

-- Permissions granted to a key directly, besides its roles'.
CREATE TABLE key_permissions (
    key_id     TEXT NOT NULL REFERENCES api_keys (id),
    permission TEXT NOT NULL,
    PRIMARY KEY (key_id, permission)
) STRICT;

-- A key with rows here validates only for a client_ip inside one range.
CREATE TABLE key_cidrs (
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    -- Normalised range, e.g. `10.0.0.0/8`, `2001:db8::/32`.
    cidr   TEXT NOT NULL,
    PRIMARY KEY (key_id, cidr)
) STRICT;

-- Audit queries filter by actor and time.
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_at ON audit_log (at);
