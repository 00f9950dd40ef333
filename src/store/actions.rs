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
