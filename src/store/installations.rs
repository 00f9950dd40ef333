//! Installations of the App and the repositories they grant, kept from `installation` and
//! `installation_repositories` events.

use super::Db;
use crate::webhook::event::RepoName;
use sqlx::{Executor, Row};

pub async fn upsert_installation<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    id: i64,
    account: Option<&str>,
    suspended: bool,
    deleted: bool,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO installations (id, account, suspended, deleted, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET account = COALESCE(excluded.account, installations.account), \
         suspended = excluded.suspended, deleted = excluded.deleted, updated_at = excluded.updated_at",
    )
    .bind(id)
    .bind(account.map(str::to_string))
    .bind(suspended as i64)
    .bind(deleted as i64)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_repository<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    installation_id: i64,
    repo: &RepoName,
    removed: bool,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO repositories (id, installation_id, full_name, removed, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET installation_id = excluded.installation_id, full_name = excluded.full_name, \
         removed = excluded.removed, updated_at = excluded.updated_at",
    )
    .bind(repo.id)
    .bind(installation_id)
    .bind(repo.full_name.clone())
    .bind(removed as i64)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks every repository of an installation removed (the installation was deleted).
pub async fn remove_all_repositories<'c, E: Executor<'c, Database = Db>>(conn: E, installation_id: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE repositories SET removed = 1, updated_at = $1 WHERE installation_id = $2")
        .bind(now)
        .bind(installation_id)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationRow {
    pub id: i64,
    pub account: Option<String>,
    pub suspended: bool,
    pub deleted: bool,
}

pub async fn get_installation<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64) -> sqlx::Result<Option<InstallationRow>> {
    let row = sqlx::query("SELECT id, account, suspended, deleted FROM installations WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(InstallationRow {
            id: r.try_get(0)?,
            account: r.try_get(1)?,
            suspended: r.try_get::<i64, _>(2)? != 0,
            deleted: r.try_get::<i64, _>(3)? != 0,
        })
    })
    .transpose()
}

/// Repositories currently granted to an installation, by full name.
pub async fn active_repositories<'c, E: Executor<'c, Database = Db>>(conn: E, installation_id: i64) -> sqlx::Result<Vec<String>> {
    let rows = sqlx::query("SELECT full_name FROM repositories WHERE installation_id = $1 AND removed = 0 ORDER BY full_name")
        .bind(installation_id)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
