//! The GitHub client and exactly-once writes against the stateful fake GitHub over HTTP.

mod common;
#[path = "common/reference.rs"]
mod reference;

use common::{Backend, TestDb};
use orch::github::actions::{
    check_run_once, comment_once, labels_once, pull_once, reaction_once, remove_label_once, PullSpec, Sent, COMMENT_LIMIT,
};
use orch::github::auth::{AppCredentials, TokenCache, TokenScope};
use orch::github::client::{
    Annotation, CheckAction, CheckRunSpec, ClientError, GithubClient, LabelsRead, Reactions, RepoLabel, RepoSnapshot, Tarball,
    TarballLimits, TreeChange,
};
use orch::github::fake::{FakeGithub, FakeLimits, Fault, FaultKind};
use orch::github::retry::{GithubError, RetryPolicy};
use reqwest::Method;
use std::sync::Arc;
use std::time::Duration;

const REPO: &str = "acme/widgets";

struct Env {
    _keys: tempfile::TempDir,
    fake: FakeGithub,
    client: GithubClient,
    tokens: Arc<TokenCache>,
}

async fn env(policy: RetryPolicy) -> Env {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = common::key_pair(keys.path());
    let fake = FakeGithub::start(77, &public, Duration::from_secs(3600)).await.unwrap();
    common::check_bodies(&fake.state);
    let credentials = AppCredentials::from_pem(77, &private, "ORCH_GITHUB_PRIVATE_KEY").unwrap();
    let http = reqwest::Client::new();
    let tokens = Arc::new(TokenCache::new(credentials, &fake.url(), http.clone(), policy.clone()));
    // Pacing is tested on its own; elsewhere it would only slow the tests down.
    let client = GithubClient::new(http, &fake.url(), tokens.clone(), policy).with_pace(Duration::ZERO);
    Env {
        _keys: keys,
        fake,
        client,
        tokens,
    }
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        request_timeout: Duration::from_millis(500),
        max_rate_limit_wait: Duration::from_secs(5),
    }
}

/// Every body the test sent is valid for its operation in GitHub's description.
fn bodies_valid(e: &Env) {
    let bodies = e.fake.state.bodies();
    assert!(!bodies.is_empty());
    reference::assert_bodies_valid(&bodies);
}

fn count(log: &[(String, String)], method: &str, path_part: &str) -> usize {
    log.iter().filter(|(m, p)| m == method && p.contains(path_part)).count()
}

async fn a_comment_is_posted_once_per_key(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    let first = comment_once(&store, Some(&e.client), "wf-1/proposal", 5, REPO, 12, "Proposed labels: bug")
        .await
        .unwrap();
    let Sent::Done { action_id, github_id } = first else {
        panic!("{first:?}")
    };
    let comments = e.fake.state.comments(REPO, 12);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].id, github_id);
    assert!(comments[0].body.starts_with("Proposed labels: bug"));
    assert!(comments[0].body.ends_with(&e.client.marker(action_id)));
    // The same key again: answered from the store, nothing sent.
    let requests = e.fake.state.log().len();
    let again = comment_once(&store, Some(&e.client), "wf-1/proposal", 5, REPO, 12, "Proposed labels: bug")
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(e.fake.state.log().len(), requests);
    assert_eq!(e.fake.state.comments(REPO, 12).len(), 1);
    bodies_valid(&e);
}

async fn a_create_whose_answer_was_lost_is_not_repeated(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    // GitHub applies the comment, but its answer never arrives (the client times out).
    e.fake.state.inject(Fault {
        method: Method::POST,
        path_contains: "/issues/12/comments".into(),
        times: 1,
        kind: FaultKind::ApplyThenStall(Duration::from_secs(3)),
    });
    let sent = comment_once(&store, Some(&e.client), "wf-2/proposal", 5, REPO, 12, "Plan")
        .await
        .unwrap();
    let Sent::Done { github_id, .. } = sent else { panic!("{sent:?}") };
    let comments = e.fake.state.comments(REPO, 12);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0].id, github_id);
    assert_eq!(
        count(&e.fake.state.log(), "POST", "/issues/12/comments"),
        1,
        "the create was not repeated"
    );
    bodies_valid(&e);
}

async fn a_crash_between_create_and_record_is_recovered_by_marker(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(RetryPolicy {
        max_attempts: 1,
        ..quick()
    })
    .await;
    e.fake.state.inject(Fault {
        method: Method::POST,
        path_contains: "/issues/3/comments".into(),
        times: 1,
        kind: FaultKind::ApplyThenStall(Duration::from_secs(3)),
    });
    // One attempt only: the call fails and the action stays pending, as after a crash.
    assert!(comment_once(&store, Some(&e.client), "wf-3/done", 5, REPO, 3, "Done")
        .await
        .is_err());
    assert_eq!(e.fake.state.comments(REPO, 3).len(), 1);
    // The next run finds the comment by its marker instead of posting again.
    let sent = comment_once(&store, Some(&e.client), "wf-3/done", 5, REPO, 3, "Done")
        .await
        .unwrap();
    assert!(matches!(sent, Sent::Done { .. }));
    assert_eq!(e.fake.state.comments(REPO, 3).len(), 1);
    assert_eq!(count(&e.fake.state.log(), "POST", "/issues/3/comments"), 1);
}

async fn dry_run_sends_nothing(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    let sent = comment_once(&store, None, "wf-4/proposal", 5, REPO, 4, "Would post this")
        .await
        .unwrap();
    assert!(matches!(sent, Sent::DryRun { .. }));
    assert!(e.fake.state.log().is_empty());
    // Recorded as dry_run, and stays so.
    assert_eq!(
        comment_once(&store, None, "wf-4/proposal", 5, REPO, 4, "Would post this")
            .await
            .unwrap(),
        sent
    );
}

async fn long_bodies_are_truncated_to_the_limit(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    let long = "ü".repeat(COMMENT_LIMIT + 5_000);
    comment_once(&store, Some(&e.client), "wf-5/long", 5, REPO, 5, &long).await.unwrap();
    let c = &e.fake.state.comments(REPO, 5)[0];
    assert_eq!(c.body.chars().count(), COMMENT_LIMIT);
    assert!(c.body.contains("truncated"));
    bodies_valid(&e);
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once() {
    let e = env(quick()).await;
    e.client.list_issue_comments(5, REPO, 1).await.unwrap();
    e.fake.state.revoke_tokens();
    e.client.list_issue_comments(5, REPO, 1).await.unwrap();
    let log = e.fake.state.log();
    assert_eq!(count(&log, "POST", "/access_tokens"), 2);
    assert_eq!(count(&log, "GET", "/issues/1/comments"), 3, "{log:?}");
}

#[tokio::test]
async fn reads_survive_bad_gateways_and_rate_limits() {
    let e = env(quick()).await;
    e.fake.state.inject(Fault {
        method: Method::GET,
        path_contains: "/issues/2/comments".into(),
        times: 2,
        kind: FaultKind::Status {
            code: 502,
            retry_after: None,
        },
    });
    e.client.list_issue_comments(5, REPO, 2).await.unwrap();
    e.fake.state.inject(Fault {
        method: Method::GET,
        path_contains: "/issues/2/comments".into(),
        times: 1,
        kind: FaultKind::Status {
            code: 429,
            retry_after: Some(1),
        },
    });
    let started = std::time::Instant::now();
    e.client.list_issue_comments(5, REPO, 2).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(990));
    assert_eq!(count(&e.fake.state.log(), "GET", "/issues/2/comments"), 5);
    // A secondary rate limit: 403 with Retry-After.
    e.fake.state.inject(Fault {
        method: Method::GET,
        path_contains: "/issues/2/comments".into(),
        times: 1,
        kind: FaultKind::Status {
            code: 403,
            retry_after: Some(1),
        },
    });
    let started = std::time::Instant::now();
    e.client.list_issue_comments(5, REPO, 2).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(990));
    // A 404 is not retried.
    e.fake.state.inject(Fault {
        method: Method::GET,
        path_contains: "/issues/2/comments".into(),
        times: 1,
        kind: FaultKind::Status {
            code: 404,
            retry_after: None,
        },
    });
    let before = count(&e.fake.state.log(), "GET", "/issues/2/comments");
    assert!(e.client.list_issue_comments(5, REPO, 2).await.is_err());
    assert_eq!(count(&e.fake.state.log(), "GET", "/issues/2/comments"), before + 1);
}

/// A write refused before it was applied (here a secondary limit) is listed with its body, so
/// that a check counting applied writes by their bodies (the crash suite's "one branch, one ref
/// request") does not count the refusal and its resend as two.
#[tokio::test]
async fn a_refused_write_is_listed_with_its_body() {
    let e = env(quick()).await;
    e.fake.state.inject(Fault {
        method: Method::POST,
        path_contains: "/issues/8/labels".into(),
        times: 1,
        kind: FaultKind::Status {
            code: 403,
            retry_after: Some(1),
        },
    });
    e.client.add_labels(5, REPO, 8, &["bug".into()]).await.unwrap();
    let sent: Vec<_> = e
        .fake
        .state
        .bodies()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p.ends_with("/issues/8/labels"))
        .collect();
    let refused = e.fake.state.refused_bodies();
    assert_eq!(sent.len(), 2, "the refusal and the resend: {sent:?}");
    assert_eq!(refused, vec![sent[0].clone()], "only the refused one");
    assert_eq!(e.fake.state.labels(REPO, 8), vec!["bug"]);
}

#[tokio::test]
async fn labels_are_added_listed_and_removed() {
    let e = env(quick()).await;
    let all = e
        .client
        .add_labels(5, REPO, 8, &["bug".into(), "priority: p1".into()])
        .await
        .unwrap();
    assert_eq!(all, vec!["bug", "priority: p1"]);
    // Adding again changes nothing.
    e.client.add_labels(5, REPO, 8, &["bug".into()]).await.unwrap();
    assert_eq!(e.client.list_labels(5, REPO, 8).await.unwrap(), vec!["bug", "priority: p1"]);
    e.client.remove_label(5, REPO, 8, "priority: p1").await.unwrap();
    // Removing a label that is not there is already done.
    e.client.remove_label(5, REPO, 8, "priority: p1").await.unwrap();
    assert_eq!(e.fake.state.labels(REPO, 8), vec!["bug"]);
    bodies_valid(&e);
}

#[tokio::test]
async fn permissions_are_cached_briefly() {
    let e = env(quick()).await;
    e.fake.state.set_permission(REPO, "mara", "write");
    assert_eq!(e.client.collaborator_permission(5, REPO, "mara").await.unwrap(), "write");
    e.fake.state.set_permission(REPO, "mara", "read");
    // Within the cache's lifetime the first answer stands; GitHub is not asked again.
    assert_eq!(e.client.collaborator_permission(5, REPO, "mara").await.unwrap(), "write");
    assert_eq!(count(&e.fake.state.log(), "GET", "/collaborators/mara/permission"), 1);
    // Not a collaborator at all.
    assert_eq!(e.client.collaborator_permission(5, REPO, "stranger").await.unwrap(), "none");
}

#[tokio::test]
async fn check_run_annotations_go_in_batches_of_fifty() {
    let e = env(quick()).await;
    let spec = CheckRunSpec {
        name: "orch/patch".into(),
        head_sha: "6f1c2a9b0d3e4f5a6b7c8d9e0f1a2b3c4d5e6f70".into(),
        status: "completed".into(),
        conclusion: Some("action_required".into()),
        external_id: Some("wf-9".into()),
        title: "Patch proposal".into(),
        summary: "s".repeat(70_000),
        text: Some("t".repeat(10)),
        annotations: (0..120)
            .map(|i| Annotation {
                path: format!("src/f{i}.rs"),
                start_line: 1,
                end_line: 2,
                annotation_level: "notice".into(),
                message: format!("change {i}"),
            })
            .collect(),
        actions: vec![
            CheckAction {
                label: "Approve".into(),
                description: "Apply this patch".into(),
                identifier: "approve".into(),
            },
            CheckAction {
                label: "Reject".into(),
                description: "Discard this patch".into(),
                identifier: "reject".into(),
            },
        ],
    };
    let id = e.client.create_check_run(5, REPO, &spec).await.unwrap();
    let run = e.fake.state.check_run(id).unwrap();
    assert_eq!(run.annotation_batches, vec![50, 50, 20]);
    assert_eq!(run.annotations.len(), 120);
    assert_eq!(run.summary.chars().count(), 65_535);
    assert_eq!(run.actions.len(), 2);
    assert_eq!(run.conclusion.as_deref(), Some("action_required"));
    // Buttons beyond GitHub's limits are refused before anything is sent.
    let mut bad = spec.clone();
    bad.actions[0].label = "A label far too long for GitHub".into();
    let before = e.fake.state.log().len();
    assert!(e.client.create_check_run(5, REPO, &bad).await.is_err());
    assert_eq!(e.fake.state.log().len(), before);
    bodies_valid(&e);
}

fn patch_run(sha: &str) -> CheckRunSpec {
    CheckRunSpec {
        name: "orch/patch".into(),
        head_sha: sha.into(),
        status: "completed".into(),
        conclusion: Some("action_required".into()),
        external_id: Some("wf-7".into()),
        title: "Patch proposal".into(),
        summary: "Two files change.".into(),
        text: None,
        annotations: vec![],
        actions: vec![CheckAction {
            label: "Approve".into(),
            description: "Apply this patch".into(),
            identifier: "approve".into(),
        }],
    }
}

async fn a_check_run_whose_answer_was_lost_is_not_repeated(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    let sha = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
    e.fake.state.inject(Fault {
        method: Method::POST,
        path_contains: "/check-runs".into(),
        times: 1,
        kind: FaultKind::ApplyThenStall(Duration::from_secs(3)),
    });
    let sent = check_run_once(&store, Some(&e.client), "wf-7/patch", 5, REPO, &patch_run(sha))
        .await
        .unwrap();
    let Sent::Done { action_id, github_id } = sent else {
        panic!("{sent:?}")
    };
    let runs = e.client.check_runs_for_ref(5, REPO, sha).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].id, github_id);
    assert!(runs[0].summary.ends_with(&e.client.marker(action_id)));
    assert_eq!(count(&e.fake.state.log(), "POST", "/check-runs"), 1);
    // Asked again: answered from the action row.
    assert_eq!(
        check_run_once(&store, Some(&e.client), "wf-7/patch", 5, REPO, &patch_run(sha))
            .await
            .unwrap(),
        sent
    );
    // Dry-run records and sends nothing.
    let before = e.fake.state.log().len();
    let dry = check_run_once(&store, None, "wf-8/patch", 5, REPO, &patch_run(sha)).await.unwrap();
    assert!(matches!(dry, Sent::DryRun { .. }));
    assert_eq!(e.fake.state.log().len(), before);
    bodies_valid(&e);
}

/// The action rows of a store, as (kind, status, github_id).
async fn action_rows(store: &orch::store::Store) -> Vec<(String, String, Option<i64>)> {
    use sqlx::Row;
    sqlx::query("SELECT kind, status, github_id FROM actions ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn spec(head: &str) -> PullSpec {
    PullSpec {
        title: "Fix the parser".into(),
        head: head.into(),
        base: "main".into(),
        body: "Closes #12".into(),
    }
}

async fn a_pull_request_whose_answer_was_lost_is_found_by_its_branch(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(RetryPolicy {
        max_attempts: 1,
        ..quick()
    })
    .await;
    e.fake.state.init_repo(REPO, "main", &[("a.txt", "a\n")]);
    e.fake.state.push(REPO, "orch/41", &[("a.txt", Some("b\n"))]);
    // GitHub opens the pull request, then the connection drops before the answer: with one
    // attempt the call fails and the action stays pending, as if orch had crashed there.
    e.fake.state.inject(Fault::new(
        Method::POST,
        &format!("/repos/{REPO}/pulls"),
        1,
        FaultKind::ApplyThenDrop,
    ));
    assert!(pull_once(&store, Some(&e.client), "wf-41/pull", 5, REPO, &spec("orch/41"))
        .await
        .is_err());
    assert_eq!(e.fake.state.pulls(REPO).len(), 1);
    assert_eq!(action_rows(&store).await, vec![("pull_request".into(), "pending".into(), None)]);
    // The next run finds it by its branch and records its number instead of opening another.
    let sent = pull_once(&store, Some(&e.client), "wf-41/pull", 5, REPO, &spec("orch/41"))
        .await
        .unwrap();
    let pulls = e.fake.state.pulls(REPO);
    assert_eq!(pulls.len(), 1);
    assert!(
        matches!(sent, Sent::Done { github_id, .. } if github_id == pulls[0].number),
        "{sent:?}"
    );
    assert_eq!(count(&e.fake.state.log(), "POST", "/pulls"), 1);
    assert!(pulls[0].body.starts_with("Closes #12") && pulls[0].body.contains("<!-- orch:action:"));
    // A pull request that exists under another key (say, a lost action row) is not duplicated:
    // GitHub's refusal leads to the existing one.
    let other = pull_once(&store, Some(&e.client), "wf-41/pull-again", 5, REPO, &spec("orch/41"))
        .await
        .unwrap();
    assert!(
        matches!(other, Sent::Done { github_id, .. } if github_id == pulls[0].number),
        "{other:?}"
    );
    assert_eq!(e.fake.state.pulls(REPO).len(), 1);
    bodies_valid(&e);
}

async fn label_and_reaction_writes_are_actions_too(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    let labels = vec!["bug".to_string(), "priority: high".to_string()];
    // The label request's answer is lost after GitHub applied it. Adding labels is idempotent,
    // so the retry layer may repeat it: the labels end up there once each.
    e.fake
        .state
        .inject(Fault::new(Method::POST, "/issues/20/labels", 1, FaultKind::ApplyThenDrop));
    let sent = labels_once(&store, Some(&e.client), "wf-20/labels", 5, REPO, 20, &labels)
        .await
        .unwrap();
    assert!(matches!(sent, Sent::Done { github_id: 20, .. }), "{sent:?}");
    assert_eq!(e.fake.state.labels(REPO, 20), labels);
    let removed = remove_label_once(&store, Some(&e.client), "wf-20/unlabel", 5, REPO, 20, "priority: high")
        .await
        .unwrap();
    assert!(matches!(removed, Sent::Done { .. }));
    assert_eq!(e.fake.state.labels(REPO, 20), vec!["bug".to_string()]);
    let comment = e.fake.state.user_comment(REPO, 20, "mara", "User", "/orch status");
    reaction_once(&store, Some(&e.client), "cmd-1/eyes", 5, REPO, comment, "eyes")
        .await
        .unwrap();
    // Repeating by key sends nothing.
    let before = e.fake.state.log().len();
    reaction_once(&store, Some(&e.client), "cmd-1/eyes", 5, REPO, comment, "eyes")
        .await
        .unwrap();
    assert_eq!(e.fake.state.log().len(), before);
    assert_eq!(e.fake.state.reactions(comment), vec![("eyes".to_string(), "orch[bot]".to_string())]);
    // Dry-run: recorded, nothing sent.
    let dry = labels_once(&store, None, "wf-21/labels", 5, REPO, 21, &labels).await.unwrap();
    assert!(matches!(dry, Sent::DryRun { .. }));
    assert!(e.fake.state.labels(REPO, 21).is_empty());
    assert_eq!(
        action_rows(&store).await,
        vec![
            ("labels".into(), "done".into(), Some(20)),
            ("label_removal".into(), "done".into(), Some(20)),
            ("reaction".into(), "done".into(), Some(comment)),
            ("labels".into(), "dry_run".into(), None),
        ]
    );
    bodies_valid(&e);
}

/// Attack 1 at the client: every marker orch could use for its first 40 actions — untagged, with
/// a wrong tag, and even with the right tag — sits in comments of an outsider and of another App
/// before orch writes. None of them is orch's write: orch posts its own comment and records it.
async fn forged_markers_do_not_pass_for_orchs_comments(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    for id in 1..=40 {
        e.fake
            .state
            .user_comment(REPO, 40, "mallory", "User", &format!("<!-- orch:action:{id} -->"));
        let wrong = format!("<!-- orch:action:{id}:{} -->", "0".repeat(32));
        e.fake.state.user_comment(REPO, 40, "mallory", "User", &wrong);
        e.fake.state.user_comment(REPO, 40, "mallory", "User", &e.client.marker(id));
        e.fake.state.app_comment(REPO, 40, 999, "other[bot]", &e.client.marker(id));
    }
    let sent = comment_once(&store, Some(&e.client), "wf-40/proposal", 5, REPO, 40, "Proposed labels: bug")
        .await
        .unwrap();
    let Sent::Done { action_id, github_id } = sent else {
        panic!("{sent:?}")
    };
    assert!(action_id <= 40, "the test forged this action's marker: {action_id}");
    let comments = e.fake.state.comments(REPO, 40);
    let mine = comments.iter().find(|c| c.id == github_id).expect("orch's own comment");
    assert_eq!((mine.author.as_str(), mine.via_app), ("orch[bot]", Some(77)));
    assert!(mine.body.starts_with("Proposed labels: bug") && mine.body.ends_with(&e.client.marker(action_id)));
    assert_eq!(count(&e.fake.state.log(), "POST", "/issues/40/comments"), 1);
    // Found again by the lookup (its own comment only).
    let found = e
        .client
        .find_comment_with_marker(5, REPO, 40, &e.client.marker(action_id))
        .await
        .unwrap();
    assert_eq!(found.map(|c| c.id), Some(github_id));
    bodies_valid(&e);
}

/// A check run of another App that carries orch's marker is not orch's check run.
async fn another_apps_check_run_is_not_orchs(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    let sha = "1a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
    for id in 1..=40 {
        e.fake
            .state
            .app_check_run(REPO, 999, "orch/patch", sha, &format!("forged\n\n{}", e.client.marker(id)));
    }
    let sent = check_run_once(&store, Some(&e.client), "wf-41/patch", 5, REPO, &patch_run(sha))
        .await
        .unwrap();
    let Sent::Done { github_id, .. } = sent else { panic!("{sent:?}") };
    assert_eq!(e.fake.state.check_run(github_id).map(|r| r.app_id), Some(77));
    assert_eq!(count(&e.fake.state.log(), "POST", "/check-runs"), 1);
    bodies_valid(&e);
}

both_backends!(
    forged_markers_do_not_pass_for_orchs_comments,
    another_apps_check_run_is_not_orchs,
    a_pull_request_whose_answer_was_lost_is_found_by_its_branch,
    label_and_reaction_writes_are_actions_too,
    a_dry_run_client_records_writes_as_dry_run,
    a_check_run_whose_answer_was_lost_is_not_repeated,
    a_comment_is_posted_once_per_key,
    a_create_whose_answer_was_lost_is_not_repeated,
    a_crash_between_create_and_record_is_recovered_by_marker,
    dry_run_sends_nothing,
    long_bodies_are_truncated_to_the_limit,
);

#[tokio::test]
async fn reactions_are_polled_with_etags_that_cost_nothing_when_unchanged() {
    let e = env(quick()).await;
    e.fake.state.react(555, "mara", "User", "+1");
    let Reactions::Changed { etag, reactions } = e.client.comment_reactions(5, REPO, 555, None).await.unwrap() else {
        panic!("first read")
    };
    assert_eq!(reactions.len(), 1);
    assert_eq!((reactions[0].content.as_str(), reactions[0].user.login.as_str()), ("+1", "mara"));
    let etag = etag.expect("GitHub sends an ETag");
    let used = e.fake.state.rate_used();
    for _ in 0..3 {
        assert_eq!(
            e.client.comment_reactions(5, REPO, 555, Some(&etag)).await.unwrap(),
            Reactions::NotModified
        );
    }
    assert_eq!(e.fake.state.rate_used(), used, "304s are free");
    e.fake.state.react(555, "lee", "User", "-1");
    let Reactions::Changed { reactions, .. } = e.client.comment_reactions(5, REPO, 555, Some(&etag)).await.unwrap() else {
        panic!("a new reaction changes the ETag")
    };
    assert_eq!(reactions.len(), 2);
    // orch's 👀 acknowledgement: reacting twice leaves one reaction.
    e.client.react_to_comment(5, REPO, 555, "eyes").await.unwrap();
    e.client.react_to_comment(5, REPO, 555, "eyes").await.unwrap();
    let Reactions::Changed { reactions, .. } = e.client.comment_reactions(5, REPO, 555, None).await.unwrap() else {
        panic!()
    };
    assert_eq!(reactions.iter().filter(|r| r.content == "eyes").count(), 1);
    bodies_valid(&e);
}

#[tokio::test]
async fn files_are_read_from_the_default_branch() {
    let e = env(quick()).await;
    let policy = "phase: 1\napprovals:\n  required: 2\n# ünïcødé comment\n".repeat(20);
    e.fake.state.set_file(REPO, ".github/orch.yml", &policy);
    assert_eq!(
        e.client.file(5, REPO, ".github/orch.yml", None).await.unwrap().as_deref(),
        Some(policy.as_str())
    );
    assert_eq!(e.client.file(5, REPO, ".github/missing.yml", None).await.unwrap(), None);
}

#[tokio::test]
async fn content_creating_requests_are_paced_per_installation() {
    let e = env(quick()).await;
    let client = e.client.clone().with_pace(Duration::from_millis(300));
    let started = std::time::Instant::now();
    for i in 0..3 {
        client.create_issue_comment(5, REPO, 20, &format!("comment {i}")).await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    // Reads are not paced, and another installation has its own pace.
    let started = std::time::Instant::now();
    for _ in 0..3 {
        client.list_issue_comments(5, REPO, 20).await.unwrap();
    }
    client.create_issue_comment(6, REPO, 21, "other installation").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
    bodies_valid(&e);
}

/// Attack 2 at the client: tokens reach one repository with one permission, as GitHub enforces
/// it (404 for another repository, 403 without the permission), and a path that could leave the
/// repository is refused before any request.
#[tokio::test]
async fn a_token_reaches_one_repository_with_one_permission() {
    let e = env(quick()).await;
    e.fake.state.add_repo(REPO, 5, "main");
    e.fake.state.add_repo("acme/private", 5, "main");
    e.fake.state.set_file(REPO, "README.md", "# widgets");
    e.fake.state.set_file("acme/private", "secret.txt", "s3cret");
    assert_eq!(
        e.client.file(5, REPO, "README.md", None).await.unwrap().as_deref(),
        Some("# widgets")
    );
    let bodies = e.fake.state.bodies();
    let asked = bodies
        .iter()
        .find(|(m, p, _)| m == "POST" && p.ends_with("/access_tokens"))
        .map(|(_, _, b)| b.clone())
        .expect("a token was asked for");
    assert_eq!(
        asked,
        serde_json::json!({ "repositories": ["widgets"], "permissions": { "contents": "read" } })
    );

    let token = e
        .tokens
        .scoped_token(5, &TokenScope::new(Some("widgets".into()), "contents", "read"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str| {
        use secrecy::ExposeSecret;
        let r = http
            .request(method.clone(), format!("{}{path}", e.fake.url()))
            .bearer_auth(token.expose_secret())
            .header("user-agent", "test");
        match method {
            Method::GET => r,
            _ => r.json(&serde_json::json!({ "body": "hi" })),
        }
        .send()
    };
    assert_eq!(
        call(Method::GET, "/repos/acme/widgets/contents/README.md").await.unwrap().status(),
        200
    );
    assert_eq!(
        call(Method::GET, "/repos/acme/private/contents/secret.txt").await.unwrap().status(),
        404
    );
    let refused = call(Method::POST, "/repos/acme/widgets/issues/1/comments").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("Resource not accessible by integration"));
    // The installation does not grant this repository: no token for it at all.
    let none = e
        .tokens
        .scoped_token(5, &TokenScope::new(Some("elsewhere".into()), "contents", "read"))
        .await;
    assert!(none.is_err());

    let sent = e.fake.state.log().len();
    for bad in [
        "../../acme/private/contents/secret.txt",
        "/etc/passwd",
        "a/./b",
        "a\\b",
        "a\u{0}b",
        "a//b",
    ] {
        let err = e.client.file(5, REPO, bad, None).await.unwrap_err();
        assert!(matches!(err, ClientError::Path(_)), "{bad:?}: {err}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "the error names the path: {err}");
    }
    assert!(matches!(e.client.remove_label(5, REPO, 1, "..").await, Err(ClientError::Path(_))));
    assert_eq!(e.fake.state.log().len(), sent, "no request left for a bad path");
}

/// Pacing is per installation without a global lock (SPEC §11): while one installation waits
/// for its next slot, another installation's write leaves at once. The pace is an hour, so the
/// test does not depend on timing: a write that waited for installation 5 would never finish.
#[tokio::test]
async fn one_installations_pace_does_not_hold_up_another() {
    let e = env(quick()).await;
    let client = e.client.clone().with_pace(Duration::from_secs(3600));
    client.create_issue_comment(5, REPO, 20, "first").await.unwrap();
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.create_issue_comment(5, REPO, 20, "second").await }
    });
    // Let the second write of installation 5 reach its wait (this runtime has one thread).
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let other = tokio::time::timeout(
        Duration::from_secs(20),
        client.create_issue_comment(6, REPO, 21, "other installation"),
    )
    .await;
    assert!(
        matches!(other, Ok(Ok(_))),
        "installation 6 waited for installation 5's pace: {other:?}"
    );
    assert!(!waiting.is_finished(), "installation 5 still waits for its slot");
    waiting.abort();
    let bodies: Vec<String> = e
        .client
        .list_issue_comments(6, REPO, 21)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.body)
        .collect();
    assert_eq!(bodies, ["other installation"]);
    let bodies: Vec<String> = e
        .client
        .list_issue_comments(5, REPO, 20)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.body)
        .collect();
    assert_eq!(bodies, ["first"]);
}

#[tokio::test]
async fn orch_finds_and_edits_its_own_comment() {
    let e = env(quick()).await;
    e.client.create_issue_comment(5, REPO, 30, "someone else").await.unwrap();
    let mine = e
        .client
        .create_issue_comment(5, REPO, 30, "Status: waiting\n<!-- orch:status:wf-1 -->")
        .await
        .unwrap();
    let found = e
        .client
        .find_comment_with_marker(5, REPO, 30, "<!-- orch:status:wf-1 -->")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, mine.id);
    e.client
        .update_issue_comment(5, REPO, found.id, "Status: approved\n<!-- orch:status:wf-1 -->")
        .await
        .unwrap();
    let comments = e.fake.state.comments(REPO, 30);
    assert_eq!(comments.len(), 2);
    assert!(comments[1].body.starts_with("Status: approved"));
    assert!(e
        .client
        .find_comment_with_marker(5, REPO, 30, "<!-- orch:status:wf-2 -->")
        .await
        .unwrap()
        .is_none());
    bodies_valid(&e);
}

/// Each answer counts the hour's requests down as GitHub does; the client keeps the latest
/// headroom for `/metrics`; once none is left, the next request is refused until the reset, an
/// hour away, and orch gives up at once with a clear error instead of waiting that long.
#[tokio::test]
async fn the_primary_rate_limit_counts_down_and_runs_out() {
    let e = env(quick()).await;
    e.fake.state.set_rate_limit(3);
    for left in [2, 1, 0] {
        e.client.list_issue_comments(5, REPO, 40).await.unwrap();
        assert_eq!(e.client.rate_limit(), Some((left, 3)));
    }
    let started = std::time::Instant::now();
    let err = e.client.list_issue_comments(5, REPO, 40).await.unwrap_err();
    assert!(err.to_string().contains("rate limit"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    assert_eq!(e.fake.state.rate_used(), 3, "the refused request is not counted");
}

#[tokio::test]
async fn an_exhausted_rate_limit_is_waited_out_until_its_reset() {
    let e = env(quick()).await;
    e.client.list_issue_comments(5, REPO, 40).await.unwrap();
    // GitHub's reset is a whole second: "2 s" from now lifts between 1 and 2 s from now (with
    // 1 s it could lift at once, in the last moments of a second).
    e.fake.state.exhaust_rate_limit(Duration::from_secs(2));
    let started = std::time::Instant::now();
    e.client.list_issue_comments(5, REPO, 40).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    // Beyond the bound orch waits, it gives up at once with a clear error.
    e.fake.state.exhaust_rate_limit(Duration::from_secs(3600));
    let started = std::time::Instant::now();
    let err = e.client.list_issue_comments(5, REPO, 40).await.unwrap_err();
    assert!(err.to_string().contains("rate limit"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn a_patch_becomes_a_branch_a_commit_and_a_pull_request() {
    let e = env(quick()).await;
    let base = e.fake.state.init_repo(
        REPO,
        "main",
        &[("src/lib.rs", "fn old() {}\n"), ("README.md", "hello\n"), ("old.txt", "bye\n")],
    );
    let c = &e.client;
    let head = c.ref_sha(5, REPO, "heads/main").await.unwrap().unwrap();
    assert_eq!(head, base);
    assert_eq!(c.ref_sha(5, REPO, "heads/nope").await.unwrap(), None);
    // One read gives the tip and its tree, as the Git Data API gives them in two.
    let tip = c.branch(5, REPO, "main").await.unwrap().expect("main");
    assert_eq!(tip.commit, head);
    assert_eq!(tip.tree, c.git_commit(5, REPO, &head).await.unwrap().tree);
    assert_eq!(c.branch(5, REPO, "nope").await.unwrap(), None);
    // The new texts go inline; a null sha deletes.
    let changes = [
        TreeChange {
            path: "src/lib.rs".into(),
            content: Some("fn new() {}\n".into()),
        },
        TreeChange {
            path: "old.txt".into(),
            content: None,
        },
    ];
    let new_tree = c.create_tree(5, REPO, &tip.tree, &changes).await.unwrap();
    // The same tree is the same object: repeating is harmless.
    assert_eq!(c.create_tree(5, REPO, &tip.tree, &changes).await.unwrap(), new_tree);
    let commit = c
        .create_commit(5, REPO, "orch: apply wf-9 (approved by mara)", &new_tree, &head)
        .await
        .unwrap();
    // GitHub stamps a commit with the time it is made: the same request later is another
    // commit, which no branch points at.
    let again = c
        .create_commit(5, REPO, "orch: apply wf-9 (approved by mara)", &new_tree, &head)
        .await
        .unwrap();
    assert_ne!(again, commit);
    c.create_branch(5, REPO, "orch/wf-9", &commit).await.unwrap();
    // A branch name with slashes is read as one name.
    let branch = c.branch(5, REPO, "orch/wf-9").await.unwrap().expect("orch/wf-9");
    assert_eq!((branch.commit.as_str(), branch.tree.as_str()), (commit.as_str(), new_tree.as_str()));
    let number = c
        .create_pull(5, REPO, "Fix the parser", "orch/wf-9", "main", "Closes #12")
        .await
        .unwrap();

    let files = e.fake.state.files_at(REPO, "orch/wf-9").unwrap();
    let expected: std::collections::BTreeMap<String, String> = [("README.md", "hello\n"), ("src/lib.rs", "fn new() {}\n")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(files, expected, "exactly the patch's files on top of the base");
    let (parents, message) = e.fake.state.tip(REPO, "orch/wf-9").unwrap();
    assert_eq!(parents, vec![head.clone()]);
    assert!(message.contains("approved by mara"));
    let pulls = e.fake.state.pulls(REPO);
    assert_eq!(pulls.len(), 1);
    assert_eq!(
        (pulls[0].number, pulls[0].head.as_str(), pulls[0].base.as_str()),
        (number, "orch/wf-9", "main")
    );
    // Read back as orch reads a pull request.
    let info = c.pull(5, REPO, number).await.unwrap();
    assert_eq!(
        (info.head.name.as_str(), info.head.sha.as_str(), info.base.sha.as_str()),
        ("orch/wf-9", commit.as_str(), head.as_str())
    );
    let mut changed: Vec<(String, String)> = c
        .pull_files(5, REPO, number)
        .await
        .unwrap()
        .into_iter()
        .map(|f| (f.filename, f.status))
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        vec![("old.txt".into(), "removed".into()), ("src/lib.rs".into(), "modified".into())]
    );
    // The branch name is the write's identity: GitHub refuses a second branch or PR for it.
    match c.create_branch(5, REPO, "orch/wf-9", &again).await {
        Err(ClientError::Github(orch::github::retry::GithubError::Permanent { status: 422, message, .. })) => {
            assert!(message.contains("Reference already exists"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.ref_sha(5, REPO, "heads/orch/wf-9").await.unwrap().as_deref(),
        Some(commit.as_str())
    );
    assert!(c.create_pull(5, REPO, "again", "orch/wf-9", "main", "").await.is_err());
    assert_eq!(e.fake.state.pulls(REPO).len(), 1);
    // main did not move; a later push to main moves it without touching the branch.
    assert_eq!(e.fake.state.files_at(REPO, "main").unwrap().len(), 3);
    let pushed = e.fake.state.push(REPO, "main", &[("README.md", Some("hello again\n"))]);
    assert_eq!(c.ref_sha(5, REPO, "heads/main").await.unwrap().as_deref(), Some(pushed.as_str()));
    assert_eq!(e.fake.state.files_at(REPO, "main").unwrap()["README.md"], "hello again\n");
    assert_eq!(e.fake.state.files_at(REPO, "orch/wf-9").unwrap()["README.md"], "hello\n");
    bodies_valid(&e);
}

/// A tree entry names its blob (`sha`, null to delete) or carries its text (`content`), never
/// both: GitHub refuses that, and so does the fake, applying nothing.
#[tokio::test]
async fn a_tree_entry_takes_a_sha_or_content_not_both() {
    let e = env(quick()).await;
    e.fake.state.init_repo(REPO, "main", &[("src/lib.rs", "fn old() {}\n")]);
    let tip = e.client.branch(5, REPO, "main").await.unwrap().expect("main");
    let token = e.tokens.token(5).await.unwrap();
    let entry = serde_json::json!({ "path": "src/lib.rs", "mode": "100644", "type": "blob", "sha": null, "content": "fn new() {}\n" });
    let refused = reqwest::Client::new()
        .post(format!("{}/repos/{REPO}/git/trees", e.fake.url()))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&token))
        .json(&serde_json::json!({ "base_tree": tip.tree, "tree": [entry] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let text = refused.text().await.unwrap();
    assert!(text.contains("not both"), "{text}");
}

#[tokio::test]
async fn a_dry_run_client_sends_no_write_at_all() {
    let e = env(quick()).await;
    let dry = e.client.clone().with_dry_run(true);
    assert!(matches!(
        dry.add_labels(5, REPO, 9, &["bug".into()]).await,
        Err(orch::github::client::ClientError::DryRun { .. })
    ));
    assert!(dry.create_issue_comment(5, REPO, 9, "x").await.is_err());
    assert!(dry.react_to_comment(5, REPO, 1, "eyes").await.is_err());
    let change = TreeChange {
        path: "x".into(),
        content: Some("x".into()),
    };
    assert!(dry.create_tree(5, REPO, "tree", &[change]).await.is_err());
    // Reads still work; nothing but reads (and the token) reached the fake.
    dry.list_labels(5, REPO, 9).await.unwrap();
    let log = e.fake.state.log();
    assert!(log.iter().all(|(m, p)| m == "GET" || p.ends_with("/access_tokens")), "{log:?}");
    assert!(e.fake.state.labels(REPO, 9).is_empty());
}

async fn a_dry_run_client_records_writes_as_dry_run(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let e = env(quick()).await;
    let dry = e.client.clone().with_dry_run(true);
    let sent = comment_once(&store, Some(&dry), "wf-10/proposal", 5, REPO, 10, "would post")
        .await
        .unwrap();
    assert!(matches!(sent, Sent::DryRun { .. }), "{sent:?}");
    assert!(e.fake.state.comments(REPO, 10).is_empty());
}

/// With GitHub's description attached, the fake answers a body GitHub would refuse as GitHub
/// does (422 "Invalid request", the problem named) without applying it, and remembers it.
#[tokio::test]
async fn the_fake_refuses_bodies_githubs_description_refuses() {
    let e = env(quick()).await;
    if common::rest_description().is_none() {
        return; // skipped loudly outside CI; CI requires the description
    }
    let n = e.fake.state.open_issue(REPO, "Crash", "crash", "dev-kim");
    let token = e.tokens.token(5).await.unwrap();
    let post = |body: serde_json::Value| {
        reqwest::Client::new()
            .post(format!("{}/repos/{REPO}/issues/{n}/comments", e.fake.url()))
            .bearer_auth(secrecy::ExposeSecret::expose_secret(&token))
            .json(&body)
            .send()
    };
    let refused = post(serde_json::json!({ "body": "hi", "bogus": true })).await.unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let answer: serde_json::Value = refused.json().await.unwrap();
    let text = answer["message"].as_str().unwrap();
    assert!(text.starts_with("Invalid request.") && text.contains("`bogus`"), "{text}");
    assert!(e.fake.state.comments(REPO, n).is_empty(), "nothing was applied");
    let violations = e.fake.state.body_violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains(&format!("POST /repos/{REPO}/issues/{n}/comments")),
        "{violations:?}"
    );
    // A valid body goes through.
    assert_eq!(post(serde_json::json!({ "body": "hi" })).await.unwrap().status().as_u16(), 201);
    assert_eq!(e.fake.state.comments(REPO, n).len(), 1);
}

/// The body check itself refuses what GitHub's description does not allow.
#[test]
fn the_reference_check_refuses_bad_bodies() {
    let bad = [
        ("POST", "/repos/o/r/issues/1/comments", serde_json::json!({})),
        ("POST", "/repos/o/r/issues/1/comments", serde_json::json!({"body": 5})),
        ("POST", "/repos/o/r/issues/1/comments", serde_json::json!({"body": "x", "bogus": 1})),
        (
            "POST",
            "/repos/o/r/check-runs",
            serde_json::json!({"name": "n", "head_sha": "s", "status": "done"}),
        ),
        ("POST", "/repos/o/r/nowhere", serde_json::json!({"body": "x"})),
    ];
    for (method, path, body) in bad {
        let one = vec![(method.to_string(), path.to_string(), body.clone())];
        let refused = std::panic::catch_unwind(|| reference::assert_bodies_valid(&one)).is_err();
        // Outside CI without the reference file the check is skipped, and so is this assertion.
        let reference = std::env::var("ORCH_REFERENCE_REST")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/github/github-rest-subset.json").to_string());
        if std::path::Path::new(&reference).exists() {
            assert!(refused, "{method} {path} {body} was accepted");
        }
    }
    let good = vec![(
        "POST".to_string(),
        "/repos/o/r/issues/1/comments".to_string(),
        serde_json::json!({"body": "fine"}),
    )];
    reference::assert_bodies_valid(&good);
}

#[tokio::test]
async fn dropped_connections_and_slow_answers() {
    let e = env(quick()).await;
    // A read whose connection drops is retried.
    e.fake
        .state
        .inject(Fault::new(Method::GET, "/issues/30/labels", 2, FaultKind::Drop));
    e.fake.state.set_labels(REPO, 30, &["bug"]);
    assert_eq!(e.client.list_labels(5, REPO, 30).await.unwrap(), vec!["bug".to_string()]);
    assert_eq!(count(&e.fake.state.log(), "GET", "/issues/30/labels"), 3);
    // A slow answer within the timeout is waited for, and measured as slow.
    e.fake.state.inject(Fault::new(
        Method::GET,
        "/issues/30/labels",
        1,
        FaultKind::Delay(Duration::from_millis(300)),
    ));
    let started = std::time::Instant::now();
    e.client.list_labels(5, REPO, 30).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(count(&e.fake.state.log(), "GET", "/issues/30/labels"), 4);
    // Slower than the timeout: retried, and the next attempt answers.
    e.fake.state.inject(Fault::new(
        Method::GET,
        "/issues/30/labels",
        1,
        FaultKind::Delay(Duration::from_secs(2)),
    ));
    e.client.list_labels(5, REPO, 30).await.unwrap();
    assert_eq!(count(&e.fake.state.log(), "GET", "/issues/30/labels"), 6);
}

#[tokio::test]
async fn issues_pull_requests_and_repositories_are_modelled() {
    let e = env(quick()).await;
    e.fake.state.add_repo(REPO, 5, "trunk");
    e.fake.state.add_repo("other/private", 6, "main");
    e.fake.state.init_repo(REPO, "trunk", &[(".github/orch.yml", "version: 1\n")]);
    let repo = e.client.repository(5, REPO).await.unwrap();
    assert_eq!((repo.full_name.as_str(), repo.default_branch.as_str()), (REPO, "trunk"));
    // The policy file is read from the default branch's tip.
    assert_eq!(
        e.client.file(5, REPO, ".github/orch.yml", None).await.unwrap().as_deref(),
        Some("version: 1\n")
    );
    let issue = e.fake.state.open_issue(REPO, "Crash on start", "It crashes.", "lee");
    e.fake.state.set_labels(REPO, issue, &["orch:triage"]);
    let read = e.client.issue(5, REPO, issue).await.unwrap();
    assert_eq!(
        (read.title.as_str(), read.body.as_deref(), read.user.login.as_str()),
        ("Crash on start", Some("It crashes."), "lee")
    );
    assert_eq!(read.labels.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), vec!["orch:triage"]);
    assert!(read.pull_request.is_none());
    // Pull requests share the issues' numbering and are issues too.
    e.fake.state.push(REPO, "feature", &[("x.rs", Some("x"))]);
    let pr = e.fake.state.open_pull(REPO, "Add x", "feature", "trunk", "lee");
    assert_eq!(pr, issue + 1);
    assert!(e.client.issue(5, REPO, pr).await.unwrap().pull_request.is_some());
    assert_eq!(
        e.client.pull_for_branch(5, REPO, "feature").await.unwrap().map(|p| p.number),
        Some(pr)
    );
    assert_eq!(e.client.pull_for_branch(5, REPO, "nope").await.unwrap(), None);
    // A user's comment reads back with its author and type.
    let c = e.fake.state.user_comment(REPO, issue, "dependabot[bot]", "Bot", "hi");
    assert_eq!(e.client.issue_comment(5, REPO, c).await.unwrap().body, "hi");
    // An installation sees only its repositories (its tokens are asked per repository, and
    // GitHub refuses a token for one the installation does not grant), and unknown
    // installations get no token.
    let err = e.client.issue(5, "other/private", 1).await.unwrap_err();
    assert!(err.to_string().contains("not accessible to the parent installation"), "{err}");
    assert!(e.client.issue(99, REPO, issue).await.is_err());
}

/// The fake refuses what GitHub refuses, over HTTP: App JWTs without a valid RS256 signature by
/// the App's key, with another `iss`, expired, issued in the future or living longer than 10
/// minutes; installation tokens that are unknown or expired. (The other tests show it accepts
/// what orch sends; this one shows the check could fail.)
#[tokio::test]
async fn the_fake_refuses_bad_jwts_and_expired_tokens() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = common::key_pair(keys.path());
    let other_dir = tempfile::tempdir().unwrap();
    let (other_private, _) = common::key_pair(other_dir.path());
    // Tokens live 2 s here, so their expiry can be seen.
    let fake = FakeGithub::start(77, &public, Duration::from_secs(2)).await.unwrap();
    fake.state.add_repo(REPO, 7, "main");
    let issue = fake.state.open_issue(REPO, "Crash", "It crashes.", "lee");
    let http = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let jwt = |key: &[u8], iss: &str, iat: i64, exp: i64| {
        let claims = serde_json::json!({ "iss": iss, "iat": iat, "exp": exp });
        encode(&Header::new(Algorithm::RS256), &claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
    };
    let token_url = format!("{}/app/installations/7/access_tokens", fake.url());
    let ask = |auth: Option<String>| {
        let mut request = http.post(&token_url).header("user-agent", "orch-test");
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let refused = [
        ("no credentials", None),
        ("not a JWT", Some("Bearer nonsense".to_string())),
        (
            "signed by another key",
            Some(format!("Bearer {}", jwt(&other_private, "77", now - 60, now + 540))),
        ),
        (
            "another App's id",
            Some(format!("Bearer {}", jwt(&private, "78", now - 60, now + 540))),
        ),
        ("expired", Some(format!("Bearer {}", jwt(&private, "77", now - 700, now - 100)))),
        (
            "issued in the future",
            Some(format!("Bearer {}", jwt(&private, "77", now + 120, now + 500))),
        ),
        (
            "living over 10 minutes",
            Some(format!("Bearer {}", jwt(&private, "77", now - 60, now + 900))),
        ),
    ];
    for (what, auth) in refused {
        let (status, body) = ask(auth).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    let (status, body) = ask(Some(format!("Bearer {}", jwt(&private, "77", now - 60, now + 540)))).await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    let read = |token: String| {
        let request = http
            .get(format!("{}/repos/{REPO}/issues/{issue}/comments", fake.url()))
            .header("user-agent", "orch-test")
            .header("authorization", format!("Bearer {token}"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(read(token.clone()).await, 200, "a fresh token works");
    assert_eq!(read("ghs_unknown".into()).await, 401, "an unknown token");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(read(token).await, 401, "an expired token");
}

/// A raw request to the fake as installation `installation` (GitHub's answer as it is).
async fn raw(e: &Env, installation: i64, method: Method, path: &str, body: Option<serde_json::Value>) -> reqwest::Response {
    let token = e.tokens.token(installation).await.unwrap();
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", e.fake.url()))
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&token));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

fn header_u64(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until the real unix second `reset` has passed.
async fn sleep_past(reset: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64((reset as f64 - now).max(0.0) + 0.05)).await;
}

/// GitHub's primary limit belongs to an installation: one installation using up its hour leaves
/// another's untouched. The token exchange is not counted; the refused request is not either.
#[tokio::test]
async fn the_primary_rate_limit_is_per_installation() {
    let e = env(quick()).await;
    e.fake.state.set_rate_limit(2);
    let path = format!("/repos/{REPO}/issues/40/comments");
    for left in [1, 0] {
        let r = raw(&e, 5, Method::GET, &path, None).await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(header_u64(&r, "x-ratelimit-remaining"), Some(left));
    }
    let refused = raw(&e, 5, Method::GET, &path, None).await;
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(header_u64(&refused, "x-ratelimit-remaining"), Some(0));
    let reset = header_u64(&refused, "x-ratelimit-reset").unwrap();
    assert!(reset > unix_now() + 3000, "an hour away: {reset}");
    let text: serde_json::Value = refused.json().await.unwrap();
    assert!(text["message"].as_str().unwrap().contains("API rate limit exceeded"), "{text}");
    // Another installation has its own hour.
    let other = raw(&e, 6, Method::GET, &path, None).await;
    assert_eq!(other.status().as_u16(), 200);
    assert_eq!(
        (header_u64(&other, "x-ratelimit-limit"), header_u64(&other, "x-ratelimit-remaining")),
        (Some(2), Some(1))
    );
    let five = e.fake.state.limit_counters(5);
    assert_eq!((five.counted, five.primary_refusals, five.secondary_refusals), (2, 1, 0));
    assert_eq!(e.fake.state.limit_counters(6).counted, 1);
}

/// On a scaled clock the hour is `1/S` of a real hour, and the reset is told in real unix
/// seconds: once it has passed, the installation has a fresh hour.
#[tokio::test]
async fn a_scaled_hour_resets_on_time_in_real_seconds() {
    let e = env(quick()).await;
    e.fake.state.set_limits(FakeLimits {
        requests_per_hour: Some(2),
        ..FakeLimits::OFF.scaled(720.0)
    });
    let path = format!("/repos/{REPO}/issues/40/comments");
    let first = raw(&e, 5, Method::GET, &path, None).await;
    let reset = header_u64(&first, "x-ratelimit-reset").unwrap();
    assert!(reset <= unix_now() + 6, "the hour lasts five real seconds: reset {reset}");
    raw(&e, 5, Method::GET, &path, None).await;
    let refused = raw(&e, 5, Method::GET, &path, None).await;
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(header_u64(&refused, "x-ratelimit-remaining"), Some(0));
    sleep_past(header_u64(&refused, "x-ratelimit-reset").unwrap()).await;
    let fresh = raw(&e, 5, Method::GET, &path, None).await;
    assert_eq!(fresh.status().as_u16(), 200);
    assert_eq!(header_u64(&fresh, "x-ratelimit-remaining"), Some(1));
    let limits = e.fake.state.limits();
    assert_eq!(limits.hour(), Duration::from_secs(5));
    assert_eq!(limits.fake_time(Duration::from_secs(10)), Duration::from_secs(7200));
}

/// GitHub's secondary limits on content creation, per minute and per hour: beyond either, a
/// 403 "You have exceeded a secondary rate limit" with `retry-after` in real seconds; nothing is
/// applied, reads still go through, and the primary headroom is not what ran out.
#[tokio::test]
async fn content_creation_beyond_the_secondary_limits_is_refused_with_retry_after() {
    let e = env(quick()).await;
    // Scale 12: the minute is five real seconds, the hour five real minutes.
    e.fake.state.set_limits(FakeLimits {
        content_per_minute: Some(3),
        content_per_hour: Some(5),
        ..FakeLimits::GITHUB.scaled(12.0)
    });
    let n = e.fake.state.open_issue(REPO, "Crash", "crash", "dev-kim");
    let path = format!("/repos/{REPO}/issues/{n}/comments");
    let post = |i: usize| raw(&e, 5, Method::POST, &path, Some(serde_json::json!({ "body": format!("c{i}") })));
    for i in 0..3 {
        assert_eq!(post(i).await.status().as_u16(), 201);
    }
    let refused = post(3).await;
    assert_eq!(refused.status().as_u16(), 403);
    let retry_after = header_u64(&refused, "retry-after").expect("retry-after");
    assert!(
        (1..=5).contains(&retry_after),
        "the scaled minute is five real seconds: {retry_after}"
    );
    assert_ne!(
        header_u64(&refused, "x-ratelimit-remaining"),
        Some(0),
        "the primary limit is not spent"
    );
    let text: serde_json::Value = refused.json().await.unwrap();
    assert!(
        text["message"]
            .as_str()
            .unwrap()
            .starts_with("You have exceeded a secondary rate limit"),
        "{text}"
    );
    assert_eq!(e.fake.state.comments(REPO, n).len(), 3, "the refused comment was not made");
    assert_eq!(raw(&e, 5, Method::GET, &path, None).await.status().as_u16(), 200, "reads go on");
    // After the minute: two more fit in the hour, the next waits for the hour's oldest to leave it.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(50)).await;
    assert_eq!(post(4).await.status().as_u16(), 201);
    assert_eq!(post(5).await.status().as_u16(), 201);
    let hourly = post(6).await;
    assert_eq!(hourly.status().as_u16(), 403);
    let wait = header_u64(&hourly, "retry-after").unwrap();
    assert!(
        (240..=300).contains(&wait),
        "the hour's oldest post leaves the scaled hour within five real minutes: {wait}"
    );
    let c = e.fake.state.limit_counters(5);
    assert_eq!((c.content_creating, c.secondary_refusals, c.primary_refusals), (5, 2, 0));
    assert_eq!(c.counted, 6, "five posts and one read; refusals are not counted");
}

/// A 304 is free on every endpoint: neither the hour's count nor the installation's counter moves.
#[tokio::test]
async fn a_not_modified_answer_is_not_counted() {
    let e = env(quick()).await;
    e.fake.state.react(556, "mara", "User", "+1");
    let path = format!("/repos/{REPO}/issues/comments/556/reactions");
    let first = raw(&e, 5, Method::GET, &path, None).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    let before = e.fake.state.limit_counters(5);
    assert_eq!(before.counted, 1, "the token exchange is not counted");
    for _ in 0..3 {
        let token = e.tokens.token(5).await.unwrap();
        let r = reqwest::Client::new()
            .get(format!("{}{path}", e.fake.url()))
            .bearer_auth(secrecy::ExposeSecret::expose_secret(&token))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 304);
        assert_eq!(header_u64(&r, "x-ratelimit-used"), Some(1));
    }
    assert_eq!(e.fake.state.limit_counters(5), before);
    assert_eq!(e.fake.state.rate_used(), 1);
}

fn label(name: &str, description: Option<&str>) -> RepoLabel {
    RepoLabel {
        name: name.into(),
        description: description.map(str::to_string),
    }
}

#[tokio::test]
async fn repository_labels_are_read_with_descriptions_and_cost_nothing_when_unchanged() {
    let e = env(quick()).await;
    e.fake.state.add_repo(REPO, 5, "main");
    e.fake
        .state
        .set_repo_labels(REPO, &[("bug", "Something isn't working"), ("question", "")]);
    let LabelsRead::Found { labels, etag } = e.client.repo_labels_if_changed(5, REPO, None).await.unwrap() else {
        panic!("a first read finds the labels")
    };
    assert_eq!(labels, [label("bug", Some("Something isn't working")), label("question", None)]);
    let etag = etag.expect("a list of one page comes with its ETag");

    let before = e.fake.state.limit_counters(5);
    for _ in 0..2 {
        assert_eq!(
            e.client.repo_labels_if_changed(5, REPO, Some(&etag)).await.unwrap(),
            LabelsRead::NotModified
        );
    }
    assert_eq!(e.fake.state.limit_counters(5), before, "a 304 is not counted");
    assert_eq!(e.fake.state.not_modified().len(), 2);

    // A changed description is a changed list.
    e.fake
        .state
        .set_repo_labels(REPO, &[("bug", "Something is broken"), ("question", "")]);
    let LabelsRead::Found { labels, etag: newer } = e.client.repo_labels_if_changed(5, REPO, Some(&etag)).await.unwrap() else {
        panic!("the list changed")
    };
    assert_eq!(labels[0], label("bug", Some("Something is broken")));
    assert_ne!(newer.as_deref(), Some(etag.as_str()));
    assert_eq!(e.fake.state.limit_counters(5).counted, before.counted + 1);
}

#[tokio::test]
async fn more_than_a_page_of_labels_is_read_page_by_page_and_never_taken_as_unchanged() {
    let e = env(quick()).await;
    e.fake.state.add_repo(REPO, 5, "main");
    let names: Vec<String> = (0..250).map(|i| format!("area-{i:03}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "an area")).collect();
    e.fake.state.set_repo_labels(REPO, &many);

    let LabelsRead::Found { labels, etag } = e.client.repo_labels_if_changed(5, REPO, None).await.unwrap() else {
        panic!("found")
    };
    assert_eq!(labels.iter().map(|l| l.name.clone()).collect::<Vec<_>>(), names);
    assert!(labels.iter().all(|l| l.description.as_deref() == Some("an area")));
    assert_eq!(etag, None, "a 304 of page one could not vouch for pages two and three");
    assert_eq!(count(&e.fake.state.log(), "GET", "/labels"), 3);

    // GitHub's paging: the `Link` header and the last, partial page.
    let path = format!("/repos/{REPO}/labels?per_page=100&page=3");
    let last = raw(&e, 5, Method::GET, &path, None).await;
    let link = last.headers()["link"].to_str().unwrap().to_string();
    assert!(link.contains("page=2>; rel=\"prev\"") && !link.contains("rel=\"next\""), "{link}");
    assert_eq!(last.json::<Vec<serde_json::Value>>().await.unwrap().len(), 50);
    let first = raw(&e, 5, Method::GET, &format!("/repos/{REPO}/labels"), None).await;
    let link = first.headers()["link"].to_str().unwrap().to_string();
    assert!(link.contains("per_page=30&page=2>; rel=\"next\""), "30 a page by default: {link}");
    let page: Vec<serde_json::Value> = first.json().await.unwrap();
    assert_eq!(page.len(), 30);
    for key in ["id", "node_id", "url", "name", "description", "color", "default"] {
        assert!(page[0].get(key).is_some(), "GitHub's label has `{key}`: {}", page[0]);
    }

    // Exactly one full page: a label added after it would leave page one as it is, so that
    // list gets no ETag either.
    let hundred: Vec<(&str, &str)> = many[..100].to_vec();
    e.fake.state.set_repo_labels(REPO, &hundred);
    let LabelsRead::Found { labels, etag } = e.client.repo_labels_if_changed(5, REPO, None).await.unwrap() else {
        panic!("found")
    };
    assert_eq!((labels.len(), etag), (100, None));
}

#[tokio::test]
async fn adding_an_unknown_label_to_an_issue_makes_it_in_the_repository() {
    let e = env(quick()).await;
    e.fake.state.add_repo(REPO, 5, "main");
    e.fake.state.set_repo_labels(REPO, &[("bug", "Something isn't working")]);
    e.client
        .add_labels(5, REPO, 8, &["bug".into(), "needs-triage".into()])
        .await
        .unwrap();
    assert_eq!(
        e.fake.state.repo_labels(REPO),
        [
            ("bug".to_string(), Some("Something isn't working".to_string())),
            ("needs-triage".to_string(), None)
        ]
    );
    let LabelsRead::Found { labels, .. } = e.client.repo_labels_if_changed(5, REPO, None).await.unwrap() else {
        panic!("found")
    };
    assert_eq!(labels, [label("bug", Some("Something isn't working")), label("needs-triage", None)]);
    // An issue's labels are GitHub's whole label objects, descriptions included.
    let on_issue: Vec<serde_json::Value> = raw(&e, 5, Method::GET, &format!("/repos/{REPO}/issues/8/labels"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(on_issue[0]["description"], "Something isn't working");
    assert_eq!(on_issue[1]["description"], serde_json::Value::Null);
    bodies_valid(&e);
}

/// A repository with three commits' worth of history on `main`; returns (first commit, tip).
fn tarball_repo(e: &Env) -> (String, String) {
    e.fake.state.add_repo(REPO, 5, "main");
    let first = e.fake.state.init_repo(
        REPO,
        "main",
        &[
            ("README.md", "# Widgets\n"),
            ("src/lib.rs", "pub fn widget() {}\n"),
            ("src/deep/er/mod.rs", "// nested\n"),
            ("assets/logo.png", "\u{89}PNG\r\n\u{1a}\n\0\0\0\rIHDR\0\0"),
        ],
    );
    let big = "a".repeat(300 * 1024);
    e.fake.state.push(REPO, "main", &[("data/big.csv", Some(&big))]);
    let tip = e
        .fake
        .state
        .push(REPO, "main", &[("README.md", Some("# Widgets, now with gears\n"))]);
    (first, tip)
}

fn files_of(t: Tarball) -> RepoSnapshot {
    match t {
        Tarball::Files(s) => s,
        Tarball::TooLarge { what } => panic!("too large: {what}"),
    }
}

#[tokio::test]
async fn a_tarball_is_one_counted_request_and_holds_the_files_at_its_commit() {
    let e = env(quick()).await;
    let (first, tip) = tarball_repo(&e);
    let limits = TarballLimits::default();
    let before = e.fake.state.limit_counters(5).counted;

    let snapshot = files_of(e.client.tarball(5, REPO, "main", &limits).await.unwrap());
    assert_eq!(e.fake.state.limit_counters(5).counted, before + 1, "the download is not counted");
    assert_eq!(e.fake.state.tarball_downloads(), 1);
    assert_eq!(
        snapshot.paths,
        ["README.md", "assets/logo.png", "data/big.csv", "src/deep/er/mod.rs", "src/lib.rs"]
    );
    let texts: Vec<(&str, &str)> = snapshot.files.iter().map(|f| (f.path.as_str(), f.text.as_str())).collect();
    assert_eq!(
        texts,
        [
            ("README.md", "# Widgets, now with gears\n"),
            ("src/deep/er/mod.rs", "// nested\n"),
            ("src/lib.rs", "pub fn widget() {}\n"),
        ]
    );
    let skipped: Vec<(&str, &str)> = snapshot.skipped.iter().map(|f| (f.path.as_str(), f.why.as_str())).collect();
    assert_eq!(skipped, [("assets/logo.png", "binary"), ("data/big.csv", "larger than 256 KiB")]);

    // The same ref by its sha, and an older commit with its older text.
    let at_tip = files_of(e.client.tarball(5, REPO, &tip, &limits).await.unwrap());
    assert_eq!(at_tip, snapshot);
    let old = files_of(e.client.tarball(5, REPO, &first, &limits).await.unwrap());
    assert_eq!(old.files[0].text, "# Widgets\n");
    assert!(!old.paths.contains(&"data/big.csv".to_string()), "not there yet");
    assert_eq!(e.fake.state.limit_counters(5).counted, before + 3);
    assert_eq!(e.fake.state.tarball_downloads(), 3);
}

#[tokio::test]
async fn a_tarball_past_its_download_limit_is_too_large_and_not_read() {
    let e = env(quick()).await;
    tarball_repo(&e);
    let limits = TarballLimits {
        max_download_bytes: 100,
        ..TarballLimits::default()
    };
    assert_eq!(
        e.client.tarball(5, REPO, "main", &limits).await.unwrap(),
        Tarball::TooLarge {
            what: "the download is larger than 100 bytes".into()
        }
    );
    // A bound on what it unpacks to: the 300 KiB file is past 64 KiB.
    let limits = TarballLimits {
        max_unpacked_bytes: 64 * 1024,
        ..TarballLimits::default()
    };
    assert_eq!(
        e.client.tarball(5, REPO, "main", &limits).await.unwrap(),
        Tarball::TooLarge {
            what: "the unpacked files are larger than 64 KiB".into()
        }
    );
}

#[tokio::test]
async fn a_tarball_of_no_such_ref_is_not_found_and_a_rate_limit_is_a_rate_limit() {
    let e = env(quick()).await;
    tarball_repo(&e);
    let err = e
        .client
        .tarball(5, REPO, "no-such-branch", &TarballLimits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Github(GithubError::Permanent { status: 404, .. })),
        "{err}"
    );
    assert_eq!(e.fake.state.tarball_downloads(), 0);
    e.fake.state.exhaust_rate_limit(Duration::from_secs(120));
    let err = e.client.tarball(5, REPO, "main", &TarballLimits::default()).await.unwrap_err();
    assert!(err.rate_limit().is_some(), "{err}");
    assert_eq!(e.fake.state.tarball_downloads(), 0);
}

/// The fake's side of the download: a 302 to its codeload, which serves the archive without a
/// token and refuses one.
#[tokio::test]
async fn the_tarball_redirects_to_a_download_that_takes_no_token() {
    let e = env(quick()).await;
    let (_, tip) = tarball_repo(&e);
    let token = e.tokens.token(5).await.unwrap();
    let token = secrecy::ExposeSecret::expose_secret(&token).to_string();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = http
        .get(format!("{}/repos/{REPO}/tarball/main", e.fake.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 302);
    let location = answer.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("{}/_codeload/{REPO}/legacy.tar.gz/{tip}", e.fake.url()));
    let with_token = http.get(&location).bearer_auth(&token).send().await.unwrap();
    assert_eq!(with_token.status().as_u16(), 400);
    let archive = http.get(&location).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&archive[..2], &[0x1f, 0x8b], "gzip");
    // Unpacked by hand: GitHub's layout, one folder named after the repository and commit.
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    let names: Vec<String> = tar
        .entries()
        .unwrap()
        .map(|entry| String::from_utf8_lossy(&entry.unwrap().path_bytes()).into_owned())
        .collect();
    let folder = format!("acme-widgets-{}/", &tip[..7]);
    assert_eq!(names[0], "pax_global_header");
    assert_eq!(names[1], folder);
    assert!(names.contains(&format!("{folder}src/deep/er/mod.rs")), "{names:?}");
    assert_eq!(e.fake.state.tarball_downloads(), 1, "the refused request served nothing");
}
