//! Gates 1–3 of SPEC §8 as plain functions over plain data. Each returns a [`Verdict`]: the
//! action's class when everything holds, or **every** violated [`Rule`], never just the first.
//!
//! - [`gate1`] (admission) judges facts the caller observed ([`Admission`]): signature, delivery,
//!   installation, phase, trigger, requester, dedupe window, circuit breaker, per-run task cap,
//!   and whether the task's action is forbidden outright.
//! - [`gate2`] (proposal) judges a proposal ([`ProposalView`], policy's own view of the model's
//!   output, so that policy does not depend on the model's types) against a [`CompiledPolicy`]:
//!   the phase, the action's class, paths (renames and copies in and out of forbidden paths,
//!   deletions), diff size, labels (allow-list and state machine), dangerous patterns in every
//!   text orch would post (comment, pull request title and body, label names), secrets in
//!   added content.
//! - [`gate3`] (pre-apply) runs Gate 2 again with the **current** policy and adds the approvals,
//!   the breaker and whether the patch still applies ([`PreApply`]).
//!
//! Classification: a QA plan is `actions.add_comment`, a triage `actions.add_labels`, a patch
//! `actions.create_pr` (see [`CompiledPolicy::classify`] for phase 3's auto-applied labels and
//! `paths.require_approval`). A `forbidden` action is a violation ([`Rule::ActionForbidden`]).
//!
//! Phases (SPEC §7): a QA plan needs phase 0, a triage 1, a scheduled or automatic trigger 2,
//! auto-applied labels 3 (below it `add_labels: auto_safe` counts as `approval_required`), a
//! patch 4.
//!
//! The label state machine: a *state label* is any label named in `labels.transitions`, as a key
//! or a target; an *entry state* is a key that is no transition's target. A proposal may add at
//! most one state label the issue lacks; that label `L` must be a target of a state label `F` the
//! issue has (`L ∈ transitions[F]`), or an entry state when the issue has none. State labels need
//! no entry in `labels.allowed`. Label names compare without regard to case, as on GitHub.
//!
//! Paths must be plain relative paths (no leading `/`, no `.`, `..` or empty component, no
//! backslash or control character, nothing under `.git`): anything else is [`Rule::PathInvalid`],
//! since `docs/../.github/workflows/x.yml` would otherwise slip past `.github/workflows/**`.

use super::compiled::CompiledPolicy;
use super::ActionClass;
use globset::Candidate;
use serde::Serialize;
use std::collections::HashSet;

/// The three actions of the policy's `actions` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    AddComment,
    AddLabels,
    CreatePr,
}

impl ActionKind {
    /// The key under `actions:`.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::AddComment => "add_comment",
            ActionKind::AddLabels => "add_labels",
            ActionKind::CreatePr => "create_pr",
        }
    }

    /// The policy field: `actions.add_comment`, …
    pub fn field(self) -> &'static str {
        match self {
            ActionKind::AddComment => "actions.add_comment",
            ActionKind::AddLabels => "actions.add_labels",
            ActionKind::CreatePr => "actions.create_pr",
        }
    }

    /// The phase that enables the task producing this action: QA plan (comment) 0, triage
    /// (labels) 1, patch (pull request) 4.
    pub fn phase_needed(self) -> u8 {
        match self {
            ActionKind::AddComment => 0,
            ActionKind::AddLabels => 1,
            ActionKind::CreatePr => 4,
        }
    }
}

/// One violated rule. [`Rule::field`] names the policy field (or, for the few checks no field
/// configures, the check: `webhook.signature`, `schema`, `secrets`, `patch.base`, …) and
/// [`Rule::describe`] says it in one line, safe to post: every value taken from the proposal is
/// quoted in a code span with backticks and `<`/`>` neutralised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Rule {
    // Gate 1.
    SignatureInvalid,
    DeliveryNotNew,
    InstallationUnknown,
    RepositoryNotAllowed,
    TriggerDisabled,
    RequesterUnauthorized,
    DuplicateRequest {
        window_hours: u32,
    },
    BreakerOpen,
    TooManyTasks {
        n: u32,
        max: u32,
    },
    // Gates 1 and 2.
    PhaseTooLow {
        needed: u8,
        phase: u8,
    },
    ActionForbidden {
        action: ActionKind,
    },
    // Gate 2.
    SchemaInvalid {
        problem: String,
    },
    PathInvalid {
        path: String,
        problem: String,
    },
    PathForbidden {
        path: String,
        glob: String,
    },
    RenameIntoForbidden {
        from: String,
        to: String,
        glob: String,
    },
    RenameOutOfForbidden {
        from: String,
        to: String,
        glob: String,
    },
    CopyFromForbidden {
        from: String,
        to: String,
        glob: String,
    },
    DeleteForbidden {
        path: String,
        glob: String,
    },
    TooManyFiles {
        n: u64,
        max: u32,
    },
    TooManyLines {
        n: u64,
        max: u32,
    },
    FileTooLarge {
        path: String,
        bytes: u64,
        max: u64,
    },
    /// An `edit` file action that cannot be applied to the file on the base commit.
    EditDoesNotApply {
        path: String,
        problem: String,
    },
    LabelNotAllowed {
        label: String,
    },
    /// `from`: the state labels (None: it has none); `allowed`: the legal next states.
    LabelTransition {
        from: Option<String>,
        to: String,
        allowed: Vec<String>,
    },
    SeveralStates {
        labels: Vec<String>,
    },
    /// `place`: which text (`comment`, `pull request title`, `label`, …).
    DangerousText {
        pattern: String,
        excerpt: String,
        place: String,
    },
    SecretInPatch {
        path: String,
        kind: String,
        line: u32,
    },
    // Gate 3.
    ApprovalsInvalid,
    PatchDoesNotApply,
}

/// `value` in a code span that cannot break out of it or turn into a marker.
pub(crate) fn code(value: &str) -> String {
    let clean: String = value.chars().map(crate::policy::patterns::inert_char).collect();
    format!("`{clean}`")
}

fn codes(values: &[String]) -> String {
    if values.is_empty() {
        return "none".into();
    }
    values.iter().map(|v| code(v)).collect::<Vec<_>>().join(", ")
}

impl Rule {
    /// The policy field this rule enforces, e.g. `paths.forbidden`.
    pub fn field(&self) -> &'static str {
        match self {
            Rule::SignatureInvalid => "webhook.signature",
            Rule::DeliveryNotNew => "webhook.delivery",
            Rule::InstallationUnknown => "installation",
            Rule::RepositoryNotAllowed => "installation.repositories",
            Rule::TriggerDisabled => "triggers",
            Rule::RequesterUnauthorized => "approvals.approvers",
            Rule::DuplicateRequest { .. } => "limits.dedupe_window_hours",
            Rule::BreakerOpen => "limits.error_rate_threshold",
            Rule::TooManyTasks { .. } => "limits.max_tasks_per_run",
            Rule::PhaseTooLow { .. } => "phase",
            Rule::ActionForbidden { action } => action.field(),
            Rule::SchemaInvalid { .. } => "schema",
            Rule::PathInvalid { .. }
            | Rule::PathForbidden { .. }
            | Rule::RenameIntoForbidden { .. }
            | Rule::RenameOutOfForbidden { .. }
            | Rule::CopyFromForbidden { .. }
            | Rule::DeleteForbidden { .. } => "paths.forbidden",
            Rule::TooManyFiles { .. } => "diff.max_files",
            Rule::TooManyLines { .. } => "diff.max_changed_lines",
            Rule::FileTooLarge { .. } => "diff.max_file_bytes",
            Rule::EditDoesNotApply { .. } => "files.edits",
            Rule::LabelNotAllowed { .. } => "labels.allowed",
            Rule::LabelTransition { .. } | Rule::SeveralStates { .. } => "labels.transitions",
            Rule::DangerousText { .. } => "comments.dangerous_patterns",
            Rule::SecretInPatch { .. } => "secrets",
            Rule::ApprovalsInvalid => "approvals.required",
            Rule::PatchDoesNotApply => "patch.base",
        }
    }

    /// One line for the user.
    pub fn describe(&self) -> String {
        match self {
            Rule::SignatureInvalid => "the webhook signature does not verify".into(),
            Rule::DeliveryNotNew => "this delivery was already received".into(),
            Rule::InstallationUnknown => "the installation is not known to this server".into(),
            Rule::RepositoryNotAllowed => "this repository is not allowed on this server".into(),
            Rule::TriggerDisabled => "this trigger is not enabled by the policy (or not in this phase)".into(),
            Rule::RequesterUnauthorized => "the requester may not ask for this".into(),
            Rule::DuplicateRequest { window_hours } => {
                format!("an identical request was made within the last {window_hours} hours")
            }
            Rule::BreakerOpen => "the circuit breaker is open (error rate or cost limit reached) until it is reset".into(),
            Rule::TooManyTasks { n, max } => format!("this would be task {n} of the run; at most {max} per run"),
            Rule::PhaseTooLow { needed, phase } => format!("needs phase {needed}; this repository runs at phase {phase}"),
            Rule::ActionForbidden { action } => format!("{} is forbidden by the policy", code(action.name())),
            Rule::SchemaInvalid { problem } => format!("the proposal does not fit its schema: {problem}"),
            Rule::PathInvalid { path, problem } => format!("{} {problem}; only plain relative paths are accepted", code(path)),
            Rule::PathForbidden { path, glob } => format!("{} may not be changed (forbidden: {})", code(path), code(glob)),
            Rule::RenameIntoForbidden { from, to, glob } => format!(
                "renaming {} to {} moves a file into a forbidden path ({})",
                code(from),
                code(to),
                code(glob)
            ),
            Rule::RenameOutOfForbidden { from, to, glob } => format!(
                "renaming {} to {} moves a file out of a forbidden path ({})",
                code(from),
                code(to),
                code(glob)
            ),
            Rule::CopyFromForbidden { from, to, glob } => format!(
                "copying {} to {} copies a file out of a forbidden path ({})",
                code(from),
                code(to),
                code(glob)
            ),
            Rule::DeleteForbidden { path, glob } => format!("{} may not be deleted (forbidden: {})", code(path), code(glob)),
            Rule::TooManyFiles { n, max } => format!("{n} files changed; at most {max}"),
            Rule::TooManyLines { n, max } => format!("{n} lines changed; at most {max}"),
            Rule::FileTooLarge { path, bytes, max } => format!("{} is {bytes} bytes; at most {max}", code(path)),
            Rule::EditDoesNotApply { path, problem } => format!("{}: {problem}", code(path)),
            Rule::LabelNotAllowed { label } => format!("label {} is not on the allow-list", code(label)),
            Rule::LabelTransition {
                from: Some(from),
                to,
                allowed,
            } => format!(
                "{} → {} is not a transition of the label state machine (allowed from there: {})",
                code(from),
                code(to),
                codes(allowed)
            ),
            Rule::LabelTransition { from: None, to, allowed } => format!(
                "{} cannot be an issue's first state label (entry states: {})",
                code(to),
                codes(allowed)
            ),
            Rule::SeveralStates { labels } => format!("several state labels at once ({}); a proposal moves one step", codes(labels)),
            Rule::DangerousText { pattern, excerpt, place } => {
                format!("the {place} contains {} ({})", code(excerpt), code(pattern))
            }
            Rule::SecretInPatch { path, kind, line } => format!("{} line {line}: {kind}; secrets may not be committed", code(path)),
            Rule::ApprovalsInvalid => {
                "the approvals no longer hold (an approver lost access, or the proposal, head SHA or policy version changed)".into()
            }
            Rule::PatchDoesNotApply => "the patch no longer applies to the current base".into(),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field(), self.describe())
    }
}

/// A gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every rule holds; the action is `auto_safe` or `approval_required`.
    Pass { class: ActionClass },
    /// At least one rule is violated; all of them are listed, in a stable order.
    Blocked { violations: Vec<Rule> },
}

impl Verdict {
    fn of(violations: Vec<Rule>, class: ActionClass) -> Verdict {
        if violations.is_empty() {
            Verdict::Pass { class }
        } else {
            Verdict::Blocked { violations }
        }
    }

    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass { .. })
    }

    /// The class when it passed.
    pub fn class(&self) -> Option<ActionClass> {
        match self {
            Verdict::Pass { class } => Some(*class),
            Verdict::Blocked { .. } => None,
        }
    }

    /// The violated rules (empty when it passed).
    pub fn violations(&self) -> &[Rule] {
        match self {
            Verdict::Pass { .. } => &[],
            Verdict::Blocked { violations } => violations,
        }
    }

    /// One `field: description` line per violated rule.
    pub fn lines(&self) -> Vec<String> {
        self.violations().iter().map(Rule::to_string).collect()
    }
}

/// What Gate 1 needs, observed by the caller. [`Admission::for_action`] fills the policy's part
/// and starts every observation at its *failing* value, so a check the caller forgets blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub signature_valid: bool,
    pub delivery_new: bool,
    pub installation_known: bool,
    pub repository_allowed: bool,
    /// The repository's effective phase, and the phase the requested work needs.
    pub phase: u8,
    pub phase_needed: u8,
    pub trigger_enabled: bool,
    pub requester_authorized: bool,
    /// An identical request (same content hash) within `limits.dedupe_window_hours`.
    pub duplicate_within_window: bool,
    pub dedupe_window_hours: u32,
    pub breaker_open: bool,
    /// Tasks already admitted in this run, and the cap.
    pub tasks_in_run: u32,
    pub max_tasks_per_run: u32,
    /// The action the task would produce and its class before the proposal is known.
    pub action: ActionKind,
    pub action_class: ActionClass,
}

impl Admission {
    /// The policy's part of an admission for a task producing `action`, started automatically
    /// (a scheduled trigger, triage on open, QA on PR open: phase 2 at least) or not. Every
    /// observed fact starts failing: set `signature_valid`, `delivery_new`, `installation_known`,
    /// `repository_allowed`, `trigger_enabled`, `requester_authorized` to true and
    /// `duplicate_within_window`, `breaker_open` to false once checked, and `tasks_in_run`.
    pub fn for_action(policy: &CompiledPolicy, action: ActionKind, automatic: bool) -> Admission {
        let needed = if automatic {
            action.phase_needed().max(super::phase_needed(super::Work::AutoTrigger))
        } else {
            action.phase_needed()
        };
        let limits = &policy.policy().limits;
        Admission {
            signature_valid: false,
            delivery_new: false,
            installation_known: false,
            repository_allowed: false,
            phase: policy.phase(),
            phase_needed: needed,
            trigger_enabled: false,
            requester_authorized: false,
            duplicate_within_window: true,
            dedupe_window_hours: limits.dedupe_window_hours,
            breaker_open: true,
            tasks_in_run: 0,
            max_tasks_per_run: limits.max_tasks_per_run,
            action,
            action_class: policy.classify(action, false),
        }
    }
}

/// Gate 1 — admission (SPEC §8): every failed fact of `a`, or the action's expected class.
pub fn gate1(a: &Admission) -> Verdict {
    let mut out = Vec::new();
    let mut fail = |failed: bool, rule: Rule| {
        if failed {
            out.push(rule);
        }
    };
    fail(!a.signature_valid, Rule::SignatureInvalid);
    fail(!a.delivery_new, Rule::DeliveryNotNew);
    fail(!a.installation_known, Rule::InstallationUnknown);
    fail(!a.repository_allowed, Rule::RepositoryNotAllowed);
    fail(
        a.phase < a.phase_needed,
        Rule::PhaseTooLow {
            needed: a.phase_needed,
            phase: a.phase,
        },
    );
    fail(!a.trigger_enabled, Rule::TriggerDisabled);
    fail(!a.requester_authorized, Rule::RequesterUnauthorized);
    fail(
        a.duplicate_within_window,
        Rule::DuplicateRequest {
            window_hours: a.dedupe_window_hours,
        },
    );
    fail(a.breaker_open, Rule::BreakerOpen);
    fail(
        a.tasks_in_run >= a.max_tasks_per_run,
        Rule::TooManyTasks {
            n: a.tasks_in_run.saturating_add(1),
            max: a.max_tasks_per_run,
        },
    );
    fail(a.action_class == ActionClass::Forbidden, Rule::ActionForbidden { action: a.action });
    Verdict::of(out, a.action_class)
}

/// How a file changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Modified,
    Deleted,
    /// `previous_path` → `path`, possibly with changes.
    Renamed,
    /// A new file `path` copied from `previous_path`, which stays.
    Copied,
}

/// One file of a patch, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: String,
    /// The path before a rename or the source of a copy.
    pub previous_path: Option<String>,
    pub change: Change,
    /// The new text orch would write, when known: scanned for secrets, its length checked
    /// against `diff.max_file_bytes`. From a unified diff, the new file as far as the diff shows
    /// it (see [`super::diff`]).
    pub content: Option<String>,
    pub added_lines: u32,
    pub removed_lines: u32,
}

impl FileChange {
    /// A file given whole (SPEC §9's patch JSON): its lines count as added.
    pub fn whole(path: impl Into<String>, change: Change, content: Option<String>) -> FileChange {
        let added_lines = content.as_deref().map_or(0, |c| c.lines().count() as u32);
        FileChange {
            path: path.into(),
            previous_path: None,
            change,
            content,
            added_lines,
            removed_lines: 0,
        }
    }
}

/// Policy's view of a proposal: everything Gate 2 judges, without the model's types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalView {
    /// Labels to add to an issue that has `current_labels`; `comment_text` is what orch posts
    /// with them (the rationale).
    Triage {
        labels: Vec<String>,
        current_labels: Vec<String>,
        comment_text: String,
    },
    QaPlan {
        comment_text: String,
    },
    /// A pull request: its title, its files, and `comment_text`, its body (and any comment
    /// posted with it).
    Patch {
        title: String,
        files: Vec<FileChange>,
        comment_text: String,
    },
    /// Model output that does not parse into its task's strict schema.
    Invalid {
        action: ActionKind,
        problem: String,
    },
}

impl ProposalView {
    /// The action the proposal is.
    pub fn action(&self) -> ActionKind {
        match self {
            ProposalView::Triage { .. } => ActionKind::AddLabels,
            ProposalView::QaPlan { .. } => ActionKind::AddComment,
            ProposalView::Patch { .. } => ActionKind::CreatePr,
            ProposalView::Invalid { action, .. } => *action,
        }
    }
}

/// Gate 2 — proposal (SPEC §8): every rule `proposal` breaks under `policy`, or its class.
pub fn gate2(policy: &CompiledPolicy, proposal: &ProposalView) -> Verdict {
    let (violations, class) = evaluate(policy, proposal);
    Verdict::of(violations, class)
}

/// The violations and the class (computed even when blocked, for Gate 3's approvals).
fn evaluate(policy: &CompiledPolicy, proposal: &ProposalView) -> (Vec<Rule>, ActionClass) {
    let action = proposal.action();
    let mut out = Vec::new();
    let mut content = Vec::new();
    let mut touches_require_approval = false;
    match proposal {
        ProposalView::Invalid { problem, .. } => out.push(Rule::SchemaInvalid { problem: problem.clone() }),
        ProposalView::QaPlan { comment_text } => dangerous(policy, "comment", comment_text, &mut content),
        ProposalView::Triage {
            labels,
            current_labels,
            comment_text,
        } => {
            dangerous(policy, "comment", comment_text, &mut content);
            let mut seen = HashSet::new();
            for label in labels {
                if !seen.insert(label.to_lowercase()) {
                    continue;
                }
                if label.trim().is_empty() {
                    out.push(Rule::SchemaInvalid {
                        problem: "a label is empty".into(),
                    });
                    continue;
                }
                dangerous(policy, "label", label, &mut content);
                if !policy.label_permitted(label) {
                    content.push(Rule::LabelNotAllowed { label: label.clone() });
                }
            }
            content.extend(policy.label_transitions(current_labels, labels));
        }
        ProposalView::Patch {
            title,
            files,
            comment_text,
        } => {
            dangerous(policy, "pull request title", title, &mut content);
            dangerous(policy, "pull request body", comment_text, &mut content);
            touches_require_approval = patch_rules(policy, files, &mut out, &mut content);
        }
    }
    let phase = policy.phase();
    if phase < action.phase_needed() {
        out.push(Rule::PhaseTooLow {
            needed: action.phase_needed(),
            phase,
        });
    }
    let class = policy.classify(action, touches_require_approval);
    if class == ActionClass::Forbidden {
        out.push(Rule::ActionForbidden { action });
    }
    out.append(&mut content);
    (out, class)
}

fn dangerous(policy: &CompiledPolicy, place: &str, text: &str, out: &mut Vec<Rule>) {
    for m in policy.dangerous().scan(text) {
        out.push(Rule::DangerousText {
            pattern: m.pattern,
            excerpt: m.excerpt,
            place: place.to_string(),
        });
    }
}

/// Why `path` is not a plain relative path, if it is not.
pub fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.starts_with('/') {
        return Some("is absolute");
    }
    if path.contains('\\') {
        return Some("contains a backslash");
    }
    if path.chars().any(char::is_control) {
        return Some("contains a control character");
    }
    for part in path.split('/') {
        match part {
            "" => return Some("has an empty component"),
            "." | ".." => return Some("has a `.` or `..` component"),
            p if p.eq_ignore_ascii_case(".git") => return Some("is inside `.git`"),
            _ => {}
        }
    }
    None
}

/// The rules of a patch's files. Returns whether a file touches a `paths.require_approval` path.
fn patch_rules(policy: &CompiledPolicy, files: &[FileChange], schema: &mut Vec<Rule>, out: &mut Vec<Rule>) -> bool {
    let diff = &policy.policy().diff;
    if files.is_empty() {
        schema.push(Rule::SchemaInvalid {
            problem: "a patch must change at least one file".into(),
        });
    }
    if files.len() as u64 > u64::from(diff.max_files) {
        out.push(Rule::TooManyFiles {
            n: files.len() as u64,
            max: diff.max_files,
        });
    }
    let lines: u64 = files.iter().map(|f| u64::from(f.added_lines) + u64::from(f.removed_lines)).sum();
    if lines > u64::from(diff.max_changed_lines) {
        out.push(Rule::TooManyLines {
            n: lines,
            max: diff.max_changed_lines,
        });
    }
    let mut seen: HashSet<&str> = HashSet::with_capacity(files.len());
    let mut scratch = Vec::new();
    let mut requires_approval = false;
    for f in files {
        if !seen.insert(f.path.as_str()) {
            schema.push(Rule::SchemaInvalid {
                problem: format!("{} appears more than once", code(&f.path)),
            });
        }
        let previous = f.previous_path.as_deref().filter(|p| *p != f.path);
        let mut valid = true;
        for p in std::iter::once(f.path.as_str()).chain(previous) {
            if let Some(problem) = path_problem(p) {
                valid = false;
                out.push(Rule::PathInvalid {
                    path: p.to_string(),
                    problem: problem.to_string(),
                });
            }
        }
        if valid {
            let here = policy.path_with(&Candidate::new(&f.path), &mut scratch);
            requires_approval |= here.requires_approval;
            if let Some(glob) = here.forbidden {
                let glob = glob.to_string();
                out.push(match (f.change, previous) {
                    (Change::Deleted, _) => Rule::DeleteForbidden {
                        path: f.path.clone(),
                        glob,
                    },
                    (Change::Renamed, Some(from)) => Rule::RenameIntoForbidden {
                        from: from.to_string(),
                        to: f.path.clone(),
                        glob,
                    },
                    _ => Rule::PathForbidden {
                        path: f.path.clone(),
                        glob,
                    },
                });
            }
            if let Some(from) = previous {
                let before = policy.path_with(&Candidate::new(from), &mut scratch);
                requires_approval |= before.requires_approval;
                if let Some(glob) = before.forbidden {
                    let (from, to, glob) = (from.to_string(), f.path.clone(), glob.to_string());
                    out.push(if f.change == Change::Copied {
                        Rule::CopyFromForbidden { from, to, glob }
                    } else {
                        Rule::RenameOutOfForbidden { from, to, glob }
                    });
                }
            }
        }
        if let Some(text) = &f.content {
            if text.len() as u64 > diff.max_file_bytes {
                out.push(Rule::FileTooLarge {
                    path: f.path.clone(),
                    bytes: text.len() as u64,
                    max: diff.max_file_bytes,
                });
            }
            for s in policy.secrets().scan(text) {
                out.push(Rule::SecretInPatch {
                    path: f.path.clone(),
                    kind: s.kind.to_string(),
                    line: s.line,
                });
            }
        }
    }
    requires_approval
}

/// What Gate 3 needs: the proposal, the **current** policy, and facts the caller observed.
#[derive(Debug, Clone)]
pub struct PreApply<'a> {
    /// The policy in force now (read again from the default branch, capped).
    pub policy: &'a CompiledPolicy,
    pub proposal: &'a ProposalView,
    /// A quorum of approvals that still hold: approvers still authorized, and the proposal hash,
    /// head SHA and policy version they were given for unchanged. Only consulted when the
    /// current policy classes the action `approval_required`.
    pub approvals_valid: bool,
    pub breaker_open: bool,
    /// Whether the patch still applies to the current base (true for other proposals).
    pub patch_applies: bool,
}

/// Gate 3 — pre-apply (SPEC §8): Gate 2 again under the current policy, plus approvals, breaker
/// and base. A proposal that was auto-safe but needs approval under the current policy is
/// blocked until approved.
pub fn gate3(check: &PreApply<'_>) -> Verdict {
    let (mut out, class) = evaluate(check.policy, check.proposal);
    if class == ActionClass::ApprovalRequired && !check.approvals_valid {
        out.push(Rule::ApprovalsInvalid);
    }
    if check.breaker_open {
        out.push(Rule::BreakerOpen);
    }
    if !check.patch_applies {
        out.push(Rule::PatchDoesNotApply);
    }
    Verdict::of(out, class)
}
