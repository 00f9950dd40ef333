-- Every GitHub write orch makes, exactly once: the idempotency key names the intent (for
-- example the workflow and the step), the row records what GitHub returned.
CREATE TABLE actions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key TEXT NOT NULL UNIQUE,
    installation_id INTEGER NOT NULL,
    repository      TEXT NOT NULL,
    kind            TEXT NOT NULL,             -- comment | ...
    target          TEXT NOT NULL,             -- e.g. the issue number
    status          TEXT NOT NULL,             -- pending | done | dry_run | failed
    github_id       INTEGER,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
