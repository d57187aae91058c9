-- The issue time agreed on for the current version, so that every process serving snapshots of
-- this store serves the same bytes (and ETag) for it.
CREATE TABLE snapshot_issue (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    version   INTEGER NOT NULL,
    issued_at INTEGER NOT NULL
);
