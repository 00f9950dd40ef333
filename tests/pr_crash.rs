//! Crash safety of the patch → pull request path (SPEC §8, §11, §16): `orch serve` runs as a real
//! process against an in-process fake GitHub. A patch workflow is proposed and approved, and one
//! of the requests that turn the approved patch into a pull request is held by the fake — the
//! tree (which carries the patch's texts inline), the commit, the branch (ref), the pull request
//! or the update that closes the proposal's check run and links the pull request — either before
//! GitHub applied it (`Delay`: the write never happened) or after (`ApplyThenStall`: the write
//! happened, its answer was lost). The process is killed with SIGKILL right then and started
//! again. The workflow must then finish exactly once: one branch `orch/<workflow-id>` holding one
//! commit on top of main with exactly the patch, one pull request for it, the check run closed
//! and linking it, no comment about it on the issue, no hidden `<!-- orch:action:N -->` marker
//! twice on the issue, and a legal history ending `APPROVED → APPLYING_CHANGES → PR_CREATED → DONE`.
//! The fake stamps every commit it is asked to make, as GitHub does with the time, so a commit
//! made again after a kill is another commit: the branch a killed run created must be found,
//! not taken for someone else's.
//!
//! Every kill point runs on both backends: each test takes about 3 s, or about 11 s where the
//! killed process held the action being made (the pull request, the check run's update), whose
//! lease runs out after 10 s.

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/rig.rs"]
mod rig;

use axum::http::Method;
use common::Backend;
use e2e::{payloads, IssueSpec, INSTALLATION, LIB_RS, README, REPO};
use orch::github::fake::{Fault, FaultKind, APP_LOGIN};
use orch::store::deliveries;
use orch::workflow::state::{next, Kind, State, Step};
use rig::{Rig, POLICY};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Long enough that the process is always killed while GitHub holds the request.
const HOLD: Duration = Duration::from_secs(60);
const INSTRUCTION: &str = "/orch propose fix `src/lib.rs` to return 42";

fn patched_lib_rs() -> String {
    format!("{LIB_RS}// orch: fix `src/lib.rs` to return 42\n")
}

/// The request of the pull request path that GitHub holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Tree,
    Commit,
    Ref,
    Pull,
    /// The update of the proposal's check run that ends it and links the pull request.
    CheckRunClosed,
}

impl Request {
    fn method(self) -> Method {
        match self {
            Request::CheckRunClosed => Method::PATCH,
            _ => Method::POST,
        }
    }

    /// The end of the request's path (`run`: the proposal's check run).
    fn path(self, run: i64) -> String {
        match self {
            Request::Tree => "/git/trees".into(),
            Request::Commit => "/git/commits".into(),
            Request::Ref => "/git/refs".into(),
            Request::Pull => "/pulls".into(),
            Request::CheckRunClosed => format!("/check-runs/{run}"),
        }
    }

    /// Whether, after a lost answer, orch finds the write instead of making it again: the branch
    /// is looked up when an earlier run recorded a commit (recorded before the branch is asked
    /// for), the pull request by its branch. Trees are content-addressed and commits unreferenced
    /// until the branch points at one: they are simply made again. The check run's update is
    /// harmless to repeat, so it is repeated.
    fn found_again(self) -> bool {
        matches!(self, Request::Ref | Request::Pull)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// GitHub holds the request before applying it: the write never happens.
    BeforeApplying,
    /// GitHub applies the request and holds the answer: the write happened, the answer is lost.
    AfterApplying,
}

/// How the patch is approved.
#[derive(Debug, Clone, Copy)]
enum Approve {
    /// The Approve button of the proposal's check run.
    Button,
    /// A `/orch approve` comment by another writer.
    Command,
}

#[derive(Debug, Clone, Copy)]
struct KillPoint {
    name: &'static str,
    request: Request,
    hold: Hold,
    approve: Approve,
}

fn markers(body: &str) -> Vec<i64> {
    body.match_indices("<!-- orch:action:")
        .filter_map(|(i, m)| body[i + m.len()..].split([':', ' ']).next().and_then(|n| n.parse().ok()))
        .collect()
}

/// `/orch propose` → proposal → approval → branch, commit, pull request and its announcement,
/// with the process killed while GitHub holds `point`'s request.
async fn survive(backend: Backend, point: KillPoint) {
    let started = Instant::now();
    let Some(mut rig) = Rig::new(backend).await else { return };
    rig.start().await;
    let what = format!("{backend:?}, killed {}", point.name);
    let number = rig
        .fake
        .state
        .open_issue(REPO, "Answer is off by one", "The answer should be 42.", "dev-kim");
    let repo = payloads::RepoSpec::new(REPO, INSTALLATION);
    let issue = IssueSpec::new(number, "Answer is off by one")
        .body("The answer should be 42.")
        .by("dev-kim");

    // The proposal, made without any fault.
    let propose = rig.fake.state.user_comment(REPO, number, "mara", "User", INSTRUCTION);
    rig.deliver(
        "issue_comment",
        &payloads::issue_comment_created(&repo, &issue, propose, INSTRUCTION, "mara", "User"),
    )
    .await;
    let id = rig.wait_state("WAITING_USER_APPROVAL", Duration::from_secs(20)).await;
    let branch = format!("orch/{id}");

    // Hold the next matching request, then approve.
    let run = rig
        .fake
        .state
        .check_runs(REPO)
        .into_iter()
        .find(|r| r.name == "orch/patch")
        .unwrap_or_else(|| panic!("{what}: no orch/patch check run"));
    let (method, path) = (point.request.method(), point.request.path(run.id));
    let kind = match point.hold {
        Hold::BeforeApplying => FaultKind::Delay(HOLD),
        Hold::AfterApplying => FaultKind::ApplyThenStall(HOLD),
    };
    let before = rig.requests(method.as_str(), &path);
    rig.fake.state.inject(Fault::new(method.clone(), &path, 1, kind));
    match point.approve {
        Approve::Button => {
            let press = payloads::check_run_requested_action(
                &repo,
                run.id,
                &run.name,
                &run.head_sha,
                Some(&format!("workflow:{id}")),
                "approve",
                "lee",
                "User",
            );
            rig.deliver("check_run", &press).await;
        }
        Approve::Command => {
            let body = "Looks right.\n\n/orch approve";
            let comment = rig.fake.state.user_comment(REPO, number, "lee", "User", body);
            rig.deliver(
                "issue_comment",
                &payloads::issue_comment_created(&repo, &issue, comment, body, "lee", "User"),
            )
            .await;
        }
    }
    rig.wait_for(&format!("{method} {path} to be held"), Duration::from_secs(20), || async {
        (rig.requests(method.as_str(), &path) > before).then_some(())
    })
    .await;
    // The held request is the one meant.
    let held = rig
        .fake
        .state
        .bodies()
        .into_iter()
        .rev()
        .find(|(m, p, _)| m == method.as_str() && p.ends_with(&path))
        .map(|(_, _, body)| body)
        .expect("the held request had a JSON body");
    let field = |k: &str| held[k].as_str().unwrap_or_default().to_string();
    let meant = match point.request {
        Request::Tree => held["tree"][0]["path"] == "src/lib.rs" && held["tree"][0]["content"] == patched_lib_rs().as_str(),
        Request::Commit => field("message").contains(&format!("workflow {id}")),
        Request::Ref => field("ref") == format!("refs/heads/{branch}"),
        Request::Pull => field("head") == branch,
        Request::CheckRunClosed => field("conclusion") == "success" && held["actions"] == serde_json::json!([]),
    };
    assert!(meant, "{what}: the held request is not the one meant: {held}");
    // The fault (one request) is used up by the held request; nothing else is held after this.
    rig.kill();
    rig.start().await;
    // Leases of the killed process run out (jobs after 2 s, the action being made after 10 s);
    // then the new process takes over.
    rig.wait_state("DONE", Duration::from_secs(45)).await;
    // Let anything still queued run (a repeat must change nothing; the check run is closed after
    // DONE, so a kill while it was held finds the workflow DONE already), then stop for good.
    rig.wait_for("no job left to run", Duration::from_secs(20), || async {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")
            .fetch_one(rig.store.pool())
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    rig.kill();
    let step_requests = rig.requests(method.as_str(), &path) - before;
    let diagnostics = rig.diagnostics().await;

    // The branch: exactly one besides main, one commit on main's tip, exactly the patch.
    let state = &rig.fake.state;
    assert_eq!(
        state.branches(REPO),
        ["main".to_string(), branch.clone()],
        "{what}: branches\n{diagnostics}"
    );
    assert_eq!(
        state.tip(REPO, "main").map(|(parents, _)| parents),
        Some(vec![]),
        "{what}: main moved\n{diagnostics}"
    );
    let (parents, message) = state.tip(REPO, &branch).expect("the branch exists");
    assert_eq!(
        parents,
        [rig.main_sha.clone()],
        "{what}: the branch's tip is not one commit on main's tip\n{diagnostics}"
    );
    assert!(
        message.contains(&format!("workflow {id}")) && message.contains("approved by @lee"),
        "{what}: commit message {message:?}"
    );
    let main_files = state.files_at(REPO, "main").unwrap();
    let expected_main: BTreeMap<String, String> = [(".github/orch.yml", POLICY), ("src/lib.rs", LIB_RS), ("README.md", README)]
        .into_iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    assert_eq!(main_files, expected_main, "{what}: main's files changed");
    let mut expected = main_files.clone();
    expected.insert("src/lib.rs".into(), patched_lib_rs());
    assert_eq!(
        state.files_at(REPO, &branch).unwrap(),
        expected,
        "{what}: the branch is not main with the patch\n{diagnostics}"
    );

    // The pull request: exactly one, for the branch, into main.
    let pulls = state.pulls(REPO);
    let ours: Vec<_> = pulls.iter().filter(|p| p.head == branch).collect();
    assert_eq!((ours.len(), pulls.len()), (1, 1), "{what}: pull requests {pulls:#?}\n{diagnostics}");
    let pr = ours[0];
    assert_eq!(pr.base, "main", "{what}");
    assert!(
        pr.body.contains(&format!("Closes #{number}")) && pr.body.contains("**Approved by**:\n- @lee ("),
        "{what}: {}",
        pr.body
    );
    assert_eq!(markers(&pr.body).len(), 1, "{what}: the pull request's marker: {}", pr.body);

    // The proposal's check run: closed (no buttons), linking that pull request.
    let closed = state.check_run(run.id).expect("the check run");
    let pull_url = format!("{}/{REPO}/pull/{}", rig.fake.url(), pr.number);
    assert!(
        closed.actions.is_empty()
            && closed.conclusion.as_deref() == Some("success")
            && closed.details_url.as_deref() == Some(pull_url.as_str())
            && closed.summary.contains(&format!("[#{}]({pull_url})", pr.number)),
        "{what}: {closed:#?}\n{diagnostics}"
    );
    // The issue: orch's only comment is the proposal (GitHub shows the pull request there
    // itself), and no marker twice.
    let comments = state.comments(REPO, number);
    let orchs: Vec<&str> = comments.iter().filter(|c| c.author == APP_LOGIN).map(|c| c.body.as_str()).collect();
    assert!(
        orchs.len() == 1 && orchs[0].contains("patch proposal"),
        "{what}: orch's comments {orchs:#?}\n{diagnostics}"
    );
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for c in &comments {
        for m in markers(&c.body) {
            *seen.entry(m).or_default() += 1;
        }
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "{what}: a marker twice on the issue: {seen:?}\n{comments:#?}\n{diagnostics}"
    );

    // The kill hit the held request, and the restart did what that kind of kill needs: a write
    // that never happened is made (one more request); a write whose answer was lost is found
    // again when orch looks for it (no second request), and made again when it is a
    // content-addressed object nothing refers to yet.
    let expected_requests = match (point.hold, point.request.found_again()) {
        (Hold::AfterApplying, true) => 1,
        _ => 2,
    };
    assert_eq!(
        step_requests, expected_requests,
        "{what}: {method} {path} requests after the hold began\n{diagnostics}"
    );

    // The store: a legal history, once through each state, ending in DONE.
    let rows: Vec<(Option<String>, String)> =
        sqlx::query("SELECT from_state, to_state FROM workflow_transitions WHERE workflow_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(rig.store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    let mut current: Option<State> = None;
    for (from, to) in &rows {
        let from: Option<State> = from.as_deref().map(|s| s.parse().unwrap());
        let to: State = to.parse().unwrap();
        assert_eq!(from, current, "{what}: the history is not a chain: {rows:?}");
        if let Some(from) = from {
            assert!(
                Step::ALL.into_iter().any(|s| next(Kind::Patch, from, s) == Ok(to)),
                "{what}: {from} → {to} is illegal: {rows:?}"
            );
        }
        current = Some(to);
    }
    let history: Vec<&str> = rows.iter().map(|(_, to)| to.as_str()).collect();
    assert_eq!(
        history,
        [
            "INGESTED",
            "CONTEXT_LOADED",
            "PATCHES_PROPOSED",
            "WAITING_USER_APPROVAL",
            "APPROVED",
            "APPLYING_CHANGES",
            "PR_CREATED",
            "DONE"
        ],
        "{what}\n{diagnostics}"
    );
    // Every delivery processed, once; every recorded write made.
    for d in deliveries::list(rig.store.pool(), 1000).await.unwrap() {
        assert_eq!(
            (d.status.as_str(), d.process_count),
            ("processed", 1),
            "{what}: delivery {}",
            d.guid
        );
    }
    let actions: Vec<(String, String)> = sqlx::query("SELECT idempotency_key, status FROM actions ORDER BY id")
        .fetch_all(rig.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(actions.iter().all(|(_, s)| s == "done"), "{what}: {actions:?}");
    eprintln!(
        "{what}: survived ({step_requests} {method} {path} after the hold began, {:.1}s)",
        started.elapsed().as_secs_f64()
    );
}

const fn point(name: &'static str, request: Request, hold: Hold, approve: Approve) -> KillPoint {
    KillPoint {
        name,
        request,
        hold,
        approve,
    }
}

const TREE_HELD: KillPoint = point("while GitHub held the tree", Request::Tree, Hold::BeforeApplying, Approve::Button);
const TREE_ANSWER_LOST: KillPoint = point(
    "after the tree was stored, before its answer",
    Request::Tree,
    Hold::AfterApplying,
    Approve::Button,
);
const COMMIT_HELD: KillPoint = point(
    "while GitHub held the commit",
    Request::Commit,
    Hold::BeforeApplying,
    Approve::Button,
);
const COMMIT_ANSWER_LOST: KillPoint = point(
    "after the commit was made, before its answer",
    Request::Commit,
    Hold::AfterApplying,
    Approve::Command,
);
const REF_HELD: KillPoint = point("while GitHub held the branch", Request::Ref, Hold::BeforeApplying, Approve::Button);
const REF_ANSWER_LOST: KillPoint = point(
    "after the branch was created, before its answer",
    Request::Ref,
    Hold::AfterApplying,
    Approve::Button,
);
const PULL_HELD: KillPoint = point(
    "while GitHub held the pull request",
    Request::Pull,
    Hold::BeforeApplying,
    Approve::Button,
);
const PULL_ANSWER_LOST: KillPoint = point(
    "after the pull request was opened, before its answer",
    Request::Pull,
    Hold::AfterApplying,
    Approve::Command,
);
const CHECK_RUN_HELD: KillPoint = point(
    "while GitHub held the check run's update",
    Request::CheckRunClosed,
    Hold::BeforeApplying,
    Approve::Button,
);
const CHECK_RUN_ANSWER_LOST: KillPoint = point(
    "after the check run was updated, before its answer",
    Request::CheckRunClosed,
    Hold::AfterApplying,
    Approve::Command,
);

async fn kill_while_the_tree_is_held(backend: Backend) {
    survive(backend, TREE_HELD).await
}

async fn kill_after_the_tree_is_stored_before_its_answer(backend: Backend) {
    survive(backend, TREE_ANSWER_LOST).await
}

async fn kill_while_the_commit_is_held(backend: Backend) {
    survive(backend, COMMIT_HELD).await
}

async fn kill_after_the_commit_is_made_before_its_answer(backend: Backend) {
    survive(backend, COMMIT_ANSWER_LOST).await
}

async fn kill_while_the_branch_is_held(backend: Backend) {
    survive(backend, REF_HELD).await
}

async fn kill_after_the_branch_is_created_before_its_answer(backend: Backend) {
    survive(backend, REF_ANSWER_LOST).await
}

async fn kill_while_the_pull_request_is_held(backend: Backend) {
    survive(backend, PULL_HELD).await
}

async fn kill_after_the_pull_request_is_opened_before_its_answer(backend: Backend) {
    survive(backend, PULL_ANSWER_LOST).await
}

async fn kill_while_the_check_run_update_is_held(backend: Backend) {
    survive(backend, CHECK_RUN_HELD).await
}

async fn kill_after_the_check_run_is_updated_before_its_answer(backend: Backend) {
    survive(backend, CHECK_RUN_ANSWER_LOST).await
}

both_backends!(
    kill_while_the_tree_is_held,
    kill_after_the_tree_is_stored_before_its_answer,
    kill_while_the_commit_is_held,
    kill_after_the_commit_is_made_before_its_answer,
    kill_while_the_branch_is_held,
    kill_after_the_branch_is_created_before_its_answer,
    kill_while_the_pull_request_is_held,
    kill_after_the_pull_request_is_opened_before_its_answer,
    kill_while_the_check_run_update_is_held,
    kill_after_the_check_run_is_updated_before_its_answer,
);
