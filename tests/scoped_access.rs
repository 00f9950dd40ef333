//! Attack 2 of issue 13, end to end: reading other repositories (SPEC §12). A path named in a
//! request or proposed by the model never reaches a URL unchecked, and each request's token
//! reaches only its own repository, so another repository's private file can reach neither the
//! model nor GitHub.

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/fake_llm.rs"]
mod fake_llm;

use common::Backend;
use e2e::{Orch, INSTALLATION, REPO};
use fake_llm::{FakeLlm, Reply};
use serde_json::json;

const SECRET: &str = "TOP-SECRET-7f3a9c";

fn patch_answer() -> serde_json::Value {
    json!({ "title": "Return 42", "summary": "Fix the answer.",
            "files": [{ "path": "src/lib.rs", "action": "update", "content": "pub fn answer() -> u32 { 42 }\n" }] })
}

async fn a_path_out_of_the_repository_reads_nothing_of_another(backend: Backend) {
    let llm = FakeLlm::start(vec![Reply::anthropic_tool("submit_patch", patch_answer(), 900, 60)]).await;
    let env = [
        ("ORCH_LLM_PROVIDER", "anthropic"),
        ("ORCH_LLM_MODEL", "claude-sonnet-4-5"),
        ("ANTHROPIC_API_KEY", "sk-ant-scoped-access"),
        ("ORCH_ANTHROPIC_BASE_URL", llm.url.as_str()),
    ];
    let Some(mut o) = Orch::with_env(backend, "phase: 4\n", &env).await else {
        return;
    };
    o.user("mara", "maintain");
    // The same installation also holds a private repository with a secret.
    o.fake.state.add_repo("acme/private", INSTALLATION, "main");
    o.fake.state.init_repo("acme/private", "main", &[("secret.txt", SECRET)]);

    let issue = o.open_issue("Off by one", "answer() should be 42", "dev-kim");
    let bad = "../../../acme/private/contents/secret.txt";
    o.comment(&issue, "mara", &format!("/orch propose fix it as `{bad}` says")).await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;

    // The model was asked once, and the secret was not in what it saw.
    let seen = llm.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen[0].body.to_string().contains(SECRET), "the secret reached the model");
    // No request went to the other repository, and the secret is nowhere on GitHub.
    let strays: Vec<_> = o
        .fake
        .state
        .log()
        .into_iter()
        .filter(|(_, p)| p.contains("acme/private") || p.contains(".."))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
    for c in o.fake.state.comments(REPO, issue.number) {
        assert!(!c.body.contains(SECRET), "{}", c.body);
    }
    for r in o.fake.state.check_runs(REPO) {
        assert!(!r.summary.contains(SECRET) && !r.text.unwrap_or_default().contains(SECRET));
    }
    // The refused path is named to the reviewers, with why.
    let proposal = o
        .bot_comments(issue.number)
        .into_iter()
        .find(|c| c.contains("proposal (workflow"))
        .expect("the proposal is posted");
    assert!(proposal.contains(bad) && proposal.contains("refused"), "{proposal}");
    o.stop().await;
}

async fn a_model_path_out_of_the_repository_is_blocked_by_name(backend: Backend) {
    let script = json!([{ "task": "patch", "answer": { "title": "Fix", "summary": "Fix it.", "files": [
        { "path": "src/lib.rs", "action": "update", "content": "pub fn answer() -> u32 { 42 }\n" },
        { "path": "src/../../private/secret.txt", "action": "create", "content": "x\n" } ] } }]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.json");
    std::fs::write(&path, serde_json::to_vec(&script).unwrap()).unwrap();
    let Some(mut o) = Orch::with_env(backend, "phase: 4\n", &[("ORCH_FAKE_LLM_SCRIPT", path.to_str().unwrap())]).await else {
        return;
    };
    o.user("mara", "maintain");
    let issue = o.open_issue("Off by one", "answer() should be 42", "dev-kim");
    o.comment(&issue, "mara", "/orch propose fix the answer").await;
    o.wait_state(1, "BLOCKED_POLICY").await;
    let blocked = o
        .bot_comments(issue.number)
        .into_iter()
        .find(|c| c.contains("blocked by policy"))
        .expect("the user is told");
    assert!(
        blocked.contains("`src/../../private/secret.txt` has a `.` or `..` component; only plain relative paths are accepted"),
        "the path rule names the path: {blocked}"
    );
    assert!(o.fake.state.pulls(REPO).is_empty());
    assert_eq!(o.fake.state.branches(REPO), vec!["main".to_string()]);
    o.stop().await;
}

both_backends!(
    a_path_out_of_the_repository_reads_nothing_of_another,
    a_model_path_out_of_the_repository_is_blocked_by_name,
);
