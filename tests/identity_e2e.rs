//! Who is who (SPEC §6): people are their numeric GitHub account ids, on both databases. A
//! requester who renames their account is still the requester and cannot approve their own
//! proposal; someone else who takes over a freed login is someone else; a bot that renames itself
//! to a plain-looking login is still a bot (its account type says so) and can neither run
//! commands nor vote.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{payloads, IssueSpec, Orch, REPO};
use serde_json::Value;

/// `login` (an account whose id is `id`, whatever its login is now) comments `body` on `issue`.
async fn comment_as(o: &Orch, issue: &IssueSpec, login: &str, id: i64, kind: &str, body: &str) -> i64 {
    let comment = o.fake.state.user_comment(REPO, issue.number, login, kind, body);
    let mut payload: Value = payloads::issue_comment_created(&o.repo, issue, comment, body, login, kind);
    payload["comment"]["user"]["id"] = id.into();
    payload["sender"]["id"] = id.into();
    let guid = o.deliver("issue_comment", &payload).await;
    o.wait_processed(&guid).await;
    comment
}

fn account(login: &str) -> i64 {
    payloads::stable_id("user", login)
}

async fn votes(o: &Orch, id: i64) -> Vec<(String, Option<i64>)> {
    use sqlx::Row;
    sqlx::query("SELECT voter, voter_id FROM approvals WHERE workflow_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(o.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The attack: the requester renames their account and approves their own proposal.
async fn a_renamed_requester_is_still_the_requester(backend: Backend) {
    let Some(o) = Orch::start(backend, "phase: 4\n").await else {
        return;
    };
    o.user("mara", "maintain");
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;

    // mara renames her account to `mara-renamed` (same id; GitHub keeps her permission).
    o.user("mara-renamed", "maintain");
    o.fake.state.set_user_id("mara-renamed", account("mara"));
    comment_as(&o, &issue, "mara-renamed", account("mara"), "User", "/orch approve").await;
    let reply = o
        .eventually("the vote is answered, or the proposal applied", e2e::WAIT, || async {
            let said = o.bot_comments(issue.number).into_iter().find(|c| c.contains("still needed"));
            match o.state_of(id).await.as_str() {
                "WAITING_USER_APPROVAL" => said,
                moved => Some(format!("workflow moved to {moved}")),
            }
        })
        .await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL", "{reply}");
    assert!(reply.contains("1 more approval from someone other than @mara"), "{reply}");
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["orch:triage".to_string()],
        "nothing applied"
    );
    // Stored by id: the requester and the vote.
    let requested_by_id: Option<i64> = sqlx::query_scalar("SELECT requested_by_id FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_one(o.store.pool())
        .await
        .unwrap();
    assert_eq!(requested_by_id, Some(account("mara")));
    assert_eq!(votes(&o, id).await, vec![("mara-renamed".to_string(), Some(account("mara")))]);
    // `/orch status` shows who is who by login and id.
    comment_as(&o, &issue, "rin", account("rin"), "User", "/orch status").await;
    let status = o
        .eventually("the status reply", e2e::WAIT, || async {
            o.bot_comments(issue.number).into_iter().find(|c| c.contains("orch · status"))
        })
        .await;
    let mara = account("mara");
    assert!(status.contains(&format!("requested by @mara (id {mara})")), "{status}");
    assert!(
        status.contains(&format!("approved so far by @mara-renamed (id {mara})")),
        "{status}"
    );

    // Someone else who took over the freed login `mara` is a different account: their approval
    // counts, and the proposal is applied.
    o.fake.state.set_user_id("mara", 4_242_424);
    comment_as(&o, &issue, "mara", 4_242_424, "User", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["orch:triage".to_string(), "bug".into(), "priority:p1".into()]
    );
}

/// A bot renamed to a login without `[bot]` is still a bot: no command runs, no vote counts,
/// from a comment or from a 👍.
async fn a_renamed_bot_is_still_a_bot(backend: Backend) {
    let Some(o) = Orch::start(backend, "phase: 4\n").await else {
        return;
    };
    o.user("mara", "maintain");
    // The bot has write access: only its account type keeps it out.
    o.user(payloads::RENAMED_BOT, "write");
    let bot = account("helpful-helper[bot]");

    let mut quiet = o.open_issue("Docs typo", "README says recieve.", "dev-kim");
    comment_as(&o, &quiet, payloads::RENAMED_BOT, bot, "Bot", "/orch triage\n/orch status").await;
    assert!(o.workflow_states().await.is_empty(), "a bot started a workflow");
    assert!(o.bot_comments(quiet.number).is_empty(), "orch answered a bot");

    o.label_issue(&mut quiet, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    comment_as(&o, &quiet, payloads::RENAMED_BOT, bot, "Bot", "/orch approve").await;
    let proposal: Option<i64> = sqlx::query_scalar("SELECT proposal_comment_id FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_one(o.store.pool())
        .await
        .unwrap();
    o.fake
        .state
        .react(proposal.expect("the proposal comment"), payloads::RENAMED_BOT, "Bot", "+1");
    // Two reaction polls later the workflow still waits, with no vote in its ledger.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    o.wait_idle(5).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    let ledger: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM approvals WHERE workflow_id = $1")
        .bind(id)
        .fetch_one(o.store.pool())
        .await
        .unwrap();
    assert_eq!(ledger, 0, "a bot's vote is in the ledger");
    assert_eq!(o.fake.state.labels(REPO, quiet.number), vec!["orch:triage".to_string()]);
}

/// Gate 3 re-checks an approver's permission by login, as GitHub's API asks; when the login
/// has passed to another account since the vote (the approver renamed away, someone else took
/// the name), the new holder's permission is not the approver's: the vote no longer counts.
async fn an_approvers_login_taken_over_before_gate_three_is_refused(backend: Backend) {
    let Some(o) = Orch::with_env(backend, "phase: 4\n", &[("ORCH_PERMISSION_CACHE_SECS", "0")]).await else {
        return;
    };
    o.user("mara", "maintain");
    o.user("lee", "write");
    let mut issue = o.open_issue("Crash on exit", "it crashes", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    // lee's vote is accepted; while orch acknowledges it (the 👀 is slow), the login `lee`
    // passes to another account that has write permission too.
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
    o.fake.state.set_user_id("lee", 5_150_150);
    o.wait_processed(&guid).await;
    o.wait_idle(10).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL", "{}", o.diagnostics().await);
    let notice = o.bot_comments(issue.number).into_iter().last().unwrap();
    assert!(
        notice.contains("the approval of @lee (now none: @lee is now another account) no longer counts"),
        "{notice}"
    );
    assert_eq!(
        o.fake.state.labels(REPO, issue.number),
        vec!["orch:triage".to_string()],
        "nothing applied"
    );
}

both_backends!(
    a_renamed_requester_is_still_the_requester,
    a_renamed_bot_is_still_a_bot,
    an_approvers_login_taken_over_before_gate_three_is_refused,
);
