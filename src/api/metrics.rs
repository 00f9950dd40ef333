//! In-process counters (read by `/health`) and the Prometheus exposition of `GET /metrics`.
//!
//! `/metrics` is behind the admin token (`Authorization: Bearer <ORCH_ADMIN_TOKEN>`, SPEC §14),
//! like the rest of the operator interface; without a configured token it answers 403. The
//! text is written by hand (format 0.0.4). Delivery counters are this process's; every other
//! figure is read from the store at scrape time, so replicas on one database report the same
//! store-wide values (aggregate them with `max`, not `sum`). GitHub's rate-limit headroom is
//! the one the GitHub client saw in its latest answer; before any answer the gauge is absent
//! rather than invented.

use super::{ApiError, AppState};
use crate::store::{deliveries, health, jobs, Db};
use crate::workflow::state::{Kind, State};
use axum::extract::State as Extract;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sqlx::{Executor, Row};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

const OUTCOMES: [&str; 5] = ["queued", "pong", "ignored", "duplicate", "error"];

#[derive(Debug, Default)]
pub struct Metrics {
    deliveries: Mutex<HashMap<String, [u64; OUTCOMES.len()]>>,
    /// (remaining, limit) from GitHub's last `x-ratelimit-*` headers, when recorded.
    github_rate_limit: Mutex<Option<(i64, i64)>>,
}

impl Metrics {
    pub fn count_delivery(&self, event: &str, outcome: &str) {
        let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) else {
            return;
        };
        let mut map = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(event) {
            Some(counts) => counts[i] += 1,
            None => {
                let mut counts = [0; OUTCOMES.len()];
                counts[i] = 1;
                map.insert(event.to_string(), counts);
            }
        }
    }

    /// Remembers GitHub's rate-limit headroom (`x-ratelimit-remaining`, `x-ratelimit-limit`).
    pub fn record_github_rate_limit(&self, remaining: i64, limit: i64) {
        *self.github_rate_limit.lock().unwrap_or_else(|p| p.into_inner()) = Some((remaining, limit));
    }

    pub fn github_rate_limit(&self) -> Option<(i64, i64)> {
        *self.github_rate_limit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (event, outcome, count) for every non-zero counter, sorted.
    pub fn deliveries(&self) -> Vec<(String, &'static str, u64)> {
        let map = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|(event, counts)| {
                OUTCOMES
                    .iter()
                    .zip(counts)
                    .filter(|(_, n)| **n > 0)
                    .map(move |(o, n)| (event.clone(), *o, *n))
            })
            .collect();
        out.sort();
        out
    }
}

/// Upper bounds (seconds) of the job duration histogram's buckets.
const JOB_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A Prometheus text exposition being written: each family's `# HELP` and `# TYPE` once, then
/// its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// `GET /metrics`.
pub async fn handler(Extract(state): Extract<AppState>, headers: HeaderMap) -> Response {
    if state.operators.is_empty() {
        return ApiError::new(StatusCode::FORBIDDEN, "metrics are closed: ORCH_ADMIN_TOKEN is not set").into_response();
    }
    // Any operator credential may read the metrics.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.and_then(|g| state.operators.identify(g)).is_none() {
        let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    match render(&state).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(e) => ApiError::internal("metrics", e).into_response(),
    }
}

async fn grouped<'c, E: Executor<'c, Database = Db>>(conn: E, sql: &str) -> sqlx::Result<Vec<(Vec<String>, Vec<f64>)>> {
    // Rows of text labels followed by numbers; numbers are cast by the query to BIGINT or read
    // as floats, so both backends decode them alike.
    let rows = sqlx::query(sql).fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            let mut labels = Vec::new();
            let mut values = Vec::new();
            for i in 0..r.len() {
                if let Ok(s) = r.try_get::<String, _>(i) {
                    labels.push(s);
                } else if let Ok(n) = r.try_get::<i64, _>(i) {
                    values.push(n as f64);
                } else {
                    values.push(r.try_get::<f64, _>(i)?);
                }
            }
            Ok((labels, values))
        })
        .collect()
}

/// The whole exposition.
pub async fn render(state: &AppState) -> anyhow::Result<String> {
    let pool = state.store.pool();
    let mut x = Exposition::default();

    x.family("orch_build_info", "gauge", "The running orch version and store backend (always 1).");
    x.sample(
        "orch_build_info",
        &[("version", state.info.version), ("store", state.store.backend().name())],
        1.0,
    );

    x.family(
        "orch_webhook_deliveries_total",
        "counter",
        "Webhook deliveries answered by this process since it started, by event and outcome.",
    );
    for (event, outcome, n) in state.metrics.deliveries() {
        x.sample(
            "orch_webhook_deliveries_total",
            &[("event", &event), ("outcome", outcome)],
            n as f64,
        );
    }

    x.family(
        "orch_deliveries",
        "gauge",
        "Stored deliveries by processing status (failed ones are errors).",
    );
    let by_status = deliveries::count_by_status(pool).await?;
    for status in ["queued", "processed", "ignored", "failed"] {
        let n = by_status.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
        x.sample("orch_deliveries", &[("status", status)], n as f64);
    }

    x.family("orch_job_queue_depth", "gauge", "Jobs queued or running.");
    x.sample("orch_job_queue_depth", &[], jobs::depth(pool).await? as f64);

    x.family(
        "orch_jobs",
        "gauge",
        "Jobs by kind and status (failed ones gave up after their retries).",
    );
    let jobs_by = grouped(
        pool,
        "SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status ORDER BY kind, status",
    )
    .await?;
    for (labels, values) in &jobs_by {
        if let ([kind, status], [n]) = (labels.as_slice(), values.as_slice()) {
            x.sample("orch_jobs", &[("kind", kind), ("status", status)], *n);
        }
    }

    x.family(
        "orch_job_duration_seconds",
        "histogram",
        "Time from a job's creation to its end (done or failed), retries included.",
    );
    let mut sql = String::from("SELECT kind, COUNT(*), CAST(COALESCE(SUM(finished_at - created_at), 0) AS BIGINT)");
    for b in JOB_BUCKETS {
        let _ = write!(
            sql,
            ", COALESCE(SUM(CASE WHEN finished_at - created_at <= {} THEN 1 ELSE 0 END), 0)",
            (b * 1000.0) as i64
        );
    }
    sql.push_str(" FROM jobs WHERE finished_at IS NOT NULL GROUP BY kind ORDER BY kind");
    for (labels, values) in grouped(pool, &sql).await? {
        let ([kind], [count, sum_ms, buckets @ ..]) = (labels.as_slice(), values.as_slice()) else {
            continue;
        };
        for (b, n) in JOB_BUCKETS.iter().zip(buckets) {
            x.sample("orch_job_duration_seconds_bucket", &[("kind", kind), ("le", &number(*b))], *n);
        }
        x.sample("orch_job_duration_seconds_bucket", &[("kind", kind), ("le", "+Inf")], *count);
        x.sample("orch_job_duration_seconds_sum", &[("kind", kind)], sum_ms / 1000.0);
        x.sample("orch_job_duration_seconds_count", &[("kind", kind)], *count);
    }

    x.family("orch_workflows", "gauge", "Workflows by kind and current state.");
    let wf = grouped(pool, "SELECT kind, state, COUNT(*) FROM workflows GROUP BY kind, state").await?;
    for kind in Kind::ALL {
        for st in State::ALL {
            let n = wf
                .iter()
                .find(|(l, _)| l.len() == 2 && l[0] == kind.as_str() && l[1] == st.as_str())
                .and_then(|(_, v)| v.first().copied())
                .unwrap_or(0.0);
            x.sample("orch_workflows", &[("kind", kind.as_str()), ("state", st.as_str())], n);
        }
    }

    let calls = grouped(
        pool,
        "SELECT provider, model, outcome, COUNT(*), CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT), \
         CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT), COALESCE(SUM(cost_usd), 0.0) FROM model_calls \
         GROUP BY provider, model, outcome ORDER BY provider, model, outcome",
    )
    .await?;
    x.family("orch_model_calls_total", "counter", "Model calls by provider, model and outcome.");
    for (l, v) in &calls {
        if let ([p, m, o], [n, ..]) = (l.as_slice(), v.as_slice()) {
            x.sample("orch_model_calls_total", &[("provider", p), ("model", m), ("outcome", o)], *n);
        }
    }
    // (provider, model) → (tokens in, tokens out, cost).
    type Totals = ((String, String), (f64, f64, f64));
    let mut tokens: Vec<Totals> = Vec::new();
    for (l, v) in &calls {
        if let ([p, m, _], [_, tin, tout, cost]) = (l.as_slice(), v.as_slice()) {
            let key = (p.clone(), m.clone());
            match tokens.iter_mut().find(|(k, _)| *k == key) {
                Some((_, t)) => *t = (t.0 + tin, t.1 + tout, t.2 + cost),
                None => tokens.push((key, (*tin, *tout, *cost))),
            }
        }
    }
    x.family(
        "orch_model_tokens_total",
        "counter",
        "Model tokens by provider, model and direction (in, out).",
    );
    for ((p, m), (tin, tout, _)) in &tokens {
        x.sample(
            "orch_model_tokens_total",
            &[("provider", p), ("model", m), ("direction", "in")],
            *tin,
        );
        x.sample(
            "orch_model_tokens_total",
            &[("provider", p), ("model", m), ("direction", "out")],
            *tout,
        );
    }
    x.family(
        "orch_model_cost_usd_total",
        "counter",
        "Model spending in USD by provider and model.",
    );
    for ((p, m), (_, _, cost)) in &tokens {
        x.sample("orch_model_cost_usd_total", &[("provider", p), ("model", m)], *cost);
    }

    let breaker = health::breaker(pool).await?;
    x.family(
        "orch_circuit_breaker_open",
        "gauge",
        "1 while the circuit breaker is open (no model calls are made).",
    );
    x.sample("orch_circuit_breaker_open", &[], if breaker.is_open { 1.0 } else { 0.0 });
    x.family(
        "orch_circuit_breaker_tasks",
        "gauge",
        "Model tasks counted since the breaker was last closed.",
    );
    x.sample("orch_circuit_breaker_tasks", &[], breaker.total_tasks as f64);
    x.family(
        "orch_circuit_breaker_failed_tasks",
        "gauge",
        "Failed model tasks counted since the breaker was last closed.",
    );
    x.sample("orch_circuit_breaker_failed_tasks", &[], breaker.failed_tasks as f64);
    x.family(
        "orch_circuit_breaker_cost_usd_total",
        "counter",
        "Model spending the breaker has counted, in USD.",
    );
    x.sample("orch_circuit_breaker_cost_usd_total", &[], breaker.total_cost_usd);

    x.family(
        "orch_github_actions",
        "gauge",
        "GitHub writes by kind and status (failed ones are errors).",
    );
    for (l, v) in grouped(
        pool,
        "SELECT kind, status, COUNT(*) FROM actions GROUP BY kind, status ORDER BY kind, status",
    )
    .await?
    {
        if let ([k, s], [n]) = (l.as_slice(), v.as_slice()) {
            x.sample("orch_github_actions", &[("kind", k), ("status", s)], *n);
        }
    }

    x.family(
        "orch_github_request_errors_total",
        "counter",
        "Failed GitHub request attempts of this process since it started, by reason (server_error, rate_limited, transport, refused; 404s aside).",
    );
    let github = crate::github::retry::stats::snapshot();
    for (reason, errors, _) in &github {
        x.sample("orch_github_request_errors_total", &[("reason", reason)], *errors as f64);
    }
    x.family(
        "orch_github_retries_total",
        "counter",
        "GitHub requests this process's retry layer sent again since it started, by the reason of the failure before.",
    );
    for (reason, _, retries) in &github {
        x.sample("orch_github_retries_total", &[("reason", reason)], *retries as f64);
    }
    x.family(
        "orch_model_call_retries_total",
        "counter",
        "HTTP requests to the model beyond the first of each call (the provider retry layer's retries), by provider and model.",
    );
    for (l, v) in grouped(
        pool,
        "SELECT provider, model, CAST(COALESCE(SUM(attempts - 1), 0) AS BIGINT) FROM model_calls WHERE attempts > 1 \
         GROUP BY provider, model ORDER BY provider, model",
    )
    .await?
    {
        if let ([p, m], [n]) = (l.as_slice(), v.as_slice()) {
            x.sample("orch_model_call_retries_total", &[("provider", p), ("model", m)], *n);
        }
    }

    // The GitHub client remembers the headroom of its latest answer.
    if let Some((remaining, limit)) = state.engine.as_ref().and_then(|e| e.github.rate_limit()) {
        state.metrics.record_github_rate_limit(remaining, limit);
    }
    if let Some((remaining, limit)) = state.metrics.github_rate_limit() {
        x.family(
            "orch_github_rate_limit_remaining",
            "gauge",
            "Requests left in GitHub's current rate-limit window.",
        );
        x.sample("orch_github_rate_limit_remaining", &[], remaining as f64);
        x.family("orch_github_rate_limit_limit", "gauge", "GitHub's rate limit per window.");
        x.sample("orch_github_rate_limit_limit", &[], limit as f64);
    }

    // GitHub's budget as every replica shares it through the store (SPEC §11).
    let now = crate::store::now_ms();
    x.family(
        "orch_jobs_waiting_for_github",
        "gauge",
        "Queued jobs that wait for GitHub's rate limit (primary or secondary) to let them run.",
    );
    x.sample(
        "orch_jobs_waiting_for_github",
        &[],
        crate::store::jobs::waiting_for_github(pool, now).await? as f64,
    );
    let budgets = crate::store::github_budget::all(pool).await?;
    let seconds = |until: i64| if until > now { (until / 1000) as f64 } else { 0.0 };
    type Gauge<'a> = &'a dyn Fn(&crate::store::github_budget::Budget) -> Option<f64>;
    let families: [(&str, &str, Gauge); 3] = [
        (
            "orch_github_blocked_until_seconds",
            "Per installation, until when (unix seconds) GitHub's rate limit holds its requests; 0 when it does not.",
            &|b| Some(seconds(b.blocked_until)),
        ),
        (
            "orch_github_writes_blocked_until_seconds",
            "Per installation, until when (unix seconds) a secondary limit holds its content-creating requests; 0 when none does.",
            &|b| Some(seconds(b.writes_blocked_until)),
        ),
        (
            "orch_github_budget_remaining",
            "Per installation, the requests GitHub said were left, as last recorded (recorded once they run low).",
            &|b| b.remaining.map(|r| r as f64),
        ),
    ];
    for (name, help, value) in families {
        x.family(name, "gauge", help);
        for b in &budgets {
            if let Some(v) = value(b) {
                x.sample(name, &[("installation", &b.installation_id.to_string())], v);
            }
        }
    }
    Ok(x.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_event_and_outcome() {
        let m = Metrics::default();
        m.count_delivery("issues", "queued");
        m.count_delivery("issues", "queued");
        m.count_delivery("ping", "pong");
        m.count_delivery("ping", "not-an-outcome");
        assert_eq!(m.deliveries(), vec![("issues".into(), "queued", 2), ("ping".into(), "pong", 1)]);
    }

    #[test]
    fn writes_the_text_format() {
        let mut x = Exposition::default();
        x.family("orch_x", "gauge", "Line one\nback\\slash.");
        x.sample("orch_x", &[("a", "q\"uote"), ("b", "new\nline")], 1.5);
        x.sample("orch_x", &[], 3.0);
        x.sample("orch_x", &[("le", "+Inf")], f64::INFINITY);
        assert_eq!(
            x.finish(),
            "# HELP orch_x Line one\\nback\\\\slash.\n# TYPE orch_x gauge\norch_x{a=\"q\\\"uote\",b=\"new\\nline\"} 1.5\norch_x 3\norch_x{le=\"+Inf\"} +Inf\n"
        );
    }
}
