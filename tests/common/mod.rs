//! Shared test harness: a fresh database per test on SQLite or PostgreSQL, an in-process orch
//! with a known webhook secret, and signed requests over real HTTP.
#![allow(dead_code)]

use orch::app::Server;
use orch::config::Config;
use orch::store::{Store, SyncMode};
use orch::webhook::signature::sign;
use std::collections::HashMap;

pub const SECRET: &str = "test-secret-new";
pub const OLD_SECRET: &str = "test-secret-old";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

fn admin_url() -> String {
    std::env::var("ORCH_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).unwrap();
    hex::encode(b)
}

impl TestDb {
    /// A fresh database, or None when Postgres is unreachable outside CI. In CI (`CI=true`) an
    /// unreachable Postgres fails the test: the Postgres run must never be skipped silently.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!("sqlite://{}", dir.path().join("orch.db").display()),
                dir,
                pg_name: None,
            }),
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = admin_url();
                let mut conn = match sqlx::PgConnection::connect(&admin).await {
                    Ok(c) => c,
                    Err(e) => {
                        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                            panic!("PostgreSQL is unreachable at {admin} in CI: {e}");
                        }
                        eprintln!("SKIPPED: PostgreSQL unreachable at {admin}: {e}");
                        return None;
                    }
                };
                let name = format!("orch_test_{}", random_suffix());
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
                Some(TestDb {
                    url: format!("{base}/{name}"),
                    dir,
                    pg_name: Some(name),
                })
            }
        }
    }

    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, SyncMode::Full).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    pub fn env(&self) -> HashMap<String, String> {
        [
            ("ORCH_BIND", "127.0.0.1:0".to_string()),
            ("ORCH_DATABASE_URL", self.url.clone()),
            ("ORCH_WEBHOOK_SECRET", format!("{OLD_SECRET},{SECRET}")),
            ("ORCH_PAYLOAD_DIR", self.dir.path().join("payloads").display().to_string()),
            ("ORCH_GITHUB_DRY_RUN", "true".into()),
            ("ORCH_JOB_LEASE_SECS", "2".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub async fn server(&self) -> Server {
        Server::start(&Config::from_map(&self.env()).unwrap()).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Dropped on a separate thread with its own runtime: Drop cannot await.
            let admin = admin_url();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Generates one `#[tokio::test]` per backend for an `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::common::Backend::Postgres).await }
            )*
        }
    };
}

pub struct Hook<'a> {
    pub event: Option<&'a str>,
    pub guid: Option<String>,
    pub signature: Option<String>,
    pub body: Vec<u8>,
}

impl<'a> Hook<'a> {
    /// A correctly signed delivery.
    pub fn signed(event: &'a str, guid: &str, body: &[u8]) -> Self {
        Hook {
            event: Some(event),
            guid: Some(guid.to_string()),
            signature: Some(sign(SECRET, body)),
            body: body.to_vec(),
        }
    }

    pub async fn send(self, client: &reqwest::Client, base: &str) -> (u16, serde_json::Value) {
        let mut req = client.post(format!("{base}/webhook")).header("content-type", "application/json");
        if let Some(e) = self.event {
            req = req.header("x-github-event", e);
        }
        if let Some(g) = self.guid {
            req = req.header("x-github-delivery", g);
        }
        if let Some(s) = self.signature {
            req = req.header("x-hub-signature-256", s);
        }
        let r = req.body(self.body).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer {status} is not JSON: {text:?}"));
        (status, json)
    }
}

/// A small valid `issue_comment.created` body.
pub fn comment_body(n: u64, text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "action": "created",
        "issue": {"number": n, "title": "An issue", "body": "text", "user": {"login": "dev", "id": 2, "type": "User"}, "labels": []},
        "comment": {"id": 1000 + n, "body": text, "user": {"login": "maintainer", "id": 3, "type": "User"}},
        "repository": {"id": 10, "full_name": "acme/widgets", "default_branch": "main", "private": false},
        "sender": {"login": "maintainer", "id": 3, "type": "User"},
        "installation": {"id": 77}
    }))
    .unwrap()
}

/// Waits until no job is queued or running (at most `secs`).
pub async fn drain(store: &Store, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let depth = orch::store::jobs::depth(store.pool()).await.unwrap();
        if depth == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{depth} jobs still pending after {secs}s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Posts signed, unique `issue_comment` deliveries (`{prefix}-{n}`) back to back until the server
/// stops answering; returns the GUIDs answered 2xx. Any other answer fails the test.
pub async fn post_until_refused(client: &reqwest::Client, base: &str, prefix: &str) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0u64.. {
        let guid = format!("{prefix}-{i}");
        let body = comment_body(i, "/orch status");
        let r = client
            .post(format!("{base}/webhook"))
            .header("x-github-event", "issue_comment")
            .header("x-github-delivery", &guid)
            .header("x-hub-signature-256", sign(SECRET, &body))
            .body(body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => acked.push(guid),
            Ok(r) => panic!("unexpected answer {} for {guid}", r.status()),
            Err(_) => break,
        }
    }
    acked
}

/// A fresh RSA key pair for a test App, as (private PEM, public PEM), made by openssl in `dir`.
pub fn key_pair(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    use std::process::Command;
    let private = dir.join("app.pem");
    let public = dir.join("app.pub.pem");
    assert!(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success());
    let pubout = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(pubout.status.success());
    (std::fs::read(private).unwrap(), std::fs::read(public).unwrap())
}

/// GitHub's REST description (`fixtures/github/github-rest-subset.json`, or
/// `ORCH_REFERENCE_REST`). It is part of the repository: its absence fails the test.
pub fn rest_description() -> Option<orch::github::rest_schema::RestDescription> {
    let path = std::env::var("ORCH_REFERENCE_REST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/github/github-rest-subset.json"));
    assert!(path.exists(), "GitHub's REST description is missing at {}", path.display());
    Some(orch::github::rest_schema::RestDescription::load(&path).expect("GitHub's REST description loads"))
}

/// Makes `fake` refuse (422) and remember every request body GitHub's description refuses.
pub fn check_bodies(fake: &orch::github::fake::FakeState) {
    if let Some(description) = rest_description() {
        fake.check_bodies_against(description);
    }
}

/// Fails the test, unless it is failing already, when orch sent GitHub a body its description
/// refuses: every end-to-end test checks every body it made orch send.
pub fn assert_bodies_were_valid(fake: &orch::github::fake::FakeState) {
    if std::thread::panicking() {
        return;
    }
    let violations = fake.body_violations();
    assert!(
        violations.is_empty(),
        "orch sent request bodies GitHub's REST description refuses:\n{}",
        violations.join("\n")
    );
}

/// The harnesses' HTTP client: a request to orch that never gets an answer fails the test
/// after 30 s with the request named, rather than hanging it.
pub fn test_http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}
