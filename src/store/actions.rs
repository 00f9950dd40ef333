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
        "INSERT INTO actions (idempotency_key, installation_id, repository, kind, target, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) ON CONFLICT (idempotency_key) DO NOTHING",
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
    sqlx::query("UPDATE actions SET status = $1, github_id = $2, error = $3, updated_at = $4 WHERE id = $5")
        .bind(status.to_string())
        .bind(github_id)
        .bind(error.map(str::to_string))
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
