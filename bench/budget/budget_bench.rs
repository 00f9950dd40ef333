//! Budget benchmark: the rate-limited GitHub requests each kind of workflow costs, counted at the
//! stateful fake GitHub (which counts as GitHub does: installation-token requests, not the App's
//! JWT calls or token requests, and not a 304), and what a waiting proposal costs per hour.
//!
//! A real `orch serve` process gets signed webhooks; each kind runs from its trigger to done:
//! - triage: `issues.labeled orch:triage` → proposal → `/orch approve` → labels and a comment;
//! - QA plan: `pull_request.labeled orch:qa` → plan (auto-safe) → check run and comment;
//! - patch: `/orch propose` → proposal and check run → `/orch approve` → tree, commit, branch,
//!   pull request, the check run closed with the pull request's link.
//!
//! Each kind runs twice and the second run is reported: the first warms what orch keeps across
//! workflows (permissions, the policy's ETag), so the second is what a repository pays per
//! workflow. Then one proposal waits while nobody reacts, on a clock scaled 300×: the first poll
//! interval is 100 ms instead of 30 s, so 12 s of waiting is one hour on the production schedule.
//!
//! usage: budget_bench ORCH_BINARY

#[path = "../../tests/common/payloads.rs"]
mod payloads;

use anyhow::Context;
use orch::github::fake::{FakeGithub, APP_LOGIN};
use orch::webhook::signature::sign;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = "acme/widgets";
const INSTALLATION: i64 = 77;
const SECRET: &str = "budget-bench-secret";
const POLICY: &str = "phase: 4\n";
/// How much faster than production the waiting proposal's clock runs.
const SCALE: u64 = 300;

struct Bench {
    fake: FakeGithub,
    http: reqwest::Client,
    base: String,
    repo: payloads::RepoSpec,
    deliveries: u64,
}

impl Bench {
    async fn deliver(&mut self, event: &str, payload: &serde_json::Value) -> anyhow::Result<()> {
        self.deliveries += 1;
        let body = serde_json::to_vec(payload)?;
        let r = self
            .http
            .post(format!("{}/webhook", self.base))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", format!("budget-{}", self.deliveries))
            .header("x-hub-signature-256", sign(SECRET, &body))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "orch answered {} to {event}", r.status());
        Ok(())
    }

    /// `login` comments `body` on the issue, delivered to orch.
    async fn comment(&mut self, issue: &payloads::IssueSpec, login: &str, body: &str) -> anyhow::Result<()> {
        let id = self.fake.state.user_comment(REPO, issue.number, login, "User", body);
        let payload = payloads::issue_comment_created(&self.repo, issue, id, body, login, "User");
        self.deliver("issue_comment", &payload).await
    }

    /// Waits until one of orch's comments on `number` contains `text`.
    async fn until_comment(&self, number: i64, text: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.fake.state.bot_comments(REPO, number).iter().any(|c| c.body.contains(text)) {
            anyhow::ensure!(Instant::now() < deadline, "no comment with {text:?} on #{number} after 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until the patch check run of issue `number` is closed with its pull request's link.
    async fn until_pull_linked(&self, number: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let title = format!("Patch proposal for #{number} ");
        while !self
            .fake
            .state
            .check_runs(REPO)
            .iter()
            .any(|r| r.name == "orch/patch" && r.title.as_deref().is_some_and(|t| t.starts_with(&title)) && r.details_url.is_some())
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no check run linking a pull request for #{number} after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until the fake has received no request for half a second: orch is done.
    async fn quiet(&self) {
        let mut seen = self.fake.state.log().len();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.fake.state.log().len();
            if now == seen {
                return;
            }
            seen = now;
        }
    }

    async fn triage(&mut self, round: usize) -> anyhow::Result<()> {
        let title = format!("Crash on start {round}");
        let number = self
            .fake
            .state
            .open_issue(REPO, &title, "It crashes when the config is empty.", "dev-kim");
        self.fake.state.set_labels(REPO, number, &["orch:triage"]);
        let issue = payloads::IssueSpec::new(number, &title).by("dev-kim").labels(&["orch:triage"]);
        self.deliver("issues", &payloads::issue_labeled(&self.repo, &issue, "orch:triage", "mara"))
            .await?;
        self.until_comment(number, "triage proposal").await?;
        self.comment(&issue, "lee", "/orch approve").await?;
        self.until_comment(number, "Applied labels").await
    }

    async fn qa_plan(&mut self, round: usize) -> anyhow::Result<()> {
        let branch = format!("feature-{round}");
        let head = self.fake.state.push(REPO, &branch, &[("src/parse.rs", Some("fn parse() {}\n"))]);
        let title = format!("Faster parser {round}");
        let number = self.fake.state.open_pull(REPO, &title, &branch, "main", "dev-kim");
        self.fake.state.set_labels(REPO, number, &["orch:qa"]);
        let pr = payloads::PullSpec::new(number, &title, &branch, &head)
            .by("dev-kim")
            .labels(&["orch:qa"]);
        self.deliver(
            "pull_request",
            &payloads::pull_request("labeled", &self.repo, &pr, Some("orch:qa"), "mara"),
        )
        .await?;
        self.until_comment(number, "QA plan (workflow").await
    }

    async fn patch(&mut self, round: usize) -> anyhow::Result<()> {
        let title = format!("Off by one {round}");
        let number = self.fake.state.open_issue(REPO, &title, "answer() should be 42", "dev-kim");
        let issue = payloads::IssueSpec::new(number, &title).by("dev-kim");
        self.comment(&issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await?;
        self.until_comment(number, "patch proposal").await?;
        self.comment(&issue, "lee", "/orch approve").await?;
        self.until_pull_linked(number).await
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `orch serve` against the fake with the given first poll interval.
async fn start_orch(binary: &str, dir: &std::path::Path, fake: &FakeGithub, poll_ms: u64) -> anyhow::Result<(Child, String)> {
    let port = free_port()?;
    let mut env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("ORCH_")).collect();
    for (k, v) in [
        ("ORCH_BIND", format!("127.0.0.1:{port}")),
        ("ORCH_DATABASE_URL", format!("sqlite://{}", dir.join("orch.db").display())),
        ("ORCH_WEBHOOK_SECRET", SECRET.into()),
        ("ORCH_PAYLOAD_DIR", dir.join("payloads").display().to_string()),
        ("ORCH_GITHUB_APP_ID", "1".into()),
        ("ORCH_GITHUB_PRIVATE_KEY_PATH", dir.join("app.pem").display().to_string()),
        ("ORCH_GITHUB_API_URL", fake.url()),
        ("ORCH_BOT_LOGIN", APP_LOGIN.into()),
        ("ORCH_LLM_PROVIDER", "fake".into()),
        ("ORCH_GITHUB_WRITE_PACE_MS", "0".into()),
        ("ORCH_GITHUB_DRY_RUN", "false".into()),
        ("ORCH_REACTION_POLL_MS", poll_ms.to_string()),
    ] {
        env.insert(k.to_string(), v);
    }
    env.insert("RUST_LOG".into(), "warn".into());
    let log = std::fs::File::create(dir.join("orch.log"))?;
    let child = Command::new(binary)
        .arg("serve")
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return Ok((child, base));
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "orch did not become ready in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::args().nth(1).context("usage: budget_bench ORCH_BINARY")?;
    let dir = tempfile::tempdir()?;
    let (private, public) = orch::github::auth::generate_app_key()?;
    std::fs::write(dir.path().join("app.pem"), private.as_bytes())?;
    let fake = FakeGithub::start(1, public.as_bytes(), Duration::from_secs(3600)).await?;
    fake.state.add_repo(REPO, INSTALLATION, "main");
    fake.state.init_repo(
        REPO,
        "main",
        &[
            (".github/orch.yml", POLICY),
            ("src/lib.rs", "pub fn answer() -> u32 { 41 }\n"),
            ("README.md", "# widgets\n"),
        ],
    );
    fake.state.set_permission(REPO, "mara", "maintain");
    fake.state.set_permission(REPO, "lee", "write");

    // Polls an hour apart while the kinds are counted: a proposal approved at once is not polled.
    let (mut child, base) = start_orch(&binary, dir.path(), &fake, 3_600_000).await?;
    let mut b = Bench {
        fake,
        http: reqwest::Client::new(),
        base,
        repo: payloads::RepoSpec::new(REPO, INSTALLATION),
        deliveries: 0,
    };
    let mut rows = Vec::new();
    for round in 0..2 {
        for kind in ["triage", "qa_plan", "patch"] {
            b.quiet().await;
            let used = b.fake.state.rate_used();
            match kind {
                "triage" => b.triage(round).await?,
                "qa_plan" => b.qa_plan(round).await?,
                _ => b.patch(round).await?,
            }
            b.quiet().await;
            if round == 1 {
                rows.push((kind, b.fake.state.rate_used() - used));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    // A waiting proposal on the scaled clock.
    let (mut child, base) = start_orch(&binary, dir.path(), &b.fake, 30_000 / SCALE).await?;
    b.base = base;
    let title = "Nobody answers";
    let number = b.fake.state.open_issue(REPO, title, "A proposal nobody reacts to.", "dev-kim");
    b.fake.state.set_labels(REPO, number, &["orch:triage"]);
    let issue = payloads::IssueSpec::new(number, title).by("dev-kim").labels(&["orch:triage"]);
    b.deliver("issues", &payloads::issue_labeled(&b.repo, &issue, "orch:triage", "mara"))
        .await?;
    b.until_comment(number, "triage proposal").await?;
    let proposal = b.fake.state.bot_comments(REPO, number)[0].id;
    let path = format!("/repos/{REPO}/issues/comments/{proposal}/reactions");
    let polls = |b: &Bench| b.fake.state.log().iter().filter(|(m, p)| m == "GET" && *p == path).count();
    let used = b.fake.state.rate_used();
    let hour = Duration::from_secs(3600 / SCALE);
    tokio::time::sleep(hour).await;
    let first_hour = (b.fake.state.rate_used() - used, polls(&b));
    let used = b.fake.state.rate_used();
    tokio::time::sleep(hour).await;
    let second_hour = (b.fake.state.rate_used() - used, polls(&b) - first_hour.1);
    let _ = child.kill();
    let _ = child.wait();

    println!("== budget: rate-limited requests counted at the fake GitHub (orch on SQLite)");
    println!("{:<52} {:>8}", "workflow kind (trigger to done, steady state)", "requests");
    for (kind, used) in &rows {
        println!("{kind:<52} {used:>8}");
    }
    println!(
        "waiting proposal, first hour (clock scaled {SCALE}x)        {:>8}   ({} polls; the first read has no ETag)",
        first_hour.0, first_hour.1
    );
    println!(
        "waiting proposal, second hour (clock scaled {SCALE}x)       {:>8}   ({} polls, all 304)",
        second_hour.0, second_hour.1
    );
    Ok(())
}
