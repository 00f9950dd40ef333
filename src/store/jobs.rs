//! The job queue. A job is leased by one worker (`lease_owner`, `lease_until`); the worker
//! extends the lease while it works and completes the job in the same transaction as the job's
//! effects, conditioned on still holding the lease. A crashed worker's job is taken over when its
//! lease runs out, and its half-done transaction never committed, so effects happen once.

use super::deliveries::{chunk_sizes, values_clause};
use super::{Backend, Db};
use sqlx::{Executor, Row};

pub const KIND_DELIVERY: &str = "delivery";
/// A step of the workflow named by the job's `workflow_id`. The job carries no step of its own:
/// the workflow's stored state says what comes next, and `store::workflows::transition` refuses a
/// step already taken, so a job run twice after a lease takeover cannot repeat one.
pub const KIND_WORKFLOW: &str = "workflow";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub delivery_guid: Option<String>,
    pub workflow_id: Option<i64>,
    pub attempts: i64,
}

/// Queues one job per delivery GUID.
pub async fn enqueue_for_deliveries(conn: &mut sqlx::AnyConnection, guids: &[&str], now: i64) -> sqlx::Result<()> {
    let mut start = 0;
    for size in chunk_sizes(guids.len()) {
        let sql = format!(
            "INSERT INTO jobs (kind, delivery_guid, status, run_at, created_at) VALUES {}",
            values_clause(size, 5)
        );
        let mut q = sqlx::query(&sql);
        for guid in &guids[start..start + size] {
            q = q.bind(KIND_DELIVERY).bind(guid.to_string()).bind("queued").bind(now).bind(now);
        }
        q.execute(&mut *conn).await?;
        start += size;
    }
    Ok(())
}

/// Makes sure a step of the workflow is due by `run_at`: queues a job, or, when the workflow
/// already has a live one (the unique index `jobs_workflow_live` allows one, so that a workflow
/// is worked on by one worker at a time), moves a queued one earlier. Returns the new job's id.
pub async fn enqueue_workflow_job(conn: &mut sqlx::AnyConnection, workflow_id: i64, run_at: i64, now: i64) -> sqlx::Result<Option<i64>> {
    let inserted = sqlx::query(
        "INSERT INTO jobs (kind, workflow_id, status, run_at, created_at) VALUES ($1, $2, 'queued', $3, $4) \
         ON CONFLICT (workflow_id) WHERE workflow_id IS NOT NULL AND status IN ('queued', 'running') DO NOTHING RETURNING id",
    )
    .bind(KIND_WORKFLOW)
    .bind(workflow_id)
    .bind(run_at)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    match inserted {
        Some(row) => Ok(Some(row.try_get(0)?)),
        None => {
            sqlx::query(
                "UPDATE jobs SET run_at = $1, github_wait_until = NULL WHERE workflow_id = $2 AND status = 'queued' AND run_at > $1",
            )
            .bind(run_at)
            .bind(workflow_id)
            .execute(&mut *conn)
            .await?;
            Ok(None)
        }
    }
}

/// Whether the workflow has a job queued or running.
pub async fn workflow_has_live_job<'c, E: Executor<'c, Database = Db>>(conn: E, workflow_id: i64) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM jobs WHERE workflow_id = $1 AND status IN ('queued', 'running')")
        .bind(workflow_id)
        .fetch_one(conn)
        .await?
        .try_get(0)?;
    Ok(n > 0)
}

/// Leases up to `limit` jobs: first those whose lease ran out (their worker died), then those
/// that are due, oldest first. Each half walks an index in order and stops at `limit`, so a
/// claim costs the same whatever the length of the queue.
pub async fn claim(pool: &sqlx::AnyPool, backend: Backend, owner: &str, lease_ms: i64, limit: i64, now: i64) -> sqlx::Result<Vec<Job>> {
    claim_from(pool, backend, owner, lease_ms, limit, now, true).await
}

/// Claims up to `limit` queued jobs that are due, leaving jobs whose lease ran out to a later
/// [`claim`]: one statement where `claim` takes two, for workers that look for expired leases
/// only every so often (they are rare: a process died).
pub async fn claim_queued(
    pool: &sqlx::AnyPool,
    backend: Backend,
    owner: &str,
    lease_ms: i64,
    limit: i64,
    now: i64,
) -> sqlx::Result<Vec<Job>> {
    claim_from(pool, backend, owner, lease_ms, limit, now, false).await
}

const EXPIRED: &str = "status = 'running' AND lease_until < $3";
const DUE: &str = "status = 'queued' AND run_at <= $3";

async fn claim_from(
    pool: &sqlx::AnyPool,
    backend: Backend,
    owner: &str,
    lease_ms: i64,
    limit: i64,
    now: i64,
    expired_too: bool,
) -> sqlx::Result<Vec<Job>> {
    let mut conn = pool.acquire().await?;
    let request = LeaseRequest {
        backend,
        owner,
        lease_ms,
        now,
    };
    let mut jobs = match expired_too {
        true => claim_where(&mut conn, &request, limit, EXPIRED, "lease_until").await?,
        false => Vec::new(),
    };
    let left = limit - jobs.len() as i64;
    if left > 0 {
        jobs.extend(claim_where(&mut conn, &request, left, DUE, "run_at, id").await?);
    }
    Ok(jobs)
}

/// Who asks for a lease, for how long, and when.
struct LeaseRequest<'a> {
    backend: Backend,
    owner: &'a str,
    lease_ms: i64,
    now: i64,
}

async fn claim_where(
    conn: &mut sqlx::AnyConnection,
    request: &LeaseRequest<'_>,
    limit: i64,
    condition: &str,
    order: &str,
) -> sqlx::Result<Vec<Job>> {
    let LeaseRequest {
        backend,
        owner,
        lease_ms,
        now,
    } = *request;
    // On Postgres, SKIP LOCKED lets replicas claim disjoint jobs without waiting on each other;
    // SQLite has a single writer, so the UPDATE is atomic as it stands.
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE jobs SET status = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1 \
         WHERE id IN (SELECT id FROM jobs WHERE {condition} ORDER BY {order} LIMIT $4 {lock}) \
         RETURNING id, kind, delivery_guid, workflow_id, attempts"
    );
    let rows = sqlx::query(&sql)
        .bind(owner.to_string())
        .bind(now + lease_ms)
        .bind(now)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    let mut jobs: Vec<Job> = rows
        .iter()
        .map(|r| {
            Ok(Job {
                id: r.try_get(0)?,
                kind: r.try_get(1)?,
                delivery_guid: r.try_get(2)?,
                workflow_id: r.try_get(3)?,
                attempts: r.try_get(4)?,
            })
        })
        .collect::<sqlx::Result<_>>()?;
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

/// Extends a lease; false when the lease was lost to another worker.
pub async fn heartbeat<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, owner: &str, until: i64) -> sqlx::Result<bool> {
    let r = sqlx::query("UPDATE jobs SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'")
        .bind(until)
        .bind(id)
        .bind(owner.to_string())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Gives jobs this worker claimed but did not start back to the queue, as if never claimed, so
/// that other workers take them now instead of waiting for their leases to run out.
pub async fn release_unstarted<'c, E: Executor<'c, Database = Db>>(conn: E, ids: &[i64], owner: &str) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, attempts = attempts - 1 \
         WHERE id IN ({list}) AND lease_owner = $1 AND status = 'running'"
    );
    Ok(sqlx::query(&sql).bind(owner.to_string()).execute(conn).await?.rows_affected())
}

/// Marks the job done if this worker still holds it. Call inside the transaction that applies
/// the job's effects, first, and roll back when it returns false.
pub async fn complete<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, owner: &str, now: i64) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE jobs SET status = 'done', finished_at = $1, lease_owner = NULL, lease_until = NULL, last_error = NULL \
         WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
    )
    .bind(now)
    .bind(id)
    .bind(owner.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks every job of `ids` done that this worker still holds; returns those ids. Same contract
/// as [`complete`], for a batch, in one statement.
pub async fn complete_many<'c, E: Executor<'c, Database = Db>>(conn: E, ids: &[i64], owner: &str, now: i64) -> sqlx::Result<Vec<i64>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "UPDATE jobs SET status = 'done', finished_at = $1, lease_owner = NULL, lease_until = NULL, last_error = NULL \
         WHERE lease_owner = $2 AND status = 'running' AND id IN ({}) RETURNING id",
        list.join(",")
    );
    let mut q = sqlx::query(&sql).bind(now).bind(owner.to_string());
    for id in ids {
        q = q.bind(*id);
    }
    q.fetch_all(conn).await?.iter().map(|r| r.try_get(0)).collect()
}

/// Puts a failed job back in the queue for `run_at`, or fails it for good.
pub async fn release_failed<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    id: i64,
    owner: &str,
    error: &str,
    retry_at: Option<i64>,
    now: i64,
) -> sqlx::Result<bool> {
    let (status, finished_at) = match retry_at {
        Some(_) => ("queued", None),
        None => ("failed", Some(now)),
    };
    let r = sqlx::query(
        "UPDATE jobs SET status = $1, run_at = COALESCE($2, run_at), finished_at = $3, lease_owner = NULL, lease_until = NULL, \
         last_error = $4 WHERE id = $5 AND lease_owner = $6 AND status = 'running'",
    )
    .bind(status)
    .bind(retry_at)
    .bind(finished_at)
    .bind(error.to_string())
    .bind(id)
    .bind(owner.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Jobs waiting or running.
pub async fn depth<'c, E: Executor<'c, Database = Db>>(conn: E) -> sqlx::Result<i64> {
    // Two counts, each over its partial index: the finished jobs are never read.
    sqlx::query("SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued') + (SELECT COUNT(*) FROM jobs WHERE status = 'running')")
        .fetch_one(conn)
        .await?
        .try_get(0)
}

/// The status and attempts of every job of a delivery (tests and diagnostics).
pub async fn for_delivery<'c, E: Executor<'c, Database = Db>>(conn: E, guid: &str) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT status, attempts FROM jobs WHERE delivery_guid = $1 ORDER BY id")
        .bind(guid.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// The status and attempts of every job of a workflow (tests and diagnostics).
pub async fn for_workflow<'c, E: Executor<'c, Database = Db>>(conn: E, workflow_id: i64) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT status, attempts FROM jobs WHERE workflow_id = $1 ORDER BY id")
        .bind(workflow_id)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Puts a job GitHub's budget holds back in the queue for `run_at`, as if it had not been
/// claimed (the attempt is given back: a rate limit is not the job's failure), noting its lane
/// and until when it waits for GitHub.
pub async fn defer_for_github<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    id: i64,
    owner: &str,
    deferral: &Deferral<'_>,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE jobs SET status = 'queued', run_at = $1, lease_owner = NULL, lease_until = NULL, \
         attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, last_error = $2, lane = $3, github_wait_until = $4 \
         WHERE id = $5 AND lease_owner = $6 AND status = 'running'",
    )
    .bind(deferral.run_at)
    .bind(deferral.reason.to_string())
    .bind(deferral.lane.to_string())
    .bind(deferral.github_until)
    .bind(id)
    .bind(owner.to_string())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Where and until when a job waits for GitHub's budget.
#[derive(Debug, Clone)]
pub struct Deferral<'a> {
    pub run_at: i64,
    pub github_until: i64,
    pub lane: &'a str,
    pub reason: &'a str,
}

/// How many jobs of `lane` are already deferred to `from` or later: a deferred job goes behind
/// them, so that the lanes (repositories) of an installation take turns when the block lifts.
pub async fn lane_backlog<'c, E: Executor<'c, Database = Db>>(conn: E, lane: &str, from: i64) -> sqlx::Result<i64> {
    sqlx::query("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND lane = $1 AND run_at >= $2")
        .bind(lane.to_string())
        .bind(from)
        .fetch_one(conn)
        .await?
        .try_get(0)
}

/// Jobs queued that wait for GitHub's budget at `now`.
pub async fn waiting_for_github<'c, E: Executor<'c, Database = Db>>(conn: E, now: i64) -> sqlx::Result<i64> {
    sqlx::query("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND github_wait_until > $1")
        .bind(now)
        .fetch_one(conn)
        .await?
        .try_get(0)
}

/// Until when the workflow's queued job waits for GitHub's budget, if it does at `now`.
pub async fn workflow_waits_for_github<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    workflow_id: i64,
    now: i64,
) -> sqlx::Result<Option<i64>> {
    let row =
        sqlx::query("SELECT MAX(github_wait_until) FROM jobs WHERE workflow_id = $1 AND status = 'queued' AND github_wait_until > $2")
            .bind(workflow_id)
            .bind(now)
            .fetch_one(conn)
            .await?;
    row.try_get(0)
}
