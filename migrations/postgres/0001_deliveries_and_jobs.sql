-- Deliveries as GitHub sent them: unique by X-GitHub-Delivery, committed before the answer.
CREATE TABLE deliveries (
    guid            TEXT PRIMARY KEY NOT NULL,
    event           TEXT NOT NULL,
    action          TEXT,
    installation_id BIGINT,
    repository      TEXT,
    received_at     BIGINT NOT NULL,          -- unix milliseconds
    status          TEXT NOT NULL,             -- queued | processed | ignored | failed
    payload_ref     TEXT,                      -- segment:offset:length, when the body is in the archive
    payload_crc32   TEXT NOT NULL,
    processed_at    BIGINT,
    process_count   BIGINT NOT NULL DEFAULT 0,
    error           TEXT
);
CREATE INDEX deliveries_status ON deliveries (status, received_at);

-- What processing reads, apart from the narrow row above that processing updates: a status
-- change rewrites ~150 bytes instead of the parsed event and the body.
CREATE TABLE delivery_bodies (
    guid       TEXT PRIMARY KEY NOT NULL REFERENCES deliveries (guid),
    event_data TEXT NOT NULL,                  -- orch's parsed event (JSON)
    payload    BYTEA                            -- raw body, when kept in the database
);
-- Out of line without compression: pglz on every 10-20 KB body would cost more CPU than the
-- bytes it saves, on the path a webhook answer waits for.
ALTER TABLE delivery_bodies ALTER COLUMN payload SET STORAGE EXTERNAL;

-- The work queue. A job is leased by one worker at a time; an expired lease may be taken over.
CREATE TABLE jobs (
    id            BIGSERIAL PRIMARY KEY,
    kind          TEXT NOT NULL,
    delivery_guid TEXT REFERENCES deliveries (guid),
    status        TEXT NOT NULL,               -- queued | running | done | failed
    attempts      BIGINT NOT NULL DEFAULT 0,
    run_at        BIGINT NOT NULL,
    lease_owner   TEXT,
    lease_until   BIGINT,
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    finished_at   BIGINT
);
-- Partial: finished jobs leave these indexes, so they stay the size of the live queue.
CREATE INDEX jobs_ready ON jobs (run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE status = 'running';

CREATE TABLE installations (
    id          BIGINT PRIMARY KEY NOT NULL,
    account     TEXT,
    suspended   BIGINT NOT NULL DEFAULT 0,
    deleted     BIGINT NOT NULL DEFAULT 0,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE repositories (
    id              BIGINT PRIMARY KEY NOT NULL,
    installation_id BIGINT NOT NULL,
    full_name       TEXT NOT NULL,
    removed         BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL
);

-- One row: the circuit breaker lives in the database so it holds across restarts and replicas.
CREATE TABLE circuit_breaker (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    is_open      BIGINT NOT NULL DEFAULT 0,
    total_tasks  BIGINT NOT NULL DEFAULT 0,
    failed_tasks BIGINT NOT NULL DEFAULT 0,
    total_cost_micro_usd BIGINT NOT NULL DEFAULT 0,
    opened_at    BIGINT,
    updated_at   BIGINT NOT NULL
);
INSERT INTO circuit_breaker (id, updated_at) VALUES (1, 0);
