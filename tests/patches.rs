//! Approved patches become pull requests (SPEC §3, §8 Gate 3, §11): the branch, the commit and the
//! pull request carry exactly the patch; a base that moved under the patch is a conflict for a
//! human; a policy tightened after approval blocks at Gate 3.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{Orch, LIB_RS, REPO};
use serde_json::json;

async fn orch(backend: Backend, policy: &str) -> Option<Orch> {
    let o = Orch::start(backend, policy).await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    Some(o)
}

/// mara asks for a patch on a new issue; returns (issue, workflow id) once it waits for approval.
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

async fn path_of(o: &Orch, id: i64) -> Vec<String> {
    o.transitions(id).await.into_iter().map(|(_, to, _)| to).collect()
}

async fn approve_by_comment_opens_a_pull_request_with_exactly_the_patch(backend: Backend) {
    let Some(o) = orch(backend, "phase: 4\n").await else { return };
    let (issue, id) = proposed(&o).await;
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    let branch = format!("orch/{id}");
    assert_eq!(o.fake.state.branches(REPO), vec!["main".to_string(), branch.clone()]);
    let files = o.fake.state.files_at(REPO, &branch).unwrap();
    let mut expected = o.fake.state.files_at(REPO, "main").unwrap();
    expected.insert("src/lib.rs".into(), patched_lib());
    assert_eq!(files, expected, "the tree holds nothing but main plus the patch");
    let (parents, message) = o.fake.state.tip(REPO, &branch).unwrap();
    assert_eq!(parents, vec![o.main_sha.clone()]);
    assert!(message.contains("approved by @lee"), "{message}");
    let pulls = o.fake.state.pulls(REPO);
    assert_eq!(pulls.len(), 1);
    // The body names the issue, links the proposal, lists the approvals with how they were
    // given, points at the votes' audit entries and says what the model did not see.
    let body = &pulls[0].body;
    let proposal_comment = o
        .fake
        .state
        .comments(REPO, issue.number)
        .into_iter()
        .find(|c| c.body.contains("patch proposal"))
        .expect("the proposal comment");
    let vote_seq = orch::audit::page(
        o.store.pool(),
        0,
        100,
        &orch::audit::Filter {
            kind: Some("vote".into()),
            subject: Some(format!("workflow:{id}")),
            actor: None,
        },
    )
    .await
    .unwrap()[0]
        .seq;
    // The Git Data writes are in the audit log: the tree (with the patch's texts inline), the
    // files it changes and the commit the branch points at.
    let writes = orch::audit::page(
        o.store.pool(),
        0,
        1000,
        &orch::audit::Filter {
            kind: Some("github_write".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let git: Vec<_> = writes.iter().filter(|r| r.details["kind"] == "git_data").collect();
    assert_eq!(git.len(), 1, "{writes:#?}");
    let tip = o.fake.state.branch_sha(REPO, &branch).expect("the branch");
    assert_eq!(git[0].details["commit"], tip.as_str());
    assert_eq!(git[0].details["branch"], branch.as_str());
    assert_eq!(git[0].details["base"], o.main_sha.as_str());
    assert_eq!(git[0].details["files"], json!(["src/lib.rs"]));
    assert_eq!(git[0].details["found_after_lost_answer"], false);
    for part in [
        format!("Closes #{}.", issue.number),
        format!("workflow {id}"),
        format!("/{REPO}/issues/{}#issuecomment-{})", issue.number, proposal_comment.id),
        "- @lee (`/orch approve`), ".to_string(),
        format!("audit entries #{vote_seq} of subject `workflow:{id}`"),
        "**Not seen by the model**".to_string(),
    ] {
        assert!(body.contains(&part), "{part:?} missing from:\n{body}");
    }
    // No comment announces the pull request: the issue's only comment by orch is the proposal
    // (GitHub itself shows the pull request on the issue, whose number its body names).
    assert_eq!(o.bot_comments(issue.number).len(), 1, "{:#?}", o.bot_comments(issue.number));
    let pull_url = format!("{}/{REPO}/pull/{}", o.fake.url(), pulls[0].number);
    // The proposal's check run: decided, so no buttons any more, and it says so and links the
    // pull request (its summary and its "Details"); its per-file annotation is still there.
    let runs = o.fake.state.check_runs(REPO);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = o
        .eventually_sync("the check run is closed", std::time::Duration::from_secs(10), || {
            o.fake.state.check_run(runs[0].id).filter(|r| r.actions.is_empty())
        })
        .await;
    assert_eq!(run.conclusion.as_deref(), Some("success"));
    assert!(
        run.summary.starts_with(&format!(
            "**Approved and applied: pull request [#{}]({pull_url}).**",
            pulls[0].number
        )),
        "{}",
        run.summary
    );
    assert_eq!(run.details_url.as_deref(), Some(pull_url.as_str()));
    assert!(
        run.summary.contains("`src/lib.rs`") && run.summary.contains("<!-- orch:action:"),
        "{}",
        run.summary
    );
    assert_eq!(run.annotations.len(), 1, "{:?}", run.annotations);
    assert_eq!(run.annotations[0]["path"], "src/lib.rs");
}

async fn a_base_that_moved_under_the_patch_needs_a_human(backend: Backend) {
    let Some(o) = orch(backend, "phase: 4\n").await else { return };
    let (issue, id) = proposed(&o).await;
    // Someone changes the same file on main before the approval.
    o.fake
        .state
        .push(REPO, "main", &[("src/lib.rs", Some("pub fn answer() -> u32 { 40 + 2 }\n"))]);
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "NEEDS_HUMAN").await;
    let said = o.bot_comments(issue.number).last().cloned().unwrap();
    assert!(
        said.contains("was not applied") && said.contains("`src/lib.rs`") && said.contains("`/orch retry`"),
        "{said}"
    );
    assert_eq!(o.fake.state.branches(REPO), vec!["main".to_string()], "no branch");
    assert!(o.fake.state.pulls(REPO).is_empty());
    assert_eq!(path_of(&o, id).await[4..], ["APPROVED", "APPLYING_CHANGES", "NEEDS_HUMAN"]);
    // /orch retry proposes again on the current main, which then applies.
    o.comment(&issue, "mara", "/orch retry").await;
    o.wait_proposals(id, 2).await;
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    assert_eq!(o.fake.state.pulls(REPO).len(), 1);
}

async fn a_base_that_moved_elsewhere_gets_the_patch_on_top(backend: Backend) {
    let Some(o) = orch(backend, "phase: 4\n").await else { return };
    let (issue, id) = proposed(&o).await;
    let moved = o
        .fake
        .state
        .push(REPO, "main", &[("README.md", Some("# widgets, now documented\n"))]);
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    let branch = format!("orch/{id}");
    let (parents, _) = o.fake.state.tip(REPO, &branch).unwrap();
    assert_eq!(parents, vec![moved], "the commit sits on the new base");
    let files = o.fake.state.files_at(REPO, &branch).unwrap();
    assert_eq!(files["README.md"], "# widgets, now documented\n");
    assert_eq!(files["src/lib.rs"], patched_lib());
}

async fn a_policy_tightened_after_approval_blocks_at_gate_three(backend: Backend) {
    let Some(o) = orch(backend, "phase: 4\n").await else { return };
    let (issue, id) = proposed(&o).await;
    // The maintainers forbid changes under src/ before the approval is acted on.
    o.set_policy("phase: 4\npaths: {forbidden: [\"src/**\"]}\n");
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "BLOCKED_POLICY").await;
    assert_eq!(path_of(&o, id).await[4..], ["APPROVED", "BLOCKED_POLICY"]);
    let said = o.bot_comments(issue.number).last().cloned().unwrap();
    assert!(said.contains("paths.forbidden") && said.contains("src/lib.rs"), "{said}");
    assert!(o.fake.state.pulls(REPO).is_empty());
    assert_eq!(o.fake.state.branches(REPO), vec!["main".to_string()]);
}

async fn moving_a_file_into_a_forbidden_path_is_blocked(backend: Backend) {
    // A "rename" as the patch JSON says it: delete one file, create it under .github/workflows.
    let dir = tempfile::tempdir().unwrap();
    let script = json!([{ "task": "patch", "answer": { "title": "Move", "summary": "Move the library into CI.", "files": [
        { "path": "src/lib.rs", "action": "delete", "content": "" },
        { "path": ".github/workflows/lib.yml", "action": "create", "content": LIB_RS } ] } }]);
    let path = dir.path().join("script.json");
    std::fs::write(&path, serde_json::to_vec(&script).unwrap()).unwrap();
    let Some(o) = Orch::with_env(backend, "phase: 4\n", &[("ORCH_FAKE_LLM_SCRIPT", path.to_str().unwrap())]).await else {
        return;
    };
    o.user("mara", "maintain");
    let issue = o.open_issue("Move it", "move the lib", "dev-kim");
    o.comment(&issue, "mara", "/orch propose move the library").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "BLOCKED_POLICY").await;
    let said = o.bot_comments(issue.number).join("\n");
    assert!(
        said.contains("paths.forbidden") && said.contains(".github/workflows/lib.yml"),
        "{said}"
    );
    assert!(o.fake.state.check_runs(REPO).is_empty() && o.fake.state.pulls(REPO).is_empty());
}

async fn an_open_breaker_holds_an_approved_patch_until_reset(backend: Backend) {
    let Some(o) = orch(backend, "phase: 4\n").await else { return };
    let (issue, id) = proposed(&o).await;
    for _ in 0..4 {
        let mut tx = o.store.begin().await.unwrap();
        orch::workflow::guard::record_task(&mut tx, true, 0.0, 0.5, orch::store::now_ms())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let (_, guid) = o.comment(&issue, "lee", "/orch approve").await;
    o.wait_processed(&guid).await;
    o.wait_state(id, "APPROVED").await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(o.state_of(id).await, "APPROVED", "nothing is applied while the breaker is open");
    assert!(o.fake.state.pulls(REPO).is_empty() && o.fake.state.branches(REPO) == ["main"]);
    {
        let _write = o.store.write_guard().await;
        orch::workflow::guard::reset(o.store.pool(), orch::store::now_ms()).await.unwrap();
    }
    o.wait_state(id, "DONE").await;
    assert_eq!(o.fake.state.pulls(REPO).len(), 1);
}

both_backends!(
    an_open_breaker_holds_an_approved_patch_until_reset,
    approve_by_comment_opens_a_pull_request_with_exactly_the_patch,
    a_base_that_moved_under_the_patch_needs_a_human,
    a_base_that_moved_elsewhere_gets_the_patch_on_top,
    a_policy_tightened_after_approval_blocks_at_gate_three,
    moving_a_file_into_a_forbidden_path_is_blocked,
);
