//! End-to-end harness: a real orch (HTTP server, ingest, workers) on a fresh database of either
//! backend, talking to the stateful fake GitHub over HTTP as a configured App, with a repository
//! `acme/widgets` that holds a policy file.
//!
//! Include it next to `common` (its macros and `TestDb` are used from `crate::common`):
//!
//! ```ignore
//! mod common;
//! #[path = "common/e2e.rs"]
//! mod e2e;
//! use e2e::{payloads, Orch, REPO};
//! ```
//!
//! The payload builders come with it as `e2e::payloads`; use that path rather than including
//! `common/payloads.rs` a second time (the two copies' types would differ).
#![allow(dead_code)]

#[path = "payloads.rs"]
pub mod payloads;

use crate::common::{self, Backend, Hook, TestDb};
use orch::app::Server;
use orch::config::Config;
use orch::github::fake::FakeGithub;
use orch::store::deliveries::{self, DeliveryRecord};
use orch::store::{now_ms, Store, SyncMode};
pub use payloads::{IssueSpec, PullSpec, RepoSpec};
use serde_json::Value;
use sqlx::Row;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const REPO: &str = "acme/widgets";
pub const INSTALLATION: i64 = 42;
pub const APP_ID: u64 = 4242;
/// The default timeout of the harness's own waits.
pub const WAIT: Duration = Duration::from_secs(15);
/// The files `acme/widgets` starts with on `main`, besides the policy.
pub const LIB_RS: &str = "pub fn answer() -> u32 { 41 }\n";
pub const README: &str = "# widgets\n";

/// A running orch against the fake GitHub. Stop it with [`Orch::stop`] at the end of a test for
/// a graceful shutdown (otherwise its tasks die with the test's runtime).
pub struct Orch {
    pub db: TestDb,
    pub fake: FakeGithub,
    /// None while stopped (between [`Orch::stop`] and [`Orch::resume`]).
    pub server: Option<Server>,
    pub http: reqwest::Client,
    /// `http://127.0.0.1:<port>` of the running server; changes on every (re)start.
    pub base: String,
    /// The harness's own connection to orch's database: readable while orch is stopped too.
    pub store: Store,
    /// `acme/widgets` as the payload builders describe it (installation [`INSTALLATION`]).
    pub repo: RepoSpec,
    /// The commit `main` started at.
    pub main_sha: String,
    keys: tempfile::TempDir,
    guid_counter: AtomicU64,
    env: HashMap<String, String>,
}

/// `acme/widgets` through installation [`INSTALLATION`], as payloads describe it.
pub fn repo() -> RepoSpec {
    RepoSpec::new(REPO, INSTALLATION)
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("system randomness");
    hex::encode(b)
}

impl Orch {
    /// `/metrics`, read with the operator `token`, as `name{labels}` → value (labels as written).
    pub async fn metrics(&self, token: &str) -> HashMap<String, f64> {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text()
            .await
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_string(), value.parse::<f64>().unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// orch with `policy_yaml` as `.github/orch.yml` on `main`; None when the backend is not
    /// available (Postgres outside CI).
    pub async fn start(backend: Backend, policy_yaml: &str) -> Option<Orch> {
        Self::with_env(backend, policy_yaml, &[]).await
    }

    /// [`Orch::start`] with more (or overriding) environment variables; an empty value unsets
    /// a variable (orch reads empty as absent).
    pub async fn with_env(backend: Backend, policy_yaml: &str, extra: &[(&str, &str)]) -> Option<Orch> {
        let db = TestDb::new(backend).await?;
        let keys = tempfile::tempdir().expect("temporary directory");
        let (_private, public) = common::key_pair(keys.path());
        let fake = FakeGithub::start(APP_ID, &public, Duration::from_secs(3600))
            .await
            .expect("the fake GitHub starts");
        common::check_bodies(&fake.state);
        fake.state.add_repo(REPO, INSTALLATION, "main");
        let main_sha = fake.state.init_repo(
            REPO,
            "main",
            &[(".github/orch.yml", policy_yaml), ("src/lib.rs", LIB_RS), ("README.md", README)],
        );
        let mut env = db.env();
        let pem = keys.path().join("app.pem").display().to_string();
        let settings = [
            ("ORCH_GITHUB_DRY_RUN", "false".to_string()),
            ("ORCH_GITHUB_APP_ID", APP_ID.to_string()),
            ("ORCH_GITHUB_PRIVATE_KEY_PATH", pem),
            ("ORCH_GITHUB_API_URL", fake.url()),
            ("ORCH_GITHUB_WRITE_PACE_MS", "0".into()),
            // Tests that are not about GitHub's secondary limits write faster than they allow
            // (the fake's are off too); tests/rate_limits.rs turns them on.
            ("ORCH_GITHUB_WRITE_LIMITS", "off".into()),
            ("ORCH_REACTION_POLL_MS", "200".into()),
            ("ORCH_LLM_PROVIDER", "fake".into()),
            ("ORCH_WORKERS", "2".into()),
            ("ORCH_BOT_LOGIN", orch::github::fake::APP_LOGIN.into()),
        ];
        for (k, v) in settings {
            env.insert(k.to_string(), v);
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let server = boot(&env).await;
        let store = Store::connect(&db.url, SyncMode::Normal)
            .await
            .expect("the harness connects to orch's database");
        Some(Orch {
            base: format!("http://{}", server.addr),
            db,
            fake,
            server: Some(server),
            http: common::test_http(),
            store,
            repo: repo(),
            main_sha,
            keys,
            guid_counter: AtomicU64::new(0),
            env,
        })
    }

    /// The environment orch was started with.
    pub fn env(&self) -> &HashMap<String, String> {
        &self.env
    }

    /// The running server (panics while stopped).
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("orch is stopped")
    }

    /// Graceful shutdown: in-flight requests and current jobs finish. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("orch shuts down gracefully");
        }
    }

    /// Starts orch again on the same database, fake GitHub and environment (a new port).
    pub async fn resume(&mut self) {
        assert!(self.server.is_none(), "orch is already running");
        let server = boot(&self.env).await;
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    /// [`Orch::stop`] then [`Orch::resume`].
    pub async fn restart(&mut self) {
        self.stop().await;
        self.resume().await;
    }

    /// A fresh delivery GUID: `e2e-<counter>-<random>`.
    pub fn next_guid(&self) -> String {
        let n = self.guid_counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("e2e-{n}-{}", random_hex(4))
    }

    /// Posts `payload` as a signed delivery of `event` with a fresh GUID; returns orch's answer.
    pub async fn send(&self, event: &str, payload: &Value) -> (u16, Value) {
        self.send_with_guid(event, &self.next_guid(), payload).await
    }

    /// Posts `payload` as a signed delivery with the given GUID (a redelivery reuses one).
    pub async fn send_with_guid(&self, event: &str, guid: &str, payload: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(payload).expect("payloads serialize");
        Hook::signed(event, guid, &body).send(&self.http, &self.base).await
    }

    /// Sends a delivery that must be accepted as new (202 queued, or 200 for pings and ignored
    /// events); returns its GUID.
    pub async fn deliver(&self, event: &str, payload: &Value) -> String {
        let guid = self.next_guid();
        let (status, answer) = self.send_with_guid(event, &guid, payload).await;
        assert!(
            matches!(
                (status, answer["status"].as_str()),
                (202, Some("queued")) | (200, Some("pong" | "ignored"))
            ),
            "{event} delivery {guid} not accepted: {status} {answer}"
        );
        guid
    }

    /// The stored delivery, if any.
    pub async fn delivery(&self, guid: &str) -> Option<DeliveryRecord> {
        deliveries::get(self.store.pool(), guid).await.expect("deliveries are readable")
    }

    /// Waits until the delivery is no longer queued and checks that it was processed (not failed).
    pub async fn wait_processed(&self, guid: &str) -> DeliveryRecord {
        let d = self
            .eventually(&format!("delivery {guid} processed"), WAIT, || async {
                self.delivery(guid).await.filter(|d| d.status != "queued")
            })
            .await;
        assert_eq!(d.status, "processed", "delivery {guid}: {d:?}");
        d
    }

    /// Polls `f` every 25 ms until it returns Some; on timeout, panics naming `what`, with the
    /// tail of the fake's request log and the store's workflows and unfinished jobs.
    pub async fn eventually<F, Fut, T>(&self, what: &str, timeout: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.diagnostics().await);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// [`Orch::eventually`] for a plain closure, e.g. over `self.fake.state`.
    pub async fn eventually_sync<F, T>(&self, what: &str, timeout: Duration, mut f: F) -> T
    where
        F: FnMut() -> Option<T>,
    {
        self.eventually(what, timeout, || std::future::ready(f())).await
    }

    /// What a failed wait prints: the last 30 requests the fake received, the workflows, the
    /// unfinished jobs and the failed deliveries.
    pub async fn diagnostics(&self) -> String {
        let log = self.fake.state.log();
        let tail = &log[log.len().saturating_sub(30)..];
        let mut out = format!("fake GitHub requests (last {} of {}):\n", tail.len(), log.len());
        for (method, path) in tail {
            out.push_str(&format!("  {method} {path}\n"));
        }
        let pool = self.store.pool();
        let rows = |sql: &'static str| async move { sqlx::query(sql).fetch_all(pool).await };
        out.push_str("workflows (id, kind, number, state, reason):\n");
        match rows("SELECT id, kind, number, state, reason FROM workflows ORDER BY id").await {
            Ok(rows) => {
                for r in rows {
                    let (id, kind, number, state, reason): (i64, String, i64, String, Option<String>) =
                        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                    out.push_str(&format!("  {id} {kind} #{number} {state} {reason:?}\n"));
                }
            }
            Err(e) => out.push_str(&format!("  (unreadable: {e})\n")),
        }
        out.push_str(&format!(
            "unfinished jobs at {} (id, kind, status, attempts, run_at, last_error):\n",
            now_ms()
        ));
        match rows("SELECT id, kind, status, attempts, run_at, last_error FROM jobs WHERE status <> 'done' ORDER BY id").await {
            Ok(rows) => {
                for r in rows {
                    let (id, kind, status, attempts, run_at, error): (i64, String, String, i64, i64, Option<String>) =
                        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
                    out.push_str(&format!("  {id} {kind} {status} attempts={attempts} run_at={run_at} {error:?}\n"));
                }
            }
            Err(e) => out.push_str(&format!("  (unreadable: {e})\n")),
        }
        out.push_str("failed deliveries (guid, event, error):\n");
        match rows("SELECT guid, event, error FROM deliveries WHERE status = 'failed' ORDER BY received_at").await {
            Ok(rows) => {
                for r in rows {
                    let (guid, event, error): (String, String, Option<String>) = (r.get(0), r.get(1), r.get(2));
                    out.push_str(&format!("  {guid} {event} {error:?}\n"));
                }
            }
            Err(e) => out.push_str(&format!("  (unreadable: {e})\n")),
        }
        out
    }

    /// Jobs a worker has to run before the system is quiet: running ones, queued ones due now,
    /// and queued ones waiting to be retried after an error. Jobs scheduled for later without an
    /// error (the reaction poll) do not count.
    pub async fn due_jobs(&self) -> i64 {
        sqlx::query(
            "SELECT COUNT(*) FROM jobs WHERE status = 'running' \
             OR (status = 'queued' AND (run_at <= $1 OR last_error IS NOT NULL))",
        )
        .bind(now_ms())
        .fetch_one(self.store.pool())
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .expect("jobs are readable")
    }

    /// Waits (at most `secs`) until [`Orch::due_jobs`] is zero.
    pub async fn drain_due(&self, secs: u64) {
        self.eventually(
            "no job due (running, due now or waiting for a retry)",
            Duration::from_secs(secs),
            || async { (self.due_jobs().await == 0).then_some(()) },
        )
        .await
    }

    /// Waits (at most `secs`) until no job is running, due now or waiting for a retry: what has
    /// been sent so far has been acted on. Polls scheduled for later may remain queued.
    pub async fn wait_idle(&self, secs: u64) {
        self.drain_due(secs).await
    }

    /// Waits (at most `secs`) until no job at all is queued or running, later ones included.
    pub async fn wait_empty(&self, secs: u64) {
        self.eventually("an empty job queue", Duration::from_secs(secs), || async {
            let depth = orch::store::jobs::depth(self.store.pool()).await.expect("jobs are readable");
            (depth == 0).then_some(())
        })
        .await
    }

    /// Every workflow as (id, kind, state), oldest first.
    pub async fn workflow_states(&self) -> Vec<(i64, String, String)> {
        sqlx::query("SELECT id, kind, state FROM workflows ORDER BY id")
            .fetch_all(self.store.pool())
            .await
            .expect("workflows are readable")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// The transitions of workflow `id` as (from, to, actor), in order.
    pub async fn transitions(&self, id: i64) -> Vec<(Option<String>, String, String)> {
        sqlx::query("SELECT from_state, to_state, actor FROM workflow_transitions WHERE workflow_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(self.store.pool())
            .await
            .expect("transitions are readable")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// Every GitHub write orch recorded as (kind, status), oldest first.
    pub async fn actions(&self) -> Vec<(String, String)> {
        sqlx::query("SELECT kind, status FROM actions ORDER BY id")
            .fetch_all(self.store.pool())
            .await
            .expect("actions are readable")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Requests to the fake that change something on GitHub (POST, PATCH, PUT, DELETE), as
    /// (method, path), leaving out installation-token requests.
    pub fn github_writes(&self) -> Vec<(String, String)> {
        self.fake
            .state
            .log()
            .into_iter()
            .filter(|(m, p)| m != "GET" && m != "HEAD" && !p.starts_with("/app/"))
            .collect()
    }

    /// Gives `login` a permission on the repository (`admin`, `maintain`, `write`, `triage`,
    /// `read`).
    pub fn user(&self, login: &str, permission: &str) {
        self.fake.state.set_permission(REPO, login, permission);
    }

    /// The comments orch made on `number`, oldest first: by its login and with its action marker
    /// (a test may post as `orch[bot]` itself, to see that orch ignores that).
    pub fn bot_comments(&self, number: i64) -> Vec<String> {
        self.fake
            .state
            .bot_comments(REPO, number)
            .into_iter()
            .map(|c| c.body)
            .filter(|b| b.contains("<!-- orch:action:"))
            .collect()
    }

    /// The state of workflow `id` ("" while it does not exist).
    pub async fn state_of(&self, id: i64) -> String {
        self.workflow_states()
            .await
            .into_iter()
            .find(|(w, _, _)| *w == id)
            .map(|(_, _, s)| s)
            .unwrap_or_default()
    }

    /// Waits until workflow `id` is in `state`.
    pub async fn wait_state(&self, id: i64, state: &str) {
        self.eventually(&format!("workflow {id} reaches {state}"), WAIT, || async {
            (self.state_of(id).await == state).then_some(())
        })
        .await
    }

    /// The reason recorded with workflow `id`'s current state (empty when none).
    pub async fn reason_of(&self, id: i64) -> String {
        orch::store::workflows::get(self.store.pool(), id)
            .await
            .unwrap()
            .expect("the workflow exists")
            .reason
            .unwrap_or_default()
    }

    /// Waits until workflow `id` has come to wait for approval `n` times (its `n`th proposal
    /// is up, after a retry).
    pub async fn wait_proposals(&self, id: i64, n: usize) {
        self.eventually(&format!("proposal {n} of workflow {id}"), WAIT, || async {
            let waits = self
                .transitions(id)
                .await
                .iter()
                .filter(|(_, to, _)| to == "WAITING_USER_APPROVAL")
                .count();
            (waits == n).then_some(())
        })
        .await
    }

    /// The first workflow, once it exists.
    pub async fn only_workflow(&self) -> i64 {
        self.eventually("a workflow exists", WAIT, || async {
            self.workflow_states().await.first().map(|(id, _, _)| *id)
        })
        .await
    }

    /// `author` opens an issue on the fake; returns it as payloads describe it.
    pub fn open_issue(&self, title: &str, body: &str, author: &str) -> IssueSpec {
        let number = self.fake.state.open_issue(REPO, title, body, author);
        IssueSpec::new(number, title).body(body).by(author)
    }

    /// `author` pushes `changes` to a new branch `branch` and opens a pull request from it into
    /// `main`; returns it with its real head and base commits.
    pub fn open_pull(&self, title: &str, branch: &str, changes: &[(&str, Option<&str>)], author: &str) -> PullSpec {
        let head_sha = self.fake.state.push(REPO, branch, changes);
        let (parents, _) = self.fake.state.tip(REPO, branch).expect("the branch was just pushed");
        let number = self.fake.state.open_pull(REPO, title, branch, "main", author);
        let mut pr = PullSpec::new(number, title, branch, &head_sha).by(author);
        pr.base_sha = parents.first().cloned().unwrap_or_else(|| self.main_sha.clone());
        pr
    }

    /// Replaces the policy file on `main` (a push); returns the new commit.
    pub fn set_policy(&self, policy_yaml: &str) -> String {
        self.fake.state.push(REPO, "main", &[(".github/orch.yml", Some(policy_yaml))])
    }

    /// `login` comments `body` on `issue`: the comment is made on the fake and its
    /// `issue_comment.created` delivered. Returns (comment id, delivery GUID).
    pub async fn comment(&self, issue: &IssueSpec, login: &str, body: &str) -> (i64, String) {
        let kind = payloads::user_type(login);
        let id = self.fake.state.user_comment(REPO, issue.number, login, kind, body);
        let guid = self
            .deliver(
                "issue_comment",
                &payloads::issue_comment_created(&self.repo, issue, id, body, login, kind),
            )
            .await;
        (id, guid)
    }

    /// `sender` adds `label` to `issue`: set on the fake and `issues.labeled` delivered. Returns
    /// the delivery GUID; `issue.labels` gains the label.
    pub async fn label_issue(&self, issue: &mut IssueSpec, label: &str, sender: &str) -> String {
        if !issue.labels.iter().any(|l| l == label) {
            issue.labels.push(label.to_string());
        }
        let labels: Vec<&str> = issue.labels.iter().map(String::as_str).collect();
        self.fake.state.set_labels(REPO, issue.number, &labels);
        self.deliver("issues", &payloads::issue_labeled(&self.repo, issue, label, sender))
            .await
    }
}

async fn boot(env: &HashMap<String, String>) -> Server {
    let config = Config::from_map(env).expect("the e2e configuration is valid");
    Server::start(&config).await.expect("orch starts")
}

/// Every body orch sent the fake during the test is one GitHub's description accepts.
impl Drop for Orch {
    fn drop(&mut self) {
        common::assert_bodies_were_valid(&self.fake.state);
    }
}

/// One series of [`Orch::metrics`]; 0 when absent (a counter not yet incremented).
pub fn metric(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}
