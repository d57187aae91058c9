-- Provider keys: an optional name shown by `list`, and the last time a data plane forwarded a
-- request with the key (from usage reports; only ever moves forward, kept across rotations).
ALTER TABLE provider_keys ADD COLUMN name TEXT;
ALTER TABLE provider_keys ADD COLUMN last_used_at BIGINT;
