-- The last valid `.github/orch.yml` of each repository: when the file on the default branch
-- becomes invalid, orch keeps judging by this one (never "allow all"), and says why.
CREATE TABLE policies (
    repository TEXT PRIMARY KEY NOT NULL,
    version    TEXT NOT NULL,
    source     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
