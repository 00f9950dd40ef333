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
