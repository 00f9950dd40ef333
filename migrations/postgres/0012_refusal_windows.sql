-- Flood limits (SPEC §5): a user without permission gets at most one refusal per issue per hour.
-- One row per (repository, issue, user id): the comment whose refusal was posted last and when.
-- A later comment's refusal is posted only when it wins this row (the hour has passed, or it is
-- the same comment); otherwise it is audited and not posted.
CREATE TABLE refusal_windows (
    repository TEXT NOT NULL,
    number     BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    comment_id BIGINT NOT NULL,
    posted_at  BIGINT NOT NULL,
    PRIMARY KEY (repository, number, user_id)
);
