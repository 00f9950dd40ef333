-- The tamper-evident audit log (SPEC §13), written by src/audit. Rows form a hash chain:
-- hash = sha256(prev_hash ‖ '\n' ‖ canonical line of the row), see src/audit/chain.rs. orch
-- assigns seq (1, 2, 3 … without gaps) while it holds the write lock, so no AUTOINCREMENT.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY CHECK (seq >= 1),
    at        INTEGER NOT NULL,                -- unix milliseconds
    kind      TEXT NOT NULL,                   -- delivery | transition | vote | model_call | ...
    actor     TEXT NOT NULL,
    subject   TEXT NOT NULL,                   -- e.g. acme/widgets#12, workflow:7
    details   TEXT NOT NULL,                   -- canonical JSON, exactly the text that was hashed
    prev_hash TEXT NOT NULL,                   -- the previous row's hash; 64 zeros for seq 1
    hash      TEXT NOT NULL                    -- lowercase hex SHA-256
);
-- The filters of `GET /audit`, each paged by seq.
CREATE INDEX audit_log_kind ON audit_log (kind, seq);
CREATE INDEX audit_log_subject ON audit_log (subject, seq);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
-- Append-only: the database itself refuses changes. Dropping these triggers takes the file
-- owner; `orch audit verify` then still finds any row changed or removed behind them.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;
