//! The server's hard caps (SPEC §7): limits set by the operator that a repository's
//! `.github/orch.yml` can only tighten, never loosen.
//!
//! [`Policy::capped`] applies them with one rule per kind of setting:
//!
//! | cap | effect on the repository's policy |
//! |---|---|
//! | `max_phase` | `phase = min(phase, max_phase)` |
//! | `max_files`, `max_changed_lines`, `max_file_bytes` | `diff.* = min(diff.*, cap)` |
//! | `max_tasks_per_run`, `max_retries` | `limits.* = min(limits.*, cap)` (default 5, 3) |
//! | `cost_ceiling_per_run_usd`, `max_cost_per_window_usd` | `limits.* = min(limits.*, cap)` (default 0.50, 5.00) |
//! | `max_error_rate_threshold` | `limits.error_rate_threshold = min(…, cap)`: a lower threshold trips the breaker sooner (default 0.5) |
//! | `min_window_minutes` | `limits.window_minutes = max(…, cap)`: a longer window counts more spending against the same ceiling (default 60) |
//! | `min_dedupe_window_hours` | `limits.dedupe_window_hours = max(…, cap)`: a longer window refuses more repeats (default 0, no floor) |
//! | `extra_forbidden_paths` | appended to `paths.forbidden` (a union) |
//! | `lift_builtin_forbidden` | built-in forbidden globs (see [`super::BUILTIN_FORBIDDEN`]) no longer forbidden unless the repository lists them itself |
//! | `extra_dangerous_patterns` | appended to `comments.dangerous_patterns` (a union) |
//! | `min_approvals` | `approvals.required = max(approvals.required, cap)` |
//! | `forbid_self_approval` | when set, `approvals.allow_self_approval = false` |
//! | `actions.*` | each action's class becomes the stricter of the two (`auto_safe` < `approval_required` < `forbidden`) |
//!
//! Every other setting is the repository's own. The `limits.*` caps default to SPEC §10's
//! defaults, so that without a caps file a repository can lower its limits but never raise them
//! (`Caps::default()` leaves the default policy as it is); `None` means no cap at all.
//! Applying caps twice gives the same policy as applying them once. The built-in forbidden paths
//! are added when the policy is compiled, whatever `paths.forbidden` says.
//!
//! `llm_models` is not read from the file: it is `ORCH_LLM_MODELS`, the models a repository may
//! name in `llm.model` (see [`Caps::refuse_model`]).
//!
//! The operator writes them in a YAML file named by `ORCH_POLICY_CAPS`, with the names above
//! (`actions` as `{add_comment: …, add_labels: …, create_pr: …}`); [`Caps::parse`] reads it
//! strictly, so a misspelt cap is an error at start, not a silently missing limit.

use super::{ActionClass, Policy};
use serde::Deserialize;

/// The operator's caps. `Caps::default()` leaves a policy as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Caps {
    /// The highest phase any repository may run at (`ORCH_MAX_PHASE`).
    pub max_phase: u8,
    pub max_files: Option<u32>,
    pub max_changed_lines: Option<u32>,
    pub max_file_bytes: Option<u64>,
    pub max_tasks_per_run: Option<u32>,
    pub max_retries: Option<u32>,
    pub cost_ceiling_per_run_usd: Option<f64>,
    pub max_cost_per_window_usd: Option<f64>,
    /// The highest breaker threshold (`limits.error_rate_threshold`) a repository may set.
    pub max_error_rate_threshold: Option<f64>,
    /// The shortest spending window (`limits.window_minutes`) a repository may set.
    pub min_window_minutes: Option<u32>,
    /// The shortest dedupe window (`limits.dedupe_window_hours`) a repository may set.
    pub min_dedupe_window_hours: Option<u32>,
    /// Built-in forbidden globs the operator lifts (each must be one of them, verbatim).
    pub lift_builtin_forbidden: Vec<String>,
    /// The models a repository may choose in `llm.model` (`ORCH_LLM_MODELS`); each is priced.
    pub llm_models: Vec<String>,
    /// Globs forbidden in every repository, on top of the repository's own.
    pub extra_forbidden_paths: Vec<String>,
    /// Regexes checked on every text orch posts, on top of the repository's own.
    pub extra_dangerous_patterns: Vec<String>,
    /// The smallest approval quorum a repository may ask for.
    pub min_approvals: Option<u32>,
    /// When true, no repository may allow self-approval.
    pub forbid_self_approval: bool,
    /// The least strict class each action may have.
    pub actions: ActionFloor,
}

/// The least strict class the server permits for each action (`auto_safe`: no floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionFloor {
    pub add_comment: ActionClass,
    pub add_labels: ActionClass,
    pub create_pr: ActionClass,
}

impl Default for ActionFloor {
    fn default() -> Self {
        ActionFloor {
            add_comment: ActionClass::AutoSafe,
            add_labels: ActionClass::AutoSafe,
            create_pr: ActionClass::AutoSafe,
        }
    }
}

impl Default for Caps {
    fn default() -> Self {
        let limits = super::Limits::default();
        Caps {
            max_phase: 4,
            max_files: None,
            max_changed_lines: None,
            max_file_bytes: None,
            max_tasks_per_run: Some(limits.max_tasks_per_run),
            max_retries: Some(limits.max_retries),
            cost_ceiling_per_run_usd: Some(limits.cost_ceiling_per_run_usd),
            max_cost_per_window_usd: Some(limits.max_cost_per_window_usd),
            max_error_rate_threshold: Some(limits.error_rate_threshold),
            min_window_minutes: Some(limits.window_minutes),
            min_dedupe_window_hours: None,
            lift_builtin_forbidden: Vec::new(),
            llm_models: crate::llm::pricing::default_models(),
            extra_forbidden_paths: Vec::new(),
            extra_dangerous_patterns: Vec::new(),
            min_approvals: None,
            forbid_self_approval: false,
            actions: ActionFloor::default(),
        }
    }
}

/// The caps file as written: every cap optional, unknown names refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsFile {
    max_phase: Option<u8>,
    max_files: Option<u32>,
    max_changed_lines: Option<u32>,
    max_file_bytes: Option<u64>,
    max_tasks_per_run: Option<u32>,
    max_retries: Option<u32>,
    cost_ceiling_per_run_usd: Option<f64>,
    max_cost_per_window_usd: Option<f64>,
    max_error_rate_threshold: Option<f64>,
    min_window_minutes: Option<u32>,
    min_dedupe_window_hours: Option<u32>,
    #[serde(default)]
    lift_builtin_forbidden: Vec<String>,
    #[serde(default)]
    extra_forbidden_paths: Vec<String>,
    #[serde(default)]
    extra_dangerous_patterns: Vec<String>,
    min_approvals: Option<u32>,
    #[serde(default)]
    forbid_self_approval: bool,
    #[serde(default)]
    actions: ActionFloorFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionFloorFile {
    add_comment: Option<ActionClass>,
    add_labels: Option<ActionClass>,
    create_pr: Option<ActionClass>,
}

impl Caps {
    /// Reads the operator's caps file (YAML). The error names the problem and, where the YAML
    /// parser knows it, the line; globs and patterns are compiled here so a bad one stops the
    /// start instead of every policy check.
    pub fn parse(text: &str) -> Result<Caps, String> {
        let file: CapsFile = if text.trim().is_empty() {
            serde_norway::from_str("{}")
        } else {
            serde_norway::from_str(text)
        }
        .map_err(|e| e.to_string())?;
        if let Some(phase) = file.max_phase.filter(|p| *p > 4) {
            return Err(format!("max_phase: expected a phase from 0 to 4, got {phase}"));
        }
        for (name, value) in [
            ("cost_ceiling_per_run_usd", file.cost_ceiling_per_run_usd),
            ("max_cost_per_window_usd", file.max_cost_per_window_usd),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(format!("{name}: expected a cost of 0 or more in US dollars"));
            }
        }
        if file.max_error_rate_threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err("max_error_rate_threshold: expected a share from 0 to 1".to_string());
        }
        for glob in &file.lift_builtin_forbidden {
            if !super::BUILTIN_FORBIDDEN.contains(&glob.as_str()) {
                return Err(format!(
                    "lift_builtin_forbidden: {glob:?} is not a built-in forbidden path (they are {})",
                    super::BUILTIN_FORBIDDEN.join(", ")
                ));
            }
        }
        for glob in &file.extra_forbidden_paths {
            globset::Glob::new(glob).map_err(|e| format!("extra_forbidden_paths: {glob:?} is not a valid glob: {e}"))?;
        }
        for pattern in &file.extra_dangerous_patterns {
            regex::Regex::new(pattern).map_err(|e| format!("extra_dangerous_patterns: {pattern:?} is not a valid regex: {e}"))?;
        }
        let floor = ActionFloor::default();
        let default = Caps::default();
        Ok(Caps {
            max_phase: file.max_phase.unwrap_or(4),
            max_files: file.max_files,
            max_changed_lines: file.max_changed_lines,
            max_file_bytes: file.max_file_bytes,
            max_tasks_per_run: file.max_tasks_per_run.or(default.max_tasks_per_run),
            max_retries: file.max_retries.or(default.max_retries),
            cost_ceiling_per_run_usd: file.cost_ceiling_per_run_usd.or(default.cost_ceiling_per_run_usd),
            max_cost_per_window_usd: file.max_cost_per_window_usd.or(default.max_cost_per_window_usd),
            max_error_rate_threshold: file.max_error_rate_threshold.or(default.max_error_rate_threshold),
            min_window_minutes: file.min_window_minutes.or(default.min_window_minutes),
            min_dedupe_window_hours: file.min_dedupe_window_hours.or(default.min_dedupe_window_hours),
            lift_builtin_forbidden: file.lift_builtin_forbidden,
            llm_models: default.llm_models,
            extra_forbidden_paths: file.extra_forbidden_paths,
            extra_dangerous_patterns: file.extra_dangerous_patterns,
            min_approvals: file.min_approvals,
            forbid_self_approval: file.forbid_self_approval,
            actions: ActionFloor {
                add_comment: file.actions.add_comment.unwrap_or(floor.add_comment),
                add_labels: file.actions.add_labels.unwrap_or(floor.add_labels),
                create_pr: file.actions.create_pr.unwrap_or(floor.create_pr),
            },
        })
    }

    /// Caps that only limit the phase (what `ORCH_MAX_PHASE` alone gives).
    pub fn max_phase(max_phase: u8) -> Caps {
        Caps {
            max_phase,
            ..Caps::default()
        }
    }

    /// Whether the server lets a repository choose `model`: it is one of [`Caps::llm_models`]
    /// (or a dated snapshot of one, `claude-sonnet-4-5-20250929` for `claude-sonnet-4-5`) and the
    /// price table prices it, so its calls count against the budgets.
    pub fn allows_model(&self, model: &str) -> bool {
        crate::llm::pricing::price(model).is_some()
            && self
                .llm_models
                .iter()
                .any(|m| model == m || model.strip_prefix(m.as_str()).is_some_and(|rest| rest.starts_with('-')))
    }

    /// The reply refusing the policy's `llm.model` when the server does not allow it (Gate 1),
    /// naming the model and the allowed ones; None when the model is allowed or not set.
    pub fn refuse_model(&self, policy: &Policy) -> Option<String> {
        let model = policy.llm.model.as_deref()?;
        if self.allows_model(model) {
            return None;
        }
        let allowed: Vec<String> = self.llm_models.iter().map(|m| format!("`{m}`")).collect();
        Some(format!(
            "Nothing was started: `.github/orch.yml` asks for the model {}, which this server does not price, so its cost could not be bounded (`llm.model`). The models this server allows: {}.",
            crate::policy::gates::code(model),
            if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
        ))
    }
}

fn min_opt<T: PartialOrd + Copy>(value: T, cap: Option<T>) -> T {
    match cap {
        Some(cap) if cap < value => cap,
        _ => value,
    }
}

fn max_opt<T: PartialOrd + Copy>(value: T, floor: Option<T>) -> T {
    match floor {
        Some(floor) if floor > value => floor,
        _ => value,
    }
}

fn union(list: &mut Vec<String>, extra: &[String]) {
    for item in extra {
        if !list.contains(item) {
            list.push(item.clone());
        }
    }
}

impl Policy {
    /// This policy tightened by the server's `caps` (see the table in [`super::caps`]).
    pub fn capped(&self, caps: &Caps) -> Policy {
        let mut p = self.clone();
        p.phase = p.phase.min(caps.max_phase);
        p.diff.max_files = min_opt(p.diff.max_files, caps.max_files);
        p.diff.max_changed_lines = min_opt(p.diff.max_changed_lines, caps.max_changed_lines);
        p.diff.max_file_bytes = min_opt(p.diff.max_file_bytes, caps.max_file_bytes);
        p.limits.max_tasks_per_run = min_opt(p.limits.max_tasks_per_run, caps.max_tasks_per_run);
        p.limits.max_retries = min_opt(p.limits.max_retries, caps.max_retries);
        p.limits.cost_ceiling_per_run_usd = min_opt(p.limits.cost_ceiling_per_run_usd, caps.cost_ceiling_per_run_usd);
        p.limits.max_cost_per_window_usd = min_opt(p.limits.max_cost_per_window_usd, caps.max_cost_per_window_usd);
        p.limits.error_rate_threshold = min_opt(p.limits.error_rate_threshold, caps.max_error_rate_threshold);
        p.limits.window_minutes = max_opt(p.limits.window_minutes, caps.min_window_minutes);
        p.limits.dedupe_window_hours = max_opt(p.limits.dedupe_window_hours, caps.min_dedupe_window_hours);
        union(&mut p.paths.lifted, &caps.lift_builtin_forbidden);
        union(&mut p.paths.forbidden, &caps.extra_forbidden_paths);
        union(&mut p.comments.dangerous_patterns, &caps.extra_dangerous_patterns);
        if let Some(min) = caps.min_approvals {
            p.approvals.required = p.approvals.required.max(min);
        }
        if caps.forbid_self_approval {
            p.approvals.allow_self_approval = false;
        }
        p.actions.add_comment = p.actions.add_comment.max(caps.actions.add_comment);
        p.actions.add_labels = p.actions.add_labels.max(caps.actions.add_labels);
        p.actions.create_pr = p.actions.create_pr.max(caps.actions.create_pr);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caps_file_is_read_strictly() {
        let caps = Caps::parse(
            "max_phase: 2\nmax_files: 3\nextra_forbidden_paths: [\"infra/**\"]\nmin_approvals: 2\nforbid_self_approval: true\nactions: {add_labels: approval_required}\n",
        )
        .unwrap();
        assert_eq!(caps.max_phase, 2);
        assert_eq!(caps.max_files, Some(3));
        assert_eq!(caps.extra_forbidden_paths, ["infra/**"]);
        assert_eq!(caps.min_approvals, Some(2));
        assert!(caps.forbid_self_approval);
        assert_eq!(caps.actions.add_labels, ActionClass::ApprovalRequired);
        assert_eq!(
            caps.actions.create_pr,
            ActionClass::AutoSafe,
            "unset floors leave the repository's class"
        );
        assert_eq!(Caps::parse("").unwrap(), Caps::default());
        assert_eq!(Caps::parse("# nothing capped\n").unwrap(), Caps::default());
        for (text, names) in [
            ("max_file: 3\n", "max_file"),
            ("max_phase: 5\n", "max_phase"),
            ("extra_forbidden_paths: [\"a/{b\"]\n", "extra_forbidden_paths"),
            ("extra_dangerous_patterns: [\"(\"]\n", "extra_dangerous_patterns"),
            ("actions: {create_pr: sometimes}\n", "sometimes"),
            ("cost_ceiling_per_run_usd: -1\n", "cost_ceiling_per_run_usd"),
        ] {
            let e = Caps::parse(text).unwrap_err();
            assert!(e.contains(names), "{text:?}: {e}");
        }
        assert!(Caps::parse("max_files: 3\nmax_file: 4\n").unwrap_err().contains("line 2"));
    }
}
