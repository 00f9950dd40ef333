-- Flood limits (SPEC §5): a user without permission gets at most one refusal per issue per hour.
-- One row per (repository, issue, user id): the comment whose refusal was posted last and when.
-- A later comment's refusal is posted only when it wins this row (the hour has passed, or it is
-- the same comment); otherwise it is audited and not posted.
CREATE TABLE refusal_windows (
    repository TEXT NOT NULL,
    number     INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    comment_id INTEGER NOT NULL,
    posted_at  INTEGER NOT NULL,
    PRIMARY KEY (repository, number, user_id)
);

-- How many times an action was leased to be made. An action leased for the first time cannot
-- have reached GitHub yet, so its maker does not list the issue's comments looking for its
-- marker first (the cost that made every reply list all comments). Rows from before this
-- migration count as leased once already: they may have been attempted.
ALTER TABLE actions ADD COLUMN leases INTEGER NOT NULL DEFAULT 1;
