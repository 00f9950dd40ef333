//! Guardrails and the circuit breaker (SPEC §10), kept in the database so that they hold across
//! restarts and across every process on the same store.
//!
//! - The breaker counts model tasks (calls) and failed ones since it was last closed. Once at
//!   least [`MIN_SAMPLE`] tasks ran and the failed share reaches `limits.error_rate_threshold`,
//!   it opens: no model call is made until an operator closes it (`POST /circuit/reset`,
//!   `orch circuit reset`), which also starts the count afresh.
//! - Spending: a call whose projected cost (estimated before the call) would take the workflow
//!   past `limits.cost_ceiling_per_run_usd`, or the store past `limits.max_cost_per_window_usd`
//!   within the last `limits.window_minutes`, is refused before anything is spent.
//! - Tasks per run: one trigger (a comment, a label, a button press) starts at most
//!   `limits.max_tasks_per_run` workflows; the dedupe window refuses the same request (same
//!   kind, issue and instruction) made again within `limits.dedupe_window_hours`, unless it is
//!   an explicit `/orch retry`.

use crate::policy::Limits;
use crate::store::Db;
use sqlx::{AnyConnection, Executor, Row};

/// The breaker judges the error rate only after this many tasks.
pub const MIN_SAMPLE: i64 = 4;

/// Why a model call may not be made now.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the circuit breaker is open ({failed} of {total} recent model tasks failed); an operator closes it with POST /circuit/reset")]
    BreakerOpen { failed: i64, total: i64 },
    /// The model has no price on this server, so no budget can bound its calls.
    #[error("the model `{model}` has no price on this server, so its cost could not be bounded; the operator prices it or chooses another model")]
    Unpriced { model: String },
    /// The repository's `llm.model` is not one the server allows (`ORCH_LLM_MODELS`).
    #[error("{0}")]
    ModelNotAllowed(String),
    #[error("the projected cost ${projected:.4} would take this workflow past its ceiling of ${ceiling:.2} (spent ${spent:.4})")]
    RunCeiling { projected: f64, spent: f64, ceiling: f64 },
    #[error("the projected cost ${projected:.4} would take spending past ${ceiling:.2} in {minutes} minutes (spent ${spent:.4})")]
    WindowCeiling {
        projected: f64,
        spent: f64,
        ceiling: f64,
        minutes: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    pub is_open: bool,
    pub total_tasks: i64,
    pub failed_tasks: i64,
    pub total_cost_usd: f64,
    pub opened_at: Option<i64>,
}

pub async fn breaker<'c, E: Executor<'c, Database = Db>>(conn: E) -> sqlx::Result<Breaker> {
    let r = sqlx::query("SELECT is_open, total_tasks, failed_tasks, total_cost_micro_usd, opened_at FROM circuit_breaker WHERE id = 1")
        .fetch_one(conn)
        .await?;
    Ok(Breaker {
        is_open: r.try_get::<i64, _>(0)? != 0,
        total_tasks: r.try_get(1)?,
        failed_tasks: r.try_get(2)?,
        total_cost_usd: r.try_get::<i64, _>(3)? as f64 / 1_000_000.0,
        opened_at: r.try_get(4)?,
    })
}

fn micro(usd: f64) -> i64 {
    (usd * 1_000_000.0).round() as i64
}

/// Counts one model task and its cost; opens the breaker when the error rate reaches the
/// threshold. Returns whether this task opened it. One statement, so concurrent recorders
/// (other workers, other processes) never lose a count.
pub async fn record_task(conn: &mut AnyConnection, failed: bool, cost_usd: f64, threshold: f64, now: i64) -> sqlx::Result<bool> {
    let before = breaker(&mut *conn).await?.is_open;
    sqlx::query(
        "UPDATE circuit_breaker SET total_tasks = total_tasks + 1, failed_tasks = failed_tasks + $1, \
         total_cost_micro_usd = total_cost_micro_usd + $2, updated_at = $3, \
         is_open = CASE WHEN is_open = 1 OR (total_tasks + 1 >= $4 AND (failed_tasks + $1) * 1.0 >= $5 * (total_tasks + 1)) THEN 1 ELSE 0 END, \
         opened_at = CASE WHEN is_open = 0 AND total_tasks + 1 >= $4 AND (failed_tasks + $1) * 1.0 >= $5 * (total_tasks + 1) THEN $3 ELSE opened_at END \
         WHERE id = 1",
    )
    .bind(i64::from(failed))
    .bind(micro(cost_usd))
    .bind(now)
    .bind(MIN_SAMPLE)
    .bind(threshold)
    .execute(&mut *conn)
    .await?;
    let after = breaker(&mut *conn).await?.is_open;
    Ok(after && !before)
}

/// Closes the breaker and starts counting afresh (the cost total stays: it is spending).
pub async fn reset<'c, E: Executor<'c, Database = Db>>(conn: E, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE circuit_breaker SET is_open = 0, total_tasks = 0, failed_tasks = 0, opened_at = NULL, updated_at = $1 WHERE id = 1",
    )
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a model call projected to cost `projected` may be made now, given what the
/// workflow (`run_spent`) and the whole store within the window (`window_spent`) spent.
pub fn admit_call(breaker: &Breaker, limits: &Limits, projected: f64, run_spent: f64, window_spent: f64) -> Result<(), Refusal> {
    if breaker.is_open {
        return Err(Refusal::BreakerOpen {
            failed: breaker.failed_tasks,
            total: breaker.total_tasks,
        });
    }
    if !projected.is_finite() {
        return Err(Refusal::Unpriced { model: String::new() });
    }
    if run_spent + projected > limits.cost_ceiling_per_run_usd {
        return Err(Refusal::RunCeiling {
            projected,
            spent: run_spent,
            ceiling: limits.cost_ceiling_per_run_usd,
        });
    }
    if window_spent + projected > limits.max_cost_per_window_usd {
        return Err(Refusal::WindowCeiling {
            projected,
            spent: window_spent,
            ceiling: limits.max_cost_per_window_usd,
            minutes: limits.window_minutes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed() -> Breaker {
        Breaker {
            is_open: false,
            total_tasks: 0,
            failed_tasks: 0,
            total_cost_usd: 0.0,
            opened_at: None,
        }
    }

    #[test]
    fn calls_are_refused_before_spending() {
        let limits = Limits::default();
        assert_eq!(admit_call(&closed(), &limits, 0.10, 0.0, 0.0), Ok(()));
        assert!(matches!(
            admit_call(&closed(), &limits, 0.10, 0.45, 0.0),
            Err(Refusal::RunCeiling { .. })
        ));
        assert!(matches!(
            admit_call(&closed(), &limits, 0.10, 0.0, 4.95),
            Err(Refusal::WindowCeiling { .. })
        ));
        let open = Breaker {
            is_open: true,
            total_tasks: 4,
            failed_tasks: 2,
            ..closed()
        };
        let refusal = admit_call(&open, &limits, 0.0, 0.0, 0.0).unwrap_err();
        assert!(refusal.to_string().contains("2 of 4"), "{refusal}");
    }
}
