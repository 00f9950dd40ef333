//! The dashboard in headless Chromium: `tests/browser/dashboard.mjs` logs in, approves a
//! waiting triage workflow from its page, and checks the CSRF and session refusals; then the
//! store and the fake GitHub must show the result. Needs `/usr/bin/chromium`, node and
//! `tests/browser/node_modules` (`npm ci --prefix tests/browser`): without them the test is
//! skipped, except in CI (`CI=true`), where it fails.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{Orch, REPO};
use std::path::Path;
use std::process::Command;

const TOKEN: &str = "dashboard-test-token";

fn missing_tools(root: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("/usr/bin/chromium (apt-get install chromium)".to_string());
    }
    if Command::new("node")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("node".to_string());
    }
    if !root.join("tests/browser/node_modules/playwright-core").exists() {
        missing.push("tests/browser/node_modules (npm ci --prefix tests/browser)".to_string());
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_from_the_dashboard_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let missing = missing_tools(root);
    if !missing.is_empty() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the browser test cannot run in CI: missing {}", missing.join(", "));
        }
        eprintln!("SKIPPED: the dashboard browser test needs {}", missing.join(", "));
        return;
    }
    let Some(mut o) = Orch::with_env(Backend::Sqlite, "phase: 4\n", &[("ORCH_ADMIN_TOKEN", TOKEN)]).await else {
        return;
    };
    o.user("mara", "maintain");
    // The operator has no GitHub permission at all: the admin token is its authority, and
    // Gate 3 does not re-check it against GitHub.
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;

    let shots = root.join("target/screenshots");
    std::fs::create_dir_all(&shots).expect("the screenshot directory");
    let script = root.join("tests/browser/dashboard.mjs");
    let (base, id_arg) = (o.base.clone(), id.to_string());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .arg(&base)
            .arg(TOKEN)
            .arg(&id_arg)
            .arg(&shots)
            .output()
            .expect("node runs")
    })
    .await
    .expect("the browser script's thread");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser script failed:\n{stdout}\n{stderr}\n{}",
        o.diagnostics().await
    );

    assert_eq!(o.state_of(id).await, "DONE");
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["orch:triage".to_string(), "bug".into(), "priority:p1".into()]
    );
    let approved_by = o
        .transitions(id)
        .await
        .into_iter()
        .find(|(_, to, _)| to == "APPROVED")
        .map(|(_, _, a)| a);
    // The vote is the logged-in operator's: the token is ORCH_ADMIN_TOKEN, the operator `admin`.
    assert_eq!(approved_by.as_deref(), Some("operator:admin"));
    o.stop().await;
}
