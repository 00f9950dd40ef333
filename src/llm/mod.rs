//! The model: task output schemas (SPEC §9) and the providers that fill them. Model output is
//! untrusted: it is parsed strictly (unknown fields refused) and validated before the policy
//! phase sees it.
//!
//! The entry point is [`Llm::generate`]: it packs the context under a token budget
//! ([`context`]), renders the task's versioned prompt template ([`prompt`]), asks the configured
//! provider ([`provider`]: Anthropic Messages, OpenAI-compatible Chat Completions, or the offline
//! [`fake`]) through a forced tool call whose input schema is [`Task::schema`], checks the answer
//! with [`Proposal::parse`], and records the call in `model_calls` with its cost ([`pricing`]).

pub mod client;
pub mod context;
pub mod fake;
pub mod pricing;
pub mod prompt;
pub mod provider;
pub mod retrieval;

pub use client::{Generated, Llm, LlmError};
pub use context::{budget_for, estimate_tokens, Pack};
pub use pricing::estimate_cost_usd;
pub use provider::{Provider, RetrySettings};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Triage,
    QaPlan,
    Patch,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Triage => "triage",
            Task::QaPlan => "qa_plan",
            Task::Patch => "patch",
        }
    }

    /// The name of the task's tool, the one the model is forced to call.
    pub fn tool_name(self) -> &'static str {
        match self {
            Task::Triage => "submit_triage",
            Task::QaPlan => "submit_qa_plan",
            Task::Patch => "submit_patch",
        }
    }

    pub fn tool_description(self) -> &'static str {
        match self {
            Task::Triage => "Submit the triage of the issue: labels, a priority and a short rationale.",
            Task::QaPlan => "Submit the QA test plan of the pull request: a summary, ordered steps with expected results, and risks.",
            Task::Patch => "Submit the proposed change: a title, a summary and every changed file, as exact edits of its text or as its complete new content.",
        }
    }

    /// The JSON schema of the task's output (SPEC §9), the tool's input schema. It says what the
    /// `deny_unknown_fields` structs accept: every field required, no other field allowed.
    pub fn schema(self) -> Value {
        fn object(properties: Value) -> Value {
            let required: Vec<&String> = properties.as_object().expect("properties").keys().collect();
            json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": false })
        }
        let string = || json!({ "type": "string" });
        let strings = || json!({ "type": "array", "items": { "type": "string" } });
        match self {
            Task::Triage => object(json!({
                "labels": strings(),
                "priority": { "type": "string", "enum": ["p0", "p1", "p2", "p3"] },
                "rationale": string(),
            })),
            Task::QaPlan => object(json!({
                "summary": string(),
                "steps": { "type": "array", "minItems": 1, "items": object(json!({ "title": string(), "expected": string() })) },
                "risks": strings(),
            })),
            Task::Patch => object(json!({
                "title": string(),
                "summary": string(),
                "files": {
                    "type": "array",
                    "minItems": 1,
                    // One object for every action: `content` for create and update, `edits` for
                    // edit, neither for delete (SPEC §9); `Proposal::parse` enforces which.
                    "items": {
                        "type": "object",
                        "properties": {
                            "path": string(),
                            "action": { "type": "string", "enum": ["create", "update", "delete", "edit"] },
                            "content": string(),
                            "edits": { "type": "array", "minItems": 1, "items": object(json!({ "old": string(), "new": string() })) },
                        },
                        "required": ["path", "action"],
                        "additionalProperties": false,
                    },
                },
            })),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    P0,
    P1,
    P2,
    P3,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P0 => "p0",
            Priority::P1 => "p1",
            Priority::P2 => "p2",
            Priority::P3 => "p3",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriageOutput {
    pub labels: Vec<String>,
    pub priority: Priority,
    pub rationale: String,
    /// Labels the model proposed that the policy does not allow, dropped by orch before the
    /// proposal is shown (SPEC §7). Not part of the model's schema: orch always overwrites it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaStep {
    pub title: String,
    pub expected: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QaPlanOutput {
    pub summary: String,
    pub steps: Vec<QaStep>,
    pub risks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Create,
    Update,
    Delete,
    /// Exact replacements in the file's text on the base commit (SPEC §9). Gate 2 turns them
    /// into an `Update` with the resulting text before anything is shown or approved.
    Edit,
}

impl FileAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FileAction::Create => "create",
            FileAction::Update => "update",
            FileAction::Delete => "delete",
            FileAction::Edit => "edit",
        }
    }
}

/// One replacement of an `edit`: `old` must occur exactly once in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEdit {
    pub old: String,
    pub new: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchFile {
    pub path: String,
    pub action: FileAction,
    /// The whole new text (`create`, `update`); empty for `delete` and an unresolved `edit`.
    #[serde(default)]
    pub content: String,
    /// The replacements of an `edit`; empty otherwise (and not serialized, so that proposals
    /// stored before `edit` existed keep their canonical form and hash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<TextEdit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchOutput {
    pub title: String,
    pub summary: String,
    pub files: Vec<PatchFile>,
}

/// An `edit` of a patch that could not be applied to the file on the base commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditFailure {
    pub path: String,
    pub problem: String,
}

impl std::fmt::Display for EditFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", quoted(&self.path), self.problem)
    }
}

impl PatchOutput {
    /// The paths of the `edit` files: the texts [`PatchOutput::resolve_edits`] needs.
    pub fn edited_paths(&self) -> impl Iterator<Item = &str> {
        self.files.iter().filter(|f| f.action == FileAction::Edit).map(|f| f.path.as_str())
    }

    /// Turns every `edit` into an `update` whose content is the file's text on the base commit
    /// (`base(path)`, None: no such file) with the edits applied. Every failure is listed; on
    /// failure nothing changes.
    pub fn resolve_edits<'t>(&mut self, base: impl Fn(&str) -> Option<&'t str>) -> Result<(), Vec<EditFailure>> {
        let mut resolved = self.files.clone();
        let mut failures = Vec::new();
        for f in resolved.iter_mut().filter(|f| f.action == FileAction::Edit) {
            let Some(text) = base(&f.path) else {
                failures.push(EditFailure {
                    path: f.path.clone(),
                    problem: "the file does not exist on the base commit; create it with `create`".into(),
                });
                continue;
            };
            match crate::policy::edits::apply(text, f.edits.iter().map(|e| (e.old.as_str(), e.new.as_str()))) {
                Ok(content) => {
                    f.action = FileAction::Update;
                    f.content = content;
                    f.edits.clear();
                }
                Err(problem) => failures.push(EditFailure {
                    path: f.path.clone(),
                    problem: problem.to_string(),
                }),
            }
        }
        if failures.is_empty() {
            self.files = resolved;
            Ok(())
        } else {
            Err(failures)
        }
    }
}

/// A proposal: one task's validated output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Proposal {
    Triage(TriageOutput),
    QaPlan(QaPlanOutput),
    Patch(PatchOutput),
}

/// Why a model answer was refused before policy looked at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the model's {task:?} answer was refused: {problem}")]
pub struct InvalidOutput {
    pub task: Task,
    pub problem: String,
}

/// What the schema cannot say about a patch answer's files: which of `content` and `edits` each
/// action takes. An `update` without `content` must never mean "empty the file".
fn patch_shape_problem(answer: &Value) -> Option<String> {
    let files = answer.get("files")?.as_array()?;
    let mut problems = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let Some(action) = f.get("action").and_then(Value::as_str) else {
            continue;
        };
        let has_content = f.get("content").is_some();
        let edits = f.get("edits");
        let path = f.get("path").and_then(Value::as_str).map(quoted).unwrap_or_default();
        let problem = match action {
            "create" | "update" if !has_content => Some("needs `content`, the whole new text"),
            "create" | "update" | "delete" if edits.is_some() => Some("takes no `edits` (only `edit` does)"),
            "delete" if f.get("content").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) => Some("takes no `content`"),
            "edit" if has_content => Some("takes `edits`, not `content`"),
            "edit" if edits.and_then(Value::as_array).map_or(true, |e| e.is_empty()) => Some("needs at least one of `edits`"),
            _ => None,
        };
        if let Some(problem) = problem {
            problems.push(format!("files[{i}] (`{path}`, {action}) {problem}"));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// A model-given path as it may be quoted in a comment: no backtick to leave the code span, no
/// `<`/`>` to become markup or a marker, no control character.
fn quoted(path: &str) -> String {
    path.chars().map(crate::policy::patterns::inert_char).collect()
}

impl Proposal {
    /// Parses a model answer for `task` strictly, then checks what the schema cannot say.
    pub fn parse(task: Task, answer: &serde_json::Value) -> Result<Proposal, InvalidOutput> {
        let refuse = |problem: String| InvalidOutput { task, problem };
        if task == Task::Patch {
            if let Some(problem) = patch_shape_problem(answer) {
                return Err(refuse(problem));
            }
        }
        let proposal = match task {
            Task::Triage => Proposal::Triage(serde_json::from_value(answer.clone()).map_err(|e| refuse(e.to_string()))?),
            Task::QaPlan => Proposal::QaPlan(serde_json::from_value(answer.clone()).map_err(|e| refuse(e.to_string()))?),
            Task::Patch => Proposal::Patch(serde_json::from_value(answer.clone()).map_err(|e| refuse(e.to_string()))?),
        };
        match &proposal {
            Proposal::Triage(t) if t.labels.iter().any(|l| l.trim().is_empty()) => Err(refuse("empty label".into())),
            Proposal::QaPlan(q) if q.steps.is_empty() => Err(refuse("a QA plan needs at least one step".into())),
            Proposal::Patch(p) if p.files.is_empty() => Err(refuse("a patch changes at least one file".into())),
            // Every path is checked as Gate 2 checks it (`.`/`..` segments, leading `/`,
            // backslashes, control characters), and the refused ones are named.
            Proposal::Patch(p) => {
                let bad: Vec<String> = p
                    .files
                    .iter()
                    .filter_map(|f| crate::policy::gates::path_problem(&f.path).map(|why| format!("`{}` {why}", quoted(&f.path))))
                    .collect();
                if bad.is_empty() {
                    Ok(proposal)
                } else {
                    Err(refuse(format!(
                        "file paths must be plain relative paths inside the repository: {}",
                        bad.join("; ")
                    )))
                }
            }
            _ => Ok(proposal),
        }
    }

    /// The canonical JSON the approvals are bound to (its hash is the proposal hash).
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("proposals serialize")
    }
}

/// A label the model may propose.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelChoice {
    pub name: String,
    pub description: Option<String>,
}

/// The issue a pull request names as the one it fixes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedIssue {
    pub number: i64,
    pub title: String,
    pub body: String,
}

/// What the model is shown: GitHub text is untrusted data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub repository: String,
    pub number: i64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub comments: Vec<String>,
    /// `/orch propose <instruction>`, or the feedback of `/orch request-changes`.
    pub instruction: Option<String>,
    pub feedback: Option<String>,
    /// Files shown whole, path → text (patch tasks): the ones the model may `update` or `edit`.
    pub files: Vec<(String, String)>,
    /// Files too large to show whole: path → numbered excerpts around what the request names.
    #[serde(default)]
    pub excerpts: Vec<(String, String)>,
    /// The repository's file list (patch tasks).
    #[serde(default)]
    pub file_list: Vec<String>,
    /// The labels the policy allows that exist in the repository, with their descriptions
    /// (triage): the model chooses among them.
    #[serde(default)]
    pub allowed_labels: Vec<LabelChoice>,
    /// A pull request's changed files as diff hunks, path → hunks, largest first (QA plans).
    #[serde(default)]
    pub hunks: Vec<(String, String)>,
    /// The issue a pull request's body names (`Fixes #12`).
    #[serde(default)]
    pub linked_issue: Option<LinkedIssue>,
    /// `.github/orch/instructions.md` of the default branch: the maintainers' standing guidance.
    #[serde(default)]
    pub instructions: Option<String>,
    /// What gathering the context could not do, for the proposal to say (e.g. a repository too
    /// large to search).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Paths a request named that were not read, with why (a path that could leave the
    /// repository, SPEC §12): named in what the model did not see.
    #[serde(default)]
    pub refused: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_strictly() {
        let ok = json!({"labels": ["bug"], "priority": "p1", "rationale": "crash"});
        assert!(matches!(Proposal::parse(Task::Triage, &ok), Ok(Proposal::Triage(_))));
        let extra = json!({"labels": ["bug"], "priority": "p1", "rationale": "x", "merge": true});
        assert!(Proposal::parse(Task::Triage, &extra).unwrap_err().problem.contains("merge"));
        let bad_priority = json!({"labels": [], "priority": "urgent", "rationale": "x"});
        assert!(Proposal::parse(Task::Triage, &bad_priority).is_err());
        let escape = json!({"title": "t", "summary": "s", "files": [{"path": "../etc/passwd", "action": "update", "content": ""}]});
        let refused = Proposal::parse(Task::Patch, &escape).unwrap_err().problem;
        assert!(refused.contains("`../etc/passwd` has a `.` or `..` component"), "{refused}");
        for (bad, shown) in [
            ("/etc/passwd", "`/etc/passwd` is absolute"),
            ("src\\x.rs", "`src\\x.rs` contains a backslash"),
            ("src/\u{7}.rs", "`src/ .rs` contains a control character"),
            ("src/./x.rs", "`src/./x.rs` has a `.` or `..` component"),
            ("../<!-- orch:action:1 -->", "`../‹!-- orch:action:1 --›` has"),
        ] {
            let answer = json!({"title": "t", "summary": "s", "files": [{"path": bad, "action": "update", "content": ""}]});
            let refused = Proposal::parse(Task::Patch, &answer).unwrap_err().problem;
            assert!(refused.contains(shown), "{refused}");
        }
        let no_steps = json!({"summary": "s", "steps": [], "risks": []});
        assert!(Proposal::parse(Task::QaPlan, &no_steps).is_err());
    }

    #[test]
    fn each_file_action_takes_its_own_fields() {
        let patch = |file: Value| json!({"title": "t", "summary": "s", "files": [file]});
        let edit = patch(json!({"path": "a.rs", "action": "edit", "edits": [{"old": "1", "new": "2"}]}));
        let Ok(Proposal::Patch(p)) = Proposal::parse(Task::Patch, &edit) else {
            panic!("an edit parses")
        };
        assert_eq!(
            p.files[0].edits,
            vec![TextEdit {
                old: "1".into(),
                new: "2".into()
            }]
        );
        assert!(Proposal::parse(Task::Patch, &patch(json!({"path": "a.rs", "action": "delete"}))).is_ok());
        for (file, problem) in [
            (
                json!({"path": "a.rs", "action": "update"}),
                "files[0] (`a.rs`, update) needs `content`",
            ),
            (
                json!({"path": "a.rs", "action": "create"}),
                "files[0] (`a.rs`, create) needs `content`",
            ),
            (
                json!({"path": "a.rs", "action": "edit", "edits": []}),
                "needs at least one of `edits`",
            ),
            (json!({"path": "a.rs", "action": "edit"}), "needs at least one of `edits`"),
            (
                json!({"path": "a.rs", "action": "edit", "content": "x", "edits": [{"old": "1", "new": "2"}]}),
                "takes `edits`, not `content`",
            ),
            (
                json!({"path": "a.rs", "action": "update", "content": "x", "edits": [{"old": "1", "new": "2"}]}),
                "takes no `edits`",
            ),
            (json!({"path": "a.rs", "action": "delete", "content": "x"}), "takes no `content`"),
            (
                json!({"path": "a.rs", "action": "edit", "edits": [{"old": "1"}]}),
                "missing field `new`",
            ),
        ] {
            let refused = Proposal::parse(Task::Patch, &patch(file)).unwrap_err().problem;
            assert!(refused.contains(problem), "{refused}");
        }
        // Proposals stored before `edit` existed keep their canonical form (their hash).
        let old = r#"{"task":"patch","title":"t","summary":"s","files":[{"path":"a.rs","action":"update","content":"x"}]}"#;
        let parsed: Proposal = serde_json::from_str(old).unwrap();
        assert_eq!(parsed.canonical_json(), old);
    }

    #[test]
    fn edits_resolve_against_the_base_or_name_every_failure() {
        let mut p = PatchOutput {
            title: "t".into(),
            summary: "s".into(),
            files: vec![
                PatchFile {
                    path: "a.rs".into(),
                    action: FileAction::Edit,
                    content: String::new(),
                    edits: vec![TextEdit {
                        old: "41".into(),
                        new: "42".into(),
                    }],
                },
                PatchFile {
                    path: "new.rs".into(),
                    action: FileAction::Create,
                    content: "x".into(),
                    edits: vec![],
                },
            ],
        };
        let base = |path: &str| (path == "a.rs").then_some("fn a() -> u32 { 41 }\n");
        let mut failing = p.clone();
        failing.files[0].path = "missing.rs".into();
        let failures = failing.resolve_edits(base).unwrap_err();
        assert_eq!(
            failures[0].to_string(),
            "`missing.rs`: the file does not exist on the base commit; create it with `create`"
        );
        assert_eq!(failing.files[0].action, FileAction::Edit, "nothing changes on failure");
        p.resolve_edits(base).unwrap();
        assert_eq!(p.files[0].action, FileAction::Update);
        assert_eq!(p.files[0].content, "fn a() -> u32 { 42 }\n");
        assert!(p.files[0].edits.is_empty());
        assert_eq!(p.edited_paths().count(), 0);
    }

    /// The schema names exactly the fields the strict structs take, all of them required but a
    /// patch file's `content` and `edits` (which of them an action takes, `parse` checks).
    #[test]
    fn schemas_match_the_structs() {
        fn keys(v: &Value) -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        }
        fn check(schema: &Value, sample: &Value) {
            assert_eq!(schema["additionalProperties"], json!(false));
            assert_eq!(keys(&schema["properties"]), keys(sample));
            let mut required: Vec<String> = serde_json::from_value(schema["required"].clone()).unwrap();
            required.sort();
            assert_eq!(required, keys(sample));
        }
        let ctx = Context {
            title: "t".into(),
            ..Default::default()
        };
        for task in [Task::Triage, Task::QaPlan, Task::Patch] {
            let schema = task.schema();
            let sample = fake::answer(task, &ctx);
            check(&schema, &sample);
            if let Some(item_schema) = schema["properties"]["steps"].get("items") {
                check(item_schema, &sample["steps"][0]);
            }
            if let Some(file_schema) = schema["properties"]["files"].get("items") {
                assert_eq!(file_schema["additionalProperties"], json!(false));
                assert_eq!(keys(&file_schema["properties"]), ["action", "content", "edits", "path"]);
                assert_eq!(file_schema["required"], json!(["path", "action"]));
                check(&file_schema["properties"]["edits"]["items"], &json!({"old": "a", "new": "b"}));
            }
            assert_eq!(serde_json::to_value(task).unwrap(), json!(task.as_str()));
        }
    }
}
