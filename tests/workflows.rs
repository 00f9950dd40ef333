//! Workflows end to end: signed webhooks into the real router, the engine against the fake
//! GitHub, and what users see there (comments, labels, reactions, check runs, pull requests)
//! together with what the store holds.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::payloads;
use e2e::{Orch, REPO, WAIT};
use orch::github::fake::{Fault, FaultKind};
use std::time::Duration;

/// Phase 4: every kind of work enabled.
pub const POLICY: &str = "phase: 4\n";

async fn orch(backend: Backend, policy: &str) -> Option<Orch> {
    let o = Orch::start(backend, policy).await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    o.user("rin", "read");
    Some(o)
}

async fn triage_label_then_approve_applies_the_labels(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let proposal = o.bot_comments(issue.number);
    assert_eq!(proposal.len(), 1, "{proposal:?}");
    assert!(proposal[0].contains("triage proposal"), "{}", proposal[0]);
    assert!(proposal[0].contains("`bug`, `priority:p1`"), "{}", proposal[0]);
    assert!(
        o.fake.state.labels(REPO, issue.number) == vec!["orch:triage".to_string()],
        "nothing applied before approval"
    );

    let (comment, _) = o.comment(&issue, "lee", "Looks right.\n\n/orch approve").await;
    o.wait_state(id, "DONE").await;
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["orch:triage".to_string(), "bug".into(), "priority:p1".into()]
    );
    let all = o.bot_comments(issue.number);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all[1].starts_with("Applied labels `bug`, `priority:p1`"), "{}", all[1]);
    assert!(all[1].contains("approved by @lee"), "{}", all[1]);
    assert_eq!(o.fake.state.reactions(comment), vec![("eyes".to_string(), "orch[bot]".to_string())]);
    let path: Vec<String> = o.transitions(id).await.into_iter().map(|(_, to, _)| to).collect();
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
        ]
    );
    let approved_by = o
        .transitions(id)
        .await
        .into_iter()
        .find(|(_, to, _)| to == "APPROVED")
        .map(|(_, _, a)| a);
    assert_eq!(approved_by.as_deref(), Some("lee"));
    // Every step is in the audit chain: the deliveries, the transitions, the vote, the model
    // call, the verdicts and each GitHub write; and the chain holds.
    let audited = |kind: &'static str| {
        let store = o.store.clone();
        async move {
            let filter = orch::audit::Filter {
                kind: Some(kind.to_string()),
                ..Default::default()
            };
            orch::audit::page(store.pool(), 0, 1000, &filter).await.unwrap()
        }
    };
    assert_eq!(audited("delivery").await.len(), 2, "the label and the comment");
    assert_eq!(audited("transition").await.len(), 7);
    assert_eq!(audited("vote").await.len(), 1);
    assert_eq!(audited("model_call").await.len(), 1);
    assert!(!audited("policy_verdict").await.is_empty());
    let writes: Vec<String> = audited("github_write")
        .await
        .iter()
        .map(|r| r.details["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        writes,
        ["comment", "reaction", "labels", "comment"],
        "proposal, 👀, labels, applied"
    );
    assert!(matches!(
        orch::audit::verify(o.store.pool()).await.unwrap(),
        orch::audit::Verdict::Intact { .. }
    ));
}

async fn a_thumbs_up_on_the_proposal_approves(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let mut issue = o.open_issue("Add dark mode", "It would be nice.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let proposal = o.fake.state.bot_comments(REPO, issue.number)[0].id;
    // A reader's 👍 does not count (and is answered); a bot's is ignored.
    o.fake.state.react(proposal, "rin", "User", "+1");
    o.fake.state.react(proposal, "renovate[bot]", "Bot", "+1");
    o.eventually("the reader is told their 👍 does not count", WAIT, || async {
        o.bot_comments(issue.number)
            .iter()
            .any(|c| c.starts_with("@rin, approving with 👍 needs write"))
            .then_some(())
    })
    .await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    // A writer's 👍 approves, found by polling (GitHub sends no webhook for reactions).
    o.fake.state.react(proposal, "lee", "User", "+1");
    o.wait_state(id, "DONE").await;
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["orch:triage".to_string(), "enhancement".into(), "priority:p2".into()]
    );
    assert!(o.bot_comments(issue.number).last().unwrap().contains("approved by @lee"));
    // Polling used conditional requests: unchanged reactions were answered 304, which costs no
    // rate limit, so the polls after the first cost nothing.
    let polls = o
        .fake
        .state
        .log()
        .iter()
        .filter(|(m, p)| m == "GET" && p.ends_with(&format!("/comments/{proposal}/reactions")))
        .count();
    assert!(polls >= 2, "reactions were polled {polls} times");
}

async fn a_patch_approved_with_the_button_becomes_a_pull_request(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let issue = o.open_issue("Answer is off by one", "The answer should be 42.", "dev-kim");
    o.comment(&issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let runs = o.fake.state.check_runs(REPO);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(
        (run.name.as_str(), run.status.as_str(), run.conclusion.as_deref()),
        ("orch/patch", "completed", Some("action_required"))
    );
    assert_eq!(run.actions.len(), 2);
    assert_eq!(run.head_sha, o.main_sha);
    // A reader's press is refused with a reply, a bot's is ignored.
    for (login, kind) in [("rin", "User"), ("dependabot[bot]", "Bot")] {
        let press = payloads::check_run_requested_action(
            &o.repo,
            run.id,
            &run.name,
            &run.head_sha,
            Some(&format!("workflow:{id}")),
            "approve",
            login,
            kind,
        );
        let guid = o.deliver("check_run", &press).await;
        o.wait_processed(&guid).await;
    }
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    assert!(o
        .bot_comments(issue.number)
        .iter()
        .any(|c| c.starts_with("@rin, the Approve button needs write")));
    let press = payloads::check_run_requested_action(
        &o.repo,
        run.id,
        &run.name,
        &run.head_sha,
        Some(&format!("workflow:{id}")),
        "approve",
        "lee",
        "User",
    );
    o.deliver("check_run", &press).await;
    o.wait_state(id, "DONE").await;

    let pulls = o.fake.state.pulls(REPO);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let pr = &pulls[0];
    assert_eq!((pr.head.as_str(), pr.base.as_str()), (format!("orch/{id}").as_str(), "main"));
    assert!(
        pr.body.contains(&format!("Closes #{}", issue.number)) && pr.body.contains("- @lee (the Approve button)"),
        "{}",
        pr.body
    );
    // Exactly the patch's file changed on top of main.
    let files = o.fake.state.files_at(REPO, &format!("orch/{id}")).unwrap();
    let main = o.fake.state.files_at(REPO, "main").unwrap();
    assert_eq!(files.keys().collect::<Vec<_>>(), main.keys().collect::<Vec<_>>());
    assert_eq!(
        files["src/lib.rs"],
        format!("{}// orch: fix `src/lib.rs` to return 42\n", e2e::LIB_RS)
    );
    assert_eq!(files["README.md"], main["README.md"]);
    let (parents, message) = o.fake.state.tip(REPO, &format!("orch/{id}")).unwrap();
    assert_eq!(parents, vec![o.main_sha.clone()]);
    assert!(
        message.contains("approved by @lee") && message.contains(&format!("workflow {id}")),
        "{message}"
    );
    // The pull request is linked from the proposal's check run, not announced in a comment.
    let closed = o
        .eventually_sync("the check run links the pull request", WAIT, || {
            o.fake.state.check_run(run.id).filter(|r| r.actions.is_empty())
        })
        .await;
    let pull_url = format!("{}/{REPO}/pull/{}", o.fake.url(), pr.number);
    assert_eq!(closed.details_url.as_deref(), Some(pull_url.as_str()));
    assert!(
        closed.summary.contains(&format!("[#{}]({pull_url})", pr.number)),
        "{}",
        closed.summary
    );
    assert!(
        !o.bot_comments(issue.number).iter().any(|c| c.contains(&format!("#{}", pr.number))),
        "{:#?}",
        o.bot_comments(issue.number)
    );
    let path: Vec<String> = o.transitions(id).await.into_iter().map(|(_, to, _)| to).collect();
    assert_eq!(path[path.len() - 4..], ["APPROVED", "APPLYING_CHANGES", "PR_CREATED", "DONE"]);
}

/// QA plans that need approval, two approvers: for the tests of voiding and quorum.
const STRICT_QA: &str = "phase: 4\napprovals: {required: 2}\nactions: {add_comment: approval_required}\n";

async fn a_push_voids_the_approvals_given_for_the_old_head(backend: Backend) {
    let Some(o) = orch(backend, STRICT_QA).await else { return };
    let pr = o.open_pull("Faster parser", "feature", &[("src/parse.rs", Some("fn parse() {}\n"))], "dev-kim");
    o.comment(&pr.as_issue(), "mara", "/orch plan").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let (_, guid) = o.comment(&pr.as_issue(), "lee", "/orch approve").await;
    o.wait_processed(&guid).await;
    assert!(o.bot_comments(pr.number).iter().any(|c| c.contains("1 of 2 approvals")));
    // New commits: lee's approval was for the old head.
    let after = o
        .fake
        .state
        .push(REPO, "feature", &[("src/parse.rs", Some("fn parse() { todo!() }\n"))]);
    let guid = o
        .deliver(
            "pull_request",
            &payloads::pull_request_synchronize(&o.repo, &pr, &pr.head_sha, &after, "dev-kim"),
        )
        .await;
    o.wait_processed(&guid).await;
    let notice = o
        .bot_comments(pr.number)
        .into_iter()
        .find(|c| c.starts_with("New commits were pushed"))
        .expect("a comment says why");
    assert!(notice.contains("no longer count") && notice.contains("1 voided"), "{notice}");
    // Another approval now is the first for the new head: still one short.
    let (_, guid) = o.comment(&pr.as_issue(), "mara", "/orch approve").await;
    o.wait_processed(&guid).await;
    o.wait_idle(10).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    o.comment(&pr.as_issue(), "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    let qa = o.fake.state.check_runs(REPO);
    assert_eq!(qa.len(), 1);
    assert_eq!(
        (qa[0].name.as_str(), qa[0].head_sha.as_str()),
        ("orch/qa-plan", after.as_str()),
        "the plan is posted for the new head"
    );
}

async fn quorum_two_needs_two_different_approvers(backend: Backend) {
    let Some(o) = orch(backend, "phase: 4\napprovals: {required: 2}\n").await else {
        return;
    };
    let mut issue = o.open_issue("Crash on save", "error when saving", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    for _ in 0..2 {
        let (_, guid) = o.comment(&issue, "lee", "/orch approve").await;
        o.wait_processed(&guid).await;
    }
    o.wait_idle(10).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL", "one approver twice is one approval");
    let proposal = o.fake.state.bot_comments(REPO, issue.number)[0].id;
    o.fake.state.react(proposal, "lee", "User", "+1");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL", "and a 👍 from the same person too");
    let (_, guid) = o.comment(&issue, "mara", "/orch status").await;
    o.wait_processed(&guid).await;
    let status = o
        .bot_comments(issue.number)
        .into_iter()
        .find(|c| c.starts_with("### orch · status"))
        .unwrap();
    assert!(
        status.contains("WAITING_USER_APPROVAL") && status.contains("1 of 2 approvals; still needed: 1 more approval"),
        "{status}"
    );
    o.comment(&issue, "mara", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    assert!(o.bot_comments(issue.number).last().unwrap().contains("approved by @lee, @mara"));
}

async fn the_requester_alone_cannot_approve(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let mut issue = o.open_issue("Crash on load", "panic at startup", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let (_, guid) = o.comment(&issue, "mara", "/orch approve").await;
    o.wait_processed(&guid).await;
    o.wait_idle(10).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    let reply = o.bot_comments(issue.number).into_iter().last().unwrap();
    assert!(reply.contains("someone other than @mara"), "{reply}");
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
}

async fn an_approver_who_lost_write_permission_is_refused_at_apply_time(backend: Backend) {
    let Some(o) = Orch::with_env(backend, POLICY, &[("ORCH_PERMISSION_CACHE_SECS", "0")]).await else {
        return;
    };
    o.user("mara", "maintain");
    o.user("lee", "write");
    let mut issue = o.open_issue("Crash on exit", "it crashes", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    // lee is allowed when the command arrives; while orch acknowledges it (the 👀 is slow),
    // lee's permission is taken away, before Gate 3 looks again.
    let body = "/orch approve";
    let comment = o.fake.state.user_comment(REPO, issue.number, "lee", "User", body);
    o.fake.state.inject(orch::github::fake::Fault::new(
        reqwest::Method::POST,
        &format!("/issues/comments/{comment}/reactions"),
        1,
        orch::github::fake::FaultKind::Delay(std::time::Duration::from_millis(800)),
    ));
    let guid = o
        .deliver(
            "issue_comment",
            &payloads::issue_comment_created(&o.repo, &issue, comment, body, "lee", "User"),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    o.user("lee", "read");
    o.wait_processed(&guid).await;
    o.wait_idle(10).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    let notice = o.bot_comments(issue.number).into_iter().last().unwrap();
    assert!(notice.contains("the approval of @lee (now read) no longer counts"), "{notice}");
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["orch:triage".to_string()],
        "nothing applied"
    );
    let states: Vec<String> = o.transitions(id).await.into_iter().map(|(_, to, _)| to).collect();
    assert_eq!(states[states.len() - 2..], ["APPROVED", "WAITING_USER_APPROVAL"]);
}

/// An approval given while the proposal is being posted (the comment is on GitHub, GitHub's
/// answer has not reached orch, so the workflow is not yet recorded as waiting) waits for the
/// proposal and counts, instead of being answered "no workflow here".
async fn an_approval_while_the_proposal_is_posted_counts(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    // The proposal comment is made at once; its answer is held back for 3 s.
    o.fake.state.inject(Fault::new(
        axum::http::Method::POST,
        &format!("/issues/{}/comments", issue.number),
        1,
        FaultKind::ApplyThenStall(Duration::from_secs(3)),
    ));
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.eventually_sync("the proposal on GitHub", WAIT, || {
        (o.bot_comments(issue.number).len() == 1).then_some(())
    })
    .await;
    assert_eq!(o.state_of(id).await, "PATCHES_PROPOSED", "the approval must come inside the window");
    let (comment, _) = o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["orch:triage".to_string(), "bug".into(), "priority:p1".into()]
    );
    let all = o.bot_comments(issue.number);
    assert_eq!(all.len(), 2, "the proposal and the applied labels, no refusal: {all:?}");
    assert!(all[1].starts_with("Applied labels `bug`, `priority:p1`"), "{}", all[1]);
    assert!(all[1].contains("approved by @lee"), "{}", all[1]);
    assert_eq!(o.fake.state.reactions(comment), vec![("eyes".to_string(), "orch[bot]".to_string())]);
}

/// The Reject button rejects as the user who pressed it: the workflow fails with their name,
/// the vote is in the ledger with the button as its source, and nothing is applied.
async fn the_reject_button_rejects_as_its_presser(backend: Backend) {
    let Some(o) = orch(backend, POLICY).await else { return };
    let issue = o.open_issue("Answer is off by one", "The answer should be 42.", "dev-kim");
    o.comment(&issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let run = o.fake.state.check_runs(REPO).remove(0);
    let press = payloads::check_run_requested_action(
        &o.repo,
        run.id,
        &run.name,
        &run.head_sha,
        Some(&format!("workflow:{id}")),
        "reject",
        "lee",
        "User",
    );
    o.deliver("check_run", &press).await;
    o.wait_state(id, "FAILED").await;
    let last = o.transitions(id).await.pop().expect("a transition");
    assert_eq!((last.1.as_str(), last.2.as_str()), ("FAILED", "lee"), "{last:?}");
    let votes: Vec<(String, String, String)> =
        sqlx::query_as("SELECT voter, decision, source FROM approvals WHERE workflow_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(o.store.pool())
            .await
            .unwrap();
    assert_eq!(votes, [("lee".to_string(), "reject".to_string(), "button".to_string())]);
    // The reply follows the recorded decision.
    o.eventually_sync("the rejection is announced", WAIT, || {
        o.bot_comments(issue.number)
            .iter()
            .any(|c| c.starts_with(&format!("Workflow {id} was rejected by @lee")))
            .then_some(())
    })
    .await;
    assert!(o.fake.state.pulls(REPO).is_empty(), "nothing applied");
    assert_eq!(o.fake.state.branches(REPO), ["main"]);
    // The decided proposal's check run loses its buttons and says how it ended; it stays the
    // write that created it (its marker is kept).
    let closed = o
        .eventually_sync("the check run is closed", WAIT, || {
            o.fake.state.check_run(run.id).filter(|r| r.actions.is_empty())
        })
        .await;
    assert_eq!(closed.conclusion.as_deref(), Some("neutral"));
    assert!(
        closed.summary.starts_with("**Closed without being applied.**") && closed.summary.contains("rejected by @lee"),
        "{}",
        closed.summary
    );
    let marker = run.summary.rfind("<!-- orch:action:").map(|i| &run.summary[i..]).unwrap();
    assert!(closed.summary.ends_with(marker), "{}", closed.summary);
    assert_eq!(
        closed.title.as_deref(),
        Some(format!("Patch proposal for #{} (workflow {id}): FAILED", issue.number).as_str())
    );
}

both_backends!(
    triage_label_then_approve_applies_the_labels,
    the_reject_button_rejects_as_its_presser,
    an_approval_while_the_proposal_is_posted_counts,
    a_thumbs_up_on_the_proposal_approves,
    a_patch_approved_with_the_button_becomes_a_pull_request,
    a_push_voids_the_approvals_given_for_the_old_head,
    quorum_two_needs_two_different_approvers,
    the_requester_alone_cannot_approve,
    an_approver_who_lost_write_permission_is_refused_at_apply_time,
);
