//! Workflow states, kinds and steps, and [`next`], the one function that decides every
//! transition. Nothing else may compute a successor state: the store calls [`next`] before it
//! writes, so an illegal transition is an error in code, never a silent no-op (SPEC §3).

use std::fmt;
use std::str::FromStr;

/// A name read from the database or a user that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

/// Where a workflow stands. The names of [`State::as_str`] are SPEC §3's and are what the
/// database stores, so they must never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Ingested,
    ContextLoaded,
    PatchesProposed,
    WaitingUserApproval,
    BlockedPolicy,
    Approved,
    NeedsHuman,
    ApplyingChanges,
    PrCreated,
    Done,
    Failed,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Ingested,
        State::ContextLoaded,
        State::PatchesProposed,
        State::WaitingUserApproval,
        State::BlockedPolicy,
        State::Approved,
        State::NeedsHuman,
        State::ApplyingChanges,
        State::PrCreated,
        State::Done,
        State::Failed,
    ];

    /// Where every workflow starts.
    pub const START: State = State::Ingested;

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ingested => "INGESTED",
            State::ContextLoaded => "CONTEXT_LOADED",
            State::PatchesProposed => "PATCHES_PROPOSED",
            State::WaitingUserApproval => "WAITING_USER_APPROVAL",
            State::BlockedPolicy => "BLOCKED_POLICY",
            State::Approved => "APPROVED",
            State::NeedsHuman => "NEEDS_HUMAN",
            State::ApplyingChanges => "APPLYING_CHANGES",
            State::PrCreated => "PR_CREATED",
            State::Done => "DONE",
            State::Failed => "FAILED",
        }
    }

    /// Terminal states accept no step; a retry starts a new attempt instead. The store's partial
    /// unique index (`migrations/*/0003_workflows.sql`) lists the same three names.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Done | State::Failed | State::BlockedPolicy)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName {
            what: "workflow state",
            name: s.to_string(),
        })
    }
}

/// What a workflow produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Triage,
    QaPlan,
    Patch,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Triage, Kind::QaPlan, Kind::Patch];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Triage => "triage",
            Kind::QaPlan => "qa_plan",
            Kind::Patch => "patch",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName {
            what: "workflow kind",
            name: s.to_string(),
        })
    }
}

/// What happened to a workflow. A step names the event, not the target state, so that the
/// target is decided in one place ([`next`]) from the kind and the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// The context pack was assembled: INGESTED → CONTEXT_LOADED.
    ContextLoaded,
    /// The model answered: CONTEXT_LOADED → PATCHES_PROPOSED.
    Proposed,
    /// Gate 2 passed and the action needs approval: PATCHES_PROPOSED → WAITING_USER_APPROVAL.
    Gate2Passed,
    /// Gate 2 failed: PATCHES_PROPOSED → BLOCKED_POLICY.
    Gate2Blocked,
    /// Gate 2 passed and the action is auto-safe; the policy is the approver:
    /// PATCHES_PROPOSED → APPROVED.
    AutoApproved,
    /// The quorum was reached: WAITING_USER_APPROVAL → APPROVED.
    ApprovalComplete,
    /// `/orch request-changes`: WAITING_USER_APPROVAL → NEEDS_HUMAN.
    ChangesRequested,
    /// `/orch reject` (or a reject button / 👎): WAITING_USER_APPROVAL → FAILED.
    Rejected,
    /// The head SHA, the proposal or the policy changed, so the approvals bound to the old ones
    /// no longer count: APPROVED or WAITING_USER_APPROVAL → WAITING_USER_APPROVAL.
    ApprovalsVoided,
    /// Gate 3 passed: APPROVED → APPLYING_CHANGES.
    Gate3Passed,
    /// Gate 3 failed on policy: APPROVED → BLOCKED_POLICY.
    Gate3Blocked,
    /// The pull request exists (patches only): APPLYING_CHANGES → PR_CREATED.
    PrCreated,
    /// Everything was applied: APPLYING_CHANGES → DONE (triage, QA plan) or PR_CREATED → DONE
    /// (patch).
    Applied,
    /// The change no longer applies (the base moved): APPLYING_CHANGES → NEEDS_HUMAN.
    Conflict,
    /// Applying failed for good: APPLYING_CHANGES → FAILED.
    ApplyFailed,
    /// Generation failed for good (model, schema, breaker): INGESTED, CONTEXT_LOADED or
    /// PATCHES_PROPOSED → FAILED.
    GenerationFailed,
    /// `/orch cancel`: any non-terminal state → FAILED.
    Cancelled,
    /// `/orch retry` after changes were requested: NEEDS_HUMAN → CONTEXT_LOADED.
    Retry,
    /// A proposal waited `approvals.expire_days` without a decision: polling stops and a human
    /// decides what next (`/orch retry` makes a new proposal).
    Expired,
}

impl Step {
    pub const ALL: [Step; 19] = [
        Step::ContextLoaded,
        Step::Proposed,
        Step::Gate2Passed,
        Step::Gate2Blocked,
        Step::AutoApproved,
        Step::ApprovalComplete,
        Step::ChangesRequested,
        Step::Rejected,
        Step::ApprovalsVoided,
        Step::Gate3Passed,
        Step::Gate3Blocked,
        Step::PrCreated,
        Step::Applied,
        Step::Conflict,
        Step::ApplyFailed,
        Step::GenerationFailed,
        Step::Cancelled,
        Step::Retry,
        Step::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::ContextLoaded => "context_loaded",
            Step::Proposed => "proposed",
            Step::Gate2Passed => "gate2_passed",
            Step::Gate2Blocked => "gate2_blocked",
            Step::AutoApproved => "auto_approved",
            Step::ApprovalComplete => "approval_complete",
            Step::ChangesRequested => "changes_requested",
            Step::Rejected => "rejected",
            Step::ApprovalsVoided => "approvals_voided",
            Step::Gate3Passed => "gate3_passed",
            Step::Gate3Blocked => "gate3_blocked",
            Step::PrCreated => "pr_created",
            Step::Applied => "applied",
            Step::Conflict => "conflict",
            Step::ApplyFailed => "apply_failed",
            Step::GenerationFailed => "generation_failed",
            Step::Cancelled => "cancelled",
            Step::Retry => "retry",
            Step::Expired => "expired",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Step {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName {
            what: "workflow step",
            name: s.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition: a {kind} workflow in {from} cannot take the step {step}")]
pub struct IllegalTransition {
    pub kind: Kind,
    pub from: State,
    pub step: Step,
}

/// The state a `kind` workflow in `from` moves to when `step` happens, or why it may not.
pub fn next(kind: Kind, from: State, step: Step) -> Result<State, IllegalTransition> {
    use State as S;
    use Step as T;
    let to = match (from, step) {
        // Checked first so that no arm below can reopen a finished workflow.
        _ if from.is_terminal() => None,
        (_, T::Cancelled) => Some(S::Failed),
        (S::Ingested, T::ContextLoaded) => Some(S::ContextLoaded),
        (S::ContextLoaded, T::Proposed) => Some(S::PatchesProposed),
        (S::PatchesProposed, T::Gate2Passed) => Some(S::WaitingUserApproval),
        (S::PatchesProposed, T::Gate2Blocked) => Some(S::BlockedPolicy),
        (S::PatchesProposed, T::AutoApproved) => Some(S::Approved),
        (S::Ingested | S::ContextLoaded | S::PatchesProposed, T::GenerationFailed) => Some(S::Failed),
        (S::WaitingUserApproval, T::ApprovalComplete) => Some(S::Approved),
        (S::WaitingUserApproval, T::ChangesRequested) => Some(S::NeedsHuman),
        (S::WaitingUserApproval, T::Expired) => Some(S::NeedsHuman),
        (S::WaitingUserApproval, T::Rejected) => Some(S::Failed),
        (S::WaitingUserApproval | S::Approved, T::ApprovalsVoided) => Some(S::WaitingUserApproval),
        (S::Approved, T::Gate3Passed) => Some(S::ApplyingChanges),
        (S::Approved, T::Gate3Blocked) => Some(S::BlockedPolicy),
        // Only a patch opens a pull request; labels and comments are done once applied.
        (S::ApplyingChanges, T::PrCreated) if kind == Kind::Patch => Some(S::PrCreated),
        (S::ApplyingChanges, T::Applied) if kind != Kind::Patch => Some(S::Done),
        (S::PrCreated, T::Applied) if kind == Kind::Patch => Some(S::Done),
        (S::ApplyingChanges, T::Conflict) => Some(S::NeedsHuman),
        (S::ApplyingChanges, T::ApplyFailed) => Some(S::Failed),
        (S::NeedsHuman, T::Retry) => Some(S::ContextLoaded),
        _ => None,
    };
    to.ok_or(IllegalTransition { kind, from, step })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ANY: &[Kind] = &Kind::ALL;
    const PATCH: &[Kind] = &[Kind::Patch];
    const NOT_PATCH: &[Kind] = &[Kind::Triage, Kind::QaPlan];

    /// Every legal (kind, from, step) and its target, written out by hand from SPEC §3 and the
    /// later issues, independently of [`next`]. Anything not listed must be refused.
    fn legal() -> HashMap<(Kind, State, Step), State> {
        use State as S;
        use Step as T;
        let rows: &[(&[Kind], State, Step, State)] = &[
            (ANY, S::Ingested, T::ContextLoaded, S::ContextLoaded),
            (ANY, S::ContextLoaded, T::Proposed, S::PatchesProposed),
            (ANY, S::PatchesProposed, T::Gate2Passed, S::WaitingUserApproval),
            (ANY, S::PatchesProposed, T::Gate2Blocked, S::BlockedPolicy),
            (ANY, S::PatchesProposed, T::AutoApproved, S::Approved),
            (ANY, S::WaitingUserApproval, T::ApprovalComplete, S::Approved),
            (ANY, S::WaitingUserApproval, T::ChangesRequested, S::NeedsHuman),
            (ANY, S::WaitingUserApproval, T::Expired, S::NeedsHuman),
            (ANY, S::WaitingUserApproval, T::Rejected, S::Failed),
            (ANY, S::WaitingUserApproval, T::ApprovalsVoided, S::WaitingUserApproval),
            (ANY, S::Approved, T::ApprovalsVoided, S::WaitingUserApproval),
            (ANY, S::Approved, T::Gate3Passed, S::ApplyingChanges),
            (ANY, S::Approved, T::Gate3Blocked, S::BlockedPolicy),
            (PATCH, S::ApplyingChanges, T::PrCreated, S::PrCreated),
            (NOT_PATCH, S::ApplyingChanges, T::Applied, S::Done),
            (PATCH, S::PrCreated, T::Applied, S::Done),
            (ANY, S::ApplyingChanges, T::Conflict, S::NeedsHuman),
            (ANY, S::ApplyingChanges, T::ApplyFailed, S::Failed),
            (ANY, S::Ingested, T::GenerationFailed, S::Failed),
            (ANY, S::ContextLoaded, T::GenerationFailed, S::Failed),
            (ANY, S::PatchesProposed, T::GenerationFailed, S::Failed),
            (ANY, S::NeedsHuman, T::Retry, S::ContextLoaded),
            (ANY, S::Ingested, T::Cancelled, S::Failed),
            (ANY, S::ContextLoaded, T::Cancelled, S::Failed),
            (ANY, S::PatchesProposed, T::Cancelled, S::Failed),
            (ANY, S::WaitingUserApproval, T::Cancelled, S::Failed),
            (ANY, S::Approved, T::Cancelled, S::Failed),
            (ANY, S::NeedsHuman, T::Cancelled, S::Failed),
            (ANY, S::ApplyingChanges, T::Cancelled, S::Failed),
            (ANY, S::PrCreated, T::Cancelled, S::Failed),
        ];
        let mut map = HashMap::new();
        for (kinds, from, step, to) in rows {
            for kind in *kinds {
                assert!(
                    map.insert((*kind, *from, *step), *to).is_none(),
                    "listed twice: {kind} {from} {step}"
                );
            }
        }
        map
    }

    #[test]
    fn the_full_matrix_matches_the_legal_list() {
        let legal = legal();
        let mut checked = 0;
        for kind in Kind::ALL {
            for from in State::ALL {
                for step in Step::ALL {
                    let got = next(kind, from, step);
                    match legal.get(&(kind, from, step)) {
                        Some(to) => assert_eq!(got, Ok(*to), "{kind} {from} {step}"),
                        None => assert_eq!(
                            got,
                            Err(IllegalTransition { kind, from, step }),
                            "{kind} {from} {step} must be refused"
                        ),
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 11 * 19);
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for state in State::ALL.into_iter().filter(|s| s.is_terminal()) {
            for kind in Kind::ALL {
                for step in Step::ALL {
                    assert!(next(kind, state, step).is_err(), "{kind} {state} {step}");
                }
            }
        }
        let terminal: Vec<&str> = State::ALL.into_iter().filter(|s| s.is_terminal()).map(State::as_str).collect();
        assert_eq!(terminal, ["BLOCKED_POLICY", "DONE", "FAILED"]);
    }

    #[test]
    fn every_state_is_reachable_from_the_start() {
        // No dead rows in the table: every state is reachable by a patch, every state but
        // PR_CREATED by the other kinds.
        let legal = legal();
        for kind in Kind::ALL {
            let mut reached = vec![State::START];
            let mut i = 0;
            while i < reached.len() {
                for ((k, from, _), to) in &legal {
                    if *k == kind && *from == reached[i] && !reached.contains(to) {
                        reached.push(*to);
                    }
                }
                i += 1;
            }
            let expected = if kind == Kind::Patch { 11 } else { 10 };
            assert_eq!(reached.len(), expected, "{kind}: {reached:?}");
            assert_eq!(kind == Kind::Patch, reached.contains(&State::PrCreated));
        }
    }

    #[test]
    fn names_round_trip_and_match_the_spec() {
        let names: Vec<&str> = State::ALL.into_iter().map(State::as_str).collect();
        assert_eq!(
            names,
            [
                "INGESTED",
                "CONTEXT_LOADED",
                "PATCHES_PROPOSED",
                "WAITING_USER_APPROVAL",
                "BLOCKED_POLICY",
                "APPROVED",
                "NEEDS_HUMAN",
                "APPLYING_CHANGES",
                "PR_CREATED",
                "DONE",
                "FAILED"
            ]
        );
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(Kind::ALL.map(Kind::as_str), ["triage", "qa_plan", "patch"]);
        for s in Step::ALL {
            assert_eq!(s.as_str().parse::<Step>(), Ok(s));
        }
        assert!("done".parse::<State>().is_err());
        assert!("Triage".parse::<Kind>().is_err());
    }

    #[test]
    fn the_error_names_kind_state_and_step() {
        let e = next(Kind::Triage, State::Done, Step::Retry).unwrap_err();
        assert_eq!(
            e.to_string(),
            "illegal transition: a triage workflow in DONE cannot take the step retry"
        );
    }
}
