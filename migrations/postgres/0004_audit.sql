-- The tamper-evident audit log (SPEC §13), written by src/audit. Rows form a hash chain:
-- hash = sha256(prev_hash ‖ '\n' ‖ canonical line of the row), see src/audit/chain.rs. orch
-- assigns seq (1, 2, 3 … without gaps) under a transaction-scoped advisory lock, so no sequence:
-- a sequence leaves gaps on rollback.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY CHECK (seq >= 1),
    at        BIGINT NOT NULL,                 -- unix milliseconds
    kind      TEXT NOT NULL,                   -- delivery | transition | vote | model_call | ...
    actor     TEXT NOT NULL,
    subject   TEXT NOT NULL,                   -- e.g. acme/widgets#12, workflow:7
    details   TEXT NOT NULL,                   -- canonical JSON, exactly the text that was hashed (not JSONB, which rewrites it)
    prev_hash TEXT NOT NULL,                   -- the previous row's hash; 64 zeros for seq 1
    hash      TEXT NOT NULL                    -- lowercase hex SHA-256
);
-- The filters of `GET /audit`, each paged by seq.
CREATE INDEX audit_log_kind ON audit_log (kind, seq);
CREATE INDEX audit_log_subject ON audit_log (subject, seq);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);
-- Append-only: the database itself refuses changes. Disabling these triggers takes the table
-- owner or a superuser; `orch audit verify` then still finds any row changed or removed behind them.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
-- TRUNCATE fires no row trigger; it gets a statement trigger of its own.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
