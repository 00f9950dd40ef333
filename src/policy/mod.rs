//! The repository's policy, `.github/orch.yml` (SPEC §7), read from the default branch so that
//! a pull request can never loosen the policy that judges it. Parsing is strict: an unknown or
//! mistyped field is an error naming the field and the line, and an invalid file never means
//! "allow all" — orch falls back to the built-in defaults and says so.

//!
//! The module is split by concern:
//!
//! - this file: the typed [`Policy`] with SPEC §7's defaults, strict parsing, [`Effective`];
//! - [`caps`]: the server's hard caps, which a repository can only tighten ([`Caps`]);
//! - [`compiled`]: [`CompiledPolicy`], everything matched at gate time built once per policy
//!   version (glob sets, the label state machine, one regex set of dangerous patterns);
//! - [`patterns`]: the built-in dangerous patterns and the secret scanner;
//! - [`gates`]: Gates 1–3 as plain functions returning a [`Verdict`] that lists every violated
//!   [`Rule`];
//! - [`diff`]: unified diffs and SPEC §9's patch JSON, read into [`FileChange`]s;
//! - [`edits`]: the `edit` file action's exact replacements;
//! - [`cli`]: `orch policy check`.

use serde::Deserialize;

pub mod caps;
pub mod cli;
pub mod compiled;
pub mod diff;
pub mod edits;
pub mod gates;
pub mod patterns;

pub use caps::Caps;
pub use compiled::CompiledPolicy;
pub use gates::{gate1, gate2, gate3, ActionKind, Admission, Change, FileChange, PreApply, ProposalView, Rule, Verdict};

/// How an action is classified (SPEC §8, Gate 2). Ordered from the least to the most strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionClass {
    AutoSafe,
    ApprovalRequired,
    Forbidden,
}

impl ActionClass {
    /// The name used in `.github/orch.yml`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionClass::AutoSafe => "auto_safe",
            ActionClass::ApprovalRequired => "approval_required",
            ActionClass::Forbidden => "forbidden",
        }
    }
}

impl std::fmt::Display for ActionClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    pub triage_label: String,
    pub qa_label: String,
    pub triage_on_open: bool,
    pub qa_on_pr_open: bool,
}

impl Default for Triggers {
    fn default() -> Self {
        Self {
            triage_label: "orch:triage".into(),
            qa_label: "orch:qa".into(),
            triage_on_open: false,
            qa_on_pr_open: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Approvals {
    pub required: u32,
    pub allow_self_approval: bool,
    pub approvers: Vec<String>,
    /// Whether 👍/👎 on a proposal count as approve/reject.
    pub reactions: bool,
    /// After how many days without a decision a proposal expires: its reactions are no longer
    /// polled and it waits for a human (`/orch retry` makes a new proposal).
    pub expire_days: u32,
}

impl Default for Approvals {
    fn default() -> Self {
        Self {
            required: 1,
            allow_self_approval: false,
            approvers: Vec::new(),
            reactions: true,
            expire_days: 14,
        }
    }
}

/// Paths no patch may touch in any repository (SPEC §7). `paths.forbidden` adds to them and
/// never replaces them; only the server's caps can lift one (`lift_builtin_forbidden`).
pub const BUILTIN_FORBIDDEN: &[&str] = &[
    ".github/workflows/**",
    ".github/orch.yml",
    ".github/orch/**",
    "**/*.pem",
    "**/.env*",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// The repository's own forbidden globs, on top of [`BUILTIN_FORBIDDEN`].
    pub forbidden: Vec<String>,
    pub require_approval: Vec<String>,
    /// Built-in forbidden globs the server's caps lifted; never read from the file.
    #[serde(skip)]
    pub lifted: Vec<String>,
}

impl Paths {
    /// Every glob forbidden under this policy: the built-ins the server did not lift, then the
    /// repository's own.
    pub fn all_forbidden(&self) -> Vec<String> {
        let mut all: Vec<String> = BUILTIN_FORBIDDEN
            .iter()
            .filter(|g| !self.lifted.iter().any(|l| l == *g))
            .map(|g| g.to_string())
            .collect();
        for glob in &self.forbidden {
            if !all.contains(glob) {
                all.push(glob.clone());
            }
        }
        all
    }
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            forbidden: Vec::new(),
            require_approval: vec!["src/**".into()],
            lifted: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffLimits {
    pub max_files: u32,
    pub max_changed_lines: u32,
    pub max_file_bytes: u64,
}

impl Default for DiffLimits {
    fn default() -> Self {
        Self {
            max_files: 20,
            max_changed_lines: 500,
            max_file_bytes: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Labels {
    /// Globs of labels orch may apply.
    pub allowed: Vec<String>,
    /// Label state machine: from → the labels it may become.
    pub transitions: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for Labels {
    fn default() -> Self {
        Self {
            allowed: vec!["bug".into(), "enhancement".into(), "question".into(), "priority:*".into()],
            transitions: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Comments {
    pub dangerous_patterns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Actions {
    pub add_comment: ActionClass,
    pub add_labels: ActionClass,
    pub create_pr: ActionClass,
}

impl Default for Actions {
    fn default() -> Self {
        Self {
            add_comment: ActionClass::AutoSafe,
            add_labels: ActionClass::ApprovalRequired,
            create_pr: ActionClass::ApprovalRequired,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_tasks_per_run: u32,
    pub max_retries: u32,
    pub dedupe_window_hours: u32,
    pub cost_ceiling_per_run_usd: f64,
    pub max_cost_per_window_usd: f64,
    pub window_minutes: u32,
    pub error_rate_threshold: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tasks_per_run: 5,
            max_retries: 3,
            dedupe_window_hours: 24,
            cost_ceiling_per_run_usd: 0.50,
            max_cost_per_window_usd: 5.00,
            window_minutes: 60,
            error_rate_threshold: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSettings {
    pub model: Option<String>,
    pub max_output_tokens: u32,
    /// The most a context pack may take, in estimated tokens: it lowers the per-task budgets of
    /// SPEC §9 (triage 4,000, QA plan 16,000, patch 32,000), never raises them.
    pub context_budget_tokens: u32,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            model: None,
            max_output_tokens: 2048,
            context_budget_tokens: 32_000,
        }
    }
}

/// `.github/orch.yml`, every section optional; absent fields take SPEC §7's defaults.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub phase: u8,
    pub triggers: Triggers,
    pub approvals: Approvals,
    pub paths: Paths,
    pub diff: DiffLimits,
    pub labels: Labels,
    pub comments: Comments,
    pub actions: Actions,
    pub limits: Limits,
    pub llm: LlmSettings,
}

/// Where the policy file lives on the default branch.
pub const POLICY_PATH: &str = ".github/orch.yml";

/// Why a policy file was refused: the problem and, where known, its line.
///
/// `message` starts with the dotted name of the field at fault (`approvals.required: …`,
/// `comments.dangerous_patterns[2]: …`) whenever the field is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{POLICY_PATH}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct PolicyError {
    pub message: String,
    pub line: Option<usize>,
}

impl Policy {
    /// Parses and checks a policy file: unknown fields and mistyped values are refused with the
    /// field and line (from the YAML parser), and so are values the parser accepts but orch does
    /// not (a phase above 4, a quorum of 0, an invalid glob or regex), with the line located in the
    /// text where it can be.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.trim().is_empty() {
            return Ok(Policy::default());
        }
        let policy: Policy = serde_norway::from_str(text).map_err(|e| PolicyError {
            message: e.to_string().split(" at line ").next().unwrap_or_default().to_string(),
            // The parser may place an error at the end of the text one line past the last one.
            line: e.location().map(|l| l.line().min(last_line(text))),
        })?;
        policy.check().map_err(|problem| PolicyError {
            line: problem.locate(text),
            message: problem.message,
        })?;
        Ok(policy)
    }

    /// The semantic checks of [`Policy::parse`], for a policy built in code (caps included).
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.check().map_err(|problem| PolicyError {
            message: problem.message,
            line: None,
        })
    }

    fn check(&self) -> Result<(), Problem> {
        if self.phase > 4 {
            return Err(Problem::new("phase", None, format!("expected 0 to 4, got {}", self.phase)));
        }
        if self.approvals.required == 0 {
            return Err(Problem::new("approvals.required", None, "must be at least 1".into()));
        }
        if !(1..=365).contains(&self.approvals.expire_days) {
            return Err(Problem::new(
                "approvals.expire_days",
                None,
                format!("expected 1 to 365 days, got {}", self.approvals.expire_days),
            ));
        }
        let globs = [
            ("labels.allowed", &self.labels.allowed),
            ("paths.forbidden", &self.paths.forbidden),
            ("paths.require_approval", &self.paths.require_approval),
        ];
        for (field, list) in globs {
            for (i, glob) in list.iter().enumerate() {
                if let Err(e) = globset::Glob::new(glob) {
                    return Err(Problem::new(
                        field,
                        Some(glob),
                        format!("[{i}]: {glob:?} is not a valid glob: {}", e.kind()),
                    ));
                }
            }
        }
        for (i, pattern) in self.comments.dangerous_patterns.iter().enumerate() {
            if let Err(e) = patterns::check_configured(pattern) {
                return Err(Problem::new(
                    "comments.dangerous_patterns",
                    Some(pattern),
                    format!("[{i}]: {pattern:?} is not a valid regex: {e}"),
                ));
            }
        }
        for (from, to) in &self.labels.transitions {
            if from.trim().is_empty() || to.iter().any(|l| l.trim().is_empty()) {
                return Err(Problem::new("labels.transitions", None, "labels may not be empty".into()));
            }
        }
        let l = &self.limits;
        if !(0.0..=1.0).contains(&l.error_rate_threshold) {
            let message = format!("expected 0 to 1, got {}", l.error_rate_threshold);
            return Err(Problem::new("limits.error_rate_threshold", None, message));
        }
        for (field, value) in [
            ("limits.cost_ceiling_per_run_usd", l.cost_ceiling_per_run_usd),
            ("limits.max_cost_per_window_usd", l.max_cost_per_window_usd),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(Problem::new(field, None, format!("expected a non-negative amount, got {value}")));
            }
        }
        Ok(())
    }

    /// Whether `label` is on the `labels.allowed` allow-list (globs, compared without regard to
    /// case, as GitHub compares label names). The labels of `labels.transitions` are judged by the
    /// state machine instead: see [`CompiledPolicy::label_transition`].
    pub fn label_allowed(&self, label: &str) -> bool {
        self.labels
            .allowed
            .iter()
            .filter_map(|g| label_glob(g).ok())
            .any(|g| g.compile_matcher().is_match(label))
    }
}

/// The number of the last line of `text` as the YAML parser counts lines (`\n`, `\r\n`, `\r`,
/// NEL, LS and PS each end one); a line break at the very end starts no new line.
fn last_line(text: &str) -> usize {
    let mut breaks = 0;
    let mut ends_with_break = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        ends_with_break = matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
        if ends_with_break {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            breaks += 1;
        }
    }
    (breaks + 1 - usize::from(ends_with_break)).max(1)
}

/// A label glob: GitHub label names compare without regard to case.
pub(crate) fn label_glob(glob: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(glob).case_insensitive(true).build()
}

/// A semantic problem of a parsed policy: the field, the value at fault, the message.
struct Problem {
    field: &'static str,
    value: Option<String>,
    message: String,
}

impl Problem {
    fn new(field: &'static str, value: Option<&String>, message: String) -> Problem {
        let sep = if message.starts_with('[') { "" } else { ": " };
        Problem {
            field,
            value: value.cloned(),
            message: format!("{field}{sep}{message}"),
        }
    }

    /// Best effort: the line of the field's value (or of its key) in the source text. The YAML
    /// parser has no positions for values that parsed fine, so this looks for the section's key,
    /// then for the value (or the last key of the field) at or after it.
    fn locate(&self, text: &str) -> Option<usize> {
        let section = self.field.split('.').next()?;
        let leaf = self.field.rsplit_once('.').map(|(_, leaf)| leaf);
        let lines: Vec<&str> = text.lines().collect();
        let is_key = |line: &str, key: &str| {
            line.match_indices(key).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + key.len()..].trim_start_matches(['"', '\'']).trim_start();
                matches!(before, None | Some(' ' | '{' | ',' | '"' | '\'')) && after.starts_with(':')
            })
        };
        let start = lines.iter().position(|l| is_key(l, section))?;
        let found = match (&self.value, leaf) {
            (Some(value), _) => lines[start..].iter().position(|l| l.contains(value.as_str())),
            (None, Some(leaf)) => lines[start..].iter().position(|l| is_key(l, leaf)),
            (None, None) => Some(0),
        };
        Some(start + found.unwrap_or(0) + 1)
    }
}

/// The policy in force for one repository, with its version (what approvals are bound to).
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub policy: Policy,
    /// `sha256:<first 16 hex>` of the file, or `builtin` for the defaults.
    pub version: String,
    /// The repository's phase, capped by the server's `ORCH_MAX_PHASE`.
    pub phase: u8,
    /// Why the file was not used, when it was invalid.
    pub error: Option<PolicyError>,
}

impl Effective {
    /// The policy from a file's text (None: no file), capped at `max_phase`.
    pub fn from_source(text: Option<&str>, max_phase: u8) -> Effective {
        use sha2::{Digest, Sha256};
        let (policy, version, error) = match text {
            None => (Policy::default(), "builtin".to_string(), None),
            Some(text) => match Policy::parse(text) {
                Ok(p) => (p, format!("sha256:{}", &hex::encode(Sha256::digest(text.as_bytes()))[..16]), None),
                // Never "allow all": the defaults are the strictest sensible policy.
                Err(e) => (Policy::default(), "builtin".to_string(), Some(e)),
            },
        };
        Effective {
            phase: policy.phase.min(max_phase),
            policy,
            version,
            error,
        }
    }

    /// The policy from a file's text under the server's [`Caps`]: the file (or the defaults, when
    /// it is absent or invalid) tightened by every cap, `phase` included. The version stays the
    /// file's: Gate 3 re-checks a proposal against the current capped policy anyway.
    pub fn from_source_capped(text: Option<&str>, caps: &Caps) -> Effective {
        let mut effective = Effective::from_source(text, caps.max_phase);
        effective.policy = effective.policy.capped(caps);
        effective.phase = effective.policy.phase;
        effective
    }

    /// The compiled form of this policy at its effective (capped) phase, for the gates.
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::new(&self.policy, self.phase)
    }
}

/// The phase that enables each kind of work (SPEC §7).
pub fn phase_needed(what: Work) -> u8 {
    match what {
        Work::QaPlan => 0,
        Work::Triage => 1,
        Work::AutoTrigger => 2,
        Work::Patch => 4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    QaPlan,
    Triage,
    /// Scheduled and automatic triggers (triage on open, QA on PR open).
    AutoTrigger,
    Patch,
}

impl Work {
    /// The action whose class governs this work's result (None for `AutoTrigger`, which is a way
    /// of starting work rather than a kind of result).
    pub fn action(self) -> Option<ActionKind> {
        match self {
            Work::QaPlan => Some(ActionKind::AddComment),
            Work::Triage => Some(ActionKind::AddLabels),
            Work::Patch => Some(ActionKind::CreatePr),
            Work::AutoTrigger => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let p = Policy::parse("").unwrap();
        assert_eq!(p.phase, 0);
        assert_eq!(p.triggers.triage_label, "orch:triage");
        assert_eq!(p.approvals.required, 1);
        assert!(!p.approvals.allow_self_approval);
        assert_eq!(p.actions.add_comment, ActionClass::AutoSafe);
        assert_eq!(p.actions.create_pr, ActionClass::ApprovalRequired);
        assert!(p.label_allowed("priority:p1") && p.label_allowed("bug") && !p.label_allowed("wontfix"));
    }

    #[test]
    fn the_spec_example_parses() {
        let text = r#"
phase: 4
triggers: {triage_label: "orch:triage", qa_label: "orch:qa", triage_on_open: false, qa_on_pr_open: false}
approvals: {required: 2, allow_self_approval: false, approvers: [mara], reactions: true}
paths:
  forbidden: [".github/workflows/**", "**/*.pem", "**/.env*"]
  require_approval: ["src/**"]
diff: {max_files: 20, max_changed_lines: 500, max_file_bytes: 100000}
labels:
  allowed: ["bug", "enhancement", "question", "priority:*"]
  transitions: {"status:new": ["status:triaged"], "status:triaged": ["status:in-progress"]}
comments: {dangerous_patterns: []}
actions: {add_comment: auto_safe, add_labels: approval_required, create_pr: approval_required}
limits: {max_tasks_per_run: 5, max_retries: 3, dedupe_window_hours: 24,
         cost_ceiling_per_run_usd: 0.50, max_cost_per_window_usd: 5.00, window_minutes: 60,
         error_rate_threshold: 0.5}
llm: {model: "claude", max_output_tokens: 2048, context_budget_tokens: 2000}
"#;
        let p = Policy::parse(text).unwrap();
        assert_eq!((p.phase, p.approvals.required), (4, 2));
        assert_eq!(p.approvals.approvers, vec!["mara".to_string()]);
        assert_eq!(Effective::from_source(Some(text), 2).phase, 2, "the server caps the phase");
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let e = Policy::parse("phase: 1\napprovals:\n  required: two\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(
            e.message.contains("approvals.required") || e.message.contains("invalid type"),
            "{e}"
        );
        let e = Policy::parse("phase: 1\nunknown_section: 3\n").unwrap_err();
        assert!(e.message.contains("unknown_section"), "{e}");
        assert_eq!(e.line, Some(2));
        assert!(Policy::parse("phase: 9").unwrap_err().message.contains("phase"));
        let invalid = Effective::from_source(Some("phase: [\n"), 4);
        assert_eq!(invalid.policy, Policy::default(), "never allow-all on error");
        assert_eq!(invalid.version, "builtin");
        assert!(invalid.error.is_some());
    }
}
