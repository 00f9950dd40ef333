-- One row per logical model call (SPEC §9): written as `pending` before the first request and
-- finished with the final outcome, so a call interrupted by a crash still shows. The prompt text
-- is stored with its SHA-256 so that any result can be reproduced.
CREATE TABLE model_calls (
    id                BIGSERIAL PRIMARY KEY,
    workflow_id       BIGINT NOT NULL,             -- 0: not made for a workflow (demo, tools)
    task              TEXT NOT NULL,               -- triage | qa_plan | patch
    template          TEXT NOT NULL,               -- prompt template with version, e.g. triage.v1
    prompt            TEXT NOT NULL,               -- the exact rendered prompt text
    prompt_sha256     TEXT NOT NULL,               -- hex SHA-256 of `prompt` (UTF-8)
    provider          TEXT NOT NULL,               -- anthropic | openai | fake
    model             TEXT NOT NULL,
    max_output_tokens BIGINT NOT NULL,
    not_seen          TEXT NOT NULL,               -- JSON array: context left out of the prompt
    outcome           TEXT NOT NULL,               -- pending | ok | transient | permanent | malformed
    error             TEXT,                        -- the error text when outcome is not ok
    answer            TEXT,                        -- the raw tool input (JSON), when there was one
    tokens_in         BIGINT NOT NULL DEFAULT 0,
    tokens_out        BIGINT NOT NULL DEFAULT 0,
    cost_usd          DOUBLE PRECISION NOT NULL DEFAULT 0,
    price_known       BIGINT NOT NULL DEFAULT 1,   -- 0: the model is not in the price table (cost 0)
    attempts          BIGINT NOT NULL DEFAULT 0,   -- HTTP requests made, retries included
    latency_ms        BIGINT,                      -- whole call, retries and waits included
    started_at        BIGINT NOT NULL,
    finished_at       BIGINT
);
CREATE INDEX model_calls_workflow ON model_calls (workflow_id);
CREATE INDEX model_calls_started ON model_calls (started_at);
