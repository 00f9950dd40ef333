//! Flood limits end to end (SPEC §5; issue 13, attack 3): signed `issue_comment` webhooks into
//! the real router, and what the fake GitHub holds afterwards. One comment runs at most 10
//! commands and gets one reply; a user without permission gets at most one refusal per issue
//! per hour; no comment makes orch write more than two comments.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{IssueSpec, Orch, REPO};
use sqlx::Row;

async fn orch(backend: Backend) -> Option<Orch> {
    let o = Orch::start(backend, "phase: 4\n").await?;
    o.user("mara", "maintain");
    o.user("eve", "read");
    Some(o)
}

/// `login` comments `body` on `issue` and orch is done with it (and every job it made due).
async fn say(o: &Orch, issue: &IssueSpec, login: &str, body: &str) -> i64 {
    let (id, guid) = o.comment(issue, login, body).await;
    o.wait_processed(&guid).await;
    o.wait_idle(15).await;
    id
}

/// The audit entries of refused commands, as (verb, posted).
async fn refusals(o: &Orch) -> Vec<(String, bool)> {
    sqlx::query("SELECT details FROM audit_log WHERE kind = 'command_denied' ORDER BY seq")
        .fetch_all(o.store.pool())
        .await
        .expect("the audit log is readable")
        .into_iter()
        .map(|r| {
            let details: serde_json::Value = serde_json::from_str(&r.get::<String, _>(0)).expect("audit details are JSON");
            (
                details["verb"].as_str().unwrap_or("").to_string(),
                details["posted"].as_bool().unwrap_or(true),
            )
        })
        .collect()
}

async fn two_hundred_status_lines_get_one_reply(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let issue = o.open_issue("Crash", "It crashes.", "dev-kim");
    let body: String = (0..200).map(|_| "/orch status\n").collect();
    let log_before = o.fake.state.log().len();
    say(&o, &issue, "eve", &body).await;
    // The reply is posted without listing the issue's comments first: a first attempt has
    // nothing to look for.
    let listed = o.fake.state.log()[log_before..]
        .iter()
        .filter(|(m, p)| m == "GET" && p.contains(&format!("/issues/{}/comments", issue.number)))
        .count();
    assert_eq!(listed, 0, "the issue's comments were listed {listed} times");
    let replies = o.bot_comments(issue.number);
    assert_eq!(replies.len(), 1, "one reply for one comment: {} replies", replies.len());
    let reply = &replies[0];
    assert_eq!(reply.matches("### orch · status").count(), 10, "ten commands answered: {reply}");
    assert!(
        reply.contains("**190 more commands were not run:** one comment runs at most 10 commands")
            && reply.contains("line 11 `/orch status`"),
        "the rest named as ignored: {reply}"
    );
}

async fn five_thousand_commands_get_one_bounded_reply(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let issue = o.open_issue("Crash", "It crashes.", "dev-kim");
    let verbs = ["/orch status", "/orch help", "/orch approve", "/orch frobnicate", "/orch cancel"];
    let body: String = (0..5_000).map(|i| format!("{}\n", verbs[i % verbs.len()])).collect();
    let requests_before = o.fake.state.log().len();
    say(&o, &issue, "eve", &body).await;
    let replies = o.bot_comments(issue.number);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply = &replies[0];
    assert!(reply.chars().count() < 65_536);
    assert!(reply.contains("**4990 more commands were not run:**"), "{reply}");
    assert!(reply.contains("and 4970 more"), "{reply}");
    assert!(reply.contains("`/orch frobnicate` is not an orch command"), "{reply}");
    // Bounded work: a handful of GitHub requests, not thousands.
    let requests = o.fake.state.log().len() - requests_before;
    assert!(requests < 40, "{requests} GitHub requests for one comment");
    assert!(o.workflow_states().await.is_empty());
}

async fn a_user_without_permission_is_refused_once_per_hour(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let issue = o.open_issue("Crash", "It crashes.", "dev-kim");
    // Two refused commands in the first comment: one reply that holds both refusals.
    say(&o, &issue, "eve", "/orch approve\n/orch triage").await;
    say(&o, &issue, "eve", "/orch cancel").await;
    say(&o, &issue, "eve", "/orch propose do it").await;
    let replies = o.bot_comments(issue.number);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].contains("`/orch approve`") && replies[0].contains("`/orch triage`"),
        "{}",
        replies[0]
    );
    assert_eq!(
        refusals(&o).await,
        [
            ("approve".to_string(), true),
            ("triage".to_string(), true),
            ("cancel".to_string(), false),
            ("propose".to_string(), false)
        ],
        "later refusals are audited, not posted"
    );
    // Status stays open to anyone, and is answered.
    say(&o, &issue, "eve", "/orch status").await;
    assert_eq!(o.bot_comments(issue.number).len(), 2);
    // Another issue is another window.
    let other = o.open_issue("Docs", "Please document.", "dev-kim");
    say(&o, &other, "eve", "/orch approve").await;
    assert_eq!(o.bot_comments(other.number).len(), 1);
}

async fn one_comment_makes_orch_write_at_most_two_comments(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let issue = o.open_issue("Crash", "It crashes.", "dev-kim");
    say(
        &o,
        &issue,
        "mara",
        "/orch triage\n/orch propose fix it\n/orch retry\n/orch help\n/orch status",
    )
    .await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    o.wait_idle(15).await;
    let kinds: Vec<String> = o.workflow_states().await.into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(kinds, ["triage"], "one workflow started");
    let comments = o.bot_comments(issue.number);
    assert_eq!(comments.len(), 2, "the combined reply and the proposal: {comments:?}");
    let reply = comments
        .iter()
        .find(|c| !c.starts_with("### orch · triage proposal"))
        .expect("the reply");
    assert!(
        reply.contains("`/orch propose fix it` was not run: one comment starts or decides at most one workflow"),
        "{reply}"
    );
}

/// Check-run buttons follow the same rule as commands: eve (read only) presses Approve three
/// times on a patch's check run; she is refused once, the other presses are audited, and
/// nothing is recorded.
async fn a_reader_pressing_buttons_is_refused_once_per_hour(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let issue = o.open_issue("Off by one", "answer() should be 42", "dev-kim");
    say(&o, &issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let before = o.bot_comments(issue.number).len();
    let run = o.fake.state.check_runs(REPO)[0].id;
    for _ in 0..3 {
        let press = e2e::payloads::check_run_requested_action(
            &o.repo,
            run,
            "orch/patch",
            &o.main_sha,
            Some(&format!("workflow:{id}")),
            "approve",
            "eve",
            "User",
        );
        let guid = o.deliver("check_run", &press).await;
        o.wait_processed(&guid).await;
        o.wait_idle(15).await;
    }
    let comments = o.bot_comments(issue.number);
    let refused: Vec<&String> = comments[before..].iter().filter(|c| c.starts_with("@eve")).collect();
    assert_eq!(refused.len(), 1, "one refusal posted: {comments:?}");
    assert!(refused[0].contains("the Approve button"), "{}", refused[0]);
    let audited: Vec<bool> = refusals(&o).await.into_iter().map(|(_, posted)| posted).collect();
    assert_eq!(audited, [true, false, false], "later presses are audited, not posted");
    assert!(orch::store::workflows::votes(o.store.pool(), id).await.unwrap().is_empty());
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
}

both_backends!(
    two_hundred_status_lines_get_one_reply,
    five_thousand_commands_get_one_bounded_reply,
    a_user_without_permission_is_refused_once_per_hour,
    one_comment_makes_orch_write_at_most_two_comments,
    a_reader_pressing_buttons_is_refused_once_per_hour,
);
