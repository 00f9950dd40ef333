-- Workflows (SPEC §3): one row per attempt at a triage, QA plan or patch on an issue or PR.
CREATE TABLE workflows (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind                TEXT NOT NULL,             -- triage | qa_plan | patch
    installation_id     INTEGER NOT NULL,
    repository          TEXT NOT NULL,             -- owner/name
    number              INTEGER NOT NULL,          -- issue or pull request number
    state               TEXT NOT NULL,             -- SPEC §3 names, see src/workflow/state.rs
    requested_by        TEXT NOT NULL,
    instruction         TEXT,
    head_sha            TEXT,
    proposal            TEXT,                      -- JSON
    proposal_hash       TEXT,
    policy_version      TEXT,
    proposal_comment_id INTEGER,
    check_run_id        INTEGER,
    reactions_etag      TEXT,
    attempt             INTEGER NOT NULL DEFAULT 1,
    previous_id         INTEGER REFERENCES workflows (id),
    reason              TEXT,                      -- of the latest transition
    created_at          INTEGER NOT NULL,          -- unix milliseconds
    updated_at          INTEGER NOT NULL
);
-- At most one live workflow per issue and kind; finished ones leave the index, so a retry can
-- start a new attempt. The three names are `State::is_terminal`.
CREATE UNIQUE INDEX workflows_one_active ON workflows (repository, number, kind)
    WHERE state NOT IN ('DONE', 'FAILED', 'BLOCKED_POLICY');
CREATE INDEX workflows_issue ON workflows (repository, number, kind, id);

-- Every transition, append-only: the history the audit and `/orch status` read.
CREATE TABLE workflow_transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id INTEGER NOT NULL REFERENCES workflows (id),
    from_state  TEXT,                              -- NULL: the workflow's creation
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX workflow_transitions_workflow ON workflow_transitions (workflow_id, id);
CREATE TRIGGER workflow_transitions_no_update BEFORE UPDATE ON workflow_transitions
BEGIN
    SELECT RAISE(ABORT, 'workflow_transitions is append-only: UPDATE refused');
END;
CREATE TRIGGER workflow_transitions_no_delete BEFORE DELETE ON workflow_transitions
BEGIN
    SELECT RAISE(ABORT, 'workflow_transitions is append-only: DELETE refused');
END;

-- The approval ledger (SPEC §6): command, reaction, button, API and policy votes, each bound
-- to the proposal hash, head SHA and policy version it was cast on.
CREATE TABLE approvals (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id    INTEGER NOT NULL REFERENCES workflows (id),
    voter          TEXT NOT NULL,
    decision       TEXT NOT NULL,                  -- approve | reject
    source         TEXT NOT NULL,                  -- command | reaction | button | api | policy
    proposal_hash  TEXT NOT NULL,
    head_sha       TEXT,
    policy_version TEXT NOT NULL,
    reason         TEXT,                           -- /orch reject <reason>
    comment_id     INTEGER,                        -- the command comment or reaction, for dedupe
    voided_at      INTEGER,
    void_reason    TEXT,
    at             INTEGER NOT NULL
);
CREATE INDEX approvals_workflow ON approvals (workflow_id, at);
-- A comment or reaction seen again (redelivery, the next reactions poll) is one vote. Voided
-- rows stay in the index on purpose: a 👍 left over from before a push must not vote again.
CREATE UNIQUE INDEX approvals_once ON approvals (workflow_id, voter, source, comment_id)
    WHERE comment_id IS NOT NULL;

-- Workflow steps run from the job queue (kind 'workflow').
ALTER TABLE jobs ADD COLUMN workflow_id INTEGER REFERENCES workflows (id);
-- One worker at a time per workflow: at most one live (queued or running) job per workflow.
CREATE UNIQUE INDEX jobs_workflow_live ON jobs (workflow_id)
    WHERE workflow_id IS NOT NULL AND status IN ('queued', 'running');
