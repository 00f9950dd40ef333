//! The fault suite (issue 8, item 3): GitHub answering 500/502/503, 429 and secondary rate
//! limits, slowly or not at all; the model answering 429/529/500 or timing out; PostgreSQL
//! restarted in the middle of a run. Each test asserts what users see (one proposal per
//! workflow, labels applied once, a clear comment when something failed for good) and what
//! operators see (`/metrics`, `/health`, the audit log), and checks in the fakes' request logs
//! that the faults were really met and retried.

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/fake_llm.rs"]
mod fake_llm;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;
#[path = "common/private_pg.rs"]
mod private_pg;

use axum::http::Method;
use common::Backend;
use e2e::{metric, IssueSpec, Orch, REPO};
use fake_llm::{FakeLlm, Reply};
use orch::github::fake::{Fault, FaultKind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "fault-suite-admin-token";
/// The GitHub client's per-request timeout in these tests.
const GITHUB_TIMEOUT_MS: u64 = 800;
/// The model client's per-request timeout in these tests.
const LLM_TIMEOUT_MS: u64 = 700;

fn fast_env() -> Vec<(&'static str, String)> {
    vec![
        ("ORCH_ADMIN_TOKEN", TOKEN.into()),
        ("ORCH_GITHUB_TIMEOUT_MS", GITHUB_TIMEOUT_MS.to_string()),
        ("ORCH_GITHUB_RETRY_BACKOFF_MS", "50".into()),
        ("ORCH_LLM_TIMEOUT_MS", LLM_TIMEOUT_MS.to_string()),
        ("ORCH_LLM_RETRY_BACKOFF_MS", "20".into()),
    ]
}

async fn start(backend: Backend, extra: &[(&str, String)]) -> Option<Orch> {
    let mut env = fast_env();
    env.extend(extra.iter().cloned());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = Orch::with_env(backend, "phase: 4\n", &env).await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    Some(o)
}

async fn metrics(o: &Orch) -> HashMap<String, f64> {
    o.metrics(TOKEN).await
}

async fn health(o: &Orch) -> Value {
    o.http.get(format!("{}/health", o.base)).send().await.unwrap().json().await.unwrap()
}

/// `GET /audit?kind=…` through the admin API.
async fn audit(o: &Orch, kind: &str) -> Vec<Value> {
    let r = o
        .http
        .get(format!("{}/audit?kind={kind}&limit=1000", o.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    page["records"].as_array().cloned().unwrap_or_default()
}

/// Times every request the fake GitHub receives, by polling its log every few milliseconds
/// (the log itself holds no times). Good enough to check waits of a second.
struct LogClock {
    seen: Arc<Mutex<Vec<(String, String, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LogClock {
    fn start(o: &Orch) -> LogClock {
        let state = o.fake.state.clone();
        let seen: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
        let out = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let from = out.lock().unwrap().len();
                let now = Instant::now();
                let fresh = state.log_from(from);
                out.lock().unwrap().extend(fresh.into_iter().map(|(m, p)| (m, p, now)));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        LogClock { seen, task }
    }

    /// When each `method path` request arrived, in order.
    fn times(&self, method: &str, path: &str) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _)| m == method && p == path)
            .map(|(_, _, t)| *t)
            .collect()
    }
}

impl Drop for LogClock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn count(log: &[(String, String)], method: &str, path: &str) -> usize {
    log.iter().filter(|(m, p)| m == method && p == path).count()
}

/// Every GitHub write orch recorded, for failure messages.
async fn actions_dump(o: &Orch) -> String {
    use sqlx::Row;
    sqlx::query("SELECT id, idempotency_key, kind, target, status, error FROM actions ORDER BY id")
        .fetch_all(o.store.pool())
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let (id, key, kind, target, status, error): (i64, String, String, String, String, Option<String>) =
                        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
                    format!("  {id} {key} {kind} {target} {status} {error:?}\n")
                })
                .collect()
        })
        .unwrap_or_else(|e| format!("(unreadable: {e})"))
}

fn issue_path(n: i64, rest: &str) -> String {
    format!("/repos/{REPO}/issues/{n}/{rest}")
}

// ---------------------------------------------------------------------------------------------
// 1. GitHub faults.

/// What is injected for one issue, and what its request counts must then be.
struct Plan {
    faults: Vec<(Method, &'static str, u32, FaultKind)>,
    /// POSTs of comments on the issue: its two comments plus the attempts that were refused
    /// without being applied.
    comment_posts: usize,
    /// POSTs of labels: one plus the refused attempts.
    label_posts: usize,
    /// GETs of the issue's comments at least (failed reads and their retries): the read every
    /// workflow here makes, its issue having a comment the label's webhook did not carry.
    min_comment_reads: usize,
    /// Requests (method, what) answered with a `Retry-After` that the next attempt must respect.
    wait_after: Vec<(&'static str, &'static str, Duration)>,
}

fn plans() -> Vec<Plan> {
    let status = |code: u16| FaultKind::Status { code, retry_after: None };
    let limited = |code: u16| FaultKind::Status {
        code,
        retry_after: Some(1),
    };
    let slow = Duration::from_millis(GITHUB_TIMEOUT_MS + 700);
    vec![
        // 500 on a write and twice on a read.
        Plan {
            faults: vec![
                (Method::POST, "comments", 1, status(500)),
                (Method::GET, "comments", 2, status(500)),
            ],
            comment_posts: 3,
            label_posts: 1,
            min_comment_reads: 3,
            wait_after: vec![],
        },
        // 502 twice on a write, once on a read (the context's listing of the comments).
        Plan {
            faults: vec![
                (Method::POST, "comments", 2, status(502)),
                (Method::GET, "comments", 1, status(502)),
            ],
            comment_posts: 4,
            label_posts: 1,
            min_comment_reads: 1,
            wait_after: vec![],
        },
        // 503 on both writes.
        Plan {
            faults: vec![(Method::POST, "comments", 1, status(503)), (Method::POST, "labels", 1, status(503))],
            comment_posts: 3,
            label_posts: 2,
            min_comment_reads: 1,
            wait_after: vec![],
        },
        // 429 with Retry-After on both writes.
        Plan {
            faults: vec![
                (Method::POST, "comments", 1, limited(429)),
                (Method::POST, "labels", 1, limited(429)),
            ],
            comment_posts: 3,
            label_posts: 2,
            min_comment_reads: 1,
            wait_after: vec![
                ("POST", "comments", Duration::from_secs(1)),
                ("POST", "labels", Duration::from_secs(1)),
            ],
        },
        // The secondary rate limit: 403 with Retry-After, on a write and on a read.
        Plan {
            faults: vec![
                (Method::POST, "comments", 1, limited(403)),
                (Method::GET, "comments", 1, limited(403)),
            ],
            comment_posts: 3,
            label_posts: 1,
            min_comment_reads: 2,
            wait_after: vec![
                ("POST", "comments", Duration::from_secs(1)),
                ("GET", "comments", Duration::from_secs(1)),
            ],
        },
        // Slow answers beyond the client's timeout: a read that is answered late, and a write
        // that is applied but answered late (the answer is lost to the timeout).
        Plan {
            faults: vec![
                (Method::GET, "comments", 1, FaultKind::Delay(slow)),
                (Method::POST, "comments", 1, FaultKind::ApplyThenStall(slow)),
            ],
            comment_posts: 2,
            label_posts: 1,
            min_comment_reads: 1,
            wait_after: vec![],
        },
        // Dropped connections before anything is applied.
        Plan {
            faults: vec![
                (Method::POST, "comments", 1, FaultKind::Drop),
                (Method::POST, "labels", 1, FaultKind::Drop),
            ],
            comment_posts: 3,
            label_posts: 2,
            min_comment_reads: 1,
            wait_after: vec![],
        },
        // Applied, then the connection dropped: the answer is lost. The comment is found by its
        // marker and not made again; adding labels is idempotent on GitHub and simply sent again.
        Plan {
            faults: vec![
                (Method::POST, "comments", 1, FaultKind::ApplyThenDrop),
                (Method::POST, "labels", 1, FaultKind::ApplyThenDrop),
            ],
            comment_posts: 2,
            label_posts: 2,
            min_comment_reads: 1,
            wait_after: vec![],
        },
    ]
}

/// `issue` with a user's comment that no webhook delivered: orch lists the comments for the
/// context, since the payload counts one it did not carry.
fn commented(o: &Orch, issue: IssueSpec) -> IssueSpec {
    o.fake.state.user_comment(REPO, issue.number, "dev-kim", "User", "Seen on 1.2 too.");
    issue.comments(1)
}

async fn github_faults_lose_nothing_and_repeat_no_write(backend: Backend) {
    let Some(o) = start(backend, &[]).await else { return };
    let clock = LogClock::start(&o);
    let plans = plans();
    // Each issue has a comment its label's webhook does not carry: the context lists the
    // comments, a read of each workflow's own that the plans fault (orch reads nothing else of
    // the issue: the webhook carries it).
    let mut issues: Vec<IssueSpec> = (0..plans.len())
        .map(|i| {
            commented(
                &o,
                o.open_issue(&format!("Crash {i}"), "It crashes when the config is empty.", "dev-kim"),
            )
        })
        .collect();
    // One more issue whose labels GitHub refuses for good (a 403 without any rate-limit sign).
    let mut refused = o.open_issue("Crash refused", "It crashes too.", "dev-kim");
    for (plan, issue) in plans.iter().zip(&issues) {
        for (method, what, times, kind) in &plan.faults {
            let path = issue_path(issue.number, what);
            o.fake.state.inject(Fault::new(method.clone(), &path, *times, kind.clone()));
        }
    }
    o.fake.state.inject(Fault::new(
        Method::POST,
        &issue_path(refused.number, "labels"),
        1,
        FaultKind::Status {
            code: 403,
            retry_after: None,
        },
    ));
    // And the policy file is unavailable once (a read every workflow starts with).
    o.fake.state.inject(Fault::new(
        Method::GET,
        "/contents/.github/orch.yml",
        1,
        FaultKind::Status {
            code: 503,
            retry_after: None,
        },
    ));
    let before = metrics(&o).await;

    // The batch: every issue labelled at once, then approved once its proposal is up.
    for issue in issues.iter_mut().chain(std::iter::once(&mut refused)) {
        o.label_issue(issue, "orch:triage", "mara").await;
    }
    let all: Vec<&IssueSpec> = issues.iter().chain(std::iter::once(&refused)).collect();
    for issue in &all {
        o.eventually_sync(&format!("the proposal on #{}", issue.number), Duration::from_secs(40), || {
            (o.bot_comments(issue.number).len() == 1).then_some(())
        })
        .await;
    }
    assert_eq!(o.workflow_states().await.len(), all.len(), "one workflow per issue");
    // The proposal made with a late answer is on GitHub before orch has read that answer: an
    // approval given in that window is answered "nothing waits here" (the user approves again).
    // This test approves once every workflow waits.
    for id in 1..=all.len() as i64 {
        o.wait_state(id, "WAITING_USER_APPROVAL").await;
    }
    for issue in &all {
        o.comment(issue, "lee", "/orch approve").await;
    }
    let settled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = o.workflow_states().await;
            if s.iter().all(|(_, _, st)| st == "DONE" || st == "FAILED") {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    let Ok(states) = settled else {
        panic!(
            "timed out waiting for every workflow to settle\n{}\nactions:\n{}",
            o.diagnostics().await,
            actions_dump(&o).await
        );
    };
    o.wait_idle(30).await;

    // What users see: each issue got exactly one proposal and one outcome comment, and the
    // labels once.
    let log = o.fake.state.log();
    for (plan, issue) in plans.iter().zip(&issues) {
        let n = issue.number;
        let comments = o.bot_comments(n);
        assert_eq!(comments.len(), 2, "#{n}: {comments:?}");
        assert!(comments[0].contains("triage proposal"), "#{n}: {}", comments[0]);
        assert!(
            comments[1].starts_with("Applied labels `bug`, `priority:p1`"),
            "#{n}: {}",
            comments[1]
        );
        let mut labels = o.fake.state.labels(REPO, n);
        labels.sort();
        assert_eq!(labels, ["bug", "orch:triage", "priority:p1"], "#{n}");
        // The faults were met and retried: the request counts say so.
        assert_eq!(
            count(&log, "POST", &issue_path(n, "comments")),
            plan.comment_posts,
            "#{n}: comment creations (faults: {:?})",
            plan.faults
        );
        assert_eq!(
            count(&log, "POST", &issue_path(n, "labels")),
            plan.label_posts,
            "#{n}: label writes (faults: {:?}); its requests: {:?}",
            plan.faults,
            log.iter().filter(|(_, p)| p.contains(&format!("/issues/{n}/"))).collect::<Vec<_>>()
        );
        assert!(
            count(&log, "GET", &issue_path(n, "comments")) >= plan.min_comment_reads,
            "#{n}: comment reads (faults: {:?})",
            plan.faults
        );
        for (method, what, wait) in &plan.wait_after {
            let times = clock.times(method, &issue_path(n, what));
            assert!(times.len() >= 2, "#{n}: {method} {what} {times:?}");
            let gap = times[1] - times[0];
            assert!(
                gap + Duration::from_millis(50) >= *wait,
                "#{n}: {method} {what} sent again after {gap:?}, asked to wait {wait:?}"
            );
        }
    }
    let done = states.iter().filter(|(_, _, s)| s == "DONE").count();
    assert_eq!(done, plans.len(), "{states:?}");

    // The refused write failed for good, once, and the user is told.
    let wf_refused = states
        .iter()
        .find(|(_, _, s)| s == "FAILED")
        .map(|(id, _, _)| *id)
        .expect("a FAILED workflow");
    assert_eq!(
        count(&log, "POST", &issue_path(refused.number, "labels")),
        1,
        "a refusal is not retried"
    );
    assert_eq!(o.fake.state.labels(REPO, refused.number), ["orch:triage"]);
    let said = o.bot_comments(refused.number);
    assert_eq!(said.len(), 2, "{said:?}");
    // The user is told at once (not after the job's retries) that GitHub refused, with GitHub's
    // status, and how to start again; the operator also finds the 403 in the audit log (below).
    assert!(
        said[1].starts_with(&format!("Workflow {wf_refused} failed: GitHub refused a request"))
            && said[1].contains("403")
            && said[1].contains("`/orch retry`"),
        "{}",
        said[1]
    );

    // What operators see.
    let after = metrics(&o).await;
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    // 500×3, 502×3, 503×3 (two writes, the policy read).
    assert!(
        delta("orch_github_request_errors_total{reason=\"server_error\"}") >= 9.0,
        "{after:?}"
    );
    // 429×2, 403 with Retry-After ×2.
    assert!(delta("orch_github_request_errors_total{reason=\"rate_limited\"}") >= 4.0);
    // Two timeouts, four dropped connections.
    assert!(delta("orch_github_request_errors_total{reason=\"transport\"}") >= 6.0);
    assert!(delta("orch_github_request_errors_total{reason=\"refused\"}") >= 1.0);
    // Reads are retried by the retry layer: 500×2, 502, the policy's 503; the 403; the timeout.
    assert!(delta("orch_github_retries_total{reason=\"server_error\"}") >= 4.0);
    assert!(delta("orch_github_retries_total{reason=\"rate_limited\"}") >= 1.0);
    assert!(delta("orch_github_retries_total{reason=\"transport\"}") >= 1.0);
    assert_eq!(metric(&after, "orch_github_actions{kind=\"labels\",status=\"failed\"}"), 1.0);
    assert_eq!(
        metric(&after, "orch_github_actions{kind=\"labels\",status=\"done\"}"),
        plans.len() as f64
    );
    assert_eq!(
        metric(&after, "orch_github_actions{kind=\"comment\",status=\"done\"}"),
        2.0 * all.len() as f64
    );
    let writes = audit(&o, "github_write").await;
    let failed: Vec<&Value> = writes.iter().filter(|r| r["details"]["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["details"]["kind"], "labels");
    assert!(
        failed[0]["details"]["error"].as_str().unwrap_or_default().contains("403"),
        "{}",
        failed[0]
    );
    assert_eq!(
        writes.iter().filter(|r| r["details"]["status"] == "done").count(),
        // Per issue: two comments, the 👀 on the approval; labels where they were applied.
        3 * all.len() + plans.len(),
        "{writes:?}"
    );
    drop(clock);
    let mut o = o;
    o.stop().await;
}

/// GitHub's answer to a request over a secondary rate limit when it gives no `Retry-After`:
/// a 403 whose message names the limit, with the primary limit far from spent.
fn secondary_limit(method: Method, path: String) -> fault_proxy::Rule {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    fault_proxy::Rule {
        method,
        path,
        times: 1,
        status: 403,
        headers: vec![
            ("content-type".into(), "application/json; charset=utf-8".into()),
            ("x-ratelimit-limit".into(), "5000".into()),
            ("x-ratelimit-remaining".into(), "4987".into()),
            ("x-ratelimit-reset".into(), reset.to_string()),
            ("x-ratelimit-used".into(), "13".into()),
            ("x-ratelimit-resource".into(), "core".into()),
            ("x-github-request-id".into(), "C0DE:1F2E:3A4B5C:6D7E8F:65A1B2C3".into()),
        ],
        body: json!({
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID C0DE:1F2E:3A4B5C:6D7E8F:65A1B2C3.",
            "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
        })
        .to_string(),
    }
}

/// A secondary rate limit answered as GitHub answers it, without `Retry-After`: orch does not
/// take the 403 for a refusal, waits (at most `ORCH_GITHUB_MAX_RATE_LIMIT_WAIT_MS`, GitHub asks
/// for a minute) and goes on; nothing is lost or made twice.
async fn github_secondary_limit_without_retry_after(backend: Backend) {
    let proxy = fault_proxy::FaultProxy::start().await;
    let wait = Duration::from_millis(1500);
    let env = [
        ("ORCH_GITHUB_API_URL", proxy.url.clone()),
        ("ORCH_GITHUB_MAX_RATE_LIMIT_WAIT_MS", wait.as_millis().to_string()),
    ];
    let Some(o) = start(backend, &env).await else { return };
    proxy.set_target(&o.fake.url());
    let mut a = o.open_issue("Crash a", "crash", "dev-kim");
    let mut b = commented(&o, o.open_issue("Crash b", "crash", "dev-kim"));
    // A write (a proposal's comment) and a read (the comments b's context lists).
    proxy.add(secondary_limit(Method::POST, issue_path(a.number, "comments")));
    proxy.add(secondary_limit(Method::GET, issue_path(b.number, "comments")));
    let before = metrics(&o).await;
    o.label_issue(&mut a, "orch:triage", "mara").await;
    o.label_issue(&mut b, "orch:triage", "mara").await;
    o.wait_state(1, "WAITING_USER_APPROVAL").await;
    o.wait_state(2, "WAITING_USER_APPROVAL").await;
    for issue in [&a, &b] {
        let said = o.bot_comments(issue.number);
        assert_eq!(said.len(), 1, "#{}: {said:?}", issue.number);
        assert!(said[0].contains("triage proposal"));
    }
    for (method, path) in [
        ("POST", issue_path(a.number, "comments")),
        ("GET", issue_path(b.number, "comments")),
    ] {
        let times = proxy.times(method, &path);
        assert!(times.len() >= 2 && times[0].1 && !times[1].1, "{method} {path}: {times:?}");
        let gap = times[1].0 - times[0].0;
        assert!(gap + Duration::from_millis(50) >= wait, "{method} {path} sent again after {gap:?}");
    }
    assert_eq!(
        count(&o.fake.state.log(), "POST", &issue_path(a.number, "comments")),
        1,
        "made once"
    );
    let after = metrics(&o).await;
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    assert!(
        delta("orch_github_request_errors_total{reason=\"rate_limited\"}") >= 2.0,
        "{after:?}"
    );
    assert!(delta("orch_github_retries_total{reason=\"rate_limited\"}") >= 1.0);
    assert_eq!(
        delta("orch_github_request_errors_total{reason=\"refused\"}"),
        0.0,
        "not taken for a refusal"
    );
    let mut o = o;
    o.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. Model faults, the circuit breaker, and what operators see of them.

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    Anthropic,
    OpenAi,
}

impl Provider {
    fn env(self, llm: &FakeLlm) -> Vec<(&'static str, String)> {
        match self {
            Provider::Anthropic => vec![
                ("ORCH_LLM_PROVIDER", "anthropic".into()),
                ("ORCH_LLM_MODEL", "claude-sonnet-4-5".into()),
                ("ANTHROPIC_API_KEY", "sk-ant-fault-suite".into()),
                ("ORCH_ANTHROPIC_BASE_URL", llm.url.clone()),
            ],
            Provider::OpenAi => vec![
                ("ORCH_LLM_PROVIDER", "openai".into()),
                ("ORCH_LLM_MODEL", "gpt-4o-mini".into()),
                ("OPENAI_API_KEY", "sk-openai-fault-suite".into()),
                ("ORCH_OPENAI_BASE_URL", format!("{}/v1", llm.url)),
            ],
        }
    }

    /// A triage answer.
    fn triage(self) -> Reply {
        let answer = json!({"labels": ["bug"], "priority": "p1", "rationale": "It reports a crash."});
        match self {
            Provider::Anthropic => Reply::anthropic_tool("submit_triage", answer, 900, 60),
            Provider::OpenAi => Reply::openai_tool("submit_triage", &answer.to_string(), 900, 60),
        }
    }

    /// The provider's error answer for `status`.
    fn error(self, status: u16) -> Reply {
        match (self, status) {
            (Provider::Anthropic, 429) => Reply::anthropic_error(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            ),
            (Provider::Anthropic, 529) => Reply::anthropic_error(529, "overloaded_error", "Overloaded"),
            (Provider::Anthropic, _) => Reply::anthropic_error(status, "api_error", "Internal server error"),
            (Provider::OpenAi, 429) => Reply::openai_error(429, "requests", "Rate limit reached for requests"),
            (Provider::OpenAi, _) => Reply::openai_error(status, "server_error", "The server had an error while processing your request."),
        }
    }

    /// The "overloaded" status: Anthropic's 529, OpenAI's 503.
    fn overloaded(self) -> u16 {
        match self {
            Provider::Anthropic => 529,
            Provider::OpenAi => 503,
        }
    }
}

/// Labels a new issue for triage as `mara`; returns it.
async fn triage_issue(o: &Orch, title: &str) -> IssueSpec {
    let mut issue = o.open_issue(title, "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    issue
}

/// The model's transient faults are retried and the workflow completes; persistent ones fail
/// their workflow with a clear comment; enough of them open the breaker, which stops every
/// model call until an operator resets it; operators see it all in `/metrics`, `/health` and
/// the audit log.
async fn model_faults(backend: Backend, provider: Provider) {
    let slow = Duration::from_millis(LLM_TIMEOUT_MS * 3);
    let over = provider.overloaded();
    let mut replies = vec![
        // Workflow 1: rate limited (Retry-After: 1 s), then answered.
        provider.error(429).header("retry-after", "1"),
        provider.triage(),
        // Workflow 2: overloaded, a 500, then answered.
        provider.error(over),
        provider.error(500),
        provider.triage(),
        // Workflow 3: an answer later than the client's timeout, then one in time.
        provider.triage().delay(slow),
        provider.triage(),
    ];
    // Workflows 4–6 fail for good: every attempt (the first and three retries) errs.
    replies.extend((0..4).map(|_| provider.error(over)));
    replies.extend((0..4).map(|_| provider.error(500)));
    replies.extend((0..4).map(|_| provider.triage().delay(slow)));
    // After the reset: answered.
    replies.push(provider.triage());
    let llm = FakeLlm::start(replies).await;
    let Some(o) = start(backend, &provider.env(&llm)).await else {
        return;
    };
    let sent = || llm.requests().len();

    // Transient faults: retried, and each workflow reaches its proposal.
    let mut ok = Vec::new();
    for (n, expected_requests) in [(1, 2), (2, 5), (3, 7)] {
        ok.push(triage_issue(&o, &format!("Transient {n}")).await);
        o.wait_state(n, "WAITING_USER_APPROVAL").await;
        assert_eq!(sent(), expected_requests, "workflow {n}");
    }
    let gaps = llm.gaps();
    assert!(
        gaps[0] >= Duration::from_millis(990),
        "the 429's Retry-After was respected: {gaps:?}"
    );
    for issue in &ok {
        let said = o.bot_comments(issue.number);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("triage proposal"), "{}", said[0]);
    }
    let m = metrics(&o).await;
    let (p, model) = match provider {
        Provider::Anthropic => ("anthropic", "claude-sonnet-4-5"),
        Provider::OpenAi => ("openai", "gpt-4o-mini"),
    };
    let calls = |outcome: &str| {
        metric(
            &m,
            &format!("orch_model_calls_total{{provider=\"{p}\",model=\"{model}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(calls("ok"), 3.0, "{m:?}");
    assert_eq!(
        metric(&m, &format!("orch_model_call_retries_total{{provider=\"{p}\",model=\"{model}\"}}")),
        4.0
    );
    assert_eq!(metric(&m, "orch_circuit_breaker_open"), 0.0);

    // Persistent faults: each workflow fails with a comment that says why; the third failure
    // brings the error rate to 3 of 6 = 50 % and opens the breaker.
    for (n, what) in [(4, over.to_string()), (5, "500".to_string()), (6, "timeout".to_string())] {
        let issue = triage_issue(&o, &format!("Persistent {n}")).await;
        o.wait_state(n, "FAILED").await;
        let said = o.bot_comments(issue.number);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains(&format!("Workflow {n} failed: the model could not be asked"))
                && said[0].contains("4 attempts")
                && said[0].contains(&what)
                && said[0].contains("`/orch retry`"),
            "{}",
            said[0]
        );
        assert_eq!(
            sent(),
            7 + 4 * (n as usize - 3),
            "workflow {n}: the first request and three retries"
        );
        let open = health(&o).await["circuitBreaker"]["isOpen"] == true;
        assert_eq!(open, n == 6, "after workflow {n}");
    }
    let h = health(&o).await;
    assert_eq!(h["circuitBreaker"]["totalTasks"], 6, "{h}");
    assert_eq!(h["circuitBreaker"]["failedTasks"], 3, "{h}");
    let m = metrics(&o).await;
    let calls = |outcome: &str| {
        metric(
            &m,
            &format!("orch_model_calls_total{{provider=\"{p}\",model=\"{model}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(calls("transient"), 3.0, "{m:?}");
    assert_eq!(metric(&m, "orch_circuit_breaker_open"), 1.0);
    assert_eq!(metric(&m, "orch_circuit_breaker_failed_tasks"), 3.0);
    assert_eq!(metric(&m, "orch_workflows{kind=\"triage\",state=\"FAILED\"}"), 3.0);
    // The audit log holds the failed calls and the trip.
    let model_calls = audit(&o, "model_call").await;
    let failed: Vec<&Value> = model_calls.iter().filter(|r| r["details"]["outcome"] == "error").collect();
    assert_eq!(failed.len(), 3, "{model_calls:?}");
    assert!(failed
        .iter()
        .all(|r| r["details"]["error"].as_str().unwrap_or_default().contains("unavailable")));
    let trips = audit(&o, "circuit_breaker").await;
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(trips[0]["details"]["action"], "open");
    assert_eq!(trips[0]["subject"], "circuit_breaker");
    assert_eq!(trips[0]["details"]["workflow"], 6);

    // While open no model call is made: the request is refused at Gate 1 and the user told.
    let before = sent();
    let mut waiting = triage_issue(&o, "While open").await;
    o.wait_idle(15).await;
    let said = o.bot_comments(waiting.number).join("\n");
    assert!(
        said.contains("Gate 1 refused") && said.contains("circuit breaker is open"),
        "{said}"
    );
    assert_eq!(o.workflow_states().await.len(), 6, "no workflow started");
    assert_eq!(sent(), before, "no model call while the breaker is open");

    // The operator resets it (the admin token is required); the request made again proceeds.
    let reset = |token: &'static str| o.http.post(format!("{}/circuit/reset", o.base)).bearer_auth(token).send();
    assert_eq!(reset("wrong-token").await.unwrap().status(), 401);
    assert_eq!(health(&o).await["circuitBreaker"]["isOpen"], true);
    let r = reset(TOKEN).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["isOpen"], false, "{body}");
    assert_eq!(health(&o).await["circuitBreaker"]["isOpen"], false);
    assert_eq!(metric(&metrics(&o).await, "orch_circuit_breaker_open"), 0.0);
    let resets: Vec<Value> = audit(&o, "operator")
        .await
        .into_iter()
        .filter(|r| r["subject"] == "circuit_breaker")
        .collect();
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0]["details"]["was_open"], true);
    o.label_issue(&mut waiting, "orch:triage", "lee").await;
    o.wait_state(7, "WAITING_USER_APPROVAL").await;
    assert_eq!(sent(), before + 1);
    assert!(o.bot_comments(waiting.number).last().unwrap().contains("triage proposal"));
    assert!(matches!(
        orch::audit::verify(o.store.pool()).await.unwrap(),
        orch::audit::Verdict::Intact { .. }
    ));
    let mut o = o;
    o.stop().await;
}

async fn model_faults_anthropic(backend: Backend) {
    model_faults(backend, Provider::Anthropic).await
}

async fn model_faults_openai(backend: Backend) {
    model_faults(backend, Provider::OpenAi).await
}

// ---------------------------------------------------------------------------------------------
// 4. PostgreSQL restarted in the middle of a run (a private server: the shared one on port
// 5432 serves other tests).

/// Posts `issues.labeled` deliveries (fresh GUIDs) for `issues` at once; returns (GUID, status).
async fn label_all(o: &Orch, issues: &mut [IssueSpec]) -> Vec<(String, u16)> {
    let mut sends = Vec::new();
    for issue in issues.iter_mut() {
        issue.labels.push("orch:triage".into());
        let labels: Vec<&str> = issue.labels.iter().map(String::as_str).collect();
        o.fake.state.set_labels(REPO, issue.number, &labels);
        let payload = e2e::payloads::issue_labeled(&o.repo, issue, "orch:triage", "mara");
        let guid = o.next_guid();
        sends.push(async move {
            let (status, answer) = o.send_with_guid("issues", &guid, &payload).await;
            assert!(
                status == 202 || status == 503,
                "while the database restarts a delivery is stored (202) or refused (503): {status} {answer}"
            );
            (guid, status)
        });
    }
    futures_join_all(sends).await
}

/// Runs the futures concurrently on this task and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// GitHub redelivers what orch refused: the same GUID until it is accepted (202, or 200 as a
/// duplicate when the refused attempt was committed after all).
async fn redeliver_refused(o: &Orch, issues: &[IssueSpec], answers: &[(String, u16)]) {
    for (issue, (guid, status)) in issues.iter().zip(answers) {
        if *status == 503 {
            let payload = e2e::payloads::issue_labeled(&o.repo, issue, "orch:triage", "mara");
            let (status, answer) = o.send_with_guid("issues", guid, &payload).await;
            assert!(
                status == 202 || (status == 200 && answer["status"] == "duplicate"),
                "{status} {answer}"
            );
            eprintln!("redelivery of {guid}: {status} {answer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_loses_and_repeats_nothing() {
    let Some(pg) = private_pg::PrivatePg::start() else { return };
    pg.create_database("orch").await;
    let url = pg.url("orch");
    let mut env = fast_env();
    env.push(("ORCH_DATABASE_URL", url.clone()));
    // The harness's own database is replaced by the private server's (orch runs on it).
    let mut o = start(Backend::Sqlite, &env).await.expect("SQLite is always available");
    o.store = orch::store::Store::connect(&url, orch::store::SyncMode::Normal)
        .await
        .expect("the harness connects to the private server");
    assert_eq!(o.store.backend().name(), "postgres");

    let mut first: Vec<IssueSpec> = (0..3).map(|i| o.open_issue(&format!("Before {i}"), "crash", "dev-kim")).collect();
    let mut second: Vec<IssueSpec> = (0..3).map(|i| o.open_issue(&format!("During {i}"), "crash", "dev-kim")).collect();
    let mut answers = label_all(&o, &mut first).await;
    assert!(answers.iter().all(|(_, s)| *s == 202), "{answers:?}");
    // The workers are busy with them (context, model, proposals) when the server goes away
    // as in a crash.
    o.eventually("work under way", Duration::from_secs(10), || async {
        (!o.workflow_states().await.is_empty()).then_some(())
    })
    .await;
    pg.stop(true);
    assert!(!pg.is_up().await);
    // Deliveries arrive while it is down; it comes back 2 s later.
    let restart = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        pg.restart();
    };
    let (during, ()) = tokio::join!(label_all(&o, &mut second), restart);
    eprintln!("deliveries while the database was down for 2 s: {during:?}");
    redeliver_refused(&o, &second, &during).await;
    answers.extend(during);
    // A longer outage, past the 8 s orch gives a delivery to be stored: refused with a 503
    // (GitHub records a failed delivery), then redelivered and accepted.
    let mut third: Vec<IssueSpec> = (0..2).map(|i| o.open_issue(&format!("Outage {i}"), "crash", "dev-kim")).collect();
    pg.stop(true);
    let restart = async {
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        pg.restart();
    };
    let (outage, ()) = tokio::join!(label_all(&o, &mut third), restart);
    assert!(outage.iter().all(|(_, s)| *s == 503), "refused while the store is gone: {outage:?}");
    let m = metrics(&o).await;
    assert_eq!(
        metric(&m, "orch_webhook_deliveries_total{event=\"issues\",outcome=\"error\"}"),
        2.0,
        "operators see the refusals"
    );
    redeliver_refused(&o, &third, &outage).await;
    answers.extend(outage);
    let issues: Vec<IssueSpec> = first.into_iter().chain(second).chain(third).collect();

    // Every proposal is made once; then the approvals, and the server restarts again (a fast
    // shutdown this time) while they are applied.
    for issue in &issues {
        o.eventually_sync(&format!("the proposal on #{}", issue.number), Duration::from_secs(60), || {
            (!o.bot_comments(issue.number).is_empty()).then_some(())
        })
        .await;
    }
    // A proposal posted just before the server went away is on GitHub before its workflow is
    // recorded as waiting (the step is retried after the restart); approvals are given once
    // every workflow waits (one given earlier is answered "nothing waits here").
    o.eventually("every workflow waiting for approval", Duration::from_secs(60), || async {
        let s = o.workflow_states().await;
        (s.len() == issues.len() && s.iter().all(|(_, _, st)| st == "WAITING_USER_APPROVAL")).then_some(())
    })
    .await;
    let mut approvals = Vec::new();
    for issue in &issues {
        approvals.push(o.comment(issue, "lee", "/orch approve").await.1);
    }
    pg.stop(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.restart();
    let states = o
        .eventually("every workflow DONE", Duration::from_secs(60), || async {
            let s = o.workflow_states().await;
            (s.len() >= issues.len() && s.iter().all(|(_, _, st)| st == "DONE")).then_some(s)
        })
        .await;
    o.wait_idle(30).await;
    assert_eq!(states.len(), issues.len(), "one workflow per issue: {states:?}");

    // Every acknowledged delivery was processed exactly once.
    let mut acked: Vec<String> = answers.iter().map(|(g, _)| g.clone()).collect();
    acked.extend(approvals);
    for guid in &acked {
        let d = o.wait_processed(guid).await;
        assert_eq!(d.status, "processed");
        let jobs = orch::store::jobs::for_delivery(o.store.pool(), guid).await.unwrap();
        assert_eq!(jobs.len(), 1, "{guid}: {jobs:?}");
        assert_eq!(jobs[0].0, "done", "{guid}: {jobs:?}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(o.store.pool())
        .await
        .unwrap();
    assert_eq!(stored as usize, acked.len(), "no delivery stored twice or unasked");
    // Users saw one proposal and one outcome each, the labels once; no write was repeated.
    let log = o.fake.state.log();
    for issue in &issues {
        let n = issue.number;
        let said = o.bot_comments(n);
        assert_eq!(said.len(), 2, "#{n}: {said:?}");
        assert!(
            said[0].contains("triage proposal") && said[1].starts_with("Applied labels"),
            "#{n}: {said:?}"
        );
        let mut labels = o.fake.state.labels(REPO, n);
        labels.sort();
        assert_eq!(labels, ["bug", "orch:triage", "priority:p1"], "#{n}");
        assert_eq!(count(&log, "POST", &issue_path(n, "comments")), 2, "#{n}: no comment posted twice");
    }
    assert!(matches!(
        orch::audit::verify(o.store.pool()).await.unwrap(),
        orch::audit::Verdict::Intact { .. }
    ));
    o.stop().await;
}

both_backends!(
    github_faults_lose_nothing_and_repeat_no_write,
    github_secondary_limit_without_retry_after,
    model_faults_anthropic,
    model_faults_openai
);
