-- PRAGMA user_version 2: soft caps, rate limits, the price table and usage batches.
ALTER TABLE projects ADD COLUMN spend_soft_cap_microusd INTEGER;
ALTER TABLE keys ADD COLUMN spend_soft_cap_microusd INTEGER;
ALTER TABLE keys ADD COLUMN rate_limit_rpm INTEGER;
ALTER TABLE keys ADD COLUMN rate_limit_tpm INTEGER;

CREATE TABLE prices (
    model                          TEXT PRIMARY KEY,
    input_microusd_per_mtok        INTEGER NOT NULL,
    output_microusd_per_mtok       INTEGER NOT NULL,
    cached_input_microusd_per_mtok INTEGER,
    cache_write_microusd_per_mtok  INTEGER,
    updated_at                     INTEGER NOT NULL
);

-- batch_id is the idempotency key of usage reports.
CREATE TABLE usage_batches (
    batch_id       TEXT PRIMARY KEY,
    reporter       TEXT NOT NULL,
    received_at    INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    entries        INTEGER NOT NULL,
    applied        INTEGER NOT NULL,
    skipped        INTEGER NOT NULL,
    cost_microusd  INTEGER NOT NULL,
    requests       INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL
);
CREATE INDEX usage_batches_by_time ON usage_batches (received_at);
