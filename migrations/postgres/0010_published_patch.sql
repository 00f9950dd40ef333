-- What orch published and showed (SPEC §6): the commit orch made for a patch, kept with the
-- action that records it, so the branch can be checked against it before a pull request is
-- opened; and the unified diff a patch proposal was shown with, for the dashboard page that
-- shows all of it when the check run cannot.
ALTER TABLE actions ADD COLUMN commit_sha TEXT;
ALTER TABLE workflows ADD COLUMN proposal_diff TEXT;
