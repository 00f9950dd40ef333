-- GitHub's budget per installation, shared by every replica (SPEC §11, issue 14). A request
-- GitHub refused for its rate limit blocks the installation until the reset or Retry-After: no
-- replica sends another (or, for a secondary limit met by a write, another write) before then.
-- remaining/limit_total/reset_at are from the latest answer written (only when they run low).
CREATE TABLE github_budget (
    installation_id      BIGINT PRIMARY KEY NOT NULL,
    blocked_until        BIGINT NOT NULL DEFAULT 0,
    writes_blocked_until BIGINT NOT NULL DEFAULT 0,
    remaining            BIGINT,
    limit_total          BIGINT,
    reset_at             BIGINT,
    updated_at           BIGINT NOT NULL
);

-- Content-creating requests sent, per installation, for the secondary limits' windows (at most
-- so many a minute and an hour). Rows older than the longest window are deleted as writes go.
CREATE TABLE github_writes (
    installation_id BIGINT NOT NULL,
    sent_at         BIGINT NOT NULL
);
CREATE INDEX github_writes_by_installation ON github_writes (installation_id, sent_at);

-- A job deferred for GitHub's budget: its lane (installation and repository, so that deferrals
-- interleave repositories) and until when it waits for GitHub (for /orch status and /metrics).
ALTER TABLE jobs ADD COLUMN lane TEXT;
ALTER TABLE jobs ADD COLUMN github_wait_until BIGINT;
CREATE INDEX jobs_lane_queued ON jobs (lane, run_at) WHERE status = 'queued';
