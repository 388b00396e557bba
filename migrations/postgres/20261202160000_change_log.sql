-- What the change feed announced, kept for a while (src/store/feed.rs), so
-- that a replica whose feed connection dropped for a moment reads what it
-- missed instead of reloading every key. PostgreSQL only: SQLite has no
-- feed. Rows are ordered by the writing transaction's id (`xid`): a replica
-- remembers the oldest transaction still running when it last knew its
-- index current, and reads from there.

CREATE TABLE change_log (
    id      BIGSERIAL PRIMARY KEY,
    xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- Milliseconds since the epoch, by the database's clock: for pruning.
    at      BIGINT NOT NULL DEFAULT (extract(epoch FROM now()) * 1000)::BIGINT,
    -- A notification payload as sent on the feed.
    payload TEXT NOT NULL
);
CREATE INDEX change_log_xid ON change_log (xid);
CREATE INDEX change_log_at ON change_log (at);
