-- Deliveries as GitHub sent them: unique by X-GitHub-Delivery, committed before the answer.
CREATE TABLE deliveries (
    guid            TEXT PRIMARY KEY NOT NULL,
    event           TEXT NOT NULL,
    action          TEXT,
    installation_id INTEGER,
    repository      TEXT,
    received_at     INTEGER NOT NULL,          -- unix milliseconds
    status          TEXT NOT NULL,             -- queued | processed | ignored | failed
    payload_ref     TEXT,                      -- segment:offset:length, when the body is in the archive
    payload_crc32   TEXT NOT NULL,
    processed_at    INTEGER,
    process_count   INTEGER NOT NULL DEFAULT 0,
    error           TEXT
);
CREATE INDEX deliveries_status ON deliveries (status, received_at);

-- What processing reads, apart from the narrow row above that processing updates: a status
-- change rewrites ~150 bytes instead of the parsed event and the body.
CREATE TABLE delivery_bodies (
    guid       TEXT PRIMARY KEY NOT NULL REFERENCES deliveries (guid),
    event_data TEXT NOT NULL,                  -- orch's parsed event (JSON)
    payload    BLOB                            -- raw body, when kept in the database
);

-- The work queue. A job is leased by one worker at a time; an expired lease may be taken over.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,
    delivery_guid TEXT REFERENCES deliveries (guid),
    status        TEXT NOT NULL,               -- queued | running | done | failed
    attempts      INTEGER NOT NULL DEFAULT 0,
    run_at        INTEGER NOT NULL,
    lease_owner   TEXT,
    lease_until   INTEGER,
    last_error    TEXT,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
-- Partial: finished jobs leave these indexes, so they stay the size of the live queue.
CREATE INDEX jobs_ready ON jobs (run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE status = 'running';

CREATE TABLE installations (
    id          INTEGER PRIMARY KEY NOT NULL,
    account     TEXT,
    suspended   INTEGER NOT NULL DEFAULT 0,
    deleted     INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE repositories (
    id              INTEGER PRIMARY KEY NOT NULL,
    installation_id INTEGER NOT NULL,
    full_name       TEXT NOT NULL,
    removed         INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL
);

-- One row: the circuit breaker lives in the database so it holds across restarts and replicas.
CREATE TABLE circuit_breaker (
    id           INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    is_open      INTEGER NOT NULL DEFAULT 0,
    total_tasks  INTEGER NOT NULL DEFAULT 0,
    failed_tasks INTEGER NOT NULL DEFAULT 0,
    total_cost_micro_usd INTEGER NOT NULL DEFAULT 0,
    opened_at    INTEGER,
    updated_at   INTEGER NOT NULL
);
INSERT INTO circuit_breaker (id, updated_at) VALUES (1, 0);
