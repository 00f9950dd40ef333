//! A real `orch serve` process for crash tests: started from the built binary against an
//! in-process fake GitHub, killed with SIGKILL and started again on the same database. Several
//! processes (replicas) can share the database and the fake: [`Rig::add_replica`] gives each its
//! own port; `start`/`kill`/`base` act on the first, the `_at` variants on any.
#![allow(dead_code)]

use crate::common::{self, Backend, Hook, TestDb};
use crate::e2e::{payloads, APP_ID, INSTALLATION, LIB_RS, README, REPO};
use orch::github::fake::{FakeGithub, APP_LOGIN};
use orch::store::Store;
use sqlx::Row;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every kind of work enabled.
pub const POLICY: &str = "phase: 4\n";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `orch serve` process slot: its port, and the process while it runs.
pub struct Replica {
    pub port: u16,
    pub child: Option<Child>,
    /// The numbers (in [`Rig::starts`]) of this slot's starts, in order; each has its own log
    /// file, [`Rig::log_path`].
    pub runs: Vec<usize>,
}

/// A real `orch serve` process (or several) and everything it talks to.
pub struct Rig {
    _db: TestDb,
    pub fake: FakeGithub,
    _keys: tempfile::TempDir,
    /// The environment every process starts with (`ORCH_BIND` is set per replica).
    pub env: HashMap<String, String>,
    pub replicas: Vec<Replica>,
    /// Processes started so far, all replicas together.
    pub starts: usize,
    pub store: Store,
    pub http: reqwest::Client,
    pub logs: PathBuf,
    /// The commit `main` starts (and stays) at.
    pub main_sha: String,
}

impl Rig {
    pub async fn new(backend: Backend) -> Option<Rig> {
        let db = TestDb::new(backend).await?;
        let keys = tempfile::tempdir().unwrap();
        let (_private, public) = common::key_pair(keys.path());
        let fake = FakeGithub::start(APP_ID, &public, Duration::from_secs(3600)).await.unwrap();
        common::check_bodies(&fake.state);
        fake.state.add_repo(REPO, INSTALLATION, "main");
        let main_sha = fake.state.init_repo(
            REPO,
            "main",
            &[(".github/orch.yml", POLICY), ("src/lib.rs", LIB_RS), ("README.md", README)],
        );
        fake.state.set_permission(REPO, "mara", "maintain");
        fake.state.set_permission(REPO, "lee", "write");
        let port = free_port();
        let mut env = db.env();
        let settings = [
            ("ORCH_BIND", format!("127.0.0.1:{port}")),
            ("ORCH_GITHUB_DRY_RUN", "false".into()),
            ("ORCH_GITHUB_APP_ID", APP_ID.to_string()),
            ("ORCH_GITHUB_PRIVATE_KEY_PATH", keys.path().join("app.pem").display().to_string()),
            ("ORCH_GITHUB_API_URL", fake.url()),
            ("ORCH_GITHUB_WRITE_PACE_MS", "0".into()),
            // Tests that are not about GitHub's secondary limits write faster than they allow
            // (the fake's are off too); tests/rate_limits.rs turns them on.
            ("ORCH_GITHUB_WRITE_LIMITS", "off".into()),
            ("ORCH_REACTION_POLL_MS", "200".into()),
            ("ORCH_BOT_LOGIN", APP_LOGIN.into()),
            ("ORCH_JOB_LEASE_SECS", "2".into()),
            ("ORCH_LLM_PROVIDER", "fake".into()),
            ("ORCH_WORKERS", "2".into()),
            ("RUST_LOG", "warn".into()),
        ];
        for (k, v) in settings {
            env.insert(k.to_string(), v);
        }
        // Migrated here, so that the test can read the store before orch first starts.
        let store = db.store().await;
        let logs = db.dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Some(Rig {
            _db: db,
            fake,
            _keys: keys,
            env,
            replicas: vec![Replica {
                port,
                child: None,
                runs: Vec::new(),
            }],
            starts: 0,
            store,
            http: common::test_http(),
            logs,
            main_sha,
        })
    }

    pub fn base(&self) -> String {
        self.base_at(0)
    }

    pub fn base_at(&self, replica: usize) -> String {
        format!("http://127.0.0.1:{}", self.replicas[replica].port)
    }

    /// Another process slot on the same database and fake GitHub, with a port of its own;
    /// returns its index for the `_at` methods.
    pub fn add_replica(&mut self) -> usize {
        self.replicas.push(Replica {
            port: free_port(),
            child: None,
            runs: Vec::new(),
        });
        self.replicas.len() - 1
    }

    pub fn log_path(&self, start: usize) -> PathBuf {
        self.logs.join(format!("orch-{start}.log"))
    }

    pub async fn start(&mut self) {
        self.start_at(0).await
    }

    // The child is kept in its replica's slot and killed and waited for by `kill_at` or `Drop`.
    #[allow(clippy::zombie_processes)]
    pub async fn start_at(&mut self, replica: usize) {
        assert!(self.replicas[replica].child.is_none(), "orch {replica} is already running");
        self.starts += 1;
        let run = self.starts;
        let log = std::fs::File::create(self.log_path(run)).unwrap();
        let mut env = self.env.clone();
        env.insert("ORCH_BIND".into(), format!("127.0.0.1:{}", self.replicas[replica].port));
        let mut child = Command::new(env!("CARGO_BIN_EXE_orch"))
            .arg("serve")
            .env_clear()
            .envs(&env)
            // orch logs to stdout; a panic goes to stderr: both in the process's log file.
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.replicas[replica].runs.push(run);
        let base = self.base_at(replica);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("{base}/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("orch {replica} exited at start with {status}\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("orch {replica} did not become ready\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.replicas[replica].child = Some(child);
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        self.kill_at(0)
    }

    pub fn kill_at(&mut self, replica: usize) {
        let mut child = self.replicas[replica].child.take().expect("orch is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn running(&self, replica: usize) -> bool {
        self.replicas[replica].child.is_some()
    }

    /// The last lines each started process wrote (its log and stderr).
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- orch process {n} (last 15 lines of its output) ---\n"));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub async fn deliver(&self, event: &str, payload: &serde_json::Value) -> String {
        let guid = format!("crash-{}-{}", self.starts, payloads::stable_id("guid", &payload.to_string()));
        let body = serde_json::to_vec(payload).unwrap();
        let (status, answer) = Hook::signed(event, &guid, &body).send(&self.http, &self.base()).await;
        assert_eq!((status, answer["status"].as_str()), (202, Some("queued")), "{event}: {answer}");
        guid
    }

    pub async fn workflow_state(&self) -> Option<(i64, String)> {
        sqlx::query("SELECT id, state FROM workflows ORDER BY id LIMIT 1")
            .fetch_optional(self.store.pool())
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    pub async fn diagnostics(&self) -> String {
        let log = self.fake.state.log();
        let mut out = format!("fake GitHub requests ({}):\n", log.len());
        for (m, p) in log.iter().filter(|(m, p)| m != "GET" || !p.contains("/contents/")) {
            out.push_str(&format!("  {m} {p}\n"));
        }
        out.push_str("jobs (id, kind, status, attempts, last_error):\n");
        for r in sqlx::query("SELECT id, kind, status, attempts, last_error FROM jobs ORDER BY id")
            .fetch_all(self.store.pool())
            .await
            .unwrap()
        {
            let (id, kind, status, attempts, error): (i64, String, String, i64, Option<String>) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            out.push_str(&format!("  {id} {kind} {status} {attempts} {error:?}\n"));
        }
        out.push_str("actions (id, idempotency_key, kind, status, github_id):\n");
        for r in sqlx::query("SELECT id, idempotency_key, kind, status, github_id FROM actions ORDER BY id")
            .fetch_all(self.store.pool())
            .await
            .unwrap()
        {
            let (id, key, kind, status, github_id): (i64, String, String, String, Option<i64>) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            out.push_str(&format!("  {id} {key} {kind} {status} {github_id:?}\n"));
        }
        out.push_str(&format!("workflow: {:?}\n", self.workflow_state().await));
        out.push_str(&format!("branches: {:?}\n", self.fake.state.branches(REPO)));
        out.push_str(&self.log_tail());
        out
    }

    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.diagnostics().await);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_state(&self, state: &str, timeout: Duration) -> i64 {
        self.wait_for(&format!("the workflow in {state}"), timeout, || async {
            self.workflow_state().await.filter(|(_, s)| s == state).map(|(id, _)| id)
        })
        .await
    }

    /// Requests matching `method` and `path` the fake received so far.
    pub fn requests(&self, method: &str, path: &str) -> usize {
        self.fake
            .state
            .log()
            .iter()
            .filter(|(m, p)| m == method && p.ends_with(path))
            .count()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        common::assert_bodies_were_valid(&self.fake.state);
    }
}

/// A signed delivery sent to `base`; None when no answer came (orch down, killed mid-request).
/// Unlike [`Hook::send`] a refused connection is an outcome here, not a failure.
pub async fn try_deliver(http: &reqwest::Client, base: &str, event: &str, guid: &str, body: &[u8]) -> Option<(u16, serde_json::Value)> {
    let r = http
        .post(format!("{base}/webhook"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", guid)
        .header("x-hub-signature-256", orch::webhook::signature::sign(common::SECRET, body))
        .body(body.to_vec())
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
}

/// The invariants every crash and replica run must hold, checked on a [`Snapshot`] of the
/// database and the fake GitHub against the [`Ledger`] of what the test sent. `check` returns
/// the problems found (empty: all hold); the suites' mutation tests show that it finds each kind
/// of violation it looks for.
pub mod invariants {
    use super::*;
    use orch::github::fake::{FakeCheckRun, FakeComment, FakePull};
    use orch::workflow::state::{next, Kind, State, Step};
    use std::collections::{BTreeMap, BTreeSet};

    pub const TRIAGE_LABELS: [&str; 3] = ["orch:triage", "bug", "priority:p1"];
    pub const PATCH_INSTRUCTION: &str = "/orch propose fix `src/lib.rs` to return 42";

    pub fn patched_lib_rs() -> String {
        format!("{LIB_RS}// orch: fix `src/lib.rs` to return 42\n")
    }

    /// One delivery the test sent (once or several times, always with the same GUID).
    #[derive(Debug, Clone, Default)]
    pub struct Sent {
        pub event: String,
        /// Some attempt got a 2xx answer.
        pub acked: bool,
        /// Attempts made (a redelivery of the same GUID counts).
        pub attempts: usize,
        /// The `/orch` comment this delivery carries, whose acknowledgement (👀) is checked.
        pub command_comment: Option<i64>,
    }

    /// What the test did, and what it expects to have been finished.
    #[derive(Debug, Clone, Default)]
    pub struct Ledger {
        pub sent: BTreeMap<String, Sent>,
        /// Issues labelled `orch:triage` and then approved: each must end with its labels applied.
        pub triage: BTreeSet<i64>,
        /// Issues with an approved `/orch propose`: each must end with one pull request.
        pub patch: BTreeSet<i64>,
        /// Every issue the test opened (their comments and labels are looked at).
        pub issues: BTreeSet<i64>,
    }

    impl Ledger {
        pub fn attempt(&mut self, guid: &str, event: &str, command_comment: Option<i64>, acked: bool) {
            let s = self.sent.entry(guid.to_string()).or_default();
            s.event = event.to_string();
            s.attempts += 1;
            s.acked |= acked;
            if command_comment.is_some() {
                s.command_comment = command_comment;
            }
        }
    }

    #[derive(Debug, Clone)]
    pub struct Delivery {
        pub guid: String,
        pub status: String,
        pub process_count: i64,
    }

    #[derive(Debug, Clone)]
    pub struct Workflow {
        pub id: i64,
        pub kind: String,
        pub number: i64,
        pub state: String,
    }

    #[derive(Debug, Clone)]
    pub struct Action {
        pub id: i64,
        pub key: String,
        pub kind: String,
        pub status: String,
        pub github_id: Option<i64>,
    }

    /// A branch's tip on GitHub: its parents, its message and the files of its tree.
    #[derive(Debug, Clone)]
    pub struct Tip {
        pub parents: Vec<String>,
        pub message: String,
        pub files: BTreeMap<String, String>,
    }

    /// Everything the checker looks at, read once the runs are over.
    #[derive(Debug, Clone)]
    pub struct Snapshot {
        pub main_sha: String,
        pub comments: BTreeMap<i64, Vec<FakeComment>>,
        /// Reactions on the command comments: comment id → (content, login).
        pub reactions: BTreeMap<i64, Vec<(String, String)>>,
        pub labels: BTreeMap<i64, Vec<String>>,
        pub pulls: Vec<FakePull>,
        pub check_runs: Vec<FakeCheckRun>,
        pub branches: Vec<String>,
        pub tips: BTreeMap<String, Tip>,
        /// Every request GitHub received: (method, path).
        pub log: Vec<(String, String)>,
        pub refused: Vec<(String, String)>,
        /// Every JSON body GitHub received: (method, path, body).
        pub bodies: Vec<(String, String, serde_json::Value)>,
        /// The bodies of the requests GitHub refused before applying them (a rate limit).
        pub refused_bodies: Vec<(String, String, serde_json::Value)>,
        pub deliveries: Vec<Delivery>,
        /// guid → number of `delivery` audit rows recording it as processed.
        pub delivery_audits: BTreeMap<String, i64>,
        /// guid → statuses of its jobs.
        pub delivery_jobs: BTreeMap<String, Vec<String>>,
        /// (kind, status) → jobs.
        pub jobs: BTreeMap<(String, String), i64>,
        pub trigger_runs: BTreeSet<String>,
        pub workflows: Vec<Workflow>,
        /// workflow id → (from, to) of each transition, in order.
        pub transitions: BTreeMap<i64, Vec<(Option<String>, String)>>,
        /// workflow id → (from, to) of each `transition` audit row, in order.
        pub audit_transitions: BTreeMap<i64, Vec<(Option<String>, String)>>,
        pub actions: Vec<Action>,
        /// `Ok(rows)` when the audit chain verifies.
        pub audit: Result<i64, String>,
    }

    pub fn markers(body: &str) -> Vec<i64> {
        body.match_indices("<!-- orch:action:")
            .filter_map(|(i, m)| body[i + m.len()..].split([':', ' ']).next().and_then(|n| n.parse().ok()))
            .collect()
    }

    impl Snapshot {
        pub async fn take(rig: &Rig, ledger: &Ledger) -> Snapshot {
            let state = &rig.fake.state;
            let pool = rig.store.pool();
            let pulls = state.pulls(REPO);
            let mut numbers: BTreeSet<i64> = ledger.issues.clone();
            numbers.extend(pulls.iter().map(|p| p.number));
            let comments = numbers.iter().map(|n| (*n, state.comments(REPO, *n))).collect();
            let labels = numbers.iter().map(|n| (*n, state.labels(REPO, *n))).collect();
            let reactions = ledger
                .sent
                .values()
                .filter_map(|s| s.command_comment)
                .map(|c| (c, state.reactions(c)))
                .collect();
            let branches = state.branches(REPO);
            let tips = branches
                .iter()
                .filter_map(|b| {
                    let (parents, message) = state.tip(REPO, b)?;
                    let files = state.files_at(REPO, b).unwrap_or_default();
                    Some((b.clone(), Tip { parents, message, files }))
                })
                .collect();
            let rows = |sql: &'static str| async move { sqlx::query(sql).fetch_all(pool).await.unwrap() };
            let deliveries = rows("SELECT guid, status, process_count FROM deliveries ORDER BY guid")
                .await
                .iter()
                .map(|r| Delivery {
                    guid: r.get(0),
                    status: r.get(1),
                    process_count: r.get(2),
                })
                .collect();
            let mut delivery_audits = BTreeMap::new();
            let mut audit_transitions: BTreeMap<i64, Vec<(Option<String>, String)>> = BTreeMap::new();
            for r in rows("SELECT kind, subject, details FROM audit_log WHERE kind IN ('delivery', 'transition') ORDER BY seq").await {
                let (kind, subject, details): (String, String, String) = (r.get(0), r.get(1), r.get(2));
                let details: serde_json::Value = serde_json::from_str(&details).unwrap();
                if kind == "delivery" && details["decision"] == "processed" {
                    *delivery_audits.entry(subject).or_insert(0) += 1;
                } else if let Some(id) = subject.strip_prefix("workflow:").and_then(|s| s.parse().ok()) {
                    let from = details["from"].as_str().map(str::to_string);
                    let to = details["to"].as_str().unwrap_or_default().to_string();
                    audit_transitions.entry(id).or_default().push((from, to));
                }
            }
            let mut delivery_jobs: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for r in rows("SELECT delivery_guid, status FROM jobs WHERE delivery_guid IS NOT NULL ORDER BY id").await {
                delivery_jobs.entry(r.get(0)).or_default().push(r.get(1));
            }
            let jobs = rows("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status")
                .await
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
            let trigger_runs = rows("SELECT key FROM trigger_runs").await.iter().map(|r| r.get(0)).collect();
            let workflows = rows("SELECT id, kind, number, state FROM workflows ORDER BY id")
                .await
                .iter()
                .map(|r| Workflow {
                    id: r.get(0),
                    kind: r.get(1),
                    number: r.get(2),
                    state: r.get(3),
                })
                .collect();
            let mut transitions: BTreeMap<i64, Vec<(Option<String>, String)>> = BTreeMap::new();
            for r in rows("SELECT workflow_id, from_state, to_state FROM workflow_transitions ORDER BY id").await {
                transitions.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
            }
            let actions = rows("SELECT id, idempotency_key, kind, status, github_id FROM actions ORDER BY id")
                .await
                .iter()
                .map(|r| Action {
                    id: r.get(0),
                    key: r.get(1),
                    kind: r.get(2),
                    status: r.get(3),
                    github_id: r.get(4),
                })
                .collect();
            let audit = match orch::audit::verify(pool).await {
                Ok(orch::audit::Verdict::Intact { rows, .. }) => Ok(rows),
                Ok(broken) => Err(broken.to_string()),
                Err(e) => Err(format!("{e:#}")),
            };
            Snapshot {
                main_sha: rig.main_sha.clone(),
                comments,
                reactions,
                labels,
                pulls,
                check_runs: state.check_runs(REPO),
                branches,
                tips,
                log: state.log(),
                refused: state.refused(),
                bodies: state.bodies(),
                refused_bodies: state.refused_bodies(),
                deliveries,
                delivery_audits,
                delivery_jobs,
                jobs,
                trigger_runs,
                workflows,
                transitions,
                audit_transitions,
                actions,
                audit,
            }
        }

        /// POSTs to a path ending so that GitHub applied: refused ones (a rate limit, an injected
        /// status) are left out, since orch rightly sends them again.
        fn posts(&self, path_end: &str) -> usize {
            let count = |log: &[(String, String)]| log.iter().filter(|(m, p)| m == "POST" && p.ends_with(path_end)).count();
            count(&self.log) - count(&self.refused)
        }
    }

    /// A broken invariant: which one (a short tag the mutation tests look for) and the details.
    pub type Problem = (&'static str, String);

    /// Checks every invariant; returns the problems found.
    pub fn check(s: &Snapshot, ledger: &Ledger) -> Vec<Problem> {
        let mut p: Vec<Problem> = Vec::new();
        check_deliveries(s, ledger, &mut p);
        check_github(s, ledger, &mut p);
        check_workflows(s, ledger, &mut p);
        if let Err(e) = &s.audit {
            p.push(("audit chain broken", e.clone()));
        }
        for ((kind, status), n) in &s.jobs {
            if status != "done" {
                p.push(("job not done after the drain", format!("{n} {kind} jobs {status}")));
            }
        }
        p
    }

    /// Every acknowledged delivery is stored and processed exactly once; a stored delivery
    /// (acknowledged or not: orch may have committed it and died before answering) is processed
    /// exactly once; one that is not stored left no trace at all.
    fn check_deliveries(s: &Snapshot, ledger: &Ledger, p: &mut Vec<Problem>) {
        let stored: BTreeMap<&str, &Delivery> = s.deliveries.iter().map(|d| (d.guid.as_str(), d)).collect();
        for d in &s.deliveries {
            if !ledger.sent.contains_key(&d.guid) {
                p.push(("a delivery stored that was never sent", d.guid.clone()));
            }
            if (d.status.as_str(), d.process_count) != ("processed", 1) {
                p.push((
                    "delivery not processed exactly once",
                    format!("{}: {} with process_count {}", d.guid, d.status, d.process_count),
                ));
            }
            let audits = s.delivery_audits.get(&d.guid).copied().unwrap_or(0);
            if audits != 1 {
                p.push((
                    "delivery audited as processed not exactly once",
                    format!("{}: {audits} rows", d.guid),
                ));
            }
            let jobs = s.delivery_jobs.get(&d.guid).cloned().unwrap_or_default();
            if jobs != ["done"] {
                p.push(("delivery without exactly one finished job", format!("{}: jobs {jobs:?}", d.guid)));
            }
        }
        for (guid, sent) in &ledger.sent {
            let is_stored = stored.contains_key(guid.as_str());
            if sent.acked && !is_stored {
                p.push(("acknowledged delivery lost", format!("{guid} ({})", sent.event)));
            }
            if !is_stored {
                if s.delivery_jobs.contains_key(guid) || s.delivery_audits.contains_key(guid) {
                    p.push(("half-processed delivery: traces of one never stored", guid.clone()));
                }
                if s.trigger_runs.contains(&format!("d{guid}")) {
                    p.push((
                        "half-processed delivery: traces of one never stored",
                        format!("{guid}: trigger run"),
                    ));
                }
            }
            // A command is acknowledged with 👀 exactly when its delivery is stored (then it was
            // processed): once, never twice, never for a delivery orch never took. The reaction
            // request itself may repeat after a lost answer: orch does not look before reacting
            // (`reaction_once`), GitHub keeps one reaction of a kind per user, so the repeat
            // changes nothing; the state on GitHub is what counts here.
            if let Some(comment) = sent.command_comment {
                let eyes = s
                    .reactions
                    .get(&comment)
                    .map(|l| l.iter().filter(|(c, who)| c == "eyes" && who == APP_LOGIN).count())
                    .unwrap_or(0);
                let requests = s.posts(&format!("/issues/comments/{comment}/reactions"));
                if eyes != usize::from(is_stored) || (requests > 0) != is_stored {
                    p.push((
                        "command acknowledged not exactly once per stored delivery",
                        format!("{guid}: comment {comment}: {eyes} 👀 from {requests} requests, stored: {is_stored}"),
                    ));
                }
            }
        }
    }

    /// No GitHub write made twice: each orch-made object carries its action's marker once and
    /// no marker is on two objects; per workflow one proposal, one labels request, one branch,
    /// one commit on main, one pull request, and one check run, closed and linking it.
    fn check_github(s: &Snapshot, ledger: &Ledger, p: &mut Vec<Problem>) {
        let actions: BTreeMap<i64, &Action> = s.actions.iter().map(|a| (a.id, a)).collect();
        // marker → (what carries it, its GitHub id)
        let mut marked: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
        for (n, list) in &s.comments {
            for c in list.iter().filter(|c| c.author == APP_LOGIN) {
                let m = markers(&c.body);
                if m.len() != 1 {
                    p.push((
                        "orch comment without exactly one marker",
                        format!("#{n} comment {}: {:?}", c.id, c.body),
                    ));
                }
                for m in m {
                    marked.entry(m).or_default().push((format!("comment {} on #{n}", c.id), c.id));
                }
            }
        }
        for pr in &s.pulls {
            for m in markers(&pr.body) {
                marked
                    .entry(m)
                    .or_default()
                    .push((format!("pull request #{}", pr.number), pr.number));
            }
        }
        for run in &s.check_runs {
            for m in markers(&run.summary) {
                marked
                    .entry(m)
                    .or_default()
                    .push((format!("check run {} ({})", run.id, run.name), run.id));
            }
        }
        for (m, on) in &marked {
            if on.len() > 1 {
                p.push((
                    "a GitHub write made twice (one marker on several objects)",
                    format!("action {m}: {on:?}"),
                ));
            }
            match actions.get(m) {
                None => p.push(("a marker of no recorded action", format!("action {m}: {on:?}"))),
                Some(a) if a.status != "done" => p.push(("a marker of an action not done", format!("{a:?}: {on:?}"))),
                Some(a) if a.kind == "comment" && on.iter().any(|(_, id)| Some(*id) != a.github_id) => {
                    p.push(("a comment that is not the one its action recorded", format!("{a:?}: {on:?}")))
                }
                Some(_) => {}
            }
        }
        for a in &s.actions {
            if a.status != "done" {
                p.push(("action not done after the drain", format!("{a:?}")));
            }
            if matches!(a.kind.as_str(), "comment" | "check_run" | "pull_request") && !marked.contains_key(&a.id) {
                p.push(("an action recorded done whose object is not on GitHub", format!("{a:?}")));
            }
        }
        let workflow_of = |kind: &str, n: i64| s.workflows.iter().filter(|w| w.kind == kind && w.number == n).collect::<Vec<_>>();
        for n in &ledger.triage {
            let bot: Vec<&str> = s.comments[n]
                .iter()
                .filter(|c| c.author == APP_LOGIN)
                .map(|c| c.body.as_str())
                .collect();
            let proposals = bot.iter().filter(|b| b.contains("### orch · triage proposal")).count();
            let applied = bot.iter().filter(|b| b.starts_with("Applied labels `bug`, `priority:p1`")).count();
            if (proposals, applied) != (1, 1) {
                p.push((
                    "triage: not one proposal and one applied comment",
                    format!("#{n}: {proposals} proposals, {applied} applied: {bot:?}"),
                ));
            }
            if s.labels[n] != TRIAGE_LABELS {
                p.push(("triage: labels wrong or added twice", format!("#{n}: {:?}", s.labels[n])));
            }
            let requests = s.posts(&format!("/issues/{n}/labels"));
            if requests != 1 {
                p.push(("triage: labels requested not exactly once", format!("#{n}: {requests} requests")));
            }
        }
        let mut expected_branches = vec!["main".to_string()];
        for n in &ledger.patch {
            let Some(w) = workflow_of("patch", *n).first().map(|w| w.id) else {
                p.push(("patch: no workflow", format!("#{n}")));
                continue;
            };
            let branch = format!("orch/{w}");
            expected_branches.push(branch.clone());
            match s.tips.get(&branch) {
                None => p.push(("patch: no branch", format!("#{n}: {branch}"))),
                Some(Tip { parents, message, files }) => {
                    if parents != std::slice::from_ref(&s.main_sha) || !message.contains(&format!("workflow {w}")) {
                        p.push((
                            "patch: the branch is not one commit on main",
                            format!("{branch}: parents {parents:?}, message {message:?}"),
                        ));
                    }
                    let mut expected = s.tips["main"].files.clone();
                    expected.insert("src/lib.rs".into(), patched_lib_rs());
                    if files != &expected {
                        p.push(("patch: the branch is not main with the patch", format!("{branch}: {files:?}")));
                    }
                }
            }
            let pulls: Vec<i64> = s.pulls.iter().filter(|pr| pr.head == branch).map(|pr| pr.number).collect();
            if pulls.len() != 1 {
                p.push(("patch: not exactly one pull request per branch", format!("{branch}: {pulls:?}")));
            }
            // Applied ones: a POST refused before it was applied (a rate limit) and sent again
            // later is one request.
            let applied = |wanted: &dyn Fn(&str, &serde_json::Value) -> bool| {
                let count = |bodies: &[(String, String, serde_json::Value)]| {
                    bodies.iter().filter(|(m, path, b)| m == "POST" && wanted(path, b)).count()
                };
                count(&s.bodies) - count(&s.refused_bodies)
            };
            let pull_posts = applied(&|path, b| path.ends_with("/pulls") && b["head"] == branch.as_str());
            let ref_posts = applied(&|path, b| path.ends_with("/git/refs") && b["ref"] == format!("refs/heads/{branch}").as_str());
            if (pull_posts, ref_posts) != (1, 1) {
                p.push((
                    "patch: branch or pull request requested not exactly once",
                    format!("{branch}: {ref_posts} ref and {pull_posts} pull requests"),
                ));
            }
            let runs: Vec<&FakeCheckRun> = s
                .check_runs
                .iter()
                .filter(|r| {
                    r.name == "orch/patch"
                        && markers(&r.summary)
                            .iter()
                            .any(|m| actions.get(m).is_some_and(|a| a.key.starts_with(&format!("wf{w}:"))))
                })
                .collect();
            if runs.len() != 1 {
                let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
                p.push(("patch: not exactly one check run", format!("workflow {w}: {ids:?}")));
            }
            // The pull request is announced by the check run, closed at the end: no buttons left,
            // and its "Details" and summary lead to the pull request.
            if let ([run], [pull]) = (runs.as_slice(), pulls.as_slice()) {
                let link = format!("/pull/{pull}");
                let linked = run.details_url.as_deref().is_some_and(|u| u.ends_with(&link)) && run.summary.contains(&format!("[#{pull}]("));
                if !run.actions.is_empty() || !linked {
                    p.push((
                        "patch: the check run is not closed with its pull request's link",
                        format!(
                            "workflow {w}: details {:?}, {} buttons: {:?}",
                            run.details_url,
                            run.actions.len(),
                            run.summary
                        ),
                    ));
                }
            }
        }
        if !ledger.patch.is_empty() {
            let mut branches = s.branches.clone();
            branches.sort();
            expected_branches.sort();
            if branches != expected_branches {
                p.push((
                    "patch: unexpected branches",
                    format!("{branches:?}, expected {expected_branches:?}"),
                ));
            }
        }
    }

    /// Every workflow in a state of SPEC §3, reached by a chain of transitions each allowed by
    /// `next`, recorded once in the audit log too; those the test finished are DONE, one per
    /// issue, each state visited once.
    fn check_workflows(s: &Snapshot, ledger: &Ledger, p: &mut Vec<Problem>) {
        let mut per_issue: BTreeMap<(String, i64), usize> = BTreeMap::new();
        for w in &s.workflows {
            *per_issue.entry((w.kind.clone(), w.number)).or_default() += 1;
            let (Ok(kind), Ok(state)) = (w.kind.parse::<Kind>(), w.state.parse::<State>()) else {
                p.push(("workflow in an unknown kind or state", format!("{w:?}")));
                continue;
            };
            let rows = s.transitions.get(&w.id).cloned().unwrap_or_default();
            let mut current: Option<State> = None;
            for (from, to) in &rows {
                let from: Option<State> = from.as_deref().map(|f| f.parse().unwrap_or(State::Failed));
                let Ok(to) = to.parse::<State>() else {
                    p.push(("transition to an unknown state", format!("workflow {}: {rows:?}", w.id)));
                    break;
                };
                if from != current {
                    p.push(("transition history not a chain", format!("workflow {}: {rows:?}", w.id)));
                    break;
                }
                let legal = match from {
                    None => to == State::START,
                    Some(from) => Step::ALL.into_iter().any(|step| next(kind, from, step) == Ok(to)),
                };
                if !legal {
                    p.push(("illegal transition", format!("workflow {}: {from:?} → {to}: {rows:?}", w.id)));
                }
                current = Some(to);
            }
            if current != Some(state) {
                p.push((
                    "workflow state not where its history ends",
                    format!("workflow {} in {state}: {rows:?}", w.id),
                ));
            }
            if s.audit_transitions.get(&w.id).cloned().unwrap_or_default() != rows {
                p.push((
                    "audit log and transition history differ",
                    format!("workflow {}: {rows:?} vs {:?}", w.id, s.audit_transitions.get(&w.id)),
                ));
            }
            let expected = match kind {
                Kind::Triage => ledger.triage.contains(&w.number),
                Kind::Patch => ledger.patch.contains(&w.number),
                Kind::QaPlan => false,
            };
            if expected {
                let mut seen = BTreeSet::new();
                if state != State::Done || !rows.iter().all(|(_, to)| seen.insert(to.clone())) {
                    p.push((
                        "finished workflow not DONE by one path",
                        format!("workflow {} in {state}: {rows:?}", w.id),
                    ));
                }
            }
        }
        for (kind, set) in [("triage", &ledger.triage), ("patch", &ledger.patch)] {
            for n in set {
                let count = per_issue.get(&(kind.to_string(), *n)).copied().unwrap_or(0);
                if count != 1 {
                    p.push(("not exactly one workflow per issue", format!("{kind} #{n}: {count}")));
                }
            }
        }
    }

    /// The problems grouped by kind, a few examples each.
    pub fn report(problems: &[Problem]) -> String {
        let mut groups: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
        for (what, detail) in problems {
            groups.entry(what).or_default().push(detail);
        }
        let mut out = String::new();
        for (what, list) in &groups {
            out.push_str(&format!("\n{} × {what}, e.g.\n", list.len()));
            for d in list.iter().take(3) {
                out.push_str(&format!("    {}\n", d.chars().take(600).collect::<String>()));
            }
        }
        out
    }
}
