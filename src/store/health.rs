//! Figures for `/health`, read from the store.

use super::Db;
use sqlx::{Executor, Row};

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerRow {
    pub is_open: bool,
    pub total_tasks: i64,
    pub failed_tasks: i64,
    pub total_cost_usd: f64,
}

pub async fn breaker<'c, E: Executor<'c, Database = Db>>(conn: E) -> sqlx::Result<BreakerRow> {
    let r = sqlx::query("SELECT is_open, total_tasks, failed_tasks, total_cost_micro_usd FROM circuit_breaker WHERE id = 1")
        .fetch_one(conn)
        .await?;
    Ok(BreakerRow {
        is_open: r.try_get::<i64, _>(0)? != 0,
        total_tasks: r.try_get(1)?,
        failed_tasks: r.try_get(2)?,
        total_cost_usd: r.try_get::<i64, _>(3)? as f64 / 1_000_000.0,
    })
}
