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
//! Two modes:
//! - limits off (default): the fake applies no rate limit; the run measures orch's own overhead.
//! - limits on (`BENCH_GITHUB_LIMITS=real`): the fake applies GitHub's limits per installation
//!   (5,000 requests an hour; 80 content-creating requests a minute and 500 an hour) on a clock
//!   `BENCH_TIME_SCALE` times faster than real time (default 60: the limits' hour is a real
//!   minute, their minute a real second), and orch is given the same settings scaled alike
//!   (see [`limits_on_setup`]). The run reports the least time GitHub's limits allow for the
//!   requests orch needed, how close orch came, that no workflow FAILED, and the fake's 403s.
//!
//! usage: pipeline_bench ORCH_BINARY [WORKFLOWS] [SEND_CONCURRENCY]
//! env:   BENCH_DATABASE_URL (default: a SQLite file in a temporary directory),
//!        BENCH_GITHUB_LIMITS (`off`, `real`, or other numbers as `REQUESTS_PER_H/CONTENT_PER_MIN/
//!        CONTENT_PER_H`, e.g. `300/80/100` to see orch meet the limits in a short run),
//!        BENCH_TIME_SCALE (limits on; default 60),
//!        BENCH_TIMEOUT_S (how long to wait for the proposals; default 600, limits on 1800),
//!        any ORCH_* variable is passed through to orch (e.g. ORCH_WORKERS).

#[path = "../../tests/common/payloads.rs"]
mod payloads;

use anyhow::Context;
use orch::github::fake::{FakeGithub, FakeLimits, LimitCounters, APP_LOGIN};
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
    let limits_on = limits_on_setup(&fake, &mut env)?;
    // GitHub asks integrations to leave about a second between content-creating requests; the
    // fake does not, and this benchmark measures orch, so the pacing is off unless set.
    env.entry("ORCH_GITHUB_WRITE_PACE_MS".into()).or_insert_with(|| "0".into());
    // Likewise orch's windows under GitHub's secondary limits: off, unless the limits-on mode
    // (above) set them to the fake's scaled limits.
    env.entry("ORCH_GITHUB_WRITE_LIMITS".into()).or_insert_with(|| "off".into());
    env.insert("RUST_LOG".into(), std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
    // BENCH_ORCH_LOG keeps orch's log after the run (e.g. with RUST_LOG=sqlx::query=debug for a
    // census of the statements a workflow costs).
    let log_path = std::env::var_os("BENCH_ORCH_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("orch.log"));
    let log = std::fs::File::create(&log_path)?;
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
                std::fs::read_to_string(&log_path).unwrap_or_default()
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
    let timeout = match std::env::var("BENCH_TIMEOUT_S") {
        Ok(secs) => Duration::from_secs(secs.parse().context("BENCH_TIMEOUT_S: whole seconds")?),
        Err(_) if limits_on.is_some() => Duration::from_secs(1800),
        Err(_) => Duration::from_secs(600),
    };
    let deadline = Instant::now() + timeout;
    let mut next_check = Instant::now();
    while done.len() < count {
        if let Some(on) = &limits_on {
            if Instant::now() >= next_check {
                next_check = Instant::now() + Duration::from_secs(1);
                on.check_progress(&http, &base, &fake, done.len(), count, started, &log_path)
                    .await?;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} proposals after {} s; orch's log: {}",
            done.len(),
            timeout.as_secs(),
            log_path.display()
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
    let spent = fake.state.limit_counters(INSTALLATION);
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
    if let Some(on) = &limits_on {
        on.report(&http, &base, &fake, count, total, spent).await?;
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The "limits on" run: GitHub's limits in the fake, on a scaled clock, and orch told the same.
struct LimitsOn {
    limits: FakeLimits,
    admin_token: String,
}

/// Sets the fake's limits for the mode `BENCH_GITHUB_LIMITS` asks for: `off` (the default) lifts
/// them all; `real` applies GitHub's on a clock `BENCH_TIME_SCALE` times real time and gives orch
/// (unless the caller set them) the matching scaled settings — the write limits, the pace GitHub
/// asks between writes, how long a rate limit is waited out in process, the reaction polls — and
/// an admin token for `/metrics`, where the bench watches for FAILED workflows.
fn limits_on_setup(fake: &FakeGithub, env: &mut HashMap<String, String>) -> anyhow::Result<Option<LimitsOn>> {
    match std::env::var("BENCH_GITHUB_LIMITS").as_deref() {
        Err(_) | Ok("off") => {
            fake.state.set_limits(FakeLimits::OFF);
            return Ok(None);
        }
        Ok(_) => {}
    }
    let mut limits = FakeLimits::GITHUB;
    let asked = std::env::var("BENCH_GITHUB_LIMITS").unwrap_or_default();
    if asked != "real" {
        let numbers: Vec<u64> = asked.split('/').map(str::parse).collect::<Result<_, _>>().unwrap_or_default();
        let [requests, per_minute, per_hour] = numbers[..] else {
            anyhow::bail!("BENCH_GITHUB_LIMITS: expected off, real or REQUESTS_PER_H/CONTENT_PER_MIN/CONTENT_PER_H, got {asked:?}")
        };
        limits.requests_per_hour = Some(requests);
        limits.content_per_minute = Some(per_minute);
        limits.content_per_hour = Some(per_hour);
    }
    let scale: f64 = match std::env::var("BENCH_TIME_SCALE") {
        Ok(s) => s.parse().context("BENCH_TIME_SCALE: a number")?,
        Err(_) => 60.0,
    };
    anyhow::ensure!(scale >= 1.0, "BENCH_TIME_SCALE: at least 1");
    let limits = limits.scaled(scale);
    fake.state.set_limits(limits);
    let (requests, per_minute, per_hour) = (
        limits.requests_per_hour.unwrap_or_default(),
        limits.content_per_minute.unwrap_or_default(),
        limits.content_per_hour.unwrap_or_default(),
    );
    let scaled_ms = |real_ms: f64| (real_ms / scale).round().max(1.0) as u64;
    // count/window with the window in whole seconds where it is one, else in milliseconds.
    let window = |d: Duration| {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_millis().max(1))
        }
    };
    let admin_token = "pipeline-bench-admin-token".to_string();
    for (k, v) in [
        (
            "ORCH_GITHUB_WRITE_LIMITS",
            format!("{per_minute}/{},{per_hour}/{}", window(limits.minute()), window(limits.hour())),
        ),
        ("ORCH_GITHUB_WRITE_PACE_MS", scaled_ms(1000.0).to_string()),
        ("ORCH_GITHUB_MAX_RATE_LIMIT_WAIT_MS", scaled_ms(60_000.0).to_string()),
        ("ORCH_REACTION_POLL_MS", scaled_ms(30_000.0).max(100).to_string()),
        ("ORCH_ADMIN_TOKEN", admin_token.clone()),
    ] {
        env.entry(k.to_string()).or_insert(v);
    }
    println!(
        "limits on: {} limits per installation ({requests} requests/h, {per_minute} content-creating/min, {per_hour}/h) on a clock {scale}x real time: the limits' hour lasts {:.1} real s, their minute {:.2} real s",
        if limits == FakeLimits::GITHUB.scaled(scale) { "GitHub's" } else { "NOT GitHub's" },
        limits.hour().as_secs_f64(),
        limits.minute().as_secs_f64()
    );
    let passed: Vec<String> = [
        "ORCH_GITHUB_WRITE_LIMITS",
        "ORCH_GITHUB_WRITE_PACE_MS",
        "ORCH_GITHUB_MAX_RATE_LIMIT_WAIT_MS",
        "ORCH_REACTION_POLL_MS",
    ]
    .iter()
    .map(|k| format!("{k}={}", env[*k]))
    .collect();
    println!("limits on: orch's settings, scaled alike: {}", passed.join(" "));
    Ok(Some(LimitsOn { limits, admin_token }))
}

/// The least real time in which `n` requests fit under `limit` per `window`: the request
/// `limit` places after another is at least a window later.
fn least_span(n: u64, limit: Option<u64>, window: Duration) -> Duration {
    match limit {
        Some(limit) if n > 0 && limit > 0 => window.mul_f64(((n - 1) / limit) as f64),
        _ => Duration::ZERO,
    }
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

impl LimitsOn {
    /// Workflows by state, from orch's `/metrics` (`orch_workflows{kind,state}`).
    async fn workflow_states(&self, http: &reqwest::Client, base: &str) -> anyhow::Result<HashMap<String, u64>> {
        let text = http
            .get(format!("{base}/metrics"))
            .bearer_auth(&self.admin_token)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let mut states = HashMap::new();
        for line in text.lines().filter(|l| l.starts_with("orch_workflows{")) {
            let (Some(state), Some(value)) = (
                line.split("state=\"").nth(1).and_then(|r| r.split('"').next()),
                line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
            ) else {
                continue;
            };
            *states.entry(state.to_string()).or_default() += value as u64;
        }
        Ok(states)
    }

    /// Fails the run, clearly, as soon as every workflow has either posted its proposal or
    /// ended FAILED or NEEDS_HUMAN: the missing proposals will never come.
    #[allow(clippy::too_many_arguments)]
    async fn check_progress(
        &self,
        http: &reqwest::Client,
        base: &str,
        fake: &FakeGithub,
        proposals: usize,
        count: usize,
        started: Instant,
        log: &std::path::Path,
    ) -> anyhow::Result<()> {
        let Ok(states) = self.workflow_states(http, base).await else {
            return Ok(()); // orch is busy; the next look will tell
        };
        let stuck = states.get("FAILED").copied().unwrap_or(0) + states.get("NEEDS_HUMAN").copied().unwrap_or(0);
        if stuck > 0 && proposals + stuck as usize >= count {
            let c = fake.state.limit_counters(INSTALLATION);
            // The temporary directory goes with the process: keep orch's log where it can be read.
            let kept = std::env::temp_dir().join(format!("pipeline-bench-orch-{}.log", std::process::id()));
            let log = if std::fs::copy(log, &kept).is_ok() {
                kept
            } else {
                log.to_path_buf()
            };
            anyhow::bail!(
                "limits on: FAILED run after {:.1} s: {proposals} of {count} proposals posted; workflows FAILED {}, NEEDS_HUMAN {}; the fake sent {} rate-limit 403s (primary {}, secondary {}); orch's log: {}",
                started.elapsed().as_secs_f64(),
                states.get("FAILED").copied().unwrap_or(0),
                states.get("NEEDS_HUMAN").copied().unwrap_or(0),
                c.refusals(),
                c.primary_refusals,
                c.secondary_refusals,
                log.display()
            );
        }
        Ok(())
    }

    /// Prints the limits-on figures and fails the run if a workflow FAILED.
    async fn report(
        &self,
        http: &reqwest::Client,
        base: &str,
        fake: &FakeGithub,
        count: usize,
        total: Duration,
        spent: LimitCounters,
    ) -> anyhow::Result<()> {
        let l = &self.limits;
        let n = count as u64;
        let bounds = [
            ("the primary limit", least_span(spent.counted, l.requests_per_hour, l.hour())),
            (
                "content-creating/min",
                least_span(spent.content_creating, l.content_per_minute, l.minute()),
            ),
            (
                "content-creating/h",
                least_span(spent.content_creating, l.content_per_hour, l.hour()),
            ),
        ];
        let (bound_by, least) = bounds.iter().max_by_key(|(_, d)| *d).copied().unwrap_or(("none", Duration::ZERO));
        println!(
            "limits on: {count} triage workflows in {:.1} real s = {} of GitHub's time (x{})",
            total.as_secs_f64(),
            hms(l.fake_time(total)),
            l.time_scale
        );
        println!(
            "limits on: requests until the last proposal: {} counted ({:.2} per workflow), {} content-creating ({:.2} per workflow)",
            spent.counted,
            spent.counted as f64 / n as f64,
            spent.content_creating,
            spent.content_creating as f64 / n as f64
        );
        println!(
            "limits on: least time GitHub's limits allow for them: {:.1} real s = {} of GitHub's time, set by {bound_by} (primary {:.1} s, content/min {:.1} s, content/h {:.1} s)",
            least.as_secs_f64(),
            hms(l.fake_time(least)),
            bounds[0].1.as_secs_f64(),
            bounds[1].1.as_secs_f64(),
            bounds[2].1.as_secs_f64()
        );
        if least > Duration::ZERO {
            println!(
                "limits on: orch took {:.2}x the least time",
                total.as_secs_f64() / least.as_secs_f64()
            );
        } else {
            println!("limits on: the requests fit in one window of every limit; no least time to compare with");
        }
        let after = fake.state.limit_counters(INSTALLATION);
        println!(
            "limits on: rate-limit 403s the fake sent: {} (primary {}, secondary {})",
            after.refusals(),
            after.primary_refusals,
            after.secondary_refusals
        );
        let states = self.workflow_states(http, base).await?;
        let failed = states.get("FAILED").copied().unwrap_or(0);
        let needs_human = states.get("NEEDS_HUMAN").copied().unwrap_or(0);
        println!("limits on: every proposal posted exactly once; workflows FAILED {failed}, NEEDS_HUMAN {needs_human}");
        anyhow::ensure!(
            failed == 0 && needs_human == 0,
            "limits on: {failed} workflows FAILED and {needs_human} NEEDS_HUMAN"
        );
        Ok(())
    }
}
