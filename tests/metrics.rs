//! `GET /metrics`: behind the admin token, valid Prometheus text, and figures that move as
//! signed deliveries arrive and a workflow runs.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{payloads, Orch, APP_ID};
use std::collections::HashMap;

const TOKEN: &str = "metrics-test-token";

/// Samples by `name{labels}` as written (labels in the exposition's order).
type Samples = HashMap<String, f64>;

/// Parses the text format strictly: every line is `# HELP name text`, `# TYPE name type` or a
/// sample `name{label="value",...} number`, each sample belongs to a family declared before it,
/// and no family is declared twice.
fn parse(text: &str) -> Samples {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut samples = Samples::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("HELP without text: {line:?}"));
            assert!(valid_name(name) && !help.is_empty(), "bad HELP line {line:?}");
            assert!(!helped.contains(&name.to_string()), "HELP twice for {name}");
            helped.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE without a type: {line:?}"));
            assert!(valid_name(name), "bad TYPE line {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type {line:?}"
            );
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "TYPE twice for {name}");
        } else {
            assert!(!line.starts_with('#'), "a comment that is neither HELP nor TYPE: {line:?}");
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample without a value: {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("not a number in {line:?}")),
            };
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    check_labels(labels, line);
                    name
                }
                None => series,
            };
            assert!(valid_name(name), "bad metric name in {line:?}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
                .unwrap_or(name);
            assert!(types.contains_key(family), "sample before its TYPE: {line:?}");
            assert!(samples.insert(series.to_string(), value).is_none(), "duplicate series {series}");
        }
    }
    samples
}

/// `a="x",b="y\"z"`: names valid, values quoted with only `\\`, `\"`, `\n` escapes.
fn check_labels(labels: &str, line: &str) {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name in {line:?}"
        );
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    let (_, e) = chars.next().unwrap_or_else(|| panic!("dangling escape in {line:?}"));
                    assert!(matches!(e, '\\' | '"' | 'n'), "bad escape in {line:?}");
                }
                Some((i, '"')) => break i,
                Some(_) => {}
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            assert!(rest.is_empty(), "labels not separated by commas in {line:?}");
        }
    }
}

async fn scrape(o: &Orch) -> Samples {
    let r = o.http.get(format!("{}/metrics", o.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&r.text().await.unwrap())
}

fn get(s: &Samples, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_as_deliveries_arrive_sqlite() {
    metrics_move_as_deliveries_arrive(Backend::Sqlite).await
}

#[tokio::test]
async fn metrics_move_as_deliveries_arrive_postgres() {
    metrics_move_as_deliveries_arrive(Backend::Postgres).await
}

async fn metrics_move_as_deliveries_arrive(backend: Backend) {
    let Some(o) = Orch::with_env(backend, "phase: 4\n", &[("ORCH_ADMIN_TOKEN", TOKEN)]).await else {
        return;
    };
    o.user("mara", "maintain");

    // Closed without the token, or with a wrong one.
    let r = o.http.get(format!("{}/metrics", o.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = o.http.get(format!("{}/metrics", o.base)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);

    let before = scrape(&o).await;
    assert_eq!(get(&before, "orch_job_queue_depth"), 0.0);
    assert_eq!(get(&before, r#"orch_circuit_breaker_open"#), 0.0);
    assert_eq!(get(&before, r#"orch_workflows{kind="triage",state="WAITING_USER_APPROVAL"}"#), 0.0);
    assert!(
        before.keys().all(|k| !k.starts_with("orch_github_rate_limit")),
        "GitHub has not answered yet, so no headroom is invented"
    );

    o.deliver("ping", &payloads::ping(APP_ID)).await;
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    let guid = o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    // The same delivery again: a duplicate.
    let labeled = payloads::issue_labeled(&o.repo, &issue, "orch:triage", "mara");
    let (status, _) = o.send_with_guid("issues", &guid, &labeled).await;
    assert_eq!(status, 200);
    o.wait_idle(10).await;

    let after = scrape(&o).await;
    let used = o.fake.state.rate_used() as f64;
    // GitHub answered: the headroom of its latest answer, which the fake counts down from 5,000
    // per request as GitHub does. The triage took several requests; none came after the scrape's
    // reading of `used` that could have been counted before it.
    let remaining: Vec<(&String, &f64)> = after
        .iter()
        .filter(|(k, _)| k.starts_with("orch_github_rate_limit_remaining"))
        .collect();
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    let remaining = *remaining[0].1;
    // Up to its proposal a triage now makes few counted requests (issue 14: the issue comes with
    // the webhook, the policy's 304s are free): the requester's permission and the proposal.
    assert!(used >= 2.0, "a triage makes counted requests: {used}");
    assert!(
        remaining >= 5000.0 - used && remaining <= 4998.0,
        "remaining {remaining}, used {used}"
    );
    let moved = |series: &str| get(&after, series) - get(&before, series);
    assert_eq!(moved(r#"orch_webhook_deliveries_total{event="ping",outcome="pong"}"#), 1.0);
    assert_eq!(moved(r#"orch_webhook_deliveries_total{event="issues",outcome="queued"}"#), 1.0);
    assert_eq!(moved(r#"orch_webhook_deliveries_total{event="issues",outcome="duplicate"}"#), 1.0);
    assert!(moved(r#"orch_deliveries{status="processed"}"#) >= 1.0, "{after:?}");
    assert_eq!(get(&after, r#"orch_workflows{kind="triage",state="WAITING_USER_APPROVAL"}"#), 1.0);
    assert!(moved(r#"orch_job_duration_seconds_count{kind="delivery"}"#) >= 1.0, "{after:?}");
    assert!(moved(r#"orch_job_duration_seconds_bucket{kind="delivery",le="+Inf"}"#) >= 1.0);
    assert!(get(&after, r#"orch_jobs{kind="workflow",status="done"}"#) >= 1.0, "{after:?}");
    let calls: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("orch_model_calls_total{") && k.contains(r#"outcome="ok""#))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(calls, 1.0, "one triage call: {after:?}");
    let tokens: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("orch_model_tokens_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(tokens > 0.0, "{after:?}");
    assert!(after.keys().any(|k| k.starts_with("orch_model_cost_usd_total{")), "{after:?}");
    assert!(get(&after, "orch_circuit_breaker_tasks") >= 1.0, "{after:?}");
    // Histogram buckets are cumulative.
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix(r#"orch_job_duration_seconds_bucket{kind="delivery",le=""#)?
                .strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    assert!(std::panic::catch_unwind(|| parse("orch_x 1\n")).is_err(), "a sample without TYPE");
    assert!(std::panic::catch_unwind(|| parse("# TYPE orch_x gauge\norch_x{a=\"b} 1\n")).is_err());
    assert!(std::panic::catch_unwind(|| parse("# random comment\n")).is_err());
    let ok = parse("# HELP orch_x X.\n# TYPE orch_x gauge\norch_x{a=\"q\\\"\"} 1.5\n");
    assert_eq!(ok["orch_x{a=\"q\\\"\"}"], 1.5);
}
