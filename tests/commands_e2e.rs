//! The `/orch` commands end to end (SPEC §4, §5, §6): signed `issue_comment` webhooks into the
//! real router, the engine against the fake GitHub, and what a user sees there (replies,
//! reactions, labels, check runs) together with what the store holds (states, transitions with
//! their actors, the approval ledger).
//!
//! The "nothing happens" cases wait until orch has processed the delivery and every job it made
//! due, then assert: had orch acted, the effect would be there.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::payloads;
use e2e::{IssueSpec, Orch, REPO};
use orch::github::fake::{Fault, FaultKind};
use reqwest::Method;
use sqlx::Row;

/// Phase 4: every kind of work enabled.
const POLICY: &str = "phase: 4\n";

/// What orch itself posts and reacts as.
const BOT: &str = orch::github::fake::APP_LOGIN;

async fn orch(backend: Backend, policy: &str) -> Option<Orch> {
    let o = Orch::start(backend, policy).await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    o.user("kai", "admin");
    o.user("rin", "read");
    o.user("tess", "triage");
    // A bot with write access: only its being a bot keeps it from running commands.
    o.user("dependabot[bot]", "write");
    o.user(BOT, "write");
    Some(o)
}

/// The `marker` orch appends to its comments (`<!-- orch:action:<id> -->`).
fn marker_of(body: &str) -> &str {
    body.rfind("<!-- orch:action:").map(|i| &body[i..]).unwrap_or("")
}

/// The reactions on `comment` as (content, login).
fn reactions(o: &Orch, comment: i64) -> Vec<(String, String)> {
    o.fake.state.reactions(comment)
}

fn eyes() -> Vec<(String, String)> {
    vec![("eyes".to_string(), BOT.to_string())]
}

/// Waits until orch processed the delivery `guid` and ran every job that became due: whatever
/// orch does about it has happened by then.
async fn settled(o: &Orch, guid: &str) {
    o.wait_processed(guid).await;
    o.wait_idle(15).await;
}

/// `login` comments `body` on `issue`; returns the comment's id once orch is done with it.
async fn say(o: &Orch, issue: &IssueSpec, login: &str, body: &str) -> i64 {
    let (id, guid) = o.comment(issue, login, body).await;
    settled(o, &guid).await;
    id
}

/// `login` comments `body` on `issue`; returns the comment's id and the replies orch made to it.
async fn ask(o: &Orch, issue: &IssueSpec, login: &str, body: &str) -> (i64, Vec<String>) {
    let before = o.bot_comments(issue.number).len();
    let id = say(o, issue, login, body).await;
    (id, o.bot_comments(issue.number)[before..].to_vec())
}

/// Every transition of workflow `id` as (from, to, actor, reason), in order.
async fn history(o: &Orch, id: i64) -> Vec<(Option<String>, String, String, String)> {
    sqlx::query("SELECT from_state, to_state, actor, reason FROM workflow_transitions WHERE workflow_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(o.store.pool())
        .await
        .expect("transitions are readable")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The states workflow `id` went through.
async fn path(o: &Orch, id: i64) -> Vec<String> {
    o.transitions(id).await.into_iter().map(|(_, to, _)| to).collect()
}

/// The actor of the last transition of `id` into `state`.
async fn actor_into(o: &Orch, id: i64, state: &str) -> Option<String> {
    o.transitions(id)
        .await
        .into_iter()
        .rev()
        .find(|(_, to, _)| to == state)
        .map(|(_, _, a)| a)
}

/// The approval ledger (voided votes included) as (workflow, voter, decision, source).
async fn votes(o: &Orch) -> Vec<(i64, String, String, String)> {
    sqlx::query("SELECT workflow_id, voter, decision, source FROM approvals ORDER BY id")
        .fetch_all(o.store.pool())
        .await
        .expect("approvals are readable")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// The `command_denied` audit rows in order, as (subject, verb, reply).
async fn command_denials(o: &Orch) -> Vec<(String, String, String)> {
    sqlx::query("SELECT subject, details FROM audit_log WHERE kind = 'command_denied' ORDER BY seq")
        .fetch_all(o.store.pool())
        .await
        .expect("the audit log is readable")
        .iter()
        .map(|r| {
            let details: serde_json::Value = serde_json::from_str(&r.get::<String, _>(1)).expect("details are JSON");
            let text = |k: &str| details[k].as_str().unwrap_or_default().to_string();
            (r.get(0), text("verb"), text("reply"))
        })
        .collect()
}

/// (attempt, previous_id, reason) of workflow `id`.
async fn attempt_of(o: &Orch, id: i64) -> (i64, Option<i64>, Option<String>) {
    let r = sqlx::query("SELECT attempt, previous_id, reason FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_one(o.store.pool())
        .await
        .expect("the workflow exists");
    (r.get(0), r.get(1), r.get(2))
}

/// The reply orch gives someone without write access who typed `command`.
fn denied(login: &str, command: &str, permission: &str) -> String {
    format!(
        "@{login}, `{command}` needs write, maintain or admin permission on {REPO}, or a place in `approvals.approvers` of \
         `.github/orch.yml` (your permission: {permission}). Nothing was changed."
    )
}

const VERBS: [&str; 10] = [
    "approve",
    "reject",
    "request-changes",
    "retry",
    "cancel",
    "status",
    "help",
    "triage",
    "plan",
    "propose",
];

fn assert_is_help(reply: &str) {
    assert!(reply.starts_with(&orch::commands::help_text()), "not the help text: {reply}");
    for verb in VERBS {
        assert!(reply.contains(&format!("| `/orch {verb}")), "the help lacks {verb}: {reply}");
    }
}

fn crash_issue(o: &Orch) -> IssueSpec {
    o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim")
}

/// `mara` asks for a triage of a new issue; returns the issue and the workflow, waiting for
/// approval.
async fn waiting_triage(o: &Orch) -> (IssueSpec, i64) {
    let issue = crash_issue(o);
    let (comment, replies) = ask(o, &issue, "mara", "/orch triage").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    assert_eq!(reactions(o, comment), eyes());
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with(&format!("### orch · triage proposal (workflow {id})")),
        "{}",
        replies[0]
    );
    (issue, id)
}

// ---------------------------------------------------------------------------------------------
// 1. Permission

/// Every state-changing command by a user with `read` (and `triage`, and no access at all) gets
/// the polite refusal, no 👀 and changes nothing; `status` and `help` work for them.
async fn commands_without_write_permission_are_refused_and_change_nothing(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let issue = crash_issue(&o);
    let pr = o.open_pull(
        "Handle an empty config",
        "fix-empty-config",
        &[("src/lib.rs", Some("pub fn answer() -> u32 { 42 }\n"))],
        "dev-kim",
    );
    let pr_issue = pr.as_issue();
    // A proposal waiting for approval, so that approve, reject, … had something to act on.
    let (_, replies) = ask(&o, &issue, "mara", "/orch propose add a note about empty configs").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    assert_eq!(replies.len(), 1, "only the proposal: {replies:?}");
    let transitions_before = history(&o, id).await;
    let check_runs_before = o.fake.state.check_runs(REPO);
    assert_eq!(check_runs_before.len(), 1, "the patch's check run");

    let cases: [(&IssueSpec, &str); 8] = [
        (&issue, "/orch approve"),
        (&issue, "/orch reject"),
        (&issue, "/orch request-changes x"),
        (&issue, "/orch retry"),
        (&issue, "/orch cancel"),
        (&issue, "/orch triage"),
        (&pr_issue, "/orch plan"),
        (&issue, "/orch propose x"),
    ];
    // A user without permission is told once per issue per hour (SPEC §5): later refusals on
    // the same issue are audited (below), not posted.
    let mut told = std::collections::HashSet::new();
    for (target, command) in cases {
        let (comment, replies) = ask(&o, target, "rin", command).await;
        if !told.insert(target.number) {
            assert!(
                replies.is_empty(),
                "{command}: a second refusal within the hour was posted: {replies:?}"
            );
            assert!(reactions(&o, comment).is_empty(), "{command} was acknowledged");
            continue;
        }
        assert_eq!(replies.len(), 1, "{command}: {replies:?}");
        let reply = &replies[0];
        assert!(reply.contains("needs write, maintain or admin permission"), "{command}: {reply}");
        assert!(reply.contains("Nothing was changed"), "{command}: {reply}");
        assert!(reply.starts_with(&denied("rin", command, "read")), "{command}: {reply}");
        assert!(
            reactions(&o, comment).is_empty(),
            "{command} was acknowledged: {:?}",
            reactions(&o, comment)
        );
    }
    // GitHub's `triage` role is not write access, and neither is no access at all.
    let (comment, replies) = ask(&o, &issue, "tess", "/orch approve").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with(&denied("tess", "/orch approve", "triage")), "{}", replies[0]);
    assert!(reactions(&o, comment).is_empty());
    let (comment, replies) = ask(&o, &issue, "stranger", "/orch reject not needed").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with(&denied("stranger", "/orch reject not needed", "none")),
        "{}",
        replies[0]
    );
    assert!(reactions(&o, comment).is_empty());

    // Nothing changed: one workflow, still waiting, same history, no vote, no label, no check
    // run, no branch, no pull request of orch's.
    assert_eq!(
        o.workflow_states().await,
        vec![(id, "patch".to_string(), "WAITING_USER_APPROVAL".to_string())]
    );
    assert_eq!(history(&o, id).await, transitions_before);
    assert_eq!(votes(&o).await, vec![]);
    assert!(o.fake.state.labels(REPO, issue.number).is_empty());
    assert!(o.fake.state.labels(REPO, pr.number).is_empty());
    assert_eq!(o.fake.state.check_runs(REPO).len(), check_runs_before.len());
    assert_eq!(o.fake.state.pulls(REPO).len(), 1, "only dev-kim's pull request");
    assert!(
        !o.fake.state.branches(REPO).iter().any(|b| b.starts_with("orch/")),
        "{:?}",
        o.fake.state.branches(REPO)
    );
    assert_eq!(o.bot_comments(pr.number).len(), 1, "only the refusal of /orch plan");

    // Each refusal is in the audit log: who was refused what, where, and the reply they got.
    let denials = command_denials(&o).await;
    let verbs: Vec<&str> = denials.iter().map(|(_, verb, _)| verb.as_str()).collect();
    assert_eq!(
        verbs,
        [
            "approve",
            "reject",
            "request-changes",
            "retry",
            "cancel",
            "triage",
            "plan",
            "propose",
            "approve",
            "reject"
        ],
        "{denials:?}"
    );
    for (subject, verb, reply) in &denials {
        let number = if verb == "plan" { pr.number } else { issue.number };
        assert_eq!(subject, &format!("{REPO}#{number}"), "{verb}");
        assert!(reply.contains("needs write, maintain or admin permission"), "{verb}: {reply}");
    }
    assert!(denials[8].2.starts_with("@tess, "), "{:?}", denials[8]);
    assert!(denials[9].2.starts_with("@stranger, "), "{:?}", denials[9]);

    // status and help are open to anyone, and acknowledged.
    let (comment, replies) = ask(&o, &issue, "rin", "/orch status").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with("### orch · status"), "{}", replies[0]);
    assert!(
        replies[0].contains(&format!(
            "- workflow {id} (patch, attempt 1): `WAITING_USER_APPROVAL` — 0 of 1 approval"
        )),
        "{}",
        replies[0]
    );
    assert_eq!(reactions(&o, comment), eyes());
    let (comment, replies) = ask(&o, &issue, "rin", "/orch help").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_is_help(&replies[0]);
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
}

// ---------------------------------------------------------------------------------------------
// 2. The commands, with permission

/// `/orch triage` → a triage proposal; `/orch approve` by another maintainer → labels, DONE.
async fn triage_command_then_approve_applies_the_labels(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let (issue, id) = waiting_triage(&o).await;
    let proposal = &o.bot_comments(issue.number)[0];
    assert!(proposal.contains("**Labels:** `bug`, `priority:p1`"), "{proposal}");
    assert!(
        o.fake.state.labels(REPO, issue.number).is_empty(),
        "nothing applied before approval"
    );
    assert_eq!(actor_into(&o, id, "INGESTED").await.as_deref(), Some("mara"));

    approve_applies_the_labels(&o, &issue, id, "lee").await;
    assert_eq!(
        path(&o, id).await,
        [
            "INGESTED",
            "CONTEXT_LOADED",
            "PATCHES_PROPOSED",
            "WAITING_USER_APPROVAL",
            "APPROVED",
            "APPLYING_CHANGES",
            "DONE"
        ]
    );
}

/// `login` comments `/orch approve` on the waiting triage `id` of `issue`: acknowledged, the
/// proposed labels applied, one reply naming the approver, the move to APPROVED made as them and
/// their vote the only one in the ledger.
async fn approve_applies_the_labels(o: &Orch, issue: &IssueSpec, id: i64, login: &str) {
    let (comment, replies) = ask(o, issue, login, "/orch approve").await;
    o.wait_state(id, "DONE").await;
    assert_eq!(reactions(o, comment), eyes());
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["bug".to_string(), "priority:p1".into()]
    );
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with(&format!(
            "Applied labels `bug`, `priority:p1` (workflow {id}, approved by @{login})."
        )),
        "{}",
        replies[0]
    );
    assert_eq!(actor_into(o, id, "APPROVED").await.as_deref(), Some(login));
    assert_eq!(votes(o).await, vec![(id, login.into(), "approve".into(), "command".into())]);
}

/// `approvals.approvers` of the repository's policy lets a listed user without write access
/// approve (GitHub's permission is then not asked); someone not listed with the same access is
/// still refused, and the listed approver's vote applies the labels.
async fn a_listed_approver_without_write_access_may_approve(backend: Backend) {
    let policy = "phase: 4\napprovals:\n  approvers: [RIN]\n";
    let Some(o) = orch(backend, policy).await else { return };
    let (issue, id) = waiting_triage(&o).await;

    let (comment, replies) = ask(&o, &issue, "tess", "/orch approve").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with(&denied("tess", "/orch approve", "triage")), "{}", replies[0]);
    assert!(reactions(&o, comment).is_empty());
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    assert_eq!(command_denials(&o).await.len(), 1);

    // rin has only read access on GitHub, but the policy names them (case does not matter).
    approve_applies_the_labels(&o, &issue, id, "rin").await;
    assert_eq!(command_denials(&o).await.len(), 1, "rin's approval was not a denial");
}

/// `/orch plan` on a pull request: the QA plan is auto-safe by default, so the policy approves
/// it and it is posted as a check run on the head and as a comment. On an issue: a reply.
async fn plan_command_posts_a_qa_plan_on_pull_requests_only(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let pr = o.open_pull(
        "Handle an empty config",
        "fix-empty-config",
        &[("src/lib.rs", Some("pub fn answer() -> u32 { 42 }\n"))],
        "dev-kim",
    );
    let (comment, replies) = ask(&o, &pr.as_issue(), "lee", "/orch plan").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "DONE").await;
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(o.workflow_states().await, vec![(id, "qa_plan".to_string(), "DONE".to_string())]);
    assert_eq!(replies.len(), 1, "only the plan, no proposal to approve: {replies:?}");
    assert!(
        replies[0].starts_with(&format!("### orch · QA plan (workflow {id})")),
        "{}",
        replies[0]
    );
    assert!(replies[0].contains("1. **Build and run the test suite**"), "{}", replies[0]);
    let runs = o.fake.state.check_runs(REPO);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].name, "orch/qa-plan");
    assert_eq!(runs[0].head_sha, pr.head_sha, "on the pull request's head");
    assert_eq!(runs[0].status, "completed");
    assert_eq!(runs[0].conclusion.as_deref(), Some("neutral"));
    assert!(runs[0].actions.is_empty(), "nothing to approve: {:?}", runs[0].actions);
    assert_eq!(
        path(&o, id).await,
        [
            "INGESTED",
            "CONTEXT_LOADED",
            "PATCHES_PROPOSED",
            "APPROVED",
            "APPLYING_CHANGES",
            "DONE"
        ]
    );
    assert_eq!(actor_into(&o, id, "APPROVED").await.as_deref(), Some("policy"));
    assert_eq!(votes(&o).await, vec![(id, "policy".into(), "approve".into(), "policy".into())]);

    // On an issue there is no pull request to plan.
    let issue = crash_issue(&o);
    let (comment, replies) = ask(&o, &issue, "lee", "/orch plan").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with("`/orch plan` works on pull requests; this is an issue."),
        "{}",
        replies[0]
    );
    assert_eq!(reactions(&o, comment), eyes(), "a well-formed, permitted command is acknowledged");
    assert_eq!(o.workflow_states().await.len(), 1, "no workflow on the issue");
    assert_eq!(o.fake.state.check_runs(REPO).len(), 1);
}

/// The patch lifecycle by commands: propose → status → request-changes → retry (new proposal
/// with the feedback) → reject → retry (attempt 2) → cancel → status.
async fn propose_request_changes_retry_reject_retry_cancel(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let issue = crash_issue(&o);
    let n = issue.number;

    // propose
    let (comment, replies) = ask(&o, &issue, "mara", "/orch propose add a note about empty configs").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(replies.len(), 1, "{replies:?}");
    let first = &replies[0];
    assert!(first.starts_with(&format!("### orch · patch proposal (workflow {id})")), "{first}");
    assert!(first.contains("Applies: add a note about empty configs"), "{first}");
    assert!(first.contains(&format!("- create `docs/orch-{n}.md`")), "{first}");
    assert!(!first.contains("revised after"), "{first}");
    let runs = o.fake.state.check_runs(REPO);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].name, "orch/patch");
    assert_eq!(runs[0].head_sha, o.main_sha, "on the commit the patch applies to");
    assert_eq!(runs[0].status, "completed");
    assert_eq!(runs[0].conclusion.as_deref(), Some("action_required"));
    let buttons: Vec<&str> = runs[0].actions.iter().filter_map(|a| a["identifier"].as_str()).collect();
    assert_eq!(buttons, ["approve", "reject"]);
    assert_eq!(
        path(&o, id).await,
        ["INGESTED", "CONTEXT_LOADED", "PATCHES_PROPOSED", "WAITING_USER_APPROVAL"]
    );
    assert_eq!(actor_into(&o, id, "INGESTED").await.as_deref(), Some("mara"));
    assert!(o.fake.state.pulls(REPO).is_empty(), "nothing applied before approval");

    // status
    let (_, replies) = ask(&o, &issue, "lee", "/orch status").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].starts_with("### orch · status\n\n"), "{}", replies[0]);
    assert!(
        replies[0].contains(&format!(
            "- workflow {id} (patch, attempt 1): `WAITING_USER_APPROVAL` — 0 of 1 approval; still needed: 1 more approval from someone other than @mara"
        )),
        "{}",
        replies[0]
    );
    assert!(replies[0].contains("Policy: phase 4, 1 approval(s) required."), "{}", replies[0]);

    // request-changes
    let (comment, replies) = ask(&o, &issue, "lee", "/orch request-changes use p2").await;
    assert_eq!(o.state_of(id).await, "NEEDS_HUMAN");
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(
        replies,
        [format!(
            "Workflow {id} is waiting for a human: @lee asked for changes. `/orch retry` generates a new proposal with that feedback.\n\n{}",
            marker_of(&replies[0])
        )]
    );
    let last = history(&o, id).await.pop().expect("a transition");
    assert_eq!(
        last,
        (
            Some("WAITING_USER_APPROVAL".into()),
            "NEEDS_HUMAN".into(),
            "lee".into(),
            "use p2".into()
        )
    );

    // retry from NEEDS_HUMAN: a new proposal that took the feedback
    let (_, replies) = ask(&o, &issue, "lee", "/orch retry").await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(
        replies
            .iter()
            .any(|r| r.starts_with(&format!("Workflow {id} is generating a new proposal."))),
        "{replies:?}"
    );
    let second = replies
        .iter()
        .find(|r| r.starts_with(&format!("### orch · patch proposal (workflow {id})")))
        .unwrap_or_else(|| panic!("no second proposal: {replies:?}"));
    assert!(
        second.contains("Applies: add a note about empty configs (revised after: use p2)"),
        "{second}"
    );
    assert_eq!(
        path(&o, id).await,
        [
            "INGESTED",
            "CONTEXT_LOADED",
            "PATCHES_PROPOSED",
            "WAITING_USER_APPROVAL",
            "NEEDS_HUMAN",
            "CONTEXT_LOADED",
            "PATCHES_PROPOSED",
            "WAITING_USER_APPROVAL"
        ]
    );
    let t = o.transitions(id).await;
    assert_eq!(
        t[5],
        (Some("NEEDS_HUMAN".into()), "CONTEXT_LOADED".into(), "lee".into()),
        "the retry is lee's"
    );
    let runs = o.fake.state.check_runs(REPO);
    assert_eq!(
        runs.iter().filter(|r| r.name == "orch/patch").count(),
        2,
        "a check run per proposal: {runs:?}"
    );

    // reject
    let (comment, replies) = ask(&o, &issue, "lee", "/orch reject too risky").await;
    assert_eq!(o.state_of(id).await, "FAILED");
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with(&format!("Workflow {id} was rejected by @lee: too risky; nothing was applied.")),
        "{}",
        replies[0]
    );
    assert!(replies[0].contains("rejected by @lee: too risky"), "{}", replies[0]);
    assert_eq!(
        history(&o, id).await.pop().expect("a transition"),
        (
            Some("WAITING_USER_APPROVAL".into()),
            "FAILED".into(),
            "lee".into(),
            "rejected by @lee: too risky".into()
        )
    );
    assert_eq!(votes(&o).await, vec![(id, "lee".into(), "reject".into(), "command".into())]);
    assert!(o.fake.state.pulls(REPO).is_empty(), "nothing applied");
    assert_eq!(o.fake.state.branches(REPO), ["main"]);
    assert!(o.fake.state.labels(REPO, n).is_empty());

    // retry after FAILED: a new attempt, linked to the old one
    let (comment, replies) = ask(&o, &issue, "lee", "/orch retry").await;
    assert_eq!(reactions(&o, comment), eyes());
    let states = o.workflow_states().await;
    assert_eq!(states.len(), 2, "{states:?}");
    let id2 = states[1].0;
    assert_ne!(id2, id);
    o.wait_state(id2, "WAITING_USER_APPROVAL").await;
    assert_eq!(o.state_of(id).await, "FAILED", "the old attempt stays failed");
    assert_eq!(attempt_of(&o, id2).await.0, 2);
    assert_eq!(attempt_of(&o, id2).await.1, Some(id));
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(
        replies
            .iter()
            .any(|r| r.starts_with(&format!("Started attempt 2 as workflow {id2} (after workflow {id})."))),
        "{replies:?}"
    );
    assert!(
        replies
            .iter()
            .any(|r| r.starts_with(&format!("### orch · patch proposal (workflow {id2})"))
                && r.contains("Applies: add a note about empty configs")),
        "{replies:?}"
    );
    assert_eq!(actor_into(&o, id2, "INGESTED").await.as_deref(), Some("lee"));

    // cancel
    let (comment, replies) = ask(&o, &issue, "lee", "/orch cancel").await;
    assert_eq!(o.state_of(id2).await, "FAILED");
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with(&format!("Cancelled workflow {id2} at the request of @lee.")),
        "{}",
        replies[0]
    );
    assert_eq!(
        history(&o, id2).await.pop().expect("a transition"),
        (
            Some("WAITING_USER_APPROVAL".into()),
            "FAILED".into(),
            "lee".into(),
            "cancelled".into()
        )
    );
    assert_eq!(attempt_of(&o, id2).await.2.as_deref(), Some("cancelled"));

    // status lists both attempts, newest first, with their reasons
    let (_, replies) = ask(&o, &issue, "rin", "/orch status").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let status = &replies[0];
    let newer = format!("- workflow {id2} (patch, attempt 2): `FAILED` — cancelled");
    let older = format!("- workflow {id} (patch, attempt 1): `FAILED` — rejected by @lee: too risky");
    let (a, b) = (status.find(&newer), status.find(&older));
    assert!(a.is_some() && b.is_some() && a < b, "{status}");

    // Never anything applied.
    assert!(o.fake.state.pulls(REPO).is_empty());
    assert_eq!(o.fake.state.branches(REPO), ["main"]);
}

/// `/orch help` replies with the help text (every verb).
async fn help_lists_every_verb(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let issue = crash_issue(&o);
    let (comment, replies) = ask(&o, &issue, "lee", "/orch help").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_is_help(&replies[0]);
    assert_eq!(reactions(&o, comment), eyes());
    // status on an issue without workflows says so.
    let (_, replies) = ask(&o, &issue, "lee", "/orch status").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with("### orch · status\n\nNo workflow has run here yet.\n"),
        "{}",
        replies[0]
    );
    assert!(o.workflow_states().await.is_empty());
}

/// A misspelt verb or bad arguments: a reply naming the problem (with a suggestion) and the
/// help; no 👀, no vote, no state change.
async fn malformed_commands_get_the_problem_a_suggestion_and_the_help(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let (issue, id) = waiting_triage(&o).await;
    let help = orch::commands::help_text();

    let (comment, replies) = ask(&o, &issue, "lee", "/orch aprove").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with(&format!(
            "@lee, `/orch aprove` is not an orch command.\n\nDid you mean `/orch approve`?\n\n{help}"
        )),
        "{}",
        replies[0]
    );
    assert!(reactions(&o, comment).is_empty(), "{:?}", reactions(&o, comment));

    // Strict: an approval with words after it is not an approval.
    let (comment, replies) = ask(&o, &issue, "lee", "/orch approve looks good").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with(
            "@lee, `looks good` is not a workflow id: `/orch approve` takes nothing or a workflow number, like `/orch approve 42`."
        ),
        "{}",
        replies[0]
    );
    assert!(replies[0].contains(&help), "{}", replies[0]);
    assert!(reactions(&o, comment).is_empty());

    let (comment, replies) = ask(&o, &issue, "lee", "/orch request-changes").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with("@lee, `/orch request-changes` is missing the feedback: it is written `/orch request-changes <feedback>`."),
        "{}",
        replies[0]
    );
    assert!(reactions(&o, comment).is_empty());

    assert_eq!(
        o.workflow_states().await,
        vec![(id, "triage".to_string(), "WAITING_USER_APPROVAL".to_string())]
    );
    assert_eq!(votes(&o).await, vec![]);
    assert!(o.fake.state.labels(REPO, issue.number).is_empty());
}

/// A repository at phase 0 only gets QA plans: triage and propose say which phase enables them.
async fn commands_the_phase_does_not_enable_say_which_phase_does(backend: Backend) {
    let Some(o) = orch(backend, "phase: 0\n").await else { return };
    let issue = crash_issue(&o);
    let (_, replies) = ask(&o, &issue, "mara", "/orch triage").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].contains("enabled from phase 1"), "{}", replies[0]);
    assert!(
        replies[0].starts_with("Triage is enabled from phase 1; this repository is at phase 0"),
        "{}",
        replies[0]
    );
    let (_, replies) = ask(&o, &issue, "mara", "/orch propose x").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(replies[0].contains("enabled from phase 4"), "{}", replies[0]);
    assert!(
        replies[0].starts_with("`/orch propose` is enabled from phase 4; this repository is at phase 0"),
        "{}",
        replies[0]
    );
    assert!(o.workflow_states().await.is_empty(), "{:?}", o.workflow_states().await);

    // QA plans are phase 0.
    let pr = o.open_pull(
        "Handle an empty config",
        "fix-empty-config",
        &[("src/lib.rs", Some("pub fn answer() -> u32 { 42 }\n"))],
        "dev-kim",
    );
    say(&o, &pr.as_issue(), "mara", "/orch plan").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "DONE").await;
    assert_eq!(o.fake.state.check_runs(REPO).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 3. Never run

/// Bots, orch itself, hidden commands and edited comments never run a command, even with a
/// proposal waiting that a `/orch approve` would approve (as the last step shows).
async fn bots_orch_hidden_and_edited_commands_never_run(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let (issue, id) = waiting_triage(&o).await;
    let proposal_comments = o.bot_comments(issue.number).len();
    let mut quiet = Vec::new();

    // A bot (type Bot) with write access.
    quiet.push(say(&o, &issue, "dependabot[bot]", "/orch approve").await);
    // orch itself, as the Bot it is…
    quiet.push(say(&o, &issue, BOT, "/orch approve").await);
    // …and even if a payload called it a User.
    let own = o.fake.state.user_comment(REPO, issue.number, BOT, "User", "/orch approve");
    let guid = o
        .deliver(
            "issue_comment",
            &payloads::issue_comment_created(&o.repo, &issue, own, "/orch approve", BOT, "User"),
        )
        .await;
    settled(&o, &guid).await;
    quiet.push(own);
    // Commands that a reader does not see as the commenter's own prose.
    for body in [
        "```\n/orch approve\n```",
        "~~~\n/orch approve\n~~~",
        "    /orch approve",
        "> /orch approve",
        "> quoted\n> /orch approve",
        "<!-- /orch approve -->",
        "<!--\n/orch approve\n-->",
        "Please run `/orch approve` when ready.",
    ] {
        quiet.push(say(&o, &issue, "lee", body).await);
    }
    // An edit that adds a command.
    let old = "Looks right.";
    let new = "Looks right.\n\n/orch approve";
    let edited = say(&o, &issue, "lee", old).await;
    let guid = o
        .deliver(
            "issue_comment",
            &payloads::issue_comment_edited(&o.repo, &issue, edited, old, new, "lee", "lee"),
        )
        .await;
    settled(&o, &guid).await;
    quiet.push(edited);

    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    assert_eq!(votes(&o).await, vec![]);
    assert_eq!(
        o.bot_comments(issue.number).len(),
        proposal_comments,
        "{:?}",
        o.bot_comments(issue.number)
    );
    for c in &quiet {
        assert!(reactions(&o, *c).is_empty(), "comment {c}: {:?}", reactions(&o, *c));
    }
    assert!(o.fake.state.labels(REPO, issue.number).is_empty());
    assert_eq!(o.workflow_states().await.len(), 1);

    // The same command, typed plainly by lee, does approve.
    let c = say(&o, &issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    assert_eq!(reactions(&o, c), eyes());
    assert_eq!(votes(&o).await, vec![(id, "lee".into(), "approve".into(), "command".into())]);
}

// ---------------------------------------------------------------------------------------------
// 4. Several commands in one comment

async fn several_commands_in_one_comment_run_in_order(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let issue = crash_issue(&o);
    // One reply gathers the answers, in order (SPEC §5).
    let (comment, replies) = ask(&o, &issue, "rin", "/orch status\n/orch help").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let answers: Vec<&str> = replies[0].split("\n\n---\n\n").collect();
    assert_eq!(answers.len(), 2, "{}", replies[0]);
    assert!(answers[0].starts_with("### orch · status"), "{}", answers[0]);
    assert_is_help(answers[1]);
    assert_eq!(reactions(&o, comment), eyes(), "one 👀 per comment");

    // A bad line in between does not stop the others; triage runs before status sees it.
    let (comment, replies) = ask(
        &o,
        &issue,
        "mara",
        "/orch triage\n/orch aprove\n/orch status\n\nthanks!\n/orch help",
    )
    .await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    assert_eq!(reactions(&o, comment), eyes());
    // The proposal comes from the workflow job, in parallel: the one reply to the comment holds
    // the other three answers, in order.
    let to_comment: Vec<&String> = replies.iter().filter(|r| !r.starts_with("### orch · triage proposal")).collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(to_comment.len(), 1, "{replies:?}");
    let to_comment: Vec<&str> = to_comment[0].split("\n\n---\n\n").collect();
    assert_eq!(to_comment.len(), 3, "{to_comment:?}");
    assert!(
        to_comment[0].starts_with("@mara, `/orch aprove` is not an orch command."),
        "{}",
        to_comment[0]
    );
    assert!(to_comment[1].starts_with("### orch · status"), "{}", to_comment[1]);
    assert!(
        to_comment[1].contains(&format!("- workflow {id} (triage, attempt 1): `")),
        "status runs after triage: {}",
        to_comment[1]
    );
    assert_is_help(to_comment[2]);
}

// ---------------------------------------------------------------------------------------------
// 5. Redeliveries

/// The same delivery again (same GUID) is answered as a duplicate and does nothing; the same
/// comment under a new GUID neither votes nor replies again while the vote is pending.
async fn a_redelivered_command_votes_and_replies_once(backend: Backend) {
    let Some(o) = orch(backend, "phase: 4\napprovals: {required: 2}\n").await else {
        return;
    };
    let (issue, id) = waiting_triage(&o).await;
    let body = "/orch approve";
    let (comment, guid) = o.comment(&issue, "lee", body).await;
    settled(&o, &guid).await;
    let after_first = o.bot_comments(issue.number);
    assert_eq!(after_first.len(), 2, "{after_first:?}");
    assert!(
        after_first[1].starts_with(&format!("Workflow {id}: 1 of 2 approvals; still needed: 1 more approval")),
        "{}",
        after_first[1]
    );
    let payload = payloads::issue_comment_created(&o.repo, &issue, comment, body, "lee", "User");

    // GitHub's redelivery reuses the GUID.
    let (status, answer) = o.send_with_guid("issue_comment", &guid, &payload).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "duplicate", "{answer}");
    // The same comment under another GUID.
    let again = o.deliver("issue_comment", &payload).await;
    settled(&o, &again).await;

    assert_eq!(votes(&o).await, vec![(id, "lee".into(), "approve".into(), "command".into())]);
    assert_eq!(o.bot_comments(issue.number), after_first);
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");

    // The second approver completes it, once.
    let (c2, g2) = o.comment(&issue, "kai", body).await;
    settled(&o, &g2).await;
    o.wait_state(id, "DONE").await;
    let (status, answer) = o
        .send_with_guid(
            "issue_comment",
            &g2,
            &payloads::issue_comment_created(&o.repo, &issue, c2, body, "kai", "User"),
        )
        .await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")), "{answer}");
    o.wait_idle(15).await;
    assert_eq!(votes(&o).await.len(), 2);
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["bug".to_string(), "priority:p1".into()]
    );
    assert_eq!(o.bot_comments(issue.number).len(), 3, "{:?}", o.bot_comments(issue.number));
}

/// The same approving comment under a new GUID once the workflow has moved on: it must neither
/// vote nor reply again.
async fn a_command_redelivered_after_it_took_effect_does_not_reply_again(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let (issue, id) = waiting_triage(&o).await;
    let body = "/orch approve";
    let (comment, guid) = o.comment(&issue, "lee", body).await;
    settled(&o, &guid).await;
    o.wait_state(id, "DONE").await;
    o.wait_idle(15).await;
    let before = o.bot_comments(issue.number);
    assert_eq!(before.len(), 2, "{before:?}");

    let payload = payloads::issue_comment_created(&o.repo, &issue, comment, body, "lee", "User");
    let again = o.deliver("issue_comment", &payload).await;
    settled(&o, &again).await;
    assert_eq!(votes(&o).await.len(), 1);
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(o.bot_comments(issue.number), before, "a second reply to the same comment");
}

/// The same `/orch triage` comment under a new GUID once its workflow is done: it must not start
/// the work a second time.
async fn a_start_command_redelivered_after_its_workflow_finished_does_not_start_again(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let issue = crash_issue(&o);
    let body = "/orch triage";
    let (comment, guid) = o.comment(&issue, "mara", body).await;
    settled(&o, &guid).await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    say(&o, &issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    o.wait_idle(15).await;
    let before = o.bot_comments(issue.number);

    let payload = payloads::issue_comment_created(&o.repo, &issue, comment, body, "mara", "User");
    let again = o.deliver("issue_comment", &payload).await;
    settled(&o, &again).await;
    assert_eq!(o.workflow_states().await, vec![(id, "triage".to_string(), "DONE".to_string())]);
    assert_eq!(o.bot_comments(issue.number), before);
}

/// The same `/orch propose` comment under a new GUID while its workflow waits: no second
/// workflow, and no reply to a command that was already answered.
async fn a_start_command_redelivered_while_its_workflow_waits_does_not_reply_again(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let issue = crash_issue(&o);
    let body = "/orch propose add a note about empty configs";
    let (comment, guid) = o.comment(&issue, "mara", body).await;
    settled(&o, &guid).await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let before = o.bot_comments(issue.number);

    let payload = payloads::issue_comment_created(&o.repo, &issue, comment, body, "mara", "User");
    let again = o.deliver("issue_comment", &payload).await;
    settled(&o, &again).await;
    assert_eq!(o.workflow_states().await.len(), 1);
    assert_eq!(o.bot_comments(issue.number), before);
}

/// GitHub answers 502 to the reply to `/orch request-changes` four times, as long as orch's own
/// retries of a comment last, so the delivery's job fails and runs again under the same GUID. The request took
/// effect the first time; the retry must still tell the user so, not that there is nothing to act
/// on.
async fn a_command_retried_after_a_github_error_keeps_its_reply(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let (issue, id) = waiting_triage(&o).await;
    o.fake.state.inject(Fault::new(
        Method::POST,
        &format!("/issues/{}/comments", issue.number),
        4,
        FaultKind::Status {
            code: 502,
            retry_after: None,
        },
    ));
    let (comment, replies) = ask(&o, &issue, "lee", "/orch request-changes use p2").await;
    assert_eq!(o.state_of(id).await, "NEEDS_HUMAN");
    assert_eq!(reactions(&o, comment), eyes());
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].starts_with(&format!("Workflow {id} is waiting for a human: @lee asked for changes.")),
        "{}",
        replies[0]
    );
}

/// `/orch retry` after `/orch request-changes` on a triage: the workflow goes back through
/// CONTEXT_LOADED and waits again; the user is shown the proposal it waits on.
async fn a_triage_retried_after_requested_changes_shows_its_new_proposal(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let (issue, id) = waiting_triage(&o).await;
    let (_, replies) = ask(&o, &issue, "lee", "/orch request-changes use p2").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(o.state_of(id).await, "NEEDS_HUMAN");
    let (_, replies) = ask(&o, &issue, "lee", "/orch retry").await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    assert_eq!(
        path(&o, id).await,
        [
            "INGESTED",
            "CONTEXT_LOADED",
            "PATCHES_PROPOSED",
            "WAITING_USER_APPROVAL",
            "NEEDS_HUMAN",
            "CONTEXT_LOADED",
            "PATCHES_PROPOSED",
            "WAITING_USER_APPROVAL"
        ]
    );
    assert!(
        replies
            .iter()
            .any(|r| r.starts_with(&format!("Workflow {id} is generating a new proposal."))),
        "{replies:?}"
    );
    let proposals = o
        .bot_comments(issue.number)
        .into_iter()
        .filter(|c| c.starts_with(&format!("### orch · triage proposal (workflow {id})")))
        .count();
    assert_eq!(
        proposals,
        2,
        "a second proposal comment after the retry: {:?}",
        o.bot_comments(issue.number)
    );
}

/// The same `/orch approve` comment under a new GUID after its workflow finished and a new
/// proposal was made: the old comment must not approve a proposal that did not exist when it was
/// written (SPEC §6: an approval is bound to the exact proposal).
async fn a_redelivered_approve_does_not_approve_a_later_proposal(backend: Backend) {
    // No dedupe window, so that the same triage may be asked for again at once.
    let Some(o) = orch(backend, "phase: 4\nlimits: {dedupe_window_hours: 0}\n").await else {
        return;
    };
    let (issue, first) = waiting_triage(&o).await;
    let body = "/orch approve";
    let (comment, guid) = o.comment(&issue, "lee", body).await;
    settled(&o, &guid).await;
    o.wait_state(first, "DONE").await;
    // Someone removes the labels and asks for a triage again: a new proposal waits.
    o.fake.state.set_labels(REPO, issue.number, &[]);
    say(&o, &issue, "mara", "/orch triage").await;
    let second = o.workflow_states().await.last().map(|w| w.0).expect("a second workflow");
    assert_ne!(second, first);
    o.wait_state(second, "WAITING_USER_APPROVAL").await;

    let payload = payloads::issue_comment_created(&o.repo, &issue, comment, body, "lee", "User");
    let again = o.deliver("issue_comment", &payload).await;
    settled(&o, &again).await;
    assert_eq!(o.state_of(second).await, "WAITING_USER_APPROVAL");
    assert_eq!(votes(&o).await, vec![(first, "lee".into(), "approve".into(), "command".into())]);
    assert!(
        o.fake.state.labels(REPO, issue.number).is_empty(),
        "{:?}",
        o.fake.state.labels(REPO, issue.number)
    );
}

both_backends!(
    commands_without_write_permission_are_refused_and_change_nothing,
    propose_request_changes_retry_reject_retry_cancel,
    a_listed_approver_without_write_access_may_approve,
);

/// One `#[tokio::test]` on SQLite for each `async fn(Backend)`, with the attributes given (`#[ignore]`).
macro_rules! sqlite_only {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$meta])*
            async fn $name() {
                super::$name(Backend::Sqlite).await
            }
        )*
    };
}

mod sqlite_only {
    use super::Backend;

    sqlite_only!(
        triage_command_then_approve_applies_the_labels,
        plan_command_posts_a_qa_plan_on_pull_requests_only,
        help_lists_every_verb,
        malformed_commands_get_the_problem_a_suggestion_and_the_help,
        commands_the_phase_does_not_enable_say_which_phase_does,
        bots_orch_hidden_and_edited_commands_never_run,
        several_commands_in_one_comment_run_in_order,
        a_redelivered_command_votes_and_replies_once,
        a_command_redelivered_after_it_took_effect_does_not_reply_again,
        a_start_command_redelivered_after_its_workflow_finished_does_not_start_again,
        a_start_command_redelivered_while_its_workflow_waits_does_not_reply_again,
        a_redelivered_approve_does_not_approve_a_later_proposal,
        a_command_retried_after_a_github_error_keeps_its_reply,
        a_triage_retried_after_requested_changes_shows_its_new_proposal,
    );
}
