-- Workflows (SPEC §3): one row per attempt at a triage, QA plan or patch on an issue or PR.
CREATE TABLE workflows (
    id                  BIGSERIAL PRIMARY KEY,
    kind                TEXT NOT NULL,             -- triage | qa_plan | patch
    installation_id     BIGINT NOT NULL,
    repository          TEXT NOT NULL,             -- owner/name
    number              BIGINT NOT NULL,           -- issue or pull request number
    state               TEXT NOT NULL,             -- SPEC §3 names, see src/workflow/state.rs
    requested_by        TEXT NOT NULL,
    instruction         TEXT,
    head_sha            TEXT,
    proposal            TEXT,                      -- JSON
    proposal_hash       TEXT,
    policy_version      TEXT,
    proposal_comment_id BIGINT,
    check_run_id        BIGINT,
    reactions_etag      TEXT,
    attempt             BIGINT NOT NULL DEFAULT 1,
    previous_id         BIGINT REFERENCES workflows (id),
    reason              TEXT,                      -- of the latest transition
    created_at          BIGINT NOT NULL,           -- unix milliseconds
    updated_at          BIGINT NOT NULL
);
-- At most one live workflow per issue and kind; finished ones leave the index, so a retry can
-- start a new attempt. The three names are `State::is_terminal`.
CREATE UNIQUE INDEX workflows_one_active ON workflows (repository, number, kind)
    WHERE state NOT IN ('DONE', 'FAILED', 'BLOCKED_POLICY');
CREATE INDEX workflows_issue ON workflows (repository, number, kind, id);

-- Every transition, append-only: the history the audit and `/orch status` read.
CREATE TABLE workflow_transitions (
    id          BIGSERIAL PRIMARY KEY,
    workflow_id BIGINT NOT NULL REFERENCES workflows (id),
    from_state  TEXT,                              -- NULL: the workflow's creation
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX workflow_transitions_workflow ON workflow_transitions (workflow_id, id);
CREATE FUNCTION workflow_transitions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'workflow_transitions is append-only: % refused', TG_OP;
END;
$$;
CREATE TRIGGER workflow_transitions_no_change BEFORE UPDATE OR DELETE ON workflow_transitions
    FOR EACH ROW EXECUTE FUNCTION workflow_transitions_append_only();
-- TRUNCATE fires no row trigger; it gets a statement trigger of its own.
CREATE TRIGGER workflow_transitions_no_truncate BEFORE TRUNCATE ON workflow_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION workflow_transitions_append_only();

-- The approval ledger (SPEC §6): command, reaction, button, API and policy votes, each bound
-- to the proposal hash, head SHA and policy version it was cast on.
CREATE TABLE approvals (
    id             BIGSERIAL PRIMARY KEY,
    workflow_id    BIGINT NOT NULL REFERENCES workflows (id),
    voter          TEXT NOT NULL,
    decision       TEXT NOT NULL,                  -- approve | reject
    source         TEXT NOT NULL,                  -- command | reaction | button | api | policy
    proposal_hash  TEXT NOT NULL,
    head_sha       TEXT,
    policy_version TEXT NOT NULL,
    reason         TEXT,                           -- /orch reject <reason>
    comment_id     BIGINT,                         -- the command comment or reaction, for dedupe
    voided_at      BIGINT,
    void_reason    TEXT,
    at             BIGINT NOT NULL
);
CREATE INDEX approvals_workflow ON approvals (workflow_id, at);
-- A comment or reaction seen again (redelivery, the next reactions poll) is one vote. Voided
-- rows stay in the index on purpose: a 👍 left over from before a push must not vote again.
CREATE UNIQUE INDEX approvals_once ON approvals (workflow_id, voter, source, comment_id)
    WHERE comment_id IS NOT NULL;

-- Workflow steps run from the job queue (kind 'workflow').
ALTER TABLE jobs ADD COLUMN workflow_id BIGINT REFERENCES workflows (id);
-- One worker at a time per workflow: at most one live (queued or running) job per workflow.
CREATE UNIQUE INDEX jobs_workflow_live ON jobs (workflow_id)
    WHERE workflow_id IS NOT NULL AND status IN ('queued', 'running');
