//! The end-to-end harness itself: its payload builders read back as the events they describe and
//! have GitHub's shapes, and a running orch takes deliveries, processes them and survives a
//! restart.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::payloads::{self, IssueSpec, PullSpec};
use e2e::{Orch, INSTALLATION, REPO, WAIT};
use orch::webhook::event::{parse, CommentChange, Event, Parsed, PullRequestTrigger};
use serde_json::Value;
use std::path::PathBuf;

fn parsed(event: &str, payload: &Value) -> Parsed {
    let bytes = serde_json::to_vec(payload).unwrap();
    let p = parse(event, &bytes).unwrap_or_else(|e| panic!("{event}: {e}"));
    assert_eq!(p.meta.installation_id, Some(INSTALLATION), "{event}");
    assert_eq!(p.meta.repository.as_deref(), Some(REPO), "{event}");
    p
}

#[test]
fn every_builder_parses_as_its_event() {
    let repo = e2e::repo();
    let issue = IssueSpec::new(7, "Crash on empty config").labels(&["bug"]).by("dev-lee");

    let p = parsed("issues", &payloads::issue_opened(&repo, &issue));
    assert_eq!(p.meta.action.as_deref(), Some("opened"));
    match p.event {
        Event::IssueOpened { repo: r, issue: i, sender } => {
            assert_eq!(
                (r.id, r.full_name.as_str(), r.default_branch.as_deref(), r.private),
                (repo.id, REPO, Some("main"), false)
            );
            assert_eq!(
                (i.number, i.title.as_str(), i.body.as_str()),
                (7, "Crash on empty config", issue.body.as_str())
            );
            assert_eq!(i.labels, vec!["bug"]);
            assert_eq!(i.author.login, "dev-lee");
            assert!(!i.author.is_bot && !i.is_pull_request);
            assert_eq!(sender.unwrap().login, "dev-lee");
        }
        other => panic!("{other:?}"),
    }

    match parsed("issues", &payloads::issue_labeled(&repo, &issue, "orch:triage", "mara")).event {
        Event::IssueLabeled {
            issue: i, label, sender, ..
        } => {
            assert_eq!(label, "orch:triage");
            assert_eq!(i.labels, vec!["bug", "orch:triage"], "the added label is among the issue's labels");
            let sender = sender.unwrap();
            assert_eq!((sender.login.as_str(), sender.is_bot), ("mara", false));
            assert_eq!(sender.id, payloads::stable_id("user", "mara"));
        }
        other => panic!("{other:?}"),
    }

    let body = "Thanks!\n\n/orch triage";
    match parsed(
        "issue_comment",
        &payloads::issue_comment_created(&repo, &issue, 9001, body, "mara", "User"),
    )
    .event
    {
        Event::IssueCommentCreated { issue: i, comment, .. } => {
            assert_eq!((i.number, i.is_pull_request), (7, false));
            assert_eq!((comment.id, comment.body.as_str()), (9001, body));
            assert_eq!((comment.author.login.as_str(), comment.author.is_bot), ("mara", false));
        }
        other => panic!("{other:?}"),
    }
    let on_pr = issue.clone().pull_request();
    match parsed(
        "issue_comment",
        &payloads::issue_comment_created(&repo, &on_pr, 9002, "/orch approve", "orch[bot]", "Bot"),
    )
    .event
    {
        Event::IssueCommentCreated { issue: i, comment, .. } => {
            assert!(i.is_pull_request);
            assert!(comment.author.is_bot);
        }
        other => panic!("{other:?}"),
    }

    let edited = payloads::issue_comment_edited(&repo, &issue, 9001, "old", "/orch approve", "mara", "root");
    assert_eq!(edited["changes"]["body"]["from"], "old");
    match parsed("issue_comment", &edited).event {
        Event::IssueCommentChanged {
            issue_number,
            comment_id,
            change,
            sender,
            ..
        } => {
            assert_eq!((issue_number, comment_id, change), (7, 9001, CommentChange::Edited));
            assert_eq!(sender.unwrap().login, "root");
        }
        other => panic!("{other:?}"),
    }
    match parsed(
        "issue_comment",
        &payloads::issue_comment_deleted(&repo, &issue, 9001, "/orch approve", "mara", "mara"),
    )
    .event
    {
        Event::IssueCommentChanged { comment_id, change, .. } => assert_eq!((comment_id, change), (9001, CommentChange::Deleted)),
        other => panic!("{other:?}"),
    }

    let head = payloads::fake_sha("head", "1");
    let mut pr = PullSpec::new(8, "Handle an empty config", "fix-empty", &head).labels(&["enhancement"]);
    pr.base_sha = payloads::fake_sha("base", "1");
    for (action, trigger, label) in [
        ("opened", PullRequestTrigger::Opened, None),
        ("reopened", PullRequestTrigger::Reopened, None),
        ("labeled", PullRequestTrigger::Labeled, Some("orch:qa")),
    ] {
        let v = payloads::pull_request(action, &repo, &pr, label, "dev-lee");
        assert_eq!(v["number"], 8);
        let p = parsed("pull_request", &v);
        assert_eq!(p.meta.action.as_deref(), Some(action));
        match p.event {
            Event::PullRequest {
                pull_request,
                trigger: t,
                label: l,
                sender,
                ..
            } => {
                assert_eq!(t, trigger);
                assert_eq!(l.as_deref(), label);
                assert_eq!(pull_request.number, 8);
                assert_eq!(pull_request.title, "Handle an empty config");
                assert_eq!(
                    (pull_request.head_sha.as_str(), pull_request.head_ref.as_str()),
                    (head.as_str(), "fix-empty")
                );
                assert_eq!(pull_request.base_ref, "main");
                assert_eq!(pull_request.author.login, "dev-lee");
                assert!(!pull_request.draft);
                let mut expected = vec!["enhancement"];
                expected.extend(label);
                assert_eq!(pull_request.labels, expected);
                assert_eq!(sender.unwrap().login, "dev-lee");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(v["pull_request"]["base"]["sha"].as_str(), Some(pr.base_sha.as_str()));
    }

    let after = payloads::fake_sha("head", "2");
    match parsed(
        "pull_request",
        &payloads::pull_request_synchronize(&repo, &pr, &head, &after, "dev-lee"),
    )
    .event
    {
        Event::PullRequestSynchronize {
            pull_request,
            before,
            after: a,
            sender,
            ..
        } => {
            assert_eq!(before.as_deref(), Some(head.as_str()));
            assert_eq!(a, after);
            assert_eq!(pull_request.head_sha, after, "the payload's head is the new commit");
            assert_eq!(sender.unwrap().login, "dev-lee");
        }
        other => panic!("{other:?}"),
    }

    for (external, expected) in [(Some("wf-12"), Some("wf-12")), (None, None)] {
        let v = payloads::check_run_requested_action(&repo, 555, "orch / approval", &head, external, "approve", "mara", "User");
        assert_eq!(
            v["check_run"]["external_id"],
            external.unwrap_or(""),
            "GitHub sends an empty string"
        );
        match parsed("check_run", &v).event {
            Event::CheckRunRequestedAction {
                check_run_id,
                check_run_name,
                head_sha,
                external_id,
                identifier,
                sender,
                ..
            } => {
                assert_eq!(
                    (check_run_id, check_run_name.as_str(), head_sha.as_str()),
                    (555, "orch / approval", head.as_str())
                );
                assert_eq!(external_id.as_deref(), expected);
                assert_eq!(identifier, "approve");
                assert_eq!(sender.unwrap().login, "mara");
            }
            other => panic!("{other:?}"),
        }
    }

    let ping = parse("ping", &serde_json::to_vec(&payloads::ping(e2e::APP_ID)).unwrap()).unwrap();
    assert!(
        matches!(
            ping.event,
            Event::Ping {
                hook_id: Some(_),
                zen: Some(_)
            }
        ),
        "{:?}",
        ping.event
    );
}

/// The recorded GitHub payloads of the shared reference folder, if present.
fn reference_dir() -> Option<PathBuf> {
    let dir = std::env::var("ORCH_REFERENCE_WEBHOOKS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/github/webhooks"));
    assert!(dir.is_dir(), "GitHub's recorded webhook payloads are missing at {}", dir.display());
    Some(dir)
}

/// Every key of `ours` exists in `theirs` with a value of the same JSON type (null on either
/// side matches anything); arrays are compared by their first elements. `permissions` objects
/// are maps whose keys vary from App to App: only their type is compared.
fn same_shape(path: &str, ours: &Value, theirs: &Value, extra: &[&str], problems: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(_), Value::Object(_)) if path.ends_with(".permissions") => {}
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match t.get(k) {
                    Some(tv) => same_shape(&p, v, tv, extra, problems),
                    None if extra.contains(&p.as_str()) => {}
                    None => problems.push(format!("{p}: not in GitHub's payload")),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            if let (Some(o), Some(t)) = (o.first(), t.first()) {
                same_shape(&format!("{path}[]"), o, t, extra, problems);
            }
        }
        (o, t) => {
            let kind = |v: &Value| match v {
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            };
            if kind(o) != kind(t) {
                problems.push(format!("{path}: {} here, {} in GitHub's payload", kind(o), kind(t)));
            }
        }
    }
}

#[test]
fn builders_have_githubs_shapes() {
    let Some(dir) = reference_dir() else { return };
    let repo = e2e::repo();
    let issue = IssueSpec::new(7, "Crash on empty config").labels(&["bug"]);
    let head = payloads::fake_sha("head", "1");
    let pr = PullSpec::new(8, "Handle an empty config", "fix-empty", &head).labels(&["enhancement"]);
    let cases = [
        ("issues/opened.payload.json", payloads::issue_opened(&repo, &issue)),
        (
            "issues/labeled.payload.json",
            payloads::issue_labeled(&repo, &issue, "orch:triage", "mara"),
        ),
        (
            "issue_comment/created.with-installation.payload.json",
            payloads::issue_comment_created(&repo, &issue, 9001, "hello", "mara", "User"),
        ),
        (
            "issue_comment/edited.payload.json",
            payloads::issue_comment_edited(&repo, &issue, 9001, "hello", "hi", "mara", "mara"),
        ),
        (
            "issue_comment/deleted.payload.json",
            payloads::issue_comment_deleted(&repo, &issue, 9001, "hello", "mara", "mara"),
        ),
        (
            "pull_request/opened.payload.json",
            payloads::pull_request("opened", &repo, &pr, None, "dev-lee"),
        ),
        (
            "pull_request/reopened.payload.json",
            payloads::pull_request("reopened", &repo, &pr, None, "dev-lee"),
        ),
        (
            "pull_request/labeled.payload.json",
            payloads::pull_request("labeled", &repo, &pr, Some("orch:qa"), "mara"),
        ),
        (
            "pull_request/synchronize.payload.json",
            payloads::pull_request_synchronize(&repo, &pr, &head, &payloads::fake_sha("head", "2"), "dev-lee"),
        ),
        (
            "check_run/requested_action.payload.json",
            payloads::check_run_requested_action(&repo, 555, "orch / approval", &head, Some("wf-1"), "approve", "mara", "User"),
        ),
        ("ping/with-app_id.payload.json", payloads::ping(e2e::APP_ID)),
    ];
    let mut problems = Vec::new();
    for (file, ours) in &cases {
        let text = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let theirs: Value = serde_json::from_slice(&text).unwrap();
        let mut found = Vec::new();
        // Some recordings come from repository webhooks, which carry no installation.
        same_shape("", ours, &theirs, &["installation"], &mut found);
        problems.extend(found.into_iter().map(|p| format!("{file}: {p}")));
    }
    assert!(
        problems.is_empty(),
        "builder output differs from GitHub's payloads:\n{}",
        problems.join("\n")
    );
}

const POLICY: &str = "phase: 1\n";

async fn harness_round_trip(backend: Backend) {
    let Some(mut orch) = Orch::start(backend, POLICY).await else {
        return;
    };
    assert_eq!(orch.fake.state.files_at(REPO, "main").unwrap()[".github/orch.yml"], POLICY);
    let issue = orch.open_issue("Crash on empty config", "It panics.", "dev-lee");

    // A plain comment (no command) is stored before the answer and then processed.
    let text = "I can reproduce this on 0.3 as well.";
    let id = orch.fake.state.user_comment(REPO, issue.number, "mara", "User", text);
    let guid = orch.next_guid();
    let payload = payloads::issue_comment_created(&orch.repo, &issue, id, text, "mara", "User");
    let (status, answer) = orch.send_with_guid("issue_comment", &guid, &payload).await;
    assert_eq!(
        (status, answer["status"].as_str(), answer["delivery"].as_str()),
        (202, Some("queued"), Some(guid.as_str()))
    );
    let stored = orch.delivery(&guid).await.expect("stored before the answer");
    assert_eq!(
        (
            stored.event.as_str(),
            stored.action.as_deref(),
            stored.installation_id,
            stored.repository.as_deref()
        ),
        ("issue_comment", Some("created"), Some(INSTALLATION), Some(REPO))
    );

    let (status, answer) = orch.send("ping", &payloads::ping(e2e::APP_ID)).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("pong")));
    let ping = orch.delivery(answer["delivery"].as_str().unwrap()).await.expect("pings are stored");
    assert_eq!((ping.event.as_str(), ping.status.as_str()), ("ping", "ignored"));

    let d = orch.wait_processed(&guid).await;
    assert_eq!(d.process_count, 1);
    orch.wait_idle(10).await;
    assert_eq!(orch.due_jobs().await, 0);
    // A comment without a command changes nothing on GitHub and starts no workflow.
    assert_eq!(orch.github_writes(), Vec::<(String, String)>::new());
    assert!(orch.fake.state.bot_comments(REPO, issue.number).is_empty());
    assert!(orch.workflow_states().await.is_empty());
    assert!(orch.actions().await.is_empty());

    // After a restart (new port, same database): the old delivery is known, a new one is taken.
    let old_base = orch.base.clone();
    orch.restart().await;
    assert_ne!(orch.base, old_base);
    let (status, answer) = orch.send_with_guid("issue_comment", &guid, &payload).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")), "{answer}");
    let (_, second) = orch.comment(&issue, "dev-lee", "Same here, on Linux.").await;
    let d = orch.wait_processed(&second).await;
    assert_eq!(d.process_count, 1);
    orch.wait_idle(10).await;
    let first = orch.delivery(&guid).await.unwrap();
    assert_eq!(
        (first.status.as_str(), first.process_count),
        ("processed", 1),
        "not processed again"
    );
    assert_eq!(orch.fake.state.comments(REPO, issue.number).len(), 2);
    assert!(orch.github_writes().is_empty());

    // What a timed-out wait reports: the fake's requests and the store's state.
    let mut polls = 0;
    let waited = orch
        .eventually_sync("the third poll", WAIT, || {
            polls += 1;
            (polls == 3).then_some(polls)
        })
        .await;
    assert_eq!(waited, 3);
    let report = orch.diagnostics().await;
    for part in ["fake GitHub requests", "workflows (", "unfinished jobs", "failed deliveries"] {
        assert!(report.contains(part), "{part} missing from:\n{report}");
    }
    assert!(!report.contains("unreadable"), "{report}");
    orch.stop().await;
    // The harness reads the store while orch is stopped.
    assert_eq!(orch.delivery(&second).await.unwrap().status, "processed");
}

both_backends!(harness_round_trip);

/// A wait that runs out panics with what it waited for and the report, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "waiting for a bot comment that never comes\nfake GitHub requests")]
async fn a_wait_that_runs_out_reports() {
    let orch = Orch::start(Backend::Sqlite, POLICY).await.expect("SQLite is always available");
    orch.eventually_sync("a bot comment that never comes", std::time::Duration::from_millis(100), || {
        orch.fake.state.bot_comments(REPO, 1).pop()
    })
    .await;
}
