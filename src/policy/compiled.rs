//! The compiled policy: everything the gates match against, built once per policy version.
//!
//! - **Paths**: `paths.forbidden` and `paths.require_approval` as one `globset::GlobSet` (the
//!   forbidden globs first), so a path is matched once for both lists. Globs follow globset's
//!   defaults: case-sensitive, and `*` also matches `/` (`docs/*` covers the whole tree), which
//!   errs towards blocking.
//! - **Labels**: `labels.allowed` as a case-insensitive `GlobSet` (GitHub compares label names
//!   without regard to case).
//! - **The label state machine** of `labels.transitions` (see [`CompiledPolicy::label_transitions`]).
//! - **Dangerous patterns**: the built-in and configured ones as one `RegexSet`
//!   ([`DangerousPatterns`]), and the [`SecretScanner`].

use super::gates::{ActionKind, Rule};
use super::patterns::{DangerousPatterns, SecretScanner};
use super::{label_glob, ActionClass, Policy, PolicyError};
use globset::{Candidate, GlobSet, GlobSetBuilder};
use std::collections::{BTreeMap, BTreeSet};

/// A policy ready for the gates. Build it with [`Policy::compile`] (at the policy's own phase)
/// or [`super::Effective::compile`] (at the effective, capped phase).
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    policy: Policy,
    phase: u8,
    /// `paths.forbidden` then `paths.require_approval`.
    paths: GlobSet,
    forbidden_count: usize,
    /// Every forbidden glob, built-ins first (see [`crate::policy::Paths::all_forbidden`]).
    forbidden: Vec<String>,
    labels: GlobSet,
    states: StateMachine,
    dangerous: DangerousPatterns,
    secrets: SecretScanner,
}

/// What the path rules say about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathMatch<'a> {
    /// The first `paths.forbidden` glob it matches.
    pub forbidden: Option<&'a str>,
    /// Whether it matches a `paths.require_approval` glob.
    pub requires_approval: bool,
}

/// `labels.transitions`, keyed by lower-cased label name.
///
/// Definitions: a **state label** is any label named in `labels.transitions`, as a key or as a
/// target. An **entry state** is a key that is no transition's target (`status:new` in SPEC §7's
/// example). A proposal's state change is legal when:
///
/// 1. it adds at most one state label the issue does not have yet (one step at a time);
/// 2. that label `L` is a target of a state label `F` the issue has: `L ∈ transitions[F]`;
/// 3. or, when the issue has no state label yet, `L` is an entry state.
///
/// Proposing a state label the issue already has is no change and always legal. Applying a legal
/// step replaces `F` with `L` ([`CompiledPolicy::transition_removals`] names the labels to remove).
/// State labels need no entry in `labels.allowed`: the machine is their allow-list.
#[derive(Debug, Clone, Default)]
struct StateMachine {
    next: BTreeMap<String, Vec<String>>,
    states: BTreeSet<String>,
    entries: BTreeSet<String>,
    /// Lower-cased → as written in the policy.
    spelling: BTreeMap<String, String>,
}

impl StateMachine {
    fn new(transitions: &BTreeMap<String, Vec<String>>) -> StateMachine {
        let mut m = StateMachine::default();
        let mut targets = BTreeSet::new();
        for (from, to) in transitions {
            let key = from.to_lowercase();
            m.spelling.entry(key.clone()).or_insert_with(|| from.clone());
            m.states.insert(key.clone());
            let list = m.next.entry(key).or_default();
            for t in to {
                let t_key = t.to_lowercase();
                m.spelling.entry(t_key.clone()).or_insert_with(|| t.clone());
                m.states.insert(t_key.clone());
                targets.insert(t_key.clone());
                if !list.contains(&t_key) {
                    list.push(t_key);
                }
            }
        }
        m.entries = m.next.keys().filter(|k| !targets.contains(*k)).cloned().collect();
        m
    }

    fn spelled(&self, key: &str) -> String {
        self.spelling.get(key).cloned().unwrap_or_else(|| key.to_string())
    }
}

impl Policy {
    /// Compiles this policy at its own phase (see [`CompiledPolicy`]). Errors name the field and
    /// the pattern at fault, e.g. `comments.dangerous_patterns[1] "(" is not a valid regex: …`.
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::new(self, self.phase)
    }
}

fn glob_error(field: &str, glob: &str, e: &globset::Error) -> PolicyError {
    PolicyError {
        message: format!("{field}: {glob:?} is not a valid glob: {}", e.kind()),
        line: None,
    }
}

impl CompiledPolicy {
    /// Compiles `policy` to run at `phase` (the effective phase, after the server's cap).
    pub fn new(policy: &Policy, phase: u8) -> Result<CompiledPolicy, PolicyError> {
        policy.validate()?;
        let mut paths = GlobSetBuilder::new();
        // The built-in forbidden paths come first and cannot be dropped by the repository.
        let forbidden = policy.paths.all_forbidden();
        for (field, list) in [
            ("paths.forbidden", &forbidden),
            ("paths.require_approval", &policy.paths.require_approval),
        ] {
            for glob in list {
                paths.add(globset::Glob::new(glob).map_err(|e| glob_error(field, glob, &e))?);
            }
        }
        let mut labels = GlobSetBuilder::new();
        for glob in &policy.labels.allowed {
            labels.add(label_glob(glob).map_err(|e| glob_error("labels.allowed", glob, &e))?);
        }
        let dangerous = DangerousPatterns::new(&policy.comments.dangerous_patterns).map_err(|(i, reason)| {
            let pattern = policy.comments.dangerous_patterns.get(i).cloned().unwrap_or_default();
            PolicyError {
                message: format!("comments.dangerous_patterns[{i}]: {pattern:?} is not a valid regex: {reason}"),
                line: None,
            }
        })?;
        let build = |b: GlobSetBuilder, field: &str| {
            b.build().map_err(|e| PolicyError {
                message: format!("{field}: {e}"),
                line: None,
            })
        };
        Ok(CompiledPolicy {
            paths: build(paths, "paths")?,
            forbidden_count: forbidden.len(),
            forbidden,
            labels: build(labels, "labels.allowed")?,
            states: StateMachine::new(&policy.labels.transitions),
            dangerous,
            secrets: SecretScanner::new(),
            phase: phase.min(policy.phase),
            policy: policy.clone(),
        })
    }

    /// The policy this was compiled from.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The phase the gates apply (the policy's, capped).
    pub fn phase(&self) -> u8 {
        self.phase
    }

    pub fn dangerous(&self) -> &DangerousPatterns {
        &self.dangerous
    }

    pub fn secrets(&self) -> &SecretScanner {
        &self.secrets
    }

    /// What `paths.forbidden` and `paths.require_approval` say about `path`.
    pub fn path(&self, path: &str) -> PathMatch<'_> {
        let mut scratch = Vec::new();
        self.path_with(&Candidate::new(path), &mut scratch)
    }

    /// [`CompiledPolicy::path`] with a prepared candidate and a reusable buffer (no allocation).
    pub(crate) fn path_with(&self, candidate: &Candidate<'_>, scratch: &mut Vec<usize>) -> PathMatch<'_> {
        self.paths.matches_candidate_into(candidate, scratch);
        let mut out = PathMatch::default();
        for &i in scratch.iter() {
            if i < self.forbidden_count {
                out.forbidden = out.forbidden.or(Some(self.forbidden[i].as_str()));
            } else {
                out.requires_approval = true;
            }
        }
        out
    }

    /// Whether `label` is on the `labels.allowed` allow-list (case-insensitive globs).
    pub fn label_in_allow_list(&self, label: &str) -> bool {
        self.labels.is_match(label)
    }

    /// Whether `label` is a state label of `labels.transitions` (case-insensitive).
    pub fn is_state_label(&self, label: &str) -> bool {
        self.states.states.contains(&label.to_lowercase())
    }

    /// Whether orch may propose `label` at all: on the allow-list, or a state label (whose moves
    /// [`CompiledPolicy::label_transitions`] judges).
    pub fn label_permitted(&self, label: &str) -> bool {
        self.label_in_allow_list(label) || self.is_state_label(label)
    }

    /// The label state machine's verdict on adding `proposed` to an issue labelled `current`:
    /// every illegal step, empty when the change is legal. The rules (also in the documentation
    /// of [`super::gates`]): a *state label* is any label named in `labels.transitions`; an *entry
    /// state* is a key that is no transition's target. A proposal may add at most one state label
    /// the issue lacks ([`Rule::SeveralStates`] otherwise); that label `L` must be a target of a
    /// state label `F` the issue has (`L ∈ transitions[F]`), or an entry state when the issue has
    /// none ([`Rule::LabelTransition`] otherwise). Re-proposing a state label the issue has is no
    /// change.
    pub fn label_transitions(&self, current: &[String], proposed: &[String]) -> Vec<Rule> {
        let m = &self.states;
        if m.states.is_empty() {
            return Vec::new();
        }
        let current: BTreeSet<String> = current.iter().map(|l| l.to_lowercase()).filter(|l| m.states.contains(l)).collect();
        let mut added: Vec<String> = Vec::new();
        for label in proposed {
            let key = label.to_lowercase();
            if m.states.contains(&key) && !current.contains(&key) && !added.contains(&key) {
                added.push(key);
            }
        }
        let mut out = Vec::new();
        if added.len() > 1 {
            out.push(Rule::SeveralStates {
                labels: added.iter().map(|l| m.spelled(l)).collect(),
            });
        }
        for to in &added {
            let legal = if current.is_empty() {
                m.entries.contains(to)
            } else {
                current.iter().any(|from| m.next.get(from).is_some_and(|n| n.contains(to)))
            };
            if legal {
                continue;
            }
            let (from, allowed) = if current.is_empty() {
                (None, m.entries.iter().map(|l| m.spelled(l)).collect())
            } else {
                let allowed = current
                    .iter()
                    .flat_map(|f| m.next.get(f).into_iter().flatten())
                    .map(|l| m.spelled(l))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                (Some(current.iter().map(|l| m.spelled(l)).collect::<Vec<_>>().join(", ")), allowed)
            };
            out.push(Rule::LabelTransition {
                from,
                to: m.spelled(to),
                allowed,
            });
        }
        out
    }

    /// The state labels to remove when a legal step adds `proposed` to `current`: the `F` of
    /// each `F → L` step taken. Empty when no state label is added.
    pub fn transition_removals(&self, current: &[String], proposed: &[String]) -> Vec<String> {
        let m = &self.states;
        let added: BTreeSet<String> = proposed
            .iter()
            .map(|l| l.to_lowercase())
            .filter(|l| m.states.contains(l) && !current.iter().any(|c| c.eq_ignore_ascii_case(l)))
            .collect();
        current
            .iter()
            .filter(|c| {
                let key = c.to_lowercase();
                m.next.get(&key).is_some_and(|n| n.iter().any(|t| added.contains(t)))
            })
            .cloned()
            .collect()
    }

    /// The class of `action` under this policy (SPEC §7–§8):
    ///
    /// - the configured `actions.*` class is the start;
    /// - `add_labels: auto_safe` is honoured from phase 3 only (auto-applied labels); below it the
    ///   labels need approval;
    /// - a patch touching a `paths.require_approval` path turns `auto_safe` into
    ///   `approval_required`;
    /// - `forbidden` stays forbidden.
    pub fn classify(&self, action: ActionKind, touches_require_approval: bool) -> ActionClass {
        let a = &self.policy.actions;
        let configured = match action {
            ActionKind::AddComment => a.add_comment,
            ActionKind::AddLabels => a.add_labels,
            ActionKind::CreatePr => a.create_pr,
        };
        let floor = match action {
            ActionKind::AddLabels if self.phase < 3 => ActionClass::ApprovalRequired,
            _ if touches_require_approval => ActionClass::ApprovalRequired,
            _ => ActionClass::AutoSafe,
        };
        configured.max(floor)
    }
}
