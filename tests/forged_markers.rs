//! Attack 1 of issue 13, end to end: forged markers (SPEC §6 "What orch said", §11). Before orch
//! writes anything, an outsider posts every marker orch would use for its first 40 writes —
//! untagged (`<!-- orch:action:N -->`), in the keyed shape with a wrong tag, and as another bot.
//! orch still posts its proposal and its replies, and polls reactions on its own proposal only:
//! a maintainer's 👍 on the attacker's comment does nothing, the same 👍 on orch's comment
//! approves.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{Orch, REPO};
use std::time::Duration;

const BOT: &str = orch::github::fake::APP_LOGIN;

fn untagged() -> String {
    (1..=40).map(|i| format!("<!-- orch:action:{i} -->\n")).collect()
}

fn wrong_tags() -> String {
    (1..=40)
        .map(|i| format!("<!-- orch:action:{i}:{} -->\n", "0123456789abcdef".repeat(2)))
        .collect()
}

async fn outsiders_markers_neither_hide_nor_stand_in_for_orchs_writes(backend: Backend) {
    let Some(o) = Orch::start(backend, "phase: 4\n").await else {
        return;
    };
    o.user("mara", "maintain");
    o.user("lee", "write");
    let issue = o.open_issue("Off by one", "answer() should be 42", "dev-kim");
    // Before orch has written anything: an outsider's comment with the untagged markers, one
    // with the keyed shape and wrong tags, and another bot's comment with both.
    let (forged, guid) = o.comment(&issue, "mallory", &format!("nice bot\n{}", untagged())).await;
    o.wait_processed(&guid).await;
    let (_, guid) = o.comment(&issue, "mallory", &format!("again\n{}", wrong_tags())).await;
    o.wait_processed(&guid).await;
    let (_, guid) = o.comment(&issue, "other[bot]", &format!("{}{}", untagged(), wrong_tags())).await;
    o.wait_processed(&guid).await;

    o.comment(&issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    // The proposal is on GitHub, written by orch.
    let proposal = o
        .eventually_sync("orch's proposal comment", e2e::WAIT, || {
            o.fake
                .state
                .comments(REPO, issue.number)
                .into_iter()
                .find(|c| c.author == BOT && c.body.contains("proposal (workflow"))
        })
        .await;
    assert!(proposal.body.contains("src/lib.rs"), "{}", proposal.body);
    let recorded: Option<i64> = sqlx::query_scalar("SELECT proposal_comment_id FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_one(o.store.pool())
        .await
        .unwrap();
    assert_eq!(recorded, Some(proposal.id), "reactions are polled on orch's own comment");

    // A reply to anyone's command still appears.
    let before = o.bot_comments(issue.number).len();
    let (_, guid) = o.comment(&issue, "mallory", "/orch status").await;
    o.wait_processed(&guid).await;
    o.eventually_sync("a status reply", e2e::WAIT, || {
        (o.bot_comments(issue.number).len() > before).then_some(())
    })
    .await;

    // A maintainer's 👍 on the attacker's comment is not a vote on anything.
    o.fake.state.react(forged, "lee", "User", "+1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    // The same 👍 on orch's proposal approves, and the patch goes out.
    o.fake.state.react(proposal.id, "lee", "User", "+1");
    o.wait_state(id, "DONE").await;
    assert_eq!(o.fake.state.pulls(REPO).len(), 1);
    // Every comment orch wrote carries a keyed marker; none of the forged ones were taken.
    for c in o.fake.state.bot_comments(REPO, issue.number) {
        assert!(c.body.contains("<!-- orch:action:") && !c.body.contains(&untagged()), "{}", c.body);
    }
    let mut o = o;
    o.stop().await;
}

both_backends!(outsiders_markers_neither_hide_nor_stand_in_for_orchs_writes);
