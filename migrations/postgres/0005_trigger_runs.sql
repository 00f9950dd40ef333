-- What each trigger (a command line of a comment, a label, a button press) decided, written in
-- the transaction of its effect. Processing the same comment or delivery again (a redelivery
-- under a new GUID, a retried job) finds the decision here and only repeats its reply, which
-- is an exactly-once action: a command never runs twice, whatever the issue looks like now.
CREATE TABLE trigger_runs (
    key         TEXT PRIMARY KEY NOT NULL,         -- c<comment-id>:<line index> | d<delivery guid>
    repository  TEXT NOT NULL,
    verb        TEXT NOT NULL,
    workflow_id BIGINT,
    accepted    BIGINT NOT NULL,                 -- 1: acknowledged with 👀 and acted on
    reply       TEXT,                              -- NULL until the reply is known
    at          BIGINT NOT NULL
);

-- While one worker makes a GitHub write, others that reach the same action (a redelivered
-- comment processed at the same moment) wait for it instead of making it too.
ALTER TABLE actions ADD COLUMN lease_until BIGINT;
