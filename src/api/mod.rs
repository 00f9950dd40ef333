//! HTTP surface: the router, shared state, JSON errors and the public `/health`.

pub mod admin;
pub mod metrics;
pub mod openapi;
pub mod ui;

use crate::store::ingest::Ingest;
use crate::store::{deliveries, health, jobs, Store};
use crate::webhook::SignatureVerifier;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

pub use metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub ingest: Ingest,
    pub verifier: Arc<SignatureVerifier>,
    pub metrics: Arc<Metrics>,
    pub info: Arc<ServerInfo>,
    /// The workflow engine, when a GitHub App is configured (operator actions need it).
    pub engine: Option<Arc<crate::workflow::engine::Engine>>,
    /// The operator credentials (`ORCH_ADMIN_TOKENS`, `ORCH_ADMIN_TOKEN`): the admin API, the
    /// metrics and the dashboard are closed without one.
    pub operators: Arc<crate::config::operators::Operators>,
}

/// Static facts `/health` reports.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: &'static str,
    /// The highest rollout phase this server allows (repositories may only go lower).
    pub max_phase: u8,
    pub dry_run: bool,
}

/// Every non-2xx answer: a status and a short JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// Internal failures are logged with detail; the caller gets a short generic message.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/webhook", post(crate::webhook::handler::receive))
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics::handler))
        .merge(ui::router())
        .merge(openapi::router(&state))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

async fn health_handler(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let pool = state.store.pool();
    let breaker = health::breaker(pool).await.map_err(|e| ApiError::internal("health: breaker", e))?;
    let counts = deliveries::count_by_status(pool)
        .await
        .map_err(|e| ApiError::internal("health: deliveries", e))?;
    let depth = jobs::depth(pool).await.map_err(|e| ApiError::internal("health: jobs", e))?;
    let by_status: serde_json::Map<String, serde_json::Value> = counts.into_iter().map(|(k, v)| (k, json!(v))).collect();
    // Answers given by this process since it started, by event and outcome.
    let mut received = serde_json::Map::new();
    for (event, outcome, n) in state.metrics.deliveries() {
        let entry = received.entry(event).or_insert_with(|| json!({}));
        entry[outcome] = json!(n);
    }
    Ok(Json(json!({
        "status": "ok",
        "phase": format!("phase{}", state.info.max_phase),
        "version": state.info.version,
        "mode": if state.info.dry_run { "dry-run" } else { "live" },
        "store": state.store.backend().name(),
        "circuitBreaker": {
            "isOpen": breaker.is_open,
            "totalTasks": breaker.total_tasks,
            "failedTasks": breaker.failed_tasks,
            "totalCostUsd": format!("{:.4}", breaker.total_cost_usd),
        },
        "deliveries": by_status,
        "received": received,
        "queueDepth": depth,
    })))
}
