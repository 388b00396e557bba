-- OIDC trust policies (which CI jobs may exchange an identity token for a
-- key) and the replay record of exchanged tokens. See src/trust.rs.

CREATE TABLE trust_policies (
    name          TEXT PRIMARY KEY NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    -- The issuer URL, compared with the token's `iss` byte for byte.
    issuer        TEXT NOT NULL,
    -- What the token's `aud` must contain.
    audience      TEXT NOT NULL,
    -- JSON object: claim name -> pattern (exact, or a prefix ending in `*`).
    claims        TEXT NOT NULL,
    -- JSON arrays of role names, permissions and CIDRs the minted key gets.
    roles         TEXT NOT NULL,
    permissions   TEXT NOT NULL,
    allowed_cidrs TEXT NOT NULL,
    -- JSON object: the minted key's labels, besides the exchange's own.
    labels        TEXT NOT NULL,
    -- The minted key's lifetime, at most an hour.
    ttl_ms        INTEGER NOT NULL CHECK (ttl_ms > 0 AND ttl_ms <= 3600000),
    -- Owner of the minted keys (the creator's, for a narrow admin key).
    owner         TEXT NOT NULL DEFAULT '',
    -- The key that created the policy; minted keys count as its.
    created_by    TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- One row per exchanged token, written in the transaction that mints its
-- key: the primary key refuses a second exchange of the same token, on any
-- replica. Rows are pruned once the token (plus leeway) has expired, when
-- it could no longer be exchanged anyway.
CREATE TABLE oidc_replay (
    issuer     TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, jti)
) STRICT;
CREATE INDEX oidc_replay_expires ON oidc_replay (expires_at);
