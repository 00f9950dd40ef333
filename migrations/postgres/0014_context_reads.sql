-- Model context (issue 15): the last answer for what a workflow's context reads from a
-- repository's default branch besides the policy — its label list (JSON, with descriptions) and
-- `.github/orch/instructions.md` — with its ETag, so that the next read is conditional and a 304
-- (which GitHub does not count) reuses `body`. `body` is NULL when the file did not exist.
CREATE TABLE context_reads (
    repository TEXT NOT NULL,
    resource   TEXT NOT NULL,
    etag       TEXT,
    body       TEXT,
    read_at    BIGINT NOT NULL,
    PRIMARY KEY (repository, resource)
);
