//! Pipeline benchmark: N triage workflows end to end, from a signed `issues.labeled` webhook into
//! a real `orch serve` process to orch's proposal comment on the issue, against the stateful fake
//! GitHub (in this process, over real HTTP) and orch's `fake` model provider.
//!
//! GitHub's limits are off: the fake's primary rate limit is lifted and orch's write pacing is 0
//! unless set, so the figures are orch's own overhead.
//!
//! Per workflow it measures the time from sending the webhook to the fake GitHub receiving the
//! proposal comment's POST; in total, from the first send to the last proposal. At the end every
//! issue must carry exactly one proposal comment, else the run fails (a fast run that lost work
//! is not a result). Also prints orch's time from spawn to ready and its RSS idle and at peak.
//!
//! usage: pipeline_bench ORCH_BINARY [WORKFLOWS] [SEND_CONCURRENCY]
//! env:   BENCH_DATABASE_URL (default: a SQLite file in a temporary directory),
//!        any ORCH_* variable is passed through to orch (e.g. ORCH_WORKERS).

#[path = "../../tests/common/payloads.rs"]
mod payloads;

use anyhow::Context;
use orch::github::fake::{FakeGithub, APP_LOGIN};
use orch::webhook::signature::sign;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REPO: &str = "acme/widgets";
const INSTALLATION: i64 = 77;
const SECRET: &str = "pipeline-bench-secret";
const POLICY: &str = "phase: 4\n";
/// The fake's primary limit with GitHub's limits off: far more than any run spends.
const UNLIMITED_PER_HOUR: u64 = 1_000_000_000;

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let binary = args
        .get(1)
        .context("usage: pipeline_bench ORCH_BINARY [WORKFLOWS] [SEND_CONCURRENCY]")?
        .clone();
    let count: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let concurrency: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let dir = tempfile::tempdir()?;

    // A throwaway App key: the fake checks the App's JWTs against its public half.
    let (private, public) = orch::github::auth::generate_app_key()?;
    let pem = dir.path().join("app.pem");
    std::fs::write(&pem, private.as_bytes())?;
    let fake = FakeGithub::start(1, public.as_bytes(), Duration::from_secs(3600)).await?;
    // GitHub's limits off: this run measures orch's own overhead, so the fake's primary limit
    // (5,000 an hour, counted down) is lifted far beyond what the run spends.
    fake.state.set_rate_limit(UNLIMITED_PER_HOUR);
    fake.state.add_repo(REPO, INSTALLATION, "main");
    fake.state
        .init_repo(REPO, "main", &[(".github/orch.yml", POLICY), ("README.md", "# widgets\n")]);
    fake.state.set_permission(REPO, "mara", "maintain");
    let repo = payloads::RepoSpec::new(REPO, INSTALLATION);
    let mut issues = Vec::with_capacity(count);
    for i in 0..count {
        let title = format!("Crash number {i} when the config file is empty");
        let number = fake
            .state
            .open_issue(REPO, &title, "orch panics at start with an empty config.", "dev-kim");
        fake.state.set_labels(REPO, number, &["orch:triage"]);
        let spec = payloads::IssueSpec::new(number, &title).by("dev-kim").labels(&["orch:triage"]);
        let body = serde_json::to_vec(&payloads::issue_labeled(&repo, &spec, "orch:triage", "mara"))?;
        issues.push((number, body));
    }

    let port = free_port()?;
    let database = std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("orch.db").display()));
    let mut env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("ORCH_")).collect();
    for (k, v) in [
        ("ORCH_BIND", format!("127.0.0.1:{port}")),
        ("ORCH_DATABASE_URL", database.clone()),
        ("ORCH_WEBHOOK_SECRET", SECRET.into()),
        ("ORCH_PAYLOAD_DIR", dir.path().join("payloads").display().to_string()),
        ("ORCH_GITHUB_APP_ID", "1".into()),
        ("ORCH_GITHUB_PRIVATE_KEY_PATH", pem.display().to_string()),
        ("ORCH_GITHUB_API_URL", fake.url()),
        ("ORCH_BOT_LOGIN", APP_LOGIN.into()),
        ("ORCH_LLM_PROVIDER", "fake".into()),
    ] {
        env.entry(k.to_string()).or_insert(v);
    }
    // GitHub asks integrations to leave about a second between content-creating requests; the
    // fake does not, and this benchmark measures orch, so the pacing is off unless set.
    env.entry("ORCH_GITHUB_WRITE_PACE_MS".into()).or_insert_with(|| "0".into());
    env.insert("RUST_LOG".into(), std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
    let log = std::fs::File::create(dir.path().join("orch.log"))?;
    let spawned = Instant::now();
    let mut child = Command::new(&binary)
        .arg("serve")
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    let pid = child.id();
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let base = format!("http://127.0.0.1:{port}");
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "orch exited at start with {status}: {}",
                std::fs::read_to_string(dir.path().join("orch.log")).unwrap_or_default()
            );
        }
        anyhow::ensure!(spawned.elapsed() < Duration::from_secs(30), "orch did not become ready in 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ready = spawned.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kb(pid, "VmRSS:");
    println!(
        "orch ready after {:.0} ms (spawn to first 200 from /health); idle RSS {:.1} MB",
        ready.as_secs_f64() * 1000.0,
        idle_rss as f64 / 1024.0
    );
    println!("database: {}", if database.starts_with("sqlite") { "sqlite" } else { "postgres" });

    // Follow the fake's request log for the proposals' POSTs while the webhooks go out.
    let log_start = fake.state.log().len();
    let sent_at: Arc<std::sync::Mutex<HashMap<i64, Instant>>> = Arc::default();
    let started = Instant::now();
    let sender = {
        let (http, sent_at, url) = (http.clone(), sent_at.clone(), format!("{base}/webhook"));
        tokio::spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut tasks = Vec::with_capacity(issues.len());
            for (number, body) in issues {
                let permit = gate.clone().acquire_owned().await?;
                let (http, sent_at, url) = (http.clone(), sent_at.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let signature = sign(SECRET, &body);
                    sent_at.lock().unwrap().insert(number, Instant::now());
                    let r = http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("x-github-event", "issues")
                        .header("x-github-delivery", format!("pipeline-{number}"))
                        .header("x-hub-signature-256", signature)
                        .body(body)
                        .send()
                        .await?;
                    drop(permit);
                    anyhow::ensure!(r.status().as_u16() == 202, "orch answered {} for issue {number}", r.status());
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(Instant::now())
        })
    };

    let mut done: HashMap<i64, Instant> = HashMap::with_capacity(count);
    let mut seen = log_start;
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.len() < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} proposals after 600 s; orch's log: {}",
            done.len(),
            dir.path().join("orch.log").display()
        );
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("orch exited under load with {status}");
        }
        let new = fake.state.log_from(seen);
        seen += new.len();
        let now = Instant::now();
        for (method, path) in new {
            let Some(rest) = path.strip_prefix(&format!("/repos/{REPO}/issues/")) else {
                continue;
            };
            let Some(number) = rest.strip_suffix("/comments") else { continue };
            if method == "POST" {
                if let Ok(n) = number.parse::<i64>() {
                    done.entry(n).or_insert(now);
                }
            }
        }
        peak_rss = peak_rss.max(rss_kb(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total = started.elapsed();
    let sending_took = sender.await??.duration_since(started);

    // Every issue got exactly one comment from orch, and it is the triage proposal.
    let mut latencies = Vec::with_capacity(count);
    let sent_at = sent_at.lock().unwrap().clone();
    for (number, at) in &done {
        let comments = fake.state.bot_comments(REPO, *number);
        anyhow::ensure!(
            comments.len() == 1 && comments[0].body.contains("triage proposal"),
            "issue #{number}: expected one proposal comment, found {:?}",
            comments
                .iter()
                .map(|c| c.body.lines().next().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        );
        let sent = sent_at.get(number).context("a proposal for an issue never sent")?;
        latencies.push(at.duration_since(*sent).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let hwm = rss_kb(pid, "VmHWM:");
    println!(
        "{count} triage workflows: total {:.2} s (webhooks sent in {:.2} s), {:.0} workflows/s",
        total.as_secs_f64(),
        sending_took.as_secs_f64(),
        count as f64 / total.as_secs_f64()
    );
    println!(
        "per workflow (webhook sent → proposal comment at GitHub): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0)
    );
    println!(
        "orch RSS: idle {:.1} MB, peak under load {:.1} MB (VmHWM {:.1} MB)",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!("GitHub requests orch made: {}", fake.state.log().len());
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
