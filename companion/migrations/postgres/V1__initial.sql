-- keyward's PostgreSQL schema. Integers are BIGINT (the store's numbers are i64, as in SQLite).
-- Never edit a released migration: add a new one.
CREATE TABLE policy_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO policy_version (id, version) VALUES (1, 1);

-- The issue time the replicas agreed on for the current version, so that every replica serves
-- the same snapshot bytes (and ETag) for it.
CREATE TABLE snapshot_issue (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    version   BIGINT NOT NULL,
    issued_at BIGINT NOT NULL
);

-- Ids and models sort by bytes (COLLATE "C"), as in SQLite, whatever the database's locale.
CREATE TABLE projects (
    id                      TEXT COLLATE "C" PRIMARY KEY,
    org                     TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('active', 'archived', 'suspended')),
    spend_cap_microusd      BIGINT,
    spent_microusd          BIGINT NOT NULL DEFAULT 0,
    created_at              BIGINT NOT NULL,
    archived_at             BIGINT,
    spend_soft_cap_microusd BIGINT,
    pending_spend_microusd  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE keys (
    id                      TEXT COLLATE "C" PRIMARY KEY,
    format                  TEXT NOT NULL CHECK (format IN ('ak', 'vpx')),
    secret_sha256           TEXT,
    key_sha256              TEXT UNIQUE,
    project                 TEXT REFERENCES projects (id),
    org                     TEXT,
    environment             TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('active', 'paused', 'revoked')),
    scopes                  TEXT NOT NULL,
    models                  TEXT,
    expires_at              BIGINT,
    spend_cap_microusd      BIGINT,
    spent_microusd          BIGINT NOT NULL DEFAULT 0,
    label                   TEXT,
    note                    TEXT,
    created_at              BIGINT NOT NULL,
    last_seen_at            BIGINT,
    rotated_from            TEXT REFERENCES keys (id),
    revoke_at               BIGINT,
    revoked_at              BIGINT,
    spend_soft_cap_microusd BIGINT,
    rate_limit_rpm          BIGINT,
    rate_limit_tpm          BIGINT,
    pending_spend_microusd  BIGINT NOT NULL DEFAULT 0,
    CHECK ((secret_sha256 IS NULL) <> (key_sha256 IS NULL)),
    CHECK ((project IS NULL) <> (org IS NULL))
);
CREATE INDEX keys_by_project ON keys (project);
CREATE INDEX keys_by_rotated_from ON keys (rotated_from);
CREATE INDEX keys_pending_revocation ON keys (revoke_at)
    WHERE revoke_at IS NOT NULL AND status <> 'revoked';
CREATE INDEX keys_pending_spend ON keys (id) WHERE pending_spend_microusd > 0;
CREATE INDEX projects_pending_spend ON projects (id) WHERE pending_spend_microusd > 0;

CREATE TABLE audit_events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    details        TEXT NOT NULL,
    policy_version BIGINT NOT NULL
);

CREATE TABLE prices (
    model                          TEXT COLLATE "C" PRIMARY KEY,
    input_microusd_per_mtok        BIGINT NOT NULL,
    output_microusd_per_mtok       BIGINT NOT NULL,
    cached_input_microusd_per_mtok BIGINT,
    cache_write_microusd_per_mtok  BIGINT,
    updated_at                     BIGINT NOT NULL
);

-- batch_id is the idempotency key of usage reports; seq keeps their arrival order.
CREATE TABLE usage_batches (
    batch_id       TEXT PRIMARY KEY,
    seq            BIGINT GENERATED ALWAYS AS IDENTITY,
    reporter       TEXT NOT NULL,
    received_at    BIGINT NOT NULL,
    policy_version BIGINT NOT NULL,
    entries        BIGINT NOT NULL,
    applied        BIGINT NOT NULL,
    skipped        BIGINT NOT NULL,
    cost_microusd  BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL
);
CREATE INDEX usage_batches_by_time ON usage_batches (received_at);
