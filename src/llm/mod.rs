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

pub use client::{Generated, Llm, LlmError};
pub use context::{estimate_tokens, Pack, DEFAULT_BUDGET_TOKENS};
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
            Task::Patch => "Submit the proposed change: a title, a summary and the complete new content of every changed file.",
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
                    "items": object(json!({
                        "path": string(),
                        "action": { "type": "string", "enum": ["create", "update", "delete"] },
                        "content": string(),
                    })),
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchFile {
    pub path: String,
    pub action: FileAction,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchOutput {
    pub title: String,
    pub summary: String,
    pub files: Vec<PatchFile>,
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

/// A model-given path as it may be quoted in a comment: no backtick to leave the code span, no
/// `<`/`>` to become markup or a marker, no control character.
fn quoted(path: &str) -> String {
    path.chars().map(crate::policy::patterns::inert_char).collect()
}

impl Proposal {
    /// Parses a model answer for `task` strictly, then checks what the schema cannot say.
    pub fn parse(task: Task, answer: &serde_json::Value) -> Result<Proposal, InvalidOutput> {
        let refuse = |problem: String| InvalidOutput { task, problem };
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
    /// Files the model may change, path → text (patch tasks).
    pub files: Vec<(String, String)>,
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

    /// The schema names exactly the fields the strict structs take, all of them required.
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
            for (field, items) in [("steps", "steps"), ("files", "files")] {
                if let Some(item_schema) = schema["properties"][field].get("items") {
                    check(item_schema, &sample[items][0]);
                }
            }
            assert_eq!(serde_json::to_value(task).unwrap(), json!(task.as_str()));
        }
    }
}
