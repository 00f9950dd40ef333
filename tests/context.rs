//! What the model is shown (SPEC §9, issue 15), asserted on the prompt orch sent (stored whole
//! with its hash in `model_calls`) and on what users see on GitHub: the allowed labels with
//! their descriptions for triage, a pull request's hunks and linked issue for QA plans, the
//! defining file of a named symbol for patches, the maintainers' instructions for every task;
//! disallowed labels dropped and named; the `edit` file action end to end.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{payloads, Orch, REPO};
use orch::store::model_calls;
use serde_json::{json, Value};

const INSTRUCTIONS: &str = "Prefer small changes. Our labels follow the triage guide in CONTRIBUTING.md.\n";

/// orch with the fake model reading `script` (None: its deterministic answers), mara a
/// maintainer and lee a writer, and the instructions file on `main`.
async fn orch(backend: Backend, policy: &str, script: Option<Value>, env: &[(&str, &str)]) -> Option<(Orch, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.json");
    let mut env: Vec<(&str, &str)> = env.to_vec();
    let path_text = path.to_str().unwrap().to_string();
    if let Some(script) = &script {
        std::fs::write(&path, serde_json::to_vec(script).unwrap()).unwrap();
        env.push(("ORCH_FAKE_LLM_SCRIPT", &path_text));
    }
    let o = Orch::with_env(backend, policy, &env).await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    o.fake
        .state
        .push(REPO, "main", &[(".github/orch/instructions.md", Some(INSTRUCTIONS))]);
    Some((o, dir))
}

/// The prompts orch sent for workflow `id`, in order.
async fn prompts(o: &Orch, id: i64) -> Vec<String> {
    model_calls::for_workflow(o.store.pool(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            assert_eq!(
                c.prompt_sha256,
                orch::llm::prompt::sha256_hex(&c.prompt),
                "the stored hash is the prompt's"
            );
            c.prompt
        })
        .collect()
}

/// orch's comment on issue `number` that contains `needle`.
fn bot_comment(o: &Orch, number: i64, needle: &str) -> String {
    o.bot_comments(number)
        .into_iter()
        .find(|c| c.contains(needle))
        .unwrap_or_else(|| panic!("no comment of orch's on #{number} says {needle:?}: {:?}", o.bot_comments(number)))
}

/// mara triages a new issue by label; returns the issue and the workflow once in `state`.
async fn triage(o: &Orch, title: &str, state: &str) -> (e2e::IssueSpec, i64) {
    let mut issue = o.open_issue(title, "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, state).await;
    (issue, id)
}

/// mara asks for a patch on a new issue; returns the issue and the workflow once in `state`.
async fn propose(o: &Orch, title: &str, command: &str, state: &str) -> (e2e::IssueSpec, i64) {
    let issue = o.open_issue(title, "See the title.", "dev-kim");
    o.comment(&issue, "mara", command).await;
    let id = o.only_workflow().await;
    o.wait_state(id, state).await;
    (issue, id)
}

fn assert_instructions(prompt: &str) {
    assert!(
        prompt.contains(&format!(
            "<maintainers source=\".github/orch/instructions.md\">\n{INSTRUCTIONS}\n</maintainers>"
        )),
        "the maintainers' instructions, fenced apart: {prompt}"
    );
}

async fn triage_is_shown_the_allowed_labels_with_their_descriptions(backend: Backend) {
    let Some((o, _dir)) = orch(backend, "phase: 1\n", None, &[]).await else {
        return;
    };
    o.fake.state.set_repo_labels(
        REPO,
        &[
            ("bug", "Something does not work"),
            ("documentation", "Docs only"),
            ("priority:p1", "Broken for many users"),
            ("question", ""),
            ("wontfix", "Not planned"),
        ],
    );
    let (_, id) = triage(&o, "Crash on start", "WAITING_USER_APPROVAL").await;
    let prompt = &prompts(&o, id).await[0];
    assert!(
        prompt.contains("<untrusted source=\"labels you may propose\">\nbug: Something does not work\npriority:p1: Broken for many users\nquestion\n</untrusted>"),
        "only the allowed labels that exist, with descriptions, globs expanded: {prompt}"
    );
    assert!(!prompt.contains("Docs only") && !prompt.contains("wontfix"), "{prompt}");
    assert_instructions(prompt);
    // A second triage moments later takes the label list from the store without asking, and
    // reads the instructions with their ETag: a free 304.
    let (log, not_modified) = (o.fake.state.log().len(), o.fake.state.not_modified().len());
    let mut second = o.open_issue("Another crash", "It crashes too.", "dev-kim");
    let before = o.workflow_states().await.len();
    o.label_issue(&mut second, "orch:triage", "mara").await;
    let second_id = o
        .eventually("the second workflow", e2e::WAIT, || async {
            let states = o.workflow_states().await;
            (states.len() > before).then(|| states.last().unwrap().0)
        })
        .await;
    o.wait_state(second_id, "WAITING_USER_APPROVAL").await;
    assert!(prompts(&o, second_id).await[0].contains("priority:p1: Broken for many users"));
    let reads: Vec<(String, String)> = o
        .fake
        .state
        .log_from(log)
        .into_iter()
        .filter(|(_, p)| p.starts_with(&format!("/repos/{REPO}/labels")) || p.contains("instructions.md"))
        .collect();
    assert_eq!(
        reads,
        vec![("GET".to_string(), format!("/repos/{REPO}/contents/.github/orch/instructions.md"))],
        "no label list read"
    );
    let free = &o.fake.state.not_modified()[not_modified..];
    assert!(reads.iter().all(|r| free.contains(r)), "answered 304: {reads:?} {free:?}");
}

async fn a_disallowed_label_is_dropped_and_named_and_the_allowed_one_applied(backend: Backend) {
    let script = json!([{ "task": "triage", "answer": { "labels": ["bug", "documentation"], "priority": "p2", "rationale": "A crash." } }]);
    let Some((o, _dir)) = orch(backend, "phase: 1\n", Some(script), &[]).await else {
        return;
    };
    let (issue, id) = triage(&o, "Crash on start", "WAITING_USER_APPROVAL").await;
    let proposal = bot_comment(&o, issue.number, "triage proposal");
    assert!(proposal.contains("**Labels:** `bug`, `priority:p2`"), "{proposal}");
    assert!(
        proposal.contains("**Dropped:** `documentation` (the model proposed it, but `labels.allowed` does not allow it)"),
        "{proposal}"
    );
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    let labels = o.fake.state.labels(REPO, issue.number);
    assert!(
        labels.contains(&"bug".to_string()) && labels.contains(&"priority:p2".to_string()),
        "{labels:?}"
    );
    assert!(!labels.contains(&"documentation".to_string()), "{labels:?}");

    // Only disallowed labels: nothing is left, so the proposal is blocked and names them.
    let script = json!([{ "task": "triage", "answer": { "labels": ["documentation"], "priority": "p2", "rationale": "Docs." } }]);
    let Some((o, _dir)) = orch(backend, "phase: 1\nlabels: {allowed: [bug]}\n", Some(script), &[]).await else {
        return;
    };
    let (issue, _) = triage(&o, "Typo", "BLOCKED_POLICY").await;
    let blocked = bot_comment(&o, issue.number, "blocked by policy");
    assert!(blocked.contains("label `documentation` is not on the allow-list"), "{blocked}");
}

async fn a_qa_plan_is_shown_the_hunks_and_the_linked_issue(backend: Backend) {
    let Some((o, _dir)) = orch(backend, "phase: 1\n", None, &[]).await else {
        return;
    };
    let linked = o.open_issue("Parser drops the last line", "The last line of a config is ignored.", "dev-kim");
    let mut pr = o.open_pull(
        "Keep the last line",
        "fix-parser",
        &[
            (
                "src/parse.rs",
                Some("fn parse(text: &str) -> Vec<&str> {\n    text.lines().collect()\n}\n"),
            ),
            ("src/small.rs", Some("// one\n")),
        ],
        "dev-kim",
    );
    pr.body = format!("This keeps the last line.\n\nFixes #{}", linked.number);
    let pr = pr.labels(&["orch:qa"]);
    o.deliver(
        "pull_request",
        &payloads::pull_request("labeled", &o.repo, &pr, Some("orch:qa"), "mara"),
    )
    .await;
    let id = o.only_workflow().await;
    o.wait_state(id, "DONE").await;
    let prompt = &prompts(&o, id).await[0];
    let parse = prompt
        .find("<untrusted source=\"diff src/parse.rs\">\n@@")
        .unwrap_or_else(|| panic!("the hunks of src/parse.rs: {prompt}"));
    let small = prompt.find("<untrusted source=\"diff src/small.rs\">").expect("every changed file");
    assert!(parse < small, "largest first");
    assert!(prompt.contains("+    text.lines().collect()"), "{prompt}");
    assert!(
        prompt.contains(&format!(
            "<untrusted source=\"linked issue #{}\">\nParser drops the last line\n\nThe last line of a config is ignored.\n</untrusted>",
            linked.number
        )),
        "{prompt}"
    );
    assert_instructions(prompt);
}

/// A repository with the symbol defined far from where the request says it.
fn cart_repo(o: &Orch) {
    let mut big = String::new();
    for i in 0..300 {
        big.push_str(&format!("pub fn helper_{i}() -> u32 {{ {i} }}\n"));
    }
    o.fake.state.push(
        REPO,
        "main",
        &[
            (
                "src/shop/cart.rs",
                Some("pub struct Cart { pub items: Vec<u32> }\n\npub fn compute_total(cart: &Cart) -> u32 {\n    cart.items.iter().sum::<u32>() + 1\n}\n"),
            ),
            ("src/shop/checkout.rs", Some("use super::cart::compute_total;\n\npub fn pay(c: &Cart) -> u32 { compute_total(c) }\n")),
            ("src/helpers.rs", Some(&big)),
            ("assets/logo.bin", Some("compute_total\u{0}\u{1}\u{2} binary")),
        ],
    );
}

async fn a_patch_is_shown_the_file_that_defines_a_named_symbol(backend: Backend) {
    let Some((o, _dir)) = orch(backend, "phase: 4\n", None, &[]).await else {
        return;
    };
    cart_repo(&o);
    let (_, id) = propose(
        &o,
        "Totals",
        "/orch propose compute_total is wrong for empty carts",
        "WAITING_USER_APPROVAL",
    )
    .await;
    let prompt = &prompts(&o, id).await[0];
    assert!(
        prompt.contains("<untrusted source=\"file src/shop/cart.rs\">\npub struct Cart"),
        "the defining file, whole: {prompt}"
    );
    assert!(
        prompt.contains("<untrusted source=\"file src/shop/checkout.rs\">"),
        "a user too: {prompt}"
    );
    assert!(!prompt.contains("source=\"file assets/logo.bin\""), "a binary file is skipped");
    assert!(
        prompt.contains("<untrusted source=\"file list\">\n.github/orch.yml\n.github/orch/instructions.md\nREADME.md\nassets/logo.bin\n"),
        "the file list names every file: {prompt}"
    );
    assert_instructions(prompt);
    assert_eq!(o.fake.state.tarball_downloads(), 1, "one tarball for the whole search");
}

async fn a_repository_too_large_to_download_is_not_searched_and_the_proposal_says_so(backend: Backend) {
    let Some((o, _dir)) = orch(backend, "phase: 4\n", None, &[("ORCH_TARBALL_MAX_BYTES", "64")]).await else {
        return;
    };
    cart_repo(&o);
    let (issue, id) = propose(
        &o,
        "Totals",
        "/orch propose fix compute_total in `src/shop/cart.rs`",
        "WAITING_USER_APPROVAL",
    )
    .await;
    let prompt = &prompts(&o, id).await[0];
    assert!(
        prompt.contains("source=\"file src/shop/cart.rs\""),
        "the named file is still read: {prompt}"
    );
    assert!(!prompt.contains("source=\"file src/shop/checkout.rs\""), "nothing else: {prompt}");
    let proposal = bot_comment(&o, issue.number, "patch proposal");
    assert!(
        proposal.contains("the repository's code (not searched: the download is larger than"),
        "the proposal says the repository was not searched: {proposal}"
    );
}

/// A 900-line file; line 450 is the one to change.
fn long_file() -> String {
    (1..=900).map(|i| format!("pub const LINE_{i}: u32 = {i};\n")).collect()
}

async fn an_edit_to_a_long_file_changes_exactly_its_lines(backend: Backend) {
    let script = json!([{ "task": "patch", "answer": { "title": "Fix line 450", "summary": "One constant.", "files": [
        { "path": "src/consts.rs", "action": "edit", "edits": [{ "old": "pub const LINE_450: u32 = 450;", "new": "pub const LINE_450: u32 = 4500;" }] }
    ] } }]);
    let Some((o, _dir)) = orch(backend, "phase: 4\n", Some(script), &[]).await else {
        return;
    };
    o.fake.state.push(REPO, "main", &[("src/consts.rs", Some(&long_file()))]);
    let (issue, id) = propose(
        &o,
        "LINE_450 is wrong",
        "/orch propose fix LINE_450 in `src/consts.rs`",
        "WAITING_USER_APPROVAL",
    )
    .await;
    let proposal = bot_comment(&o, issue.number, "patch proposal");
    assert!(
        proposal.contains("-pub const LINE_450: u32 = 450;\n+pub const LINE_450: u32 = 4500;"),
        "{proposal}"
    );
    o.comment(&issue, "lee", "/orch approve").await;
    o.wait_state(id, "DONE").await;
    let branch = format!("orch/{id}");
    let mut expected = o.fake.state.files_at(REPO, "main").unwrap();
    expected.insert(
        "src/consts.rs".into(),
        long_file().replace("LINE_450: u32 = 450;", "LINE_450: u32 = 4500;"),
    );
    assert_eq!(
        o.fake.state.files_at(REPO, &branch).unwrap(),
        expected,
        "exactly the edited line changed"
    );
    assert_eq!(o.fake.state.pulls(REPO).len(), 1);
}

async fn an_edit_that_does_not_apply_is_fed_back_once_then_blocked_with_its_name(backend: Backend) {
    let bad = |old: &str| {
        json!({ "task": "patch", "answer": { "title": "t", "summary": "s", "files": [
            { "path": "src/consts.rs", "action": "edit", "edits": [{ "old": old, "new": "x" }] }
        ] } })
    };
    let script = json!([bad("pub const LINE_9999"), bad("pub const LINE_1")]);
    let Some((o, _dir)) = orch(backend, "phase: 4\n", Some(script), &[]).await else {
        return;
    };
    o.fake.state.push(REPO, "main", &[("src/consts.rs", Some(&long_file()))]);
    let (issue, id) = propose(&o, "Consts", "/orch propose fix `src/consts.rs`", "BLOCKED_POLICY").await;
    let sent = prompts(&o, id).await;
    assert_eq!(sent.len(), 2, "fed back to the model once");
    assert!(
        sent[1].contains("Your previous answer could not be applied, so it was not shown to anyone: `src/consts.rs`: edit 1: `old` (\"pub const LINE_9999\") does not occur in the file"),
        "{}",
        sent[1]
    );
    let blocked = bot_comment(&o, issue.number, "blocked by policy");
    assert!(
        blocked.contains(
            "files.edits: `src/consts.rs`: edit 1: `old` (\"pub const LINE_1\") occurs 3 times in the file; it must occur exactly once"
        ),
        "{blocked}"
    );
    assert!(o.fake.state.pulls(REPO).is_empty());

    // An edit of a file that does not exist, twice.
    let nope = json!({ "task": "patch", "answer": { "title": "t", "summary": "s", "files": [
        { "path": "src/nope.rs", "action": "edit", "edits": [{ "old": "a", "new": "b" }] }
    ] } });
    let script = json!([nope, nope]);
    let Some((o, _dir)) = orch(backend, "phase: 4\n", Some(script), &[]).await else {
        return;
    };
    let (issue, _) = propose(&o, "Nope", "/orch propose fix `src/nope.rs`", "BLOCKED_POLICY").await;
    let blocked = bot_comment(&o, issue.number, "blocked by policy");
    assert!(
        blocked.contains("`src/nope.rs`: the file does not exist on the base commit; create it with `create`"),
        "{blocked}"
    );
}

async fn long_instructions_are_cut_with_a_note(backend: Backend) {
    let Some((o, _dir)) = orch(backend, "phase: 1\n", None, &[]).await else {
        return;
    };
    let long = "Be brief. ".repeat(1000);
    o.fake.state.push(REPO, "main", &[(".github/orch/instructions.md", Some(&long))]);
    let (issue, id) = triage(&o, "Crash", "WAITING_USER_APPROVAL").await;
    let prompt = &prompts(&o, id).await[0];
    let start = prompt.find("<maintainers source=\".github/orch/instructions.md\"").unwrap();
    let end = prompt.find("</maintainers>").unwrap();
    assert!(end - start < 8 * 1024 + 200, "at most 8 KB of it");
    let proposal = bot_comment(&o, issue.number, "triage proposal");
    assert!(
        proposal.contains(".github/orch/instructions.md (cut: the file is 10000 bytes; the first 8192 are used)"),
        "{proposal}"
    );
}

both_backends!(
    triage_is_shown_the_allowed_labels_with_their_descriptions,
    a_disallowed_label_is_dropped_and_named_and_the_allowed_one_applied,
    a_qa_plan_is_shown_the_hunks_and_the_linked_issue,
    a_patch_is_shown_the_file_that_defines_a_named_symbol,
    a_repository_too_large_to_download_is_not_searched_and_the_proposal_says_so,
    an_edit_to_a_long_file_changes_exactly_its_lines,
    an_edit_that_does_not_apply_is_fed_back_once_then_blocked_with_its_name,
    long_instructions_are_cut_with_a_note,
);
