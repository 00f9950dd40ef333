//! Crash safety of workflows (SPEC §11, §16): `orch serve` runs as a real process against an
//! in-process fake GitHub; a triage workflow is started and approved while one of its GitHub
//! requests is held by the fake, and the process is killed with SIGKILL right then — either
//! before GitHub applied the request (`Delay`: the write never happened) or after (`ApplyThenStall`:
//! the write happened, its answer was lost). After a restart the workflow must finish exactly
//! once: one proposal comment, one "Applied labels" comment, the labels once, no hidden
//! `<!-- orch:action:N -->` marker twice on GitHub, and a legal history ending in DONE.

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/rig.rs"]
mod rig;

use axum::http::Method;
use common::Backend;
use e2e::{payloads, IssueSpec, INSTALLATION, REPO};
use orch::github::fake::{Fault, FaultKind, APP_LOGIN};
use orch::store::deliveries;
use orch::workflow::state::{next, Kind, State, Step};
use rig::Rig;
use sqlx::Row;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Long enough that the process is always killed while GitHub holds the request.
const HOLD: Duration = Duration::from_secs(60);

/// Where in the workflow the process dies.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// While the proposal is being made (the label's workflow job).
    BeforeApproval,
    /// While the approval is acted on (the comment's delivery job or the apply step).
    AfterApproval,
}

#[derive(Debug, Clone, Copy)]
enum Hold {
    /// GitHub holds the request before applying it: the write never happens.
    BeforeApplying,
    /// GitHub applies the request and holds the answer: the write happened, the answer is lost.
    AfterApplying,
}

#[derive(Debug, Clone, Copy)]
struct KillPoint {
    name: &'static str,
    phase: Phase,
    method: &'static str,
    /// `{n}` is replaced by the issue number.
    path: &'static str,
    hold: Hold,
}

fn markers(body: &str) -> Vec<i64> {
    body.match_indices("<!-- orch:action:")
        .filter_map(|(i, m)| body[i + m.len()..].split([':', ' ']).next().and_then(|n| n.parse().ok()))
        .collect()
}

/// Label → proposal → `/orch approve` → labels, with the process killed at `point`.
async fn survive(backend: Backend, point: KillPoint) {
    let started = Instant::now();
    let Some(mut rig) = Rig::new(backend).await else { return };
    rig.start().await;
    let number = rig
        .fake
        .state
        .open_issue(REPO, "Crash on start", "It crashes when the config is empty.", "dev-kim");
    let path = point.path.replace("{n}", &number.to_string());
    let method: Method = point.method.parse().unwrap();
    let kind = match point.hold {
        Hold::BeforeApplying => FaultKind::Delay(HOLD),
        Hold::AfterApplying => FaultKind::ApplyThenStall(HOLD),
    };
    let hold_next = |rig: &Rig| {
        let before = rig.requests(point.method, &path);
        rig.fake.state.inject(Fault::new(method.clone(), &path, 1, kind.clone()));
        before
    };
    let repo = payloads::RepoSpec::new(REPO, INSTALLATION);
    let mut issue = IssueSpec::new(number, "Crash on start")
        .body("It crashes when the config is empty.")
        .by("dev-kim");
    issue.labels = vec!["orch:triage".into()];
    rig.fake.state.set_labels(REPO, number, &["orch:triage"]);

    let mut held_before = None;
    if let Phase::BeforeApproval = point.phase {
        held_before = Some(hold_next(&rig));
    }
    rig.deliver("issues", &payloads::issue_labeled(&repo, &issue, "orch:triage", "mara"))
        .await;
    if let Some(before) = held_before {
        rig.wait_for(&format!("{} {path} to be held", point.method), Duration::from_secs(20), || async {
            (rig.requests(point.method, &path) > before).then_some(())
        })
        .await;
        rig.kill();
        rig.start().await;
    }
    // Leases of the killed process run out after 2 s; then the new one takes over.
    rig.wait_state("WAITING_USER_APPROVAL", Duration::from_secs(20)).await;
    // The requests of the held step, counted when the step is over.
    let mut step_requests = held_before.map(|before| rig.requests(point.method, &path) - before);

    if let Phase::AfterApproval = point.phase {
        held_before = Some(hold_next(&rig));
    }
    let comment = rig
        .fake
        .state
        .user_comment(REPO, number, "lee", "User", "Looks right.\n\n/orch approve");
    rig.deliver(
        "issue_comment",
        &payloads::issue_comment_created(&repo, &issue, comment, "Looks right.\n\n/orch approve", "lee", "User"),
    )
    .await;
    if let (Phase::AfterApproval, Some(before)) = (point.phase, held_before) {
        rig.wait_for(&format!("{} {path} to be held", point.method), Duration::from_secs(20), || async {
            (rig.requests(point.method, &path) > before).then_some(())
        })
        .await;
        rig.kill();
        rig.start().await;
    }
    let id = rig.wait_state("DONE", Duration::from_secs(30)).await;
    if let (Phase::AfterApproval, Some(before)) = (point.phase, held_before) {
        step_requests = Some(rig.requests(point.method, &path) - before);
    }
    // Let anything still queued run (a repeat must change nothing), then stop for good.
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

    // What GitHub shows.
    let what = format!("{backend:?}, killed {}", point.name);
    let diagnostics = rig.diagnostics().await;
    let bot: Vec<String> = rig.fake.state.bot_comments(REPO, number).into_iter().map(|c| c.body).collect();
    let proposals = bot.iter().filter(|b| b.contains("### orch · triage proposal")).count();
    let applied = bot.iter().filter(|b| b.starts_with("Applied labels `bug`, `priority:p1`")).count();
    assert_eq!(
        (proposals, applied, bot.len()),
        (1, 1, 2),
        "{what}: one proposal and one applied comment expected, got {bot:#?}\n{diagnostics}"
    );
    let mut seen = HashMap::new();
    for b in &bot {
        let m = markers(b);
        assert_eq!(m.len(), 1, "{what}: an orch comment without exactly one marker: {b:?}");
        *seen.entry(m[0]).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "{what}: a marker twice on GitHub: {seen:?}\n{diagnostics}"
    );
    assert_eq!(
        rig.fake.state.labels(REPO, number),
        ["orch:triage", "bug", "priority:p1"],
        "{what}: labels\n{diagnostics}"
    );
    let eyes: Vec<_> = rig
        .fake
        .state
        .reactions(comment)
        .into_iter()
        .filter(|(c, who)| c == "eyes" && who == APP_LOGIN)
        .collect();
    assert_eq!(eyes.len(), 1, "{what}: the command is acknowledged once");
    // The kill really hit the held request, and the restart did what that kind of kill needs:
    // after a lost answer it found the write (no second request for comments and labels); after
    // a write that never happened it made it (a second request).
    let n = step_requests.expect("the hold was set");
    match (point.hold, point.path.contains("reactions")) {
        (Hold::AfterApplying, false) => assert_eq!(n, 1, "{what}: the write was repeated\n{diagnostics}"),
        _ => assert_eq!(n, 2, "{what}: expected the held request and one more\n{diagnostics}"),
    }

    // What the store holds: a legal history, once through each state, ending in DONE.
    let rows: Vec<(Option<String>, String)> =
        sqlx::query("SELECT from_state, to_state FROM workflow_transitions WHERE workflow_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(rig.store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    let mut state: Option<State> = None;
    for (from, to) in &rows {
        let from: Option<State> = from.as_deref().map(|s| s.parse().unwrap());
        let to: State = to.parse().unwrap();
        assert_eq!(from, state, "{what}: the history is not a chain: {rows:?}");
        if let Some(from) = from {
            assert!(
                Step::ALL.into_iter().any(|s| next(Kind::Triage, from, s) == Ok(to)),
                "{what}: {from} → {to} is illegal: {rows:?}"
            );
        }
        state = Some(to);
    }
    let path: Vec<&str> = rows.iter().map(|(_, to)| to.as_str()).collect();
    assert_eq!(
        path,
        [
            "INGESTED",
            "CONTEXT_LOADED",
            "PATCHES_PROPOSED",
            "WAITING_USER_APPROVAL",
            "APPROVED",
            "APPLYING_CHANGES",
            "DONE"
        ],
        "{what}"
    );
    // Every delivery processed, once.
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
        "{what}: survived ({n} matching requests after the hold began, {:.1}s)",
        started.elapsed().as_secs_f64()
    );
}

const PROPOSAL_HELD: KillPoint = KillPoint {
    name: "while GitHub held the proposal comment",
    phase: Phase::BeforeApproval,
    method: "POST",
    path: "/issues/{n}/comments",
    hold: Hold::BeforeApplying,
};
const PROPOSAL_ANSWER_LOST: KillPoint = KillPoint {
    name: "after the proposal comment was made, before its answer",
    phase: Phase::BeforeApproval,
    method: "POST",
    path: "/issues/{n}/comments",
    hold: Hold::AfterApplying,
};
const EYES_HELD: KillPoint = KillPoint {
    name: "while GitHub held the 👀 reaction to /orch approve",
    phase: Phase::AfterApproval,
    method: "POST",
    path: "/reactions",
    hold: Hold::BeforeApplying,
};
const LABELS_HELD: KillPoint = KillPoint {
    name: "while GitHub held the labels",
    phase: Phase::AfterApproval,
    method: "POST",
    path: "/issues/{n}/labels",
    hold: Hold::BeforeApplying,
};
const LABELS_ANSWER_LOST: KillPoint = KillPoint {
    name: "after the labels were added, before the answer",
    phase: Phase::AfterApproval,
    method: "POST",
    path: "/issues/{n}/labels",
    hold: Hold::AfterApplying,
};
const APPLIED_HELD: KillPoint = KillPoint {
    name: "while GitHub held the applied comment",
    phase: Phase::AfterApproval,
    method: "POST",
    path: "/issues/{n}/comments",
    hold: Hold::BeforeApplying,
};
const APPLIED_ANSWER_LOST: KillPoint = KillPoint {
    name: "after the applied comment was made, before its answer",
    phase: Phase::AfterApproval,
    method: "POST",
    path: "/issues/{n}/comments",
    hold: Hold::AfterApplying,
};

async fn kill_while_the_proposal_is_posted(backend: Backend) {
    survive(backend, PROPOSAL_HELD).await
}

async fn kill_after_the_proposal_is_posted_before_its_answer(backend: Backend) {
    survive(backend, PROPOSAL_ANSWER_LOST).await
}

async fn kill_while_the_command_is_acknowledged(backend: Backend) {
    survive(backend, EYES_HELD).await
}

async fn kill_while_the_labels_are_added(backend: Backend) {
    survive(backend, LABELS_HELD).await
}

async fn kill_after_the_labels_are_added_before_the_answer(backend: Backend) {
    survive(backend, LABELS_ANSWER_LOST).await
}

async fn kill_while_the_applied_comment_is_posted(backend: Backend) {
    survive(backend, APPLIED_HELD).await
}

async fn kill_after_the_applied_comment_is_posted_before_its_answer(backend: Backend) {
    survive(backend, APPLIED_ANSWER_LOST).await
}

both_backends!(
    kill_while_the_proposal_is_posted,
    kill_after_the_proposal_is_posted_before_its_answer,
    kill_while_the_command_is_acknowledged,
    kill_while_the_labels_are_added,
    kill_after_the_labels_are_added_before_the_answer,
    kill_while_the_applied_comment_is_posted,
    kill_after_the_applied_comment_is_posted_before_its_answer,
);
