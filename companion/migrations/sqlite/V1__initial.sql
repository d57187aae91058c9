-- keyward's first store schema (PRAGMA user_version 1). Never edit a released migration.
CREATE TABLE policy_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO policy_version (id, version) VALUES (1, 1);

CREATE TABLE projects (
    id                 TEXT PRIMARY KEY,
    org                TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('active', 'archived', 'suspended')),
    spend_cap_microusd INTEGER,
    spent_microusd     INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    archived_at        INTEGER
);

CREATE TABLE keys (
    id                 TEXT PRIMARY KEY,
    format             TEXT NOT NULL CHECK (format IN ('ak', 'vpx')),
    secret_sha256      TEXT,
    key_sha256         TEXT UNIQUE,
    project            TEXT REFERENCES projects (id),
    org                TEXT,
    environment        TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('active', 'paused', 'revoked')),
    scopes             TEXT NOT NULL,
    models             TEXT,
    expires_at         INTEGER,
    spend_cap_microusd INTEGER,
    spent_microusd     INTEGER NOT NULL DEFAULT 0,
    label              TEXT,
    note               TEXT,
    created_at         INTEGER NOT NULL,
    last_seen_at       INTEGER,
    rotated_from       TEXT REFERENCES keys (id),
    revoke_at          INTEGER,
    revoked_at         INTEGER,
    CHECK ((secret_sha256 IS NULL) <> (key_sha256 IS NULL)),
    CHECK ((project IS NULL) <> (org IS NULL))
);
CREATE INDEX keys_by_project ON keys (project);
CREATE INDEX keys_pending_revocation ON keys (revoke_at)
    WHERE revoke_at IS NOT NULL AND status <> 'revoked';

CREATE TABLE audit_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    details        TEXT NOT NULL,
    policy_version INTEGER NOT NULL
);
