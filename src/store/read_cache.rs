//! What orch keeps so that it does not ask GitHub again (issue 14, SPEC §11): the last read of
//! each repository's policy file with its ETag, the ETags of polled comments that are not a
//! workflow's current proposal, and what webhooks said about issues and pull requests (see
//! `migrations/*/0013_github_reads.sql`).

use super::Db;
use serde::{Deserialize, Serialize};
use sqlx::{Executor, Row};

/// The last answer for a repository's policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRead {
    pub etag: Option<String>,
    /// None: the file did not exist.
    pub source: Option<String>,
    pub read_at: i64,
}

pub async fn policy_read<'c, E: Executor<'c, Database = Db>>(conn: E, repository: &str) -> sqlx::Result<Option<PolicyRead>> {
    let row = sqlx::query("SELECT etag, source, read_at FROM policy_reads WHERE repository = $1")
        .bind(repository.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(PolicyRead {
            etag: r.try_get(0)?,
            source: r.try_get(1)?,
            read_at: r.try_get(2)?,
        })
    })
    .transpose()
}

pub async fn record_policy_read<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    etag: Option<&str>,
    source: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO policy_reads (repository, etag, source, read_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (repository) DO UPDATE SET etag = excluded.etag, source = excluded.source, read_at = excluded.read_at",
    )
    .bind(repository.to_string())
    .bind(etag.map(str::to_string))
    .bind(source.map(str::to_string))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The last answer for one resource a workflow's context reads (`labels`, a file path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRead {
    pub etag: Option<String>,
    /// None: the file did not exist.
    pub body: Option<String>,
    pub read_at: i64,
}

pub async fn context_read<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    resource: &str,
) -> sqlx::Result<Option<ContextRead>> {
    let row = sqlx::query("SELECT etag, body, read_at FROM context_reads WHERE repository = $1 AND resource = $2")
        .bind(repository.to_string())
        .bind(resource.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(ContextRead {
            etag: r.try_get(0)?,
            body: r.try_get(1)?,
            read_at: r.try_get(2)?,
        })
    })
    .transpose()
}

pub async fn record_context_read<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    resource: &str,
    etag: Option<&str>,
    body: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO context_reads (repository, resource, etag, body, read_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (repository, resource) DO UPDATE SET etag = excluded.etag, body = excluded.body, read_at = excluded.read_at",
    )
    .bind(repository.to_string())
    .bind(resource.to_string())
    .bind(etag.map(str::to_string))
    .bind(body.map(str::to_string))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The ETag of the last reactions read of `comment_id`, when orch keeps one.
pub async fn reaction_etag<'c, E: Executor<'c, Database = Db>>(conn: E, comment_id: i64) -> sqlx::Result<Option<String>> {
    let row = sqlx::query("SELECT etag FROM reaction_etags WHERE comment_id = $1")
        .bind(comment_id)
        .fetch_optional(conn)
        .await?;
    row.map(|r| r.try_get(0)).transpose()
}

pub async fn set_reaction_etag<'c, E: Executor<'c, Database = Db>>(conn: E, comment_id: i64, etag: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO reaction_etags (comment_id, etag, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (comment_id) DO UPDATE SET etag = excluded.etag, updated_at = excluded.updated_at",
    )
    .bind(comment_id)
    .bind(etag.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// What the latest webhook said about an issue or pull request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub author: String,
    /// GitHub's comment count when the webhook was sent; None when it did not say.
    pub comments: Option<i64>,
    /// The comments webhooks carried, as (id, body), oldest first: when they are all the
    /// comments there are, the model's context needs no listing.
    #[serde(default)]
    pub known_comments: Vec<(i64, String)>,
    /// The repository's default branch, as the webhook's `repository` said.
    #[serde(default)]
    pub default_branch: Option<String>,
}

impl Subject {
    /// The comments when the webhooks carried every one of them.
    pub fn all_comments(&self) -> Option<Vec<String>> {
        let count = self.comments?;
        (count <= self.known_comments.len() as i64).then(|| self.known_comments.iter().map(|(_, b)| b.clone()).collect())
    }
}

pub async fn subject<'c, E: Executor<'c, Database = Db>>(conn: E, repository: &str, number: i64) -> sqlx::Result<Option<Subject>> {
    subject_since(conn, repository, number, i64::MIN).await
}

/// What a webhook said about the issue at `since` (unix ms) or later, if one did.
pub async fn subject_since<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    number: i64,
    since: i64,
) -> sqlx::Result<Option<Subject>> {
    let row = sqlx::query("SELECT subject FROM subjects WHERE repository = $1 AND number = $2 AND updated_at >= $3")
        .bind(repository.to_string())
        .bind(number)
        .bind(since)
        .fetch_optional(conn)
        .await?;
    Ok(row
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// Replaces what is known of the issue with what a webhook said. The comments it carried are
/// added to the ones carried before (a webhook carries at most the one it is about).
pub async fn remember_subject(
    conn: &mut sqlx::AnyConnection,
    repository: &str,
    number: i64,
    mut subject: Subject,
    now: i64,
) -> sqlx::Result<()> {
    let mut known = subject_known(&mut *conn, repository, number).await?;
    for (id, body) in std::mem::take(&mut subject.known_comments) {
        if !known.iter().any(|(k, _)| *k == id) {
            known.push((id, body));
        }
    }
    subject.known_comments = known;
    let text = serde_json::to_string(&subject).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO subjects (repository, number, subject, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (repository, number) DO UPDATE SET subject = excluded.subject, updated_at = excluded.updated_at",
    )
    .bind(repository.to_string())
    .bind(number)
    .bind(text)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn subject_known(conn: &mut sqlx::AnyConnection, repository: &str, number: i64) -> sqlx::Result<Vec<(i64, String)>> {
    Ok(subject(&mut *conn, repository, number)
        .await?
        .map(|s| s.known_comments)
        .unwrap_or_default())
}
