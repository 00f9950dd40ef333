//! The decisions of triggers (see `migrations/*/0005_trigger_runs.sql`): a command runs once per
//! comment line, a label or button once per delivery, however often they are processed.

use super::Db;
use sqlx::{AnyConnection, Executor, Row};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerRun {
    pub workflow_id: Option<i64>,
    pub accepted: bool,
    pub reply: Option<String>,
}

pub async fn get<'c, E: Executor<'c, Database = Db>>(conn: E, key: &str) -> sqlx::Result<Option<TriggerRun>> {
    let row = sqlx::query("SELECT workflow_id, accepted, reply FROM trigger_runs WHERE key = $1")
        .bind(key.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(TriggerRun {
            workflow_id: r.try_get(0)?,
            accepted: r.try_get::<i64, _>(1)? != 0,
            reply: r.try_get(2)?,
        })
    })
    .transpose()
}

/// Records the decision for `key`; false when it was recorded before (by an earlier run or a
/// concurrent one): the caller then rolls its transaction back and uses the recorded decision.
/// Done first in the transaction, so that on Postgres a concurrent run waits here.
pub async fn claim(
    conn: &mut AnyConnection,
    key: &str,
    repository: &str,
    verb: &str,
    accepted: bool,
    reply: Option<&str>,
    now: i64,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO trigger_runs (key, repository, verb, accepted, reply, at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key.to_string())
    .bind(repository.to_string())
    .bind(verb.to_string())
    .bind(i64::from(accepted))
    .bind(reply.map(str::to_string))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records what the trigger made (the workflow) and the reply, once known.
pub async fn settle<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    key: &str,
    workflow_id: Option<i64>,
    reply: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE trigger_runs SET workflow_id = COALESCE($1, workflow_id), reply = COALESCE($2, reply) WHERE key = $3")
        .bind(workflow_id)
        .bind(reply.map(str::to_string))
        .bind(key.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// How long a posted refusal stands for its user on its issue (SPEC §5: at most one per hour).
pub const REFUSAL_WINDOW_MS: i64 = 3_600_000;

/// Whether the refusal of `user_id` in `comment_id` on `repository#number` may be posted: true
/// when no other comment's refusal to that user on that issue was posted within
/// [`REFUSAL_WINDOW_MS`] (the window then starts again with this comment), or when this comment
/// is the one that holds the window (several refused lines of one comment share one reply).
/// One atomic upsert, so that two comments processed at once cannot both win.
pub async fn claim_refusal(
    conn: &mut AnyConnection,
    repository: &str,
    number: i64,
    user_id: i64,
    comment_id: i64,
    now: i64,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO refusal_windows (repository, number, user_id, comment_id, posted_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (repository, number, user_id) DO UPDATE SET comment_id = excluded.comment_id, posted_at = excluded.posted_at \
         WHERE refusal_windows.comment_id = excluded.comment_id OR refusal_windows.posted_at <= $6",
    )
    .bind(repository.to_string())
    .bind(number)
    .bind(user_id)
    .bind(comment_id)
    .bind(now)
    .bind(now - REFUSAL_WINDOW_MS)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}
