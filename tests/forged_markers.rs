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
    forged_before_orch_writes(
        backend,
        &[
            ("mallory", format!("nice bot\n{}", untagged())),
            ("mallory", format!("again\n{}", wrong_tags())),
            ("other[bot]", format!("{}{}", untagged(), wrong_tags())),
        ],
    )
    .await
}

/// The keyed shape alone, with wrong tags: as harmless as the untagged one.
async fn markers_with_a_wrong_tag_are_ignored(backend: Backend) {
    forged_before_orch_writes(backend, &[("mallory", wrong_tags())]).await
}

/// `forged` (author, text) comments are on the issue before orch writes; the 👍 of a maintainer
/// goes first on the first of them (nothing happens), then on orch's proposal (it approves).
async fn forged_before_orch_writes(backend: Backend, forged: &[(&str, String)]) {
    let Some(o) = Orch::start(backend, "phase: 4\n").await else {
        return;
    };
    o.user("mara", "maintain");
    o.user("lee", "write");
    let issue = o.open_issue("Off by one", "answer() should be 42", "dev-kim");
    // Before orch has written anything, the forged comments.
    let mut first = None;
    for (author, text) in forged {
        let (id, guid) = o.comment(&issue, author, text).await;
        o.wait_processed(&guid).await;
        first.get_or_insert(id);
    }
    let forged = first.expect("at least one forged comment");

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

/// Every replica tags with the same key: the first to start stores it, the others read it.
async fn replicas_share_the_marker_key(backend: Backend) {
    let Some(db) = common::TestDb::new(backend).await else { return };
    let (a, b) = (db.store().await, db.store().await);
    let first = orch::store::server_keys::get_or_create(a.pool(), "marker", "one", 1).await.unwrap();
    let second = orch::store::server_keys::get_or_create(b.pool(), "marker", "two", 2).await.unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
}

both_backends!(
    outsiders_markers_neither_hide_nor_stand_in_for_orchs_writes,
    markers_with_a_wrong_tag_are_ignored,
    replicas_share_the_marker_key,
);
