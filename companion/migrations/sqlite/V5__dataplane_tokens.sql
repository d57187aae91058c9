-- Data-plane tokens: what a fleet of Envoys sends to read snapshots and report usage. Stored as
-- SHA-256 digests only; revoked, never deleted, so the audit trail keeps naming them.
CREATE TABLE dataplane_tokens (
    name          TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE,
    -- A JSON array: "snapshot" (read snapshots), "usage" (report usage).
    permissions   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    revoked_at    INTEGER
);

-- Usage batches the control plane refused (a key charged against a project it does not belong
-- to, a use in the future, a cost the price table cannot explain...), kept for audit.
CREATE TABLE refused_usage_batches (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at   INTEGER NOT NULL,
    token_name    TEXT NOT NULL,
    reporter      TEXT NOT NULL,
    batch_id      TEXT NOT NULL,
    entries       INTEGER NOT NULL,
    cost_microusd INTEGER NOT NULL,
    -- A JSON array of the reasons, one per refused entry or rule.
    reasons       TEXT NOT NULL,
    -- The report as received, cut at 64 KiB.
    body          TEXT NOT NULL
);
CREATE INDEX refused_usage_batches_by_time ON refused_usage_batches (received_at);
