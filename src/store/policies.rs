//! The last valid policy file of each repository (see `migrations/*/0007_policies.sql`).

use super::Db;
use sqlx::{Executor, Row};

/// Remembers `source` as the repository's last valid policy; a no-op when it already is.
pub async fn remember<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    version: &str,
    source: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO policies (repository, version, source, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (repository) DO UPDATE SET version = excluded.version, source = excluded.source, updated_at = excluded.updated_at \
         WHERE policies.version <> excluded.version",
    )
    .bind(repository.to_string())
    .bind(version.to_string())
    .bind(source.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The repository's last valid policy file, as (version, source).
pub async fn last_valid<'c, E: Executor<'c, Database = Db>>(conn: E, repository: &str) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query("SELECT version, source FROM policies WHERE repository = $1")
        .bind(repository.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}
