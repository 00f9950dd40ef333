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
/// A patch costs 12 (the issue's target), measured by this test's patch, which changes the one
/// file its instruction names: 9 writes (the 👀 of `/orch propose` and of `/orch approve`, the
/// proposal comment, the `orch/patch` check run, the tree with the new text inline, the commit,
/// the branch, the pull request, and the check run's update that removes its buttons and links
/// the pull request; the issue hears of the pull request from GitHub itself, whose body says
/// "Closes #N") and 3 reads (the base commit at proposal and the named file at that commit,
/// which the diff reuses; the default branch's tip with its tree at apply). The branch is created
/// without looking for it first; only a refusal ("Reference already exists") or a commit an
/// earlier run recorded makes orch read it and check it.
///
/// A patch of n files costs 11 + (files the instruction names, at most 5, each read once) +
/// (files it changes that the instruction does not name, each read once at the base for the
/// diff): the tree is one request whatever n is. A base that moved between proposal and apply
/// adds 2 reads per changed file (the conflict check). The bound holds what is measured, so that
/// spending more fails.
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
        // Not counted by GitHub: the App's own endpoints, and the tarball's download from
        // codeload (the API request that redirects there is).
        .filter(|(_, p)| !(p == "/app" || p.starts_with("/app/") || p.ends_with("/installation") || p.starts_with("/_codeload/")))
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
        let mut issue = o.open_issue(
            &format!("Crash on start {round}"),
            "It crashes when the config is empty.",
            "dev-kim",
        );
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
        o.deliver(
            "pull_request",
            &payloads::pull_request("labeled", &o.repo, &pr, Some("orch:qa"), "mara"),
        )
        .await;
        let id = newest_workflow(o, before).await;
        o.wait_state(id, "DONE").await;
        o.wait_idle(10).await;
        if round == 1 {
            out.push(("qa_plan", o.fake.state.rate_used() - used, counted_since(o, log)));
        }

        // Patch: `/orch propose` → proposal (comment and check run) → `/orch approve` → tree,
        // commit, branch, pull request, and the check run closed with the pull request's link.
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
    let Some(o) = orch(backend, &[("ORCH_REACTION_POLL_MS", "3600000")]).await else {
        return;
    };
    let costs = costs(&o).await;
    for (kind, used, requests) in &costs {
        eprintln!("{kind}: {used} rate-limited requests\n  {}", requests.join("\n  "));
        assert_eq!(
            *used,
            requests.len() as u64,
            "{kind}: the fake's count and its log agree: {requests:#?}"
        );
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

/// What a patch of several files costs (the bound above is for a patch of one): the model
/// changes three files, of which the instruction names one. The tree is still one request, and
/// so is the repository: the tarball of the base commit holds every file the model is shown and
/// every file the diff needs (a file it does not list does not exist there), so no file is read
/// on its own: 11 + the tarball.
async fn a_patch_of_three_files_costs_no_read_per_file_it_changes(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let patch = serde_json::json!({ "task": "patch", "answer": {
        "title": "Answer 42", "summary": "Returns 42, says so and tests it.",
        "files": [
            { "path": "src/lib.rs", "action": "update", "content": "pub fn answer() -> u32 { 42 }\n" },
            { "path": "README.md", "action": "update", "content": "# widgets\n\nThe answer is 42.\n" },
            { "path": "tests/answer.rs", "action": "create", "content": "#[test]\nfn answer() { assert_eq!(widgets::answer(), 42); }\n" },
        ] } });
    // One answer for the round that warms the caches, one for the round measured.
    let script = dir.path().join("script.json");
    std::fs::write(&script, serde_json::to_vec(&serde_json::json!([patch, patch])).unwrap()).unwrap();
    let Some(o) = orch(
        backend,
        &[
            ("ORCH_REACTION_POLL_MS", "3600000"),
            ("ORCH_FAKE_LLM_SCRIPT", script.to_str().unwrap()),
        ],
    )
    .await
    else {
        return;
    };
    let mut cost = (0, Vec::new());
    for round in 0..2 {
        let (used, log) = (o.fake.state.rate_used(), o.fake.state.log().len());
        let issue = o.open_issue(&format!("Off by one {round}"), "answer() should be 42", "dev-kim");
        let before = o.workflow_states().await.len();
        o.comment(&issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await;
        let id = newest_workflow(&o, before).await;
        o.wait_state(id, "WAITING_USER_APPROVAL").await;
        o.comment(&issue, "lee", "/orch approve").await;
        o.wait_state(id, "DONE").await;
        o.wait_idle(10).await;
        let files = o.fake.state.files_at(REPO, &format!("orch/{id}")).unwrap();
        assert_eq!(
            files["tests/answer.rs"],
            "#[test]\nfn answer() { assert_eq!(widgets::answer(), 42); }\n"
        );
        cost = (o.fake.state.rate_used() - used, counted_since(&o, log));
    }
    let (used, requests) = cost;
    eprintln!("patch of 3 files: {used} rate-limited requests\n  {}", requests.join("\n  "));
    assert_eq!(used, requests.len() as u64, "{requests:#?}");
    assert_eq!(used, 11 + 1, "{requests:#?}");
    let reads: Vec<&String> = requests.iter().filter(|r| r.starts_with("GET ")).collect();
    assert_eq!(reads.len(), 3, "the base's ref, the tarball, the branch at apply: {reads:#?}");
    assert!(!requests.iter().any(|r| r.contains("/contents/")), "{requests:#?}");
    assert_eq!(requests.iter().filter(|r| r.ends_with("/git/trees")).count(), 1, "{requests:#?}");
}

/// The reactions polls of `comment` the fake answered (200 or 304), and the 304s among them.
fn polls_of(o: &Orch, comment: i64) -> (usize, usize) {
    let path = format!("/repos/{REPO}/issues/comments/{comment}/reactions");
    let all = o.fake.state.log().iter().filter(|(m, p)| m == "GET" && *p == path).count();
    let not_modified = o.fake.state.not_modified().iter().filter(|(_, p)| *p == path).count();
    (all, not_modified)
}

/// A proposal waiting while nobody reacts spends nothing: the clock is scaled 300× (the first
/// poll interval, 30 s in production, is 100 ms), so 12 s of waiting is an hour of polling on
/// the production schedule. Only the first read of the proposal's reactions is counted (it has
/// no ETag yet); every later poll is a 304, and the policy is not read at all.
async fn a_waiting_proposal_spends_nothing_in_an_hour_of_polling(backend: Backend) {
    let Some(o) = orch(backend, &[("ORCH_REACTION_POLL_MS", "100")]).await else {
        return;
    };
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let proposal = o.fake.state.bot_comments(REPO, issue.number)[0].id;
    o.eventually_sync("the first poll of the proposal's reactions", WAIT, || {
        (polls_of(&o, proposal).0 >= 1).then_some(())
    })
    .await;
    let (used, log) = (o.fake.state.rate_used(), o.fake.state.log().len());
    let (polls_before, _) = polls_of(&o, proposal);
    // One scaled hour.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    let counted = counted_since(&o, log);
    assert_eq!(o.fake.state.rate_used() - used, 0, "counted while waiting: {counted:#?}");
    let (polls, not_modified) = polls_of(&o, proposal);
    let hour = polls - polls_before;
    // The schedule (30 s for 5 minutes, then a tenth of the age) polls about 35 times in the
    // first hour; the bounds leave room for a slow machine without letting polling stop or run
    // at the first interval throughout (which would be 120).
    assert!((10..=60).contains(&hour), "{hour} polls in the hour");
    assert_eq!(not_modified, polls - 1, "every poll after the first is a 304");
    let policy_reads = o
        .fake
        .state
        .log_from(log)
        .iter()
        .filter(|(_, p)| p.ends_with("/contents/.github/orch.yml"))
        .count();
    assert_eq!(policy_reads, 0, "polling never reads the policy");
    // A vote still gets through at once: commands do not wait for a poll.
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
}

/// After `approvals.expire_days` (a day is 1.5 s here) a proposal nobody decided expires: the
/// issue gets one note, the workflow waits for a human, and its reactions are no longer polled.
async fn an_unanswered_proposal_expires_once_and_stops_polling(backend: Backend) {
    let Some(o) = Orch::with_env(
        backend,
        "phase: 4\napprovals: {expire_days: 1}\n",
        &[("ORCH_REACTION_POLL_MS", "100"), ("ORCH_PROPOSAL_DAY_MS", "1500")],
    )
    .await
    else {
        return;
    };
    o.user("mara", "maintain");
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "NEEDS_HUMAN").await;
    let proposal = o.fake.state.bot_comments(REPO, issue.number)[0].id;
    let notes: Vec<String> = o.bot_comments(issue.number).into_iter().filter(|c| c.contains("expired")).collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let note = notes[0].split("\n\n<!--").next().unwrap_or_default();
    assert_eq!(
        note,
        format!("Workflow {id}'s proposal expired: it waited 1 day without a decision (`approvals.expire_days`), so nothing was applied and orch no longer watches it for approvals. `/orch retry` makes a new proposal; `/orch cancel` closes the workflow.")
    );
    let last = o.transitions(id).await.pop().unwrap();
    assert_eq!(
        (last.0.as_deref(), last.1.as_str(), last.2.as_str()),
        (Some("WAITING_USER_APPROVAL"), "NEEDS_HUMAN", "orch")
    );
    let (polls, _) = polls_of(&o, proposal);
    assert!(polls >= 1, "it was polled while it waited");
    o.wait_idle(10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(polls_of(&o, proposal).0, polls, "no poll after the expiry");
    assert_eq!(o.bot_comments(issue.number).iter().filter(|c| c.contains("expired")).count(), 1);
    // `/orch retry` makes a new proposal from there.
    o.comment(&issue, "mara", "/orch retry").await;
    o.eventually("a new proposal", WAIT, || async {
        (o.bot_comments(issue.number)
            .iter()
            .filter(|c| c.contains("triage proposal"))
            .count()
            == 2)
            .then_some(())
    })
    .await;
}

both_backends!(
    each_workflow_kind_stays_within_its_request_budget,
    a_patch_of_three_files_costs_no_read_per_file_it_changes,
    a_waiting_proposal_spends_nothing_in_an_hour_of_polling,
    an_unanswered_proposal_expires_once_and_stops_polling,
);
