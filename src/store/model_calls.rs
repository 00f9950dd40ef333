//! The `model_calls` table (see `migrations/*/0006_model_calls.sql`): one row per logical model
//! call, started as `pending` before the first request and finished once with the final outcome.
//! Costs are USD as floating point (`REAL` / `DOUBLE PRECISION`), whose sums both backends decode
//! alike; tokens, attempts and times are integers (times in unix milliseconds).

use super::Db;
use sqlx::any::AnyRow;
use sqlx::{Executor, Row};

/// What is known when a call starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModelCall<'a> {
    pub workflow_id: i64,
    /// `triage` | `qa_plan` | `patch`.
    pub task: &'a str,
    /// The prompt template with its version, e.g. `triage.v1`.
    pub template: &'a str,
    /// The exact prompt text sent (see `llm::prompt`).
    pub prompt: &'a str,
    /// Hex SHA-256 of `prompt`.
    pub prompt_sha256: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub max_output_tokens: u32,
    /// What the context pack left out.
    pub not_seen: &'a [String],
}

/// Outcome of a finished call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Ok,
    /// Retryable failures that outlasted the retries.
    Transient,
    /// The provider refused the request (a 4xx other than 408/409/429).
    Permanent,
    /// The answer was not JSON, had no tool call, or did not fit the task's schema.
    Malformed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Ok => "ok",
            Outcome::Transient => "transient",
            Outcome::Permanent => "permanent",
            Outcome::Malformed => "malformed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "pending" => Outcome::Pending,
            "ok" => Outcome::Ok,
            "transient" => Outcome::Transient,
            "permanent" => Outcome::Permanent,
            "malformed" => Outcome::Malformed,
            _ => return None,
        })
    }
}

/// What is known when a call ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished<'a> {
    pub outcome: Outcome,
    /// The error text (None when the outcome is ok).
    pub error: Option<&'a str>,
    /// The raw tool input as JSON text, when the provider returned one.
    pub answer: Option<&'a str>,
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub cost_usd: f64,
    pub price_known: bool,
    pub attempts: u32,
    pub latency_ms: u64,
}

/// One row of `model_calls`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCall {
    pub id: i64,
    pub workflow_id: i64,
    pub task: String,
    pub template: String,
    pub prompt: String,
    pub prompt_sha256: String,
    pub provider: String,
    pub model: String,
    pub max_output_tokens: i64,
    pub not_seen: Vec<String>,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub answer: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub price_known: bool,
    pub attempts: i64,
    pub latency_ms: Option<i64>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

const COLUMNS: &str = "id, workflow_id, task, template, prompt, prompt_sha256, provider, model, max_output_tokens, not_seen, \
                       outcome, error, answer, tokens_in, tokens_out, cost_usd, price_known, attempts, latency_ms, started_at, finished_at";

fn from_row(r: &AnyRow) -> sqlx::Result<ModelCall> {
    let not_seen: String = r.try_get(9)?;
    let outcome: String = r.try_get(10)?;
    Ok(ModelCall {
        id: r.try_get(0)?,
        workflow_id: r.try_get(1)?,
        task: r.try_get(2)?,
        template: r.try_get(3)?,
        prompt: r.try_get(4)?,
        prompt_sha256: r.try_get(5)?,
        provider: r.try_get(6)?,
        model: r.try_get(7)?,
        max_output_tokens: r.try_get(8)?,
        not_seen: serde_json::from_str(&not_seen).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        outcome: Outcome::parse(&outcome).ok_or_else(|| sqlx::Error::Decode(format!("unknown model call outcome {outcome:?}").into()))?,
        error: r.try_get(11)?,
        answer: r.try_get(12)?,
        tokens_in: r.try_get(13)?,
        tokens_out: r.try_get(14)?,
        cost_usd: r.try_get(15)?,
        price_known: r.try_get::<i64, _>(16)? != 0,
        attempts: r.try_get(17)?,
        latency_ms: r.try_get(18)?,
        started_at: r.try_get(19)?,
        finished_at: r.try_get(20)?,
    })
}

/// Records a call about to be made (`pending`); returns its id.
pub async fn start<'c, E: Executor<'c, Database = Db>>(conn: E, call: &NewModelCall<'_>, now: i64) -> sqlx::Result<i64> {
    let not_seen = serde_json::to_string(call.not_seen).expect("strings serialize");
    let r = sqlx::query(
        "INSERT INTO model_calls (workflow_id, task, template, prompt, prompt_sha256, provider, model, max_output_tokens, not_seen, \
         outcome, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10) RETURNING id",
    )
    .bind(call.workflow_id)
    .bind(call.task.to_string())
    .bind(call.template.to_string())
    .bind(call.prompt.to_string())
    .bind(call.prompt_sha256.to_string())
    .bind(call.provider.to_string())
    .bind(call.model.to_string())
    .bind(i64::from(call.max_output_tokens))
    .bind(not_seen)
    .bind(now)
    .fetch_one(conn)
    .await?;
    r.try_get(0)
}

/// Records the final outcome of call `id`.
pub async fn finish<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, f: &Finished<'_>, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE model_calls SET outcome = $1, error = $2, answer = $3, tokens_in = $4, tokens_out = $5, cost_usd = $6, \
         price_known = $7, attempts = $8, latency_ms = $9, finished_at = $10 WHERE id = $11",
    )
    .bind(f.outcome.as_str().to_string())
    .bind(f.error.map(str::to_string))
    .bind(f.answer.map(str::to_string))
    .bind(i64::from(f.tokens_in))
    .bind(i64::from(f.tokens_out))
    .bind(f.cost_usd)
    .bind(i64::from(f.price_known))
    .bind(i64::from(f.attempts))
    .bind(i64::try_from(f.latency_ms).unwrap_or(i64::MAX))
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64) -> sqlx::Result<Option<ModelCall>> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM model_calls WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The calls made for a workflow, oldest first.
pub async fn for_workflow<'c, E: Executor<'c, Database = Db>>(conn: E, workflow_id: i64) -> sqlx::Result<Vec<ModelCall>> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM model_calls WHERE workflow_id = $1 ORDER BY id"))
        .bind(workflow_id)
        .fetch_all(conn)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Money spent on model calls by workflow `workflow_id`, and by every call started at or after
/// `since` (unix ms, for the hourly budget): one statement, read before each call.
pub async fn spent<'c, E: Executor<'c, Database = Db>>(conn: E, workflow_id: i64, since: i64) -> sqlx::Result<(f64, f64)> {
    let r = sqlx::query(
        "SELECT (SELECT COALESCE(SUM(cost_usd), 0.0) FROM model_calls WHERE workflow_id = $1), \
                (SELECT COALESCE(SUM(cost_usd), 0.0) FROM model_calls WHERE started_at >= $2)",
    )
    .bind(workflow_id)
    .bind(since)
    .fetch_one(conn)
    .await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// Finished calls started at or after `since`, as (ok, failed): for the breaker's error rate.
/// Malformed answers count as failures; pending calls are not counted.
pub async fn outcomes_since<'c, E: Executor<'c, Database = Db>>(conn: E, since: i64) -> sqlx::Result<(i64, i64)> {
    let r = sqlx::query(
        "SELECT COALESCE(SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN outcome NOT IN ('ok', 'pending') THEN 1 ELSE 0 END), 0) \
         FROM model_calls WHERE started_at >= $1",
    )
    .bind(since)
    .fetch_one(conn)
    .await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}
