-- Rate limits (keys and role defaults), usage caps, and usage tracking.

-- A key's own rate limit: `rate_requests` per `rate_period_ms`, bursts of
-- `rate_burst`. All three NULL: none of its own.
ALTER TABLE api_keys ADD COLUMN rate_requests INTEGER CHECK (rate_requests > 0);
ALTER TABLE api_keys ADD COLUMN rate_period_ms INTEGER CHECK (rate_period_ms > 0);
ALTER TABLE api_keys ADD COLUMN rate_burst INTEGER CHECK (rate_burst > 0);

-- Usage cap: NULL for an uncapped key. `uses_remaining` is decremented,
-- durably and conditionally, before a capped key's validation is answered.
ALTER TABLE api_keys ADD COLUMN max_uses INTEGER CHECK (max_uses > 0);
ALTER TABLE api_keys ADD COLUMN uses_remaining INTEGER CHECK (uses_remaining >= 0);

-- Written in batches off the hot path; may lag by the flush interval.
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
ALTER TABLE api_keys ADD COLUMN use_count INTEGER NOT NULL DEFAULT 0;

-- Default rate limit of keys holding the role that have none of their own.
ALTER TABLE roles ADD COLUMN rate_requests INTEGER CHECK (rate_requests > 0);
ALTER TABLE roles ADD COLUMN rate_period_ms INTEGER CHECK (rate_period_ms > 0);
ALTER TABLE roles ADD COLUMN rate_burst INTEGER CHECK (rate_burst > 0);
