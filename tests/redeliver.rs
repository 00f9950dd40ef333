//! Missed deliveries (SPEC §11) and the operator commands `orch doctor` and `orch replay`
//! (SPEC §14), against the fake GitHub and a running orch from the end-to-end harness.
//!
//! The fake keeps the App's hook deliveries: a test records an attempt that orch's endpoint
//! "answered" with some status, and a redelivery request makes the fake post the stored payload,
//! signed with the harness secret and with the same GUID, to orch's `/webhook`.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::{Backend, SECRET};
use e2e::{payloads, Orch, REPO, WAIT};
use orch::github::redeliver::{self, Report};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

const POLICY: &str = "phase: 1\n";

/// A plain comment (no command): processed without any GitHub write.
fn comment_payload(orch: &Orch, text: &str) -> serde_json::Value {
    let issue = orch.open_issue("Crash on empty config", "It panics.", "dev-lee");
    let id = orch.fake.state.user_comment(REPO, issue.number, "mara", "User", text);
    payloads::issue_comment_created(&orch.repo, &issue, id, text, "mara", "User")
}

/// How many times orch has listed the App's hook deliveries so far.
fn listings(orch: &Orch) -> usize {
    orch.fake
        .state
        .log()
        .iter()
        .filter(|(m, p)| m == "GET" && p == "/app/hook/deliveries")
        .count()
}

async fn missed_deliveries_are_redelivered_once(backend: Backend) {
    let Some(mut orch) = Orch::with_env(backend, POLICY, &[("ORCH_RECONCILE_SECS", "1")]).await else {
        return;
    };
    orch.fake.state.set_webhook_target(&orch.base, SECRET);

    // Orch's answer to G2 was lost on the way back: GitHub counts it failed, orch has it.
    let stored_payload = comment_payload(&orch, "Seen on 0.3 too.");
    let stored = orch.next_guid();
    let (status, _) = orch.send_with_guid("issue_comment", &stored, &stored_payload).await;
    assert_eq!(status, 202);
    orch.wait_processed(&stored).await;
    orch.fake
        .state
        .record_hook_delivery_with_payload(&stored, "issue_comment", Some("created"), 502, stored_payload);

    // G3 failed, then someone redelivered it successfully (orch's database was restored since).
    let redone_payload = comment_payload(&orch, "And on 0.4.");
    let redone = orch.next_guid();
    orch.fake
        .state
        .record_hook_attempts(&redone, "issue_comment", Some("created"), redone_payload, &[502, 202]);

    // G1 never reached orch: GitHub's proxy answered 502.
    let missed_payload = comment_payload(&orch, "I can reproduce this.");
    let missed = orch.next_guid();
    orch.fake
        .state
        .record_hook_delivery_with_payload(&missed, "issue_comment", Some("created"), 502, missed_payload);

    let d = orch.wait_processed(&missed).await;
    assert_eq!((d.event.as_str(), d.process_count), ("issue_comment", 1));
    orch.eventually_sync("the redelivery is recorded as an attempt", WAIT, || {
        (orch.fake.state.hook_attempts(&missed).len() == 2).then_some(())
    })
    .await;
    let attempts = orch.fake.state.hook_attempts(&missed);
    assert_eq!(
        attempts.iter().map(|a| (a.redelivery, a.status_code)).collect::<Vec<_>>(),
        vec![(false, 502), (true, 202)]
    );

    // Two more runs: nothing is asked again (G1 now succeeded, G2 stored, G3 succeeded).
    let seen = listings(&orch);
    orch.eventually_sync("two more reconciliation runs", WAIT, || (listings(&orch) >= seen + 2).then_some(()))
        .await;
    assert_eq!(orch.fake.state.redelivery_requests(), vec![missed.clone()]);
    assert_eq!(
        orch.fake.state.hook_attempts(&stored).len(),
        1,
        "a stored delivery is not redelivered"
    );
    assert_eq!(
        orch.fake.state.hook_attempts(&redone).len(),
        2,
        "a redelivered one is not asked again"
    );
    assert_eq!(orch.delivery(&stored).await.unwrap().process_count, 1);
    assert!(orch.delivery(&redone).await.is_none());

    // The request is audited as a delivery decision by orch.
    let filter = orch::audit::Filter {
        kind: Some("delivery".into()),
        actor: Some("orch".into()),
        subject: Some(missed.clone()),
    };
    // (The worker's "processed" decision on the redelivered delivery is audited too.)
    let records: Vec<_> = orch::audit::page(orch.store.pool(), 0, 100, &filter)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.details["decision"] == "redelivery_requested")
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].details["status_code"], 502);
    assert!(matches!(
        orch::audit::verify(orch.store.pool()).await.unwrap(),
        orch::audit::Verdict::Intact { .. }
    ));
    orch.stop().await;
}

/// A client for the fake as the configured App, the way orch builds one.
fn app_client(orch: &Orch) -> orch::github::client::GithubClient {
    use orch::github::{auth::AppCredentials, auth::TokenCache, client::GithubClient, retry::RetryPolicy};
    let pem = std::fs::read(&orch.env()["ORCH_GITHUB_PRIVATE_KEY_PATH"]).unwrap();
    let credentials = AppCredentials::from_pem(e2e::APP_ID, &pem, "ORCH_GITHUB_PRIVATE_KEY_PATH").unwrap();
    let http = reqwest::Client::new();
    let policy = RetryPolicy::default();
    let tokens = std::sync::Arc::new(TokenCache::new(credentials, &orch.fake.url(), http.clone(), policy.clone()));
    GithubClient::new(http, &orch.fake.url(), tokens, policy)
}

async fn reconcile_reads_every_page_and_reports(backend: Backend) {
    // The loop is off: the test runs reconciliations itself.
    let Some(mut orch) = Orch::with_env(backend, POLICY, &[("ORCH_RECONCILE_SECS", "0")]).await else {
        return;
    };
    let client = app_client(&orch);
    assert_eq!(client.app_info().await.unwrap().id, e2e::APP_ID as i64);

    let stored = orch.deliver("ping", &payloads::ping(e2e::APP_ID)).await;
    orch.fake.state.record_hook_delivery(&stored, "ping", None, 500);
    orch.fake.state.record_hook_delivery("ok-1", "issues", Some("opened"), 202);
    // 130 missed deliveries: two pages of GitHub's 100. No webhook target: the redeliveries fail.
    let missed: Vec<String> = (0..130).map(|n| format!("missed-{n}")).collect();
    for guid in &missed {
        orch.fake.state.record_hook_delivery(guid, "issues", Some("opened"), 502);
    }
    // A GUID that failed twice is asked once.
    orch.fake.state.record_hook_redelivery("missed-7", 504).unwrap();

    let report = redeliver::reconcile(&client, &orch.store, redeliver::window_start()).await.unwrap();
    let mut asked = report.redelivered.clone();
    asked.sort();
    let mut expected = missed.clone();
    expected.sort();
    assert_eq!(asked, expected);
    assert_eq!(
        Report {
            redelivered: vec![],
            ..report.clone()
        },
        Report {
            seen: 133,
            failed: 131,
            redelivered: vec![],
            already_stored: 1,
            errors: 0,
        }
    );
    // Newest first, as GitHub lists them.
    assert_eq!(report.redelivered.first().map(String::as_str), Some("missed-7"));
    assert_eq!(orch.fake.state.redelivery_requests().len(), 130);
    let pages = orch
        .fake
        .state
        .log()
        .iter()
        .filter(|(m, p)| m == "GET" && p == "/app/hook/deliveries")
        .count();
    assert_eq!(pages, 2);

    // Deliveries older than `since` are not looked at.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let report = redeliver::reconcile(&client, &orch.store, later).await.unwrap();
    assert_eq!(report, Report::default());
    orch.stop().await;
}

both_backends!(missed_deliveries_are_redelivered_once, reconcile_reads_every_page_and_reports);

/// Runs the `orch` binary with exactly `env` (and PATH) off the async runtime, so that servers
/// of the test keep answering it. Returns (success, stdout, stderr).
async fn orch_cli(args: &[&str], env: HashMap<String, String>) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_orch"))
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_once(':').is_some_and(|(head, _)| head.ends_with(what)))
        .unwrap_or_else(|| panic!("no {what} line in:\n{out}"))
}

/// Healthy without a GitHub App: a migrated SQLite database, a webhook secret and the fake model.
/// The App is reported as not configured (skip), which is not a failure: orch serves without one.
#[tokio::test]
async fn doctor_passes_on_a_migrated_sqlite_database_without_an_app() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("orch.db").display());
    let env = env_of(&[("ORCH_DATABASE_URL", &db), ("ORCH_WEBHOOK_SECRET", "s3cret-value")]);
    let (ok, _, err) = orch_cli(&["migrate"], env.clone()).await;
    assert!(ok, "{err}");
    let (ok, out, err) = orch_cli(&["doctor"], env).await;
    assert!(ok, "doctor failed:\n{out}\n{err}");
    for what in ["configuration", "webhook secret", "database", "audit chain", "model provider"] {
        assert!(line(&out, what).starts_with("ok"), "{what}:\n{out}");
    }
    assert!(line(&out, "github app").starts_with("skip"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        !out.contains("s3cret-value") && !err.contains("s3cret-value"),
        "a secret was printed"
    );
}

#[tokio::test]
async fn doctor_names_what_is_missing_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("never.db");
    let db = format!("sqlite://{}", file.display());
    let env = env_of(&[("ORCH_DATABASE_URL", &db), ("ORCH_LLM_PROVIDER", "anthropic")]);
    let (ok, out, _) = orch_cli(&["doctor"], env).await;
    assert!(!ok, "{out}");
    assert!(
        line(&out, "webhook secret").starts_with("FAIL") && out.contains("ORCH_WEBHOOK_SECRET"),
        "{out}"
    );
    assert!(line(&out, "database").starts_with("FAIL") && out.contains("orch migrate"), "{out}");
    assert!(
        line(&out, "model provider").starts_with("FAIL") && out.contains("ANTHROPIC_API_KEY"),
        "{out}"
    );
    assert!(!file.exists(), "doctor created the database file");

    // A configuration that does not load is one FAIL naming the variable.
    let (ok, out, _) = orch_cli(&["doctor"], env_of(&[("ORCH_BIND", "nowhere")])).await;
    assert!(!ok);
    assert!(
        line(&out, "configuration").starts_with("FAIL") && out.contains("ORCH_BIND"),
        "{out}"
    );
}

/// With a GitHub App configured, doctor asks `GET /app` with the JWT; a wrong App id fails there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_app_against_github() {
    let mut orch = Orch::start(Backend::Sqlite, POLICY).await.expect("SQLite is always available");
    let env = orch.env().clone();
    let (ok, out, err) = orch_cli(&["doctor"], env.clone()).await;
    assert!(ok, "doctor failed:\n{out}\n{err}");
    assert!(line(&out, "github app key").starts_with("ok"), "{out}");
    let github = line(&out, "github");
    assert!(github.starts_with("ok") && github.contains("GET /app"), "{out}");

    let mut wrong = env.clone();
    wrong.insert("ORCH_GITHUB_APP_ID".into(), "999".into());
    let (ok, out, _) = orch_cli(&["doctor"], wrong).await;
    assert!(!ok, "{out}");
    assert!(line(&out, "github").starts_with("FAIL"), "{out}");

    let mut bad_key = env;
    let bad = orch.db.dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    bad_key.insert("ORCH_GITHUB_PRIVATE_KEY_PATH".into(), bad.display().to_string());
    let (ok, out, _) = orch_cli(&["doctor"], bad_key).await;
    assert!(!ok, "{out}");
    assert!(
        line(&out, "github app key").starts_with("FAIL") && out.contains("ORCH_GITHUB_PRIVATE_KEY_PATH"),
        "{out}"
    );
    orch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_a_signed_payload_to_a_running_orch() {
    let mut orch = Orch::start(Backend::Sqlite, POLICY).await.expect("SQLite is always available");
    let payload = comment_payload(&orch, "Replayed by hand.");
    let file = orch.db.dir.path().join("payload.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&payload).unwrap()).unwrap();
    let file = file.display().to_string();
    let secrets = orch.env()["ORCH_WEBHOOK_SECRET"].clone();
    let addr = orch.server().addr.to_string();
    // The default URL is http://<ORCH_BIND>/webhook.
    let env = env_of(&[("ORCH_WEBHOOK_SECRET", &secrets), ("ORCH_BIND", &addr)]);

    let guid = orch.next_guid();
    let (ok, out, err) = orch_cli(&["replay", &file, "--event", "issue_comment", "--guid", &guid], env.clone()).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("HTTP 202") && out.contains("queued") && out.contains(&guid), "{out}");
    let d = orch.wait_processed(&guid).await;
    assert_eq!((d.event.as_str(), d.action.as_deref()), ("issue_comment", Some("created")));

    // The same GUID again (to a base URL): acknowledged, not processed twice.
    let (ok, out, _) = orch_cli(
        &["replay", &file, "--event", "issue_comment", "--guid", &guid, "--url", &orch.base],
        env.clone(),
    )
    .await;
    assert!(ok && out.contains("HTTP 200") && out.contains("duplicate"), "{out}");
    orch.wait_idle(10).await;
    assert_eq!(orch.delivery(&guid).await.unwrap().process_count, 1);

    // Without a GUID, a fresh one is made.
    let (ok, out, _) = orch_cli(&["replay", &file, "--event", "issue_comment"], env).await;
    assert!(ok && out.contains("replay-"), "{out}");

    // Signed with a secret orch does not accept: 401, exit 1, nothing stored.
    let wrong = env_of(&[("ORCH_WEBHOOK_SECRET", "not-the-secret"), ("ORCH_BIND", &addr)]);
    let (ok, out, err) = orch_cli(&["replay", &file, "--event", "issue_comment", "--guid", "wrong-1"], wrong).await;
    assert!(!ok && out.contains("HTTP 401"), "{out}\n{err}");
    assert!(orch.delivery("wrong-1").await.is_none());

    // Without a secret, replay refuses before sending.
    let (ok, _, err) = orch_cli(&["replay", &file, "--event", "issue_comment"], env_of(&[("ORCH_BIND", &addr)])).await;
    assert!(!ok && err.contains("ORCH_WEBHOOK_SECRET"), "{err}");
    orch.stop().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn the_reconciliation_interval_is_configurable_and_can_be_turned_off() {
    let config = |v: Option<&str>| {
        let mut env = env_of(&[]);
        if let Some(v) = v {
            env.insert("ORCH_RECONCILE_SECS".into(), v.into());
        }
        orch::config::Config::from_map(&env)
    };
    assert_eq!(config(None).unwrap().reconcile_every, Duration::from_secs(600));
    assert_eq!(config(Some("0")).unwrap().reconcile_every, Duration::ZERO);
    assert_eq!(config(Some("5")).unwrap().reconcile_every, Duration::from_secs(5));
    let err = config(Some("soon")).unwrap_err().to_string();
    assert!(err.starts_with("ORCH_RECONCILE_SECS:"), "{err}");
}
