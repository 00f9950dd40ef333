//! The `fake` provider: deterministic and offline, for tests and the demo. Its answers are what
//! a model would return (JSON for the task's tool), so they go through the same strict parsing.
//!
//! # Scripted answers (`ORCH_FAKE_LLM_SCRIPT`)
//!
//! The fake can read its answers from a file instead: either a JSON array of entries or JSON
//! lines (one entry per non-blank line). An entry is
//!
//! ```json
//! {"task": "triage", "answer": {"labels": ["bug"], "priority": "p1", "rationale": "crash"}}
//! {"task": "patch", "error": "overloaded", "status": 529}
//! {"answer": {"summary": "any task takes an entry without a task", "steps": [], "risks": []}}
//! ```
//!
//! - `task` (optional): `triage`, `qa_plan` or `patch`; an entry without one serves any task.
//! - `answer`: the tool input the model "returns". It goes through the same strict parsing as a
//!   real answer, so a script can also exercise refused answers (an unknown field, say).
//! - `error` (instead of `answer`): the call fails with this message; `status` (default 500)
//!   decides how, as for HTTP: 408, 409, 429 and 5xx are transient (the fake does not wait or
//!   retry), any other status is a permanent refusal.
//! - `tokens_in` / `tokens_out` (optional): the usage to report; by default the estimate of
//!   the prompt and of the answer (`ceil(chars / 4)`).
//!
//! Every call consumes the first unused entry that matches its task (its own `task`, or none),
//! so entries are used in file order per task. When no entry is left for a task, the fake falls
//! back to the deterministic [`answer`]. The script is read once, when the model is built.

use super::{Context, Task};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// One scripted reply (see the module documentation).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptEntry {
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default)]
    pub answer: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub tokens_in: Option<u32>,
    #[serde(default)]
    pub tokens_out: Option<u32>,
}

/// A script of replies, shared by every clone (each entry is used once).
#[derive(Debug, Clone, Default)]
pub struct Script {
    entries: Arc<Mutex<Vec<Option<ScriptEntry>>>>,
}

impl Script {
    /// Parses a script: a JSON array of entries, or JSON lines.
    pub fn parse(text: &str) -> Result<Script, String> {
        let entries: Vec<ScriptEntry> = if text.trim_start().starts_with('[') {
            serde_json::from_str(text).map_err(|e| format!("not a JSON array of entries: {e}"))?
        } else {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
                .collect::<Result<_, _>>()?
        };
        for (i, e) in entries.iter().enumerate() {
            if e.answer.is_some() == e.error.is_some() {
                return Err(format!("entry {}: needs exactly one of `answer` and `error`", i + 1));
            }
        }
        Ok(Script {
            entries: Arc::new(Mutex::new(entries.into_iter().map(Some).collect())),
        })
    }

    /// Reads a script file.
    pub fn load(path: &std::path::Path) -> Result<Script, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Script::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Takes the first unused entry for `task`.
    pub fn next(&self, task: Task) -> Option<ScriptEntry> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter_mut()
            .find(|e| e.as_ref().is_some_and(|e| e.task.map_or(true, |t| t == task)))
            .and_then(Option::take)
    }

    /// Entries not used yet.
    pub fn remaining(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).iter().flatten().count()
    }
}

/// The answer the fake model gives for `task` on `context`.
pub fn answer(task: Task, context: &Context) -> Value {
    let text = format!("{}\n{}", context.title, context.body).to_lowercase();
    match task {
        Task::Triage => {
            let (label, priority, why) = if ["crash", "panic", "error", "broken", "fails"].iter().any(|w| text.contains(w)) {
                ("bug", "p1", "it reports a failure")
            } else if text.contains('?') {
                ("question", "p3", "it asks a question")
            } else {
                ("enhancement", "p2", "it asks for a change")
            };
            json!({ "labels": [label], "priority": priority, "rationale": format!("Looks like a {label}: {why}.") })
        }
        Task::QaPlan => json!({
            "summary": format!("Check that \"{}\" does what it says and breaks nothing else.", context.title),
            "steps": [
                { "title": "Build and run the test suite", "expected": "Everything passes." },
                { "title": format!("Exercise the change described in #{}", context.number), "expected": "The described behaviour is observed." }
            ],
            "risks": ["Behaviour outside the changed files is not covered by this plan."]
        }),
        Task::Patch => {
            let instruction = context.instruction.clone().unwrap_or_else(|| context.title.clone());
            // A path named in backticks is the file to change; otherwise a note is added.
            let named = instruction
                .split('`')
                .skip(1)
                .step_by(2)
                .find(|p| context.files.iter().any(|(path, _)| path == p))
                .map(str::to_string);
            let file = match named {
                Some(path) => {
                    let old = context
                        .files
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, t)| t.clone())
                        .unwrap_or_default();
                    match requested_edit(&instruction, &old) {
                        Some((from, to)) => json!({ "path": path, "action": "edit", "edits": [{ "old": from, "new": to }] }),
                        None => json!({ "path": path, "action": "update", "content": format!("{old}// orch: {instruction}\n") }),
                    }
                }
                None => {
                    json!({ "path": format!("docs/orch-{}.md", context.number), "action": "create", "content": format!("# {}\n\n{instruction}\n", context.title) })
                }
            };
            let mut summary = format!("Applies: {instruction}");
            if let Some(feedback) = &context.feedback {
                summary.push_str(&format!(" (revised after: {feedback})"));
            }
            json!({ "title": format!("orch: {}", context.title), "summary": summary, "files": [file] })
        }
    }
}

/// The one edit an instruction asks for, as a small model would make it: "replace `a` with
/// `b`", or "return N" where the file has one line that is only an integer (a function's value)
/// or `return <integer>;`. None when the instruction asks for neither.
fn requested_edit(instruction: &str, text: &str) -> Option<(String, String)> {
    let lower = instruction.to_lowercase();
    if let Some(at) = lower.find("replace `") {
        let quoted: Vec<&str> = instruction[at..].split('`').skip(1).step_by(2).take(2).collect();
        if let [from, to] = quoted.as_slice() {
            if text.matches(from).count() == 1 {
                return Some((from.to_string(), to.to_string()));
            }
        }
    }
    let value: String = lower
        .split("return ")
        .nth(1)?
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    value.parse::<i64>().ok()?;
    let mut lines = text.lines().filter(|l| {
        let t = l.trim().trim_start_matches("return ").trim_end_matches(';');
        !t.is_empty() && t.parse::<i64>().is_ok()
    });
    let (line, None) = (lines.next()?, lines.next()) else { return None };
    if text.matches(line).count() != 1 {
        return None;
    }
    let old_value = line.trim().trim_start_matches("return ").trim_end_matches(';');
    Some((line.to_string(), line.replacen(old_value, &value, 1)))
}

#[cfg(test)]
mod tests {
    use super::super::Proposal;
    use super::*;

    #[test]
    fn fake_answers_are_valid_and_deterministic() {
        let ctx = Context {
            title: "Crash on start".into(),
            number: 7,
            instruction: Some("fix `src/lib.rs`".into()),
            files: vec![("src/lib.rs".into(), "fn a() {}\n".into())],
            ..Default::default()
        };
        for task in [Task::Triage, Task::QaPlan, Task::Patch] {
            let a = answer(task, &ctx);
            assert_eq!(a, answer(task, &ctx));
            Proposal::parse(task, &a).unwrap();
        }
        assert_eq!(answer(Task::Triage, &ctx)["labels"][0], "bug");
        assert_eq!(answer(Task::Patch, &ctx)["files"][0]["path"], "src/lib.rs");
    }

    #[test]
    fn the_fake_makes_the_edit_it_is_asked_for() {
        let lib = "pub fn answer() -> u32 {\n    41\n}\n";
        let ctx = |instruction: &str| Context {
            title: "t".into(),
            instruction: Some(instruction.into()),
            files: vec![("src/lib.rs".into(), lib.into())],
            ..Default::default()
        };
        let a = answer(Task::Patch, &ctx("make `src/lib.rs` return 42"));
        assert_eq!(
            a["files"][0],
            json!({"path": "src/lib.rs", "action": "edit", "edits": [{"old": "    41", "new": "    42"}]})
        );
        let a = answer(Task::Patch, &ctx("in `src/lib.rs` replace `u32` with `u64`"));
        assert_eq!(a["files"][0]["edits"][0], json!({"old": "u32", "new": "u64"}));
        let Ok(super::super::Proposal::Patch(mut p)) =
            super::super::Proposal::parse(Task::Patch, &answer(Task::Patch, &ctx("make `src/lib.rs` return 42")))
        else {
            panic!("parses")
        };
        p.resolve_edits(|_| Some(lib)).unwrap();
        assert_eq!(p.files[0].content, "pub fn answer() -> u32 {\n    42\n}\n");
        // Asked for nothing it understands: the old note.
        assert_eq!(answer(Task::Patch, &ctx("tidy `src/lib.rs`"))["files"][0]["action"], "update");
    }
}
