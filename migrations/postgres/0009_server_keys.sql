-- Keys the server generates once and every replica shares (the marker key of SPEC §6 when
-- ORCH_MARKER_KEY is unset). The first replica to start inserts it; the others read it.
CREATE TABLE server_keys (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
