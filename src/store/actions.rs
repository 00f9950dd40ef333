//! The `actions` table: one row per GitHub write orch intends, keyed by an idempotency key.

use super::Db;
use sqlx::{Executor, Row};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRow {
    pub id: i64,
    pub status: String,
    pub github_id: Option<i64>,
}

/// The action for `key`, created `pending` if it did not exist.
pub async fn get_or_create<'c, E: Executor<'c, Database = Db> + Copy>(
    conn: E,
    key: &str,
    installation_id: i64,
    repository: &str,
    kind: &str,
    target: &str,
    now: i64,
) -> sqlx::Result<ActionRow> {
    sqlx::query(
        "INSERT INTO actions (idempotency_key, installation_id, repository, kind, target, status, created_at, updated_at, leases) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, 0) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key.to_string())
    .bind(installation_id)
    .bind(repository.to_string())
    .bind(kind.to_string())
    .bind(target.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    let r = sqlx::query("SELECT id, status, github_id FROM actions WHERE idempotency_key = $1")
        .bind(key.to_string())
        .fetch_one(conn)
        .await?;
    Ok(ActionRow {
        id: r.try_get(0)?,
        status: r.try_get(1)?,
        github_id: r.try_get(2)?,
    })
}

/// Records the outcome of an action.
pub async fn finish<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    id: i64,
    status: &str,
    github_id: Option<i64>,
    error: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE actions SET status = $1, github_id = $2, error = $3, updated_at = $4, lease_until = NULL WHERE id = $5")
        .bind(status.to_string())
        .bind(github_id)
        .bind(error.map(str::to_string))
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the right to make action `id` until `until`, unless someone else holds it; false then.
pub async fn try_lease<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, now: i64, until: i64) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE actions SET lease_until = $1, leases = leases + 1 WHERE id = $2 AND status = 'pending' AND (lease_until IS NULL OR lease_until < $3)",
    )
    .bind(until)
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// How many times action `id` was leased (1 right after its first lease: nothing of it can have
/// reached GitHub before).
pub async fn leases<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64) -> sqlx::Result<i64> {
    sqlx::query("SELECT leases FROM actions WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await?
        .try_get(0)
}

/// Gives the right back (the write was not confirmed; the next attempt may try).
pub async fn release<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE actions SET lease_until = NULL WHERE id = $1 AND status = 'pending'")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The action's status and GitHub id now.
pub async fn status<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64) -> sqlx::Result<(String, Option<i64>)> {
    let r = sqlx::query("SELECT status, github_id FROM actions WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// The GitHub id of the done action `key` (for example the number of a workflow's pull
/// request), if it is done.
pub async fn done_github_id<'c, E: Executor<'c, Database = Db>>(conn: E, key: &str) -> sqlx::Result<Option<i64>> {
    let r = sqlx::query("SELECT github_id FROM actions WHERE idempotency_key = $1 AND status = 'done'")
        .bind(key.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(r.map(|r| r.try_get::<Option<i64>, _>(0)).transpose()?.flatten())
}

/// The done action of `kind` in `repository` that GitHub answered with `github_id` (for example
/// the action that created a check run), if any.
pub async fn made<'c, E: Executor<'c, Database = Db>>(conn: E, kind: &str, repository: &str, github_id: i64) -> sqlx::Result<Option<i64>> {
    let r = sqlx::query(
        "SELECT id FROM actions WHERE kind = $1 AND repository = $2 AND github_id = $3 AND status = 'done' ORDER BY id LIMIT 1",
    )
    .bind(kind.to_string())
    .bind(repository.to_string())
    .bind(github_id)
    .fetch_optional(conn)
    .await?;
    r.map(|r| r.try_get(0)).transpose()
}

/// Records `sha` as the commit orch made for the write named `key` (the branch of a patch),
/// before the branch points at it: a branch whose tip is not this commit was not made by orch.
/// A later commit for the same key (the first was never published) replaces it.
pub async fn record_commit<'c, E: Executor<'c, Database = Db> + Copy>(
    conn: E,
    key: &str,
    installation_id: i64,
    repository: &str,
    target: &str,
    sha: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO actions (idempotency_key, installation_id, repository, kind, target, status, commit_sha, created_at, updated_at) \
         VALUES ($1, $2, $3, 'commit', $4, 'done', $5, $6, $6) \
         ON CONFLICT (idempotency_key) DO UPDATE SET commit_sha = excluded.commit_sha, updated_at = excluded.updated_at",
    )
    .bind(key.to_string())
    .bind(installation_id)
    .bind(repository.to_string())
    .bind(target.to_string())
    .bind(sha.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts the commit recorded for `key` back to `previous` (None: no commit): the commit recorded
/// last was never published (GitHub refused the branch, which someone else holds), so no branch
/// tip can be it.
pub async fn restore_commit<'c, E: Executor<'c, Database = Db>>(conn: E, key: &str, previous: Option<&str>, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE actions SET commit_sha = $2, updated_at = $3 WHERE idempotency_key = $1 AND kind = 'commit'")
        .bind(key.to_string())
        .bind(previous.map(str::to_string))
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// The commit recorded for `key` by [`record_commit`], if any.
pub async fn recorded_commit<'c, E: Executor<'c, Database = Db>>(conn: E, key: &str) -> sqlx::Result<Option<String>> {
    let r = sqlx::query("SELECT commit_sha FROM actions WHERE idempotency_key = $1")
        .bind(key.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(r.map(|r| r.try_get::<Option<String>, _>(0)).transpose()?.flatten())
}

/// The idempotency key of the done action of `kind` in `repository` that GitHub answered with
/// `github_id` (for example `wf3:check:1:<revision>` for a proposal's check run), if any.
pub async fn key_of<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    kind: &str,
    repository: &str,
    github_id: i64,
) -> sqlx::Result<Option<String>> {
    let r = sqlx::query(
        "SELECT idempotency_key FROM actions WHERE kind = $1 AND repository = $2 AND github_id = $3 AND status = 'done' ORDER BY id LIMIT 1",
    )
    .bind(kind.to_string())
    .bind(repository.to_string())
    .bind(github_id)
    .fetch_optional(conn)
    .await?;
    r.map(|r| r.try_get(0)).transpose()
}

/// Every done action whose key starts with `prefix` (a literal: no `%` or `_`), as (key,
/// GitHub id), oldest first: for example every proposal comment of a workflow.
pub async fn done_with_prefix<'c, E: Executor<'c, Database = Db>>(conn: E, prefix: &str) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT idempotency_key, github_id FROM actions WHERE idempotency_key LIKE $1 AND status = 'done' AND github_id IS NOT NULL ORDER BY id",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}
