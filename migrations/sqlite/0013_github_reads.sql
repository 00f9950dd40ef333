-- GitHub's budget (issue 14): what orch keeps so that it does not ask GitHub again.

-- The last answer for each repository's `.github/orch.yml`, with its ETag: the next read is
-- conditional (`If-None-Match`), and a 304 (which GitHub does not count) means this source is
-- still the file. Shared by all replicas. `source` is NULL when the file did not exist.
CREATE TABLE policy_reads (
    repository TEXT PRIMARY KEY NOT NULL,
    etag       TEXT,
    source     TEXT,
    read_at    INTEGER NOT NULL
);

-- The ETag of the last reactions read of a comment orch polls without it being the workflow's
-- current proposal (earlier, replaced proposals): polling them stays free across restarts and
-- replicas while nobody reacts there.
CREATE TABLE reaction_etags (
    comment_id INTEGER PRIMARY KEY NOT NULL,
    etag       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- What the latest webhook said about an issue or pull request (title, body, labels, author,
-- comment count and the comments it carried), as JSON: a workflow's context is built from it
-- instead of asking GitHub again. Written with the workflow a delivery starts (one transaction);
-- only a workflow's first proposal, made moments after its trigger, reads it.
CREATE TABLE subjects (
    repository TEXT NOT NULL,
    number     INTEGER NOT NULL,
    subject    TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (repository, number)
);
