//! Keys the server generates once and keeps in the database, so that every replica uses the
//! same one (the marker key, when `ORCH_MARKER_KEY` is unset).

use super::Db;
use sqlx::{Executor, Row};

/// The key called `name`; `fresh` is stored first when there is none (a concurrent replica's
/// insert wins and both read the same value).
pub async fn get_or_create<'c, E>(conn: E, name: &str, fresh: &str, now: i64) -> sqlx::Result<String>
where
    E: Executor<'c, Database = Db> + Copy,
{
    sqlx::query("INSERT INTO server_keys (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
        .bind(name.to_string())
        .bind(fresh.to_string())
        .bind(now)
        .execute(conn)
        .await?;
    let row = sqlx::query("SELECT value FROM server_keys WHERE name = $1")
        .bind(name.to_string())
        .fetch_one(conn)
        .await?;
    row.try_get("value")
}
