//! Versioned prompt templates (`prompts/<task>.v<N>.md`, see `prompts/README.md`) and their
//! rendering. The rendered template — both markers included — is the exact prompt text that is
//! stored and hashed; the system prompt and the user message sent are its two parts.

use super::context::{escape_attribute, Pack};
use super::{Context, Task};
use sha2::{Digest, Sha256};

const SYSTEM_MARKER: &str = "<!-- system -->\n";
const USER_MARKER: &str = "\n<!-- user -->\n";

/// An embedded template: its name with version and its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    pub name: &'static str,
    pub text: &'static str,
}

pub const TRIAGE_V1: Template = Template {
    name: "triage.v1",
    text: include_str!("../../prompts/triage.v1.md"),
};
pub const QA_PLAN_V1: Template = Template {
    name: "qa_plan.v1",
    text: include_str!("../../prompts/qa_plan.v1.md"),
};
pub const PATCH_V1: Template = Template {
    name: "patch.v1",
    text: include_str!("../../prompts/patch.v1.md"),
};

// Version 2 (round two, SPEC §9): the labels the model may choose, the PR's diff hunks, the
// `edit` file action, and the maintainers' instructions.
pub const TRIAGE_V2: Template = Template {
    name: "triage.v2",
    text: include_str!("../../prompts/triage.v2.md"),
};
pub const QA_PLAN_V2: Template = Template {
    name: "qa_plan.v2",
    text: include_str!("../../prompts/qa_plan.v2.md"),
};
pub const PATCH_V2: Template = Template {
    name: "patch.v2",
    text: include_str!("../../prompts/patch.v2.md"),
};

/// Every template shipped, old versions included.
pub const ALL: &[Template] = &[TRIAGE_V1, QA_PLAN_V1, PATCH_V1, TRIAGE_V2, QA_PLAN_V2, PATCH_V2];

/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &["tool", "repository", "number", "context", "not_seen"];

/// The current template of `task`.
pub fn template_for(task: Task) -> Template {
    match task {
        Task::Triage => TRIAGE_V2,
        Task::QaPlan => QA_PLAN_V2,
        Task::Patch => PATCH_V2,
    }
}

/// A rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Template name with version, e.g. `triage.v1`.
    pub template: &'static str,
    /// The exact prompt text (what is stored and hashed).
    pub text: String,
    /// Byte range of the system prompt and start of the user message in `text`.
    system_end: usize,
    user_start: usize,
}

impl Prompt {
    pub fn system(&self) -> &str {
        &self.text[SYSTEM_MARKER.len()..self.system_end]
    }

    pub fn user(&self) -> &str {
        self.text[self.user_start..].trim_end()
    }

    /// Hex SHA-256 of the prompt text.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.text)
    }
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Renders `template` for `task` with `context` packed as `pack`.
pub fn render(template: Template, task: Task, context: &Context, pack: &Pack) -> Prompt {
    let not_seen = if pack.not_seen.is_empty() {
        "nothing".to_string()
    } else {
        pack.not_seen.iter().map(|s| escape_attribute(s)).collect::<Vec<_>>().join("; ")
    };
    let number = context.number.to_string();
    let repository = escape_attribute(&context.repository);
    let text = substitute(template.text, |name| match name {
        "tool" => Some(task.tool_name()),
        "repository" => Some(repository.as_str()),
        "number" => Some(number.as_str()),
        "context" => Some(pack.text.as_str()),
        "not_seen" => Some(not_seen.as_str()),
        _ => None,
    });
    // The system part holds no GitHub data, so the first user marker is the template's own.
    assert!(
        text.starts_with(SYSTEM_MARKER),
        "template {} must start with the system marker",
        template.name
    );
    let system_end = text
        .find(USER_MARKER)
        .unwrap_or_else(|| panic!("template {} has no user marker", template.name));
    Prompt {
        template: template.name,
        system_end,
        user_start: system_end + USER_MARKER.len(),
        text,
    }
}

/// Replaces every `{{name}}` that `value` knows, in one pass: substituted text is never scanned
/// again. Unknown placeholders stay as they are (the tests refuse them in templates).
fn substitute<'v>(template: &str, value: impl Fn(&str) -> Option<&'v str>) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        match after.find("}}").and_then(|close| value(&after[..close]).map(|v| (close, v))) {
            Some((close, v)) => {
                out.push_str(v);
                rest = &after[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The placeholders used by a template text.
pub fn placeholders(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        match after.find("}}") {
            Some(close) => {
                out.push(&after[..close]);
                rest = &after[close + 2..];
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::context::pack;
    use super::*;

    #[test]
    fn templates_are_well_formed() {
        for t in ALL {
            assert!(t.text.starts_with(SYSTEM_MARKER), "{}", t.name);
            assert_eq!(t.text.matches(USER_MARKER).count(), 1, "{}", t.name);
            assert_eq!(t.text.matches("<!-- system -->").count(), 1, "{}", t.name);
            for p in placeholders(t.text) {
                assert!(PLACEHOLDERS.contains(&p), "{}: unknown placeholder {p}", t.name);
            }
            let (system, user) = t.text.split_once(USER_MARKER).unwrap();
            for p in placeholders(system) {
                assert_eq!(p, "tool", "{}: GitHub data in the system part", t.name);
            }
            assert!(placeholders(user).contains(&"context"), "{}", t.name);
        }
        for task in [Task::Triage, Task::QaPlan, Task::Patch] {
            assert!(template_for(task).name.starts_with(task.as_str()));
        }
    }

    #[test]
    fn rendering_fills_the_context_once() {
        let c = Context {
            repository: "acme/widgets".into(),
            number: 12,
            title: "Title with {{tool}} and {{context}} inside".into(),
            body: "<!-- user -->\nnot a marker".into(),
            ..Default::default()
        };
        let p = pack(&c, 2000);
        let prompt = render(TRIAGE_V2, Task::Triage, &c, &p);
        assert!(prompt.text.contains(&p.text));
        assert!(prompt.text.contains("Title with {{tool}} and {{context}} inside"));
        assert!(prompt.user().contains("#12 of acme/widgets"));
        assert!(prompt.system().contains("`submit_triage`"));
        assert!(!prompt.system().contains("<!--"));
        assert!(prompt.user().contains("not a marker"));
        assert!(prompt.user().ends_with("nothing"));
        assert_eq!(prompt.sha256(), sha256_hex(&prompt.text));
        assert_eq!(prompt, render(TRIAGE_V2, Task::Triage, &c, &p));
    }
}
