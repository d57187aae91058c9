-- Budgets that reset, quotas and plans (#15). V5 is taken by data-plane tokens (#14).
-- A key's or project's own limits: JSON {"plan", "utc_offset_minutes", "budgets", "quotas"}.
ALTER TABLE keys ADD COLUMN limits TEXT;
ALTER TABLE projects ADD COLUMN limits TEXT;

-- Plans: a plan's budgets, quotas, models and rate limits as JSON (the snapshot's plan record).
CREATE TABLE plans (
    id         TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- What each window of a key or project used: the figures published in snapshots, and the
-- figures reported since, waiting for the next policy version (like pending_spend_microusd).
CREATE TABLE window_usage (
    owner_kind             TEXT NOT NULL CHECK (owner_kind IN ('key', 'project')),
    owner_id               TEXT NOT NULL,
    window_id              TEXT NOT NULL,
    period                 TEXT NOT NULL CHECK (period IN ('day', 'week', 'month')),
    starts_at              INTEGER NOT NULL,
    ends_at                INTEGER NOT NULL,
    spent_microusd         INTEGER NOT NULL DEFAULT 0,
    requests               INTEGER NOT NULL DEFAULT 0,
    tokens                 INTEGER NOT NULL DEFAULT 0,
    pending_spent_microusd INTEGER NOT NULL DEFAULT 0,
    pending_requests       INTEGER NOT NULL DEFAULT 0,
    pending_tokens         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner_kind, owner_id, window_id)
);
CREATE INDEX window_usage_by_end ON window_usage (ends_at);

-- Temporary increases: counted by every Envoy until expires_at, then gone by themselves.
CREATE TABLE budget_increases (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_kind TEXT NOT NULL CHECK (owner_kind IN ('key', 'project')),
    owner_id   TEXT NOT NULL,
    period     TEXT NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
    microusd   INTEGER NOT NULL DEFAULT 0,
    requests   INTEGER NOT NULL DEFAULT 0,
    tokens     INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL
);
CREATE INDEX budget_increases_by_owner ON budget_increases (owner_kind, owner_id);

-- Soft-cap and cap crossings, one per window and level, and their webhook delivery.
CREATE TABLE budget_alerts (
    owner_kind   TEXT NOT NULL CHECK (owner_kind IN ('key', 'project')),
    owner_id     TEXT NOT NULL,
    window_id    TEXT NOT NULL,
    level        TEXT NOT NULL CHECK (level IN ('soft_cap', 'cap')),
    created_at   INTEGER NOT NULL,
    payload      TEXT NOT NULL,
    delivered_at INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try_at  INTEGER NOT NULL,
    last_error   TEXT,
    PRIMARY KEY (owner_kind, owner_id, window_id, level)
);
CREATE INDEX budget_alerts_undelivered ON budget_alerts (next_try_at) WHERE delivered_at IS NULL;

-- The price table's version and date (in every snapshot), and where each price came from.
CREATE TABLE price_catalog (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    as_of   TEXT
);
ALTER TABLE prices ADD COLUMN source TEXT;
ALTER TABLE prices ADD COLUMN as_of TEXT;
