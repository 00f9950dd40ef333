-- People are their numeric GitHub account ids (SPEC §6 "Who is who"); logins are for display.
-- Both columns are nullable so that rows written before this migration stay readable: a
-- requester or vote without an id is compared by login, and only then.
ALTER TABLE workflows ADD COLUMN requested_by_id INTEGER;
ALTER TABLE approvals ADD COLUMN voter_id INTEGER;
-- A command comment or a reaction has one author, so it is one vote whatever login it is seen
-- under: a voter renamed between two reaction polls must not vote again.
DROP INDEX approvals_once;
CREATE UNIQUE INDEX approvals_once ON approvals (workflow_id, source, comment_id)
    WHERE comment_id IS NOT NULL;
