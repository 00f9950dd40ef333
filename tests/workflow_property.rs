//! Property tests of the workflow rules, with a tiny seeded PRNG (no property-testing crate).
//!
//! - `state::next` over thousands of random step sequences per kind: only legal steps move a
//!   workflow, terminal states accept nothing, and no gate is ever skipped (SPEC §3).
//! - `approval::tally` over random ledgers: quorum, self-approval, reject-wins, bots and stale
//!   bindings (SPEC §6).
//! - End to end (SQLite): random label / command / reaction / bot traffic against a real orch and
//!   the fake GitHub; afterwards every workflow's stored history is a legal path, nothing was
//!   approved or applied around a gate, labels came only from DONE triage workflows and no
//!   exactly-once write reached GitHub twice.
//! - `approval::tally` over ledgers mixing account ids, id-less rows, renamed logins, bots and
//!   stale bindings, against an account-id reading of SPEC §6 computed here.
//! - End to end (SQLite and Postgres): random votes (commands, 👍 on current and superseded proposal
//!   comments, patch check-run buttons on current and superseded check runs) by writers, renamed
//!   writers, the requester (renamed or not), a reader and bots, interleaved with proposal
//!   revisions (`/orch request-changes` + `/orch retry`), pushes and policy changes; afterwards
//!   every write (labels, QA plan, pull request) came from an APPROVED transition backed by a
//!   quorum of distinct authorized account ids on the then-current binding, not the requester's
//!   alone, judged from the stored ledger and transitions without `tally`.
//!
//! Every run prints its seed on failure; `ORCH_PROPERTY_SEED=<seed>` replays it (decimal or
//! `0x…`), `ORCH_PROPERTY_CASES=<n>` changes the number of cases (for the end-to-end test: the
//! number of events).

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::Backend;
use e2e::{payloads, IssueSpec, Orch, REPO};
use orch::workflow::approval::{self, Binding, Decision, Rules, Source, Tally, Vote};
use orch::workflow::state::{next, IllegalTransition, Kind, State, Step};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A tiny PRNG (splitmix64) and a runner that prints the seed and shrinks failing inputs.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len())]
    }
}

/// The seed of case `i` of a run with `master`: case 0 is the master seed itself, so that
/// `ORCH_PROPERTY_SEED=<case seed> ORCH_PROPERTY_CASES=1` replays any single case.
fn case_seed(master: u64, i: usize) -> u64 {
    if i == 0 {
        master
    } else {
        Rng::new(master ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
    }
}

fn parse_seed(text: &str) -> u64 {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("ORCH_PROPERTY_SEED={text:?} is not a number"))
}

fn master_seed() -> u64 {
    match std::env::var("ORCH_PROPERTY_SEED") {
        Ok(s) if !s.trim().is_empty() => parse_seed(&s),
        _ => {
            let mut b = [0u8; 8];
            getrandom::getrandom(&mut b).expect("system randomness");
            u64::from_le_bytes(b)
        }
    }
}

fn cases(default: usize) -> usize {
    match std::env::var("ORCH_PROPERTY_CASES") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ORCH_PROPERTY_CASES={s:?} is not a number")),
        _ => default,
    }
}

/// Runs the property with a panic turned into an Err, so that shrinking can go on.
fn holds<I>(prop: &impl Fn(&I) -> Result<(), String>, input: &I) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| prop(input))) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}

/// Checks `prop` on `cases` generated inputs. On failure: shrinks greedily with `shrink` (each
/// candidate one step smaller) and panics with the seed, the replay command and the minimal input.
fn check<I: Debug>(
    name: &str,
    default_cases: usize,
    generate: impl Fn(&mut Rng) -> I,
    shrink: impl Fn(&I) -> Vec<I>,
    prop: impl Fn(&I) -> Result<(), String>,
) -> usize {
    let master = master_seed();
    let n = cases(default_cases);
    for i in 0..n {
        let seed = case_seed(master, i);
        let input = generate(&mut Rng::new(seed));
        if let Err(first) = holds(&prop, &input) {
            let (mut smallest, mut why) = (input, first.clone());
            'shrinking: loop {
                for candidate in shrink(&smallest) {
                    if let Err(e) = holds(&prop, &candidate) {
                        smallest = candidate;
                        why = e;
                        continue 'shrinking;
                    }
                }
                break;
            }
            panic!(
                "property `{name}` failed on case {i} of {n} (master seed {master:#x}, case seed {seed:#x})\n\
                 replay: ORCH_PROPERTY_SEED={seed:#x} ORCH_PROPERTY_CASES=1\n\
                 first failure: {first}\nafter shrinking: {why}\nminimal input: {smallest:#?}"
            );
        }
    }
    eprintln!("property `{name}`: {n} cases passed (master seed {master:#x})");
    n
}

/// Every input with one element of `items` left out.
fn without_one<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    (0..items.len())
        .map(|i| {
            let mut v = items.to_vec();
            v.remove(i);
            v
        })
        .collect()
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

// ---------------------------------------------------------------------------------------------
// 1a. state::next over random step sequences
// ---------------------------------------------------------------------------------------------

/// SPEC §3's state names, written out independently of `State::as_str`.
const SPEC_STATES: [&str; 11] = [
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
    "FAILED",
];
const SPEC_TERMINAL: [&str; 3] = ["DONE", "FAILED", "BLOCKED_POLICY"];

fn legal_steps(kind: Kind, from: State) -> Vec<Step> {
    Step::ALL.into_iter().filter(|s| next(kind, from, *s).is_ok()).collect()
}

/// A kind and a sequence of steps: mostly steps legal where the walk stands (so that deep
/// states are reached), the rest uniformly random (mostly illegal ones), and a few steps more
/// after a terminal state.
fn gen_walk(rng: &mut Rng) -> (Kind, Vec<Step>) {
    let kind = *rng.pick(&Kind::ALL);
    let len = 1 + rng.below(60);
    let mut state = State::START;
    let mut steps = Vec::with_capacity(len);
    let mut after_terminal = 0;
    for _ in 0..len {
        let legal = legal_steps(kind, state);
        // Cancels and failures end a walk early; make them rarer than the way forward.
        let step = if !legal.is_empty() && rng.chance(0.8) {
            let forward: Vec<Step> = legal
                .iter()
                .copied()
                .filter(|s| !matches!(s, Step::Cancelled | Step::GenerationFailed | Step::ApplyFailed))
                .collect();
            if !forward.is_empty() && rng.chance(0.85) {
                *rng.pick(&forward)
            } else {
                *rng.pick(&legal)
            }
        } else {
            *rng.pick(&Step::ALL)
        };
        if let Ok(to) = next(kind, state, step) {
            state = to;
        }
        steps.push(step);
        if state.is_terminal() {
            after_terminal += 1;
            if after_terminal > 3 {
                break;
            }
        }
    }
    (kind, steps)
}

/// Walks `steps` from the start and checks every invariant of SPEC §3 on the way; returns the
/// accepted (from, step) pairs.
fn walk(kind: Kind, steps: &[Step]) -> Result<Vec<(State, Step, State)>, String> {
    let mut state = State::START;
    let mut taken: Vec<(State, Step, State)> = Vec::new();
    // Whether Gate 2 passed for the current proposal.
    let mut gate2_passed = false;
    for (i, &step) in steps.iter().enumerate() {
        ensure!(
            SPEC_STATES.contains(&state.as_str()) && state.as_str().parse::<State>() == Ok(state),
            "step {i}: {state:?} is not one of SPEC §3's states"
        );
        ensure!(
            state.is_terminal() == SPEC_TERMINAL.contains(&state.as_str()),
            "step {i}: {state} terminal={}",
            state.is_terminal()
        );
        let result = next(kind, state, step);
        ensure!(
            result == next(kind, state, step),
            "next is not deterministic for {kind} {state} {step}"
        );
        if state.is_terminal() {
            ensure!(result.is_err(), "step {i}: terminal {state} accepted {step} → {result:?}");
            ensure!(
                legal_steps(kind, state).is_empty(),
                "terminal {state} accepts {:?}",
                legal_steps(kind, state)
            );
        }
        let to = match result {
            Err(e) => {
                ensure!(
                    e == IllegalTransition { kind, from: state, step },
                    "step {i}: the error names something else: {e:?}"
                );
                // An illegal step changes nothing.
                continue;
            }
            Ok(to) => to,
        };
        ensure!(
            SPEC_STATES.contains(&to.as_str()),
            "step {i}: {step} led to an unknown state {to:?}"
        );
        use State as S;
        use Step as T;
        let ok = match to {
            S::Ingested => false,
            S::ContextLoaded => (state, step) == (S::Ingested, T::ContextLoaded) || (state, step) == (S::NeedsHuman, T::Retry),
            S::PatchesProposed => (state, step) == (S::ContextLoaded, T::Proposed),
            S::WaitingUserApproval => {
                (state, step) == (S::PatchesProposed, T::Gate2Passed)
                    || (step == T::ApprovalsVoided && matches!(state, S::WaitingUserApproval | S::Approved))
            }
            // Approval only after Gate 2: by a quorum while waiting, or by the policy itself.
            S::Approved => {
                ((state, step) == (S::WaitingUserApproval, T::ApprovalComplete) && gate2_passed)
                    || (state, step) == (S::PatchesProposed, T::AutoApproved)
            }
            // Gate 3, straight from APPROVED.
            S::ApplyingChanges => (state, step) == (S::Approved, T::Gate3Passed),
            S::PrCreated => kind == Kind::Patch && (state, step) == (S::ApplyingChanges, T::PrCreated),
            S::Done => {
                step == T::Applied
                    && if kind == Kind::Patch {
                        state == S::PrCreated
                    } else {
                        state == S::ApplyingChanges
                    }
            }
            S::NeedsHuman => {
                (state, step) == (S::WaitingUserApproval, T::ChangesRequested)
                    || (state, step) == (S::ApplyingChanges, T::Conflict)
                    // A proposal nobody decided within `approvals.expire_days` (issue 14).
                    || (state, step) == (S::WaitingUserApproval, T::Expired)
            }
            S::BlockedPolicy => (state, step) == (S::PatchesProposed, T::Gate2Blocked) || (state, step) == (S::Approved, T::Gate3Blocked),
            S::Failed => match step {
                T::Cancelled => !state.is_terminal(),
                T::Rejected => state == S::WaitingUserApproval,
                T::ApplyFailed => state == S::ApplyingChanges,
                T::GenerationFailed => matches!(state, S::Ingested | S::ContextLoaded | S::PatchesProposed),
                _ => false,
            },
        };
        ensure!(
            ok,
            "step {i}: {kind} {state} --{step}--> {to} is not a transition SPEC §3 allows here (gate 2 passed: {gate2_passed})"
        );
        // The way to APPLYING_CHANGES: APPROVED right before, and that approval came after Gate 2.
        if to == S::ApplyingChanges {
            let before = taken.last().map(|(_, _, t)| *t);
            ensure!(before == Some(S::Approved), "step {i}: APPLYING_CHANGES after {before:?}");
            let approved_by = taken.iter().rev().find(|(_, _, t)| *t == S::Approved).map(|(f, s, _)| (*f, *s));
            ensure!(
                matches!(
                    approved_by,
                    Some((S::WaitingUserApproval, T::ApprovalComplete)) | Some((S::PatchesProposed, T::AutoApproved))
                ),
                "step {i}: applying after an approval by {approved_by:?}"
            );
        }
        if to == S::Done && kind == Kind::Patch {
            let path: Vec<State> = taken.iter().map(|(_, _, t)| *t).collect();
            ensure!(
                path.ends_with(&[S::Approved, S::ApplyingChanges, S::PrCreated]),
                "step {i}: patch DONE after {path:?}"
            );
        }
        // Gate 2 passes with approval required (Gate2Passed) or auto-safe (AutoApproved); an
        // auto-approved proposal whose approval is voided (head or policy changed) waits for a
        // human quorum with Gate 2 passed all the same. A new proposal has to pass it again.
        match step {
            T::Proposed => gate2_passed = false,
            T::Gate2Passed | T::AutoApproved => gate2_passed = true,
            _ => {}
        }
        taken.push((state, step, to));
        state = to;
    }
    Ok(taken)
}

#[test]
fn next_walks_only_legal_paths_and_never_skips_a_gate() {
    let covered = std::sync::Mutex::new(HashSet::<(Kind, State, Step)>::new());
    let reached = std::sync::Mutex::new(HashSet::<(Kind, State)>::new());
    let n = check(
        "state::next walks",
        6000,
        gen_walk,
        |(kind, steps)| without_one(steps).into_iter().map(|s| (*kind, s)).collect(),
        |(kind, steps)| {
            let taken = walk(*kind, steps)?;
            let mut c = covered.lock().unwrap_or_else(|p| p.into_inner());
            let mut r = reached.lock().unwrap_or_else(|p| p.into_inner());
            for (from, step, to) in taken {
                c.insert((*kind, from, step));
                r.insert((*kind, to));
            }
            Ok(())
        },
    );
    // The random walks must have exercised every legal transition and reached every state a kind
    // can reach (PR_CREATED only for patches), or the properties above prove little.
    if n >= 2000 {
        let covered = covered.into_inner().unwrap();
        let reached = reached.into_inner().unwrap();
        for kind in Kind::ALL {
            for from in State::ALL {
                for step in Step::ALL {
                    // (`next` also accepts a cancel in PR_CREATED for triage and QA plans, a
                    // state they never reach: only reachable states are asked for.)
                    let reachable = from == State::START || reached.contains(&(kind, from));
                    if reachable && next(kind, from, step).is_ok() {
                        assert!(covered.contains(&(kind, from, step)), "never exercised: {kind} {from} {step}");
                    }
                }
            }
            for s in State::ALL.into_iter().filter(|s| *s != State::START) {
                let reachable = s != State::PrCreated || kind == Kind::Patch;
                assert_eq!(reached.contains(&(kind, s)), reachable, "{kind} reaching {s}");
            }
        }
    }
}

#[test]
fn terminal_states_and_unknown_names_are_closed() {
    // Exhaustive companions of the random walks: terminal states refuse every step of every
    // kind, and the stored names parse back only for SPEC §3's states.
    for kind in Kind::ALL {
        for from in State::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(legal_steps(kind, from).is_empty(), "{kind} {from}");
        }
    }
    let names: BTreeSet<&str> = State::ALL.into_iter().map(State::as_str).collect();
    assert_eq!(names, SPEC_STATES.into_iter().collect());
    for bad in ["done", "Approved", "APPROVED ", "PR_OPENED", ""] {
        assert!(bad.parse::<State>().is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1b. approval::tally over random ledgers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Ledger {
    votes: Vec<Vote>,
    current: Binding,
    requester: Option<String>,
    rules: Rules,
}

const HUMANS: [&str; 10] = [
    "alice",
    "Alice",
    "ALICE",
    "bob",
    "Bob",
    "carol",
    "dave",
    "erin",
    "policy",
    "orchestra",
];
const BOTS: [&str; 4] = ["dependabot[bot]", "Renovate[BOT]", "orch[bot]", "github-actions[bot]"];
const HUMAN_SOURCES: [Source; 4] = [Source::Command, Source::Reaction, Source::Button, Source::Api];

fn binding(hash: &str, head: Option<&str>, policy: &str) -> Binding {
    Binding {
        proposal_hash: approval::proposal_hash(hash),
        head_sha: head.map(str::to_string),
        policy_version: policy.to_string(),
    }
}

/// The current binding or a stale one (another proposal, head or policy).
fn gen_binding(rng: &mut Rng, current: &Binding) -> Binding {
    if rng.chance(0.65) {
        return current.clone();
    }
    let mut b = current.clone();
    match rng.below(4) {
        0 => b.proposal_hash = approval::proposal_hash(&format!("old proposal {}", rng.below(3))),
        1 => b.head_sha = Some(format!("head{}", rng.below(3) + 10)),
        2 => b.head_sha = if b.head_sha.is_some() { None } else { Some("abc123".into()) },
        _ => b.policy_version = format!("policy-{}", rng.below(3) + 10),
    }
    b
}

fn gen_ledger(rng: &mut Rng) -> Ledger {
    let current = binding("the proposal", if rng.chance(0.5) { Some("abc123") } else { None }, "policy-1");
    let requester = if rng.chance(0.1) {
        None
    } else {
        Some(rng.pick(&["alice", "ALICE", "bob", "zed"]).to_string())
    };
    let rules = Rules {
        required: 1 + rng.below(3) as u32,
        allow_self_approval: rng.chance(0.3),
    };
    let n = rng.below(13);
    let votes = (0..n)
        .map(|_| {
            let (voter, source) = if rng.chance(0.04) {
                ("policy".to_string(), Source::Policy)
            } else if rng.chance(0.15) {
                (rng.pick(&BOTS).to_string(), *rng.pick(&HUMAN_SOURCES))
            } else if rng.chance(0.02) {
                (String::new(), *rng.pick(&HUMAN_SOURCES))
            } else {
                (rng.pick(&HUMANS).to_string(), *rng.pick(&HUMAN_SOURCES))
            };
            let decision = if source == Source::Policy || rng.chance(0.7) {
                Decision::Approve
            } else {
                Decision::Reject
            };
            Vote {
                voter,
                // Login-only votes, as stored before account ids: identity falls back to the
                // login (ids are covered by `tally_by_account_id` below).
                voter_id: None,
                decision,
                source,
                binding: gen_binding(rng, &current),
                reason: (decision == Decision::Reject && rng.chance(0.5)).then(|| "no".to_string()),
                // A small range: equal times are common, and then the ledger order decides.
                at: rng.below(8) as i64,
            }
        })
        .collect();
    Ledger {
        votes,
        current,
        requester,
        rules,
    }
}

fn is_bot(login: &str) -> bool {
    login.to_ascii_lowercase().ends_with("[bot]")
}

/// Whether the vote counts at all: bound to the current proposal, not a bot's, not empty.
fn counts(v: &Vote, current: &Binding) -> bool {
    v.binding == *current && !v.voter.is_empty() && (v.source == Source::Policy || !is_bot(&v.voter))
}

/// The latest counted vote of each voter, keyed (policy?, lowercase login), with its position.
fn latest_votes(l: &Ledger) -> BTreeMap<(bool, String), (usize, &Vote)> {
    let mut latest: BTreeMap<(bool, String), (usize, &Vote)> = BTreeMap::new();
    for (i, v) in l.votes.iter().enumerate().filter(|(_, v)| counts(v, &l.current)) {
        let key = (v.source == Source::Policy, v.voter.to_lowercase());
        match latest.get(&key) {
            Some((j, w)) if (w.at, *j) > (v.at, i) => {}
            _ => {
                latest.insert(key, (i, v));
            }
        }
    }
    latest
}

fn lower(names: &[String]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_lowercase()).collect()
}

fn tally_of(l: &Ledger) -> Tally {
    let requester = l.requester.as_ref().map(|r| approval::Person::new(None, r.clone()));
    approval::tally(&l.votes, &l.current, requester.as_ref(), &l.rules)
}

fn tally_properties(l: &Ledger) -> Result<(), String> {
    let t = tally_of(l);
    let latest = latest_votes(l);
    let is_requester = |v: &str| l.requester.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(v));
    let rejecters: Vec<&Vote> = latest
        .values()
        .filter(|(_, v)| v.decision == Decision::Reject)
        .map(|(_, v)| *v)
        .collect();
    let humans_approving: BTreeSet<String> = latest
        .iter()
        .filter(|((policy, _), (_, v))| !policy && v.decision == Decision::Approve)
        .map(|((_, login), _)| login.clone())
        .collect();
    let policy_approves = latest.keys().any(|(policy, _)| *policy);
    let self_ok = l.rules.allow_self_approval || l.requester.is_none() || humans_approving.iter().any(|a| !is_requester(a));
    let quorum = humans_approving.len() as u32 >= l.rules.required && self_ok;

    // Any counted latest rejection rejects, and only a counted latest rejection does.
    ensure!(
        rejecters.is_empty() == !matches!(t, Tally::Rejected { .. }),
        "rejecters {rejecters:?} but {t:?}"
    );
    match &t {
        Tally::Rejected { by, reason } => {
            // The earliest (by time, then ledger position) of the latest rejections decided.
            let first = latest
                .values()
                .filter(|(_, v)| v.decision == Decision::Reject)
                .min_by_key(|(i, v)| (v.at, *i))
                .map(|(_, v)| *v)
                .expect("rejected implies a rejecter");
            ensure!(
                *by == first.voter && *reason == first.reason,
                "{t:?} but the first rejection is {first:?}"
            );
        }
        Tally::Approved { approvers } => {
            ensure!(
                !approvers.iter().any(|a| is_bot(a) || a.is_empty()),
                "a bot approved: {approvers:?}"
            );
            if !policy_approves {
                // At least `required` distinct non-bot voters whose latest current vote approves…
                ensure!(
                    lower(approvers) == humans_approving,
                    "approvers {approvers:?} are not the latest approvals {humans_approving:?}"
                );
                ensure!(
                    humans_approving.len() as u32 >= l.rules.required,
                    "approved with {} of {} approvals",
                    humans_approving.len(),
                    l.rules.required
                );
                // …and, unless self-approval is allowed, one of them is not the requester.
                ensure!(self_ok, "approved by the requester {:?} alone: {approvers:?}", l.requester);
            }
        }
        Tally::Pending {
            approvers,
            required,
            needed,
            self_approval_only,
            ..
        } => {
            ensure!(!quorum && !policy_approves, "quorum reached but pending: {t:?}");
            ensure!(*required == l.rules.required && *needed >= 1, "{t:?}");
            ensure!(
                lower(approvers) == humans_approving,
                "pending approvers {approvers:?} vs {humans_approving:?}"
            );
            ensure!(
                *self_approval_only == (!approvers.is_empty() && approvers.iter().all(|a| is_requester(a))),
                "self_approval_only wrong: {t:?}"
            );
        }
    }
    // Completeness: no rejection and a quorum (or the policy) approve.
    if rejecters.is_empty() && (quorum || policy_approves) {
        ensure!(
            t.is_approved(),
            "no rejection, quorum {quorum}, policy {policy_approves}, but {t:?}"
        );
    }

    // Stale bindings never change the result.
    let mut fresh = l.clone();
    fresh.votes.retain(|v| v.binding == l.current);
    ensure!(
        tally_of(&fresh) == t,
        "without the stale votes: {:?}, with them: {t:?}",
        tally_of(&fresh)
    );
    // Neither do bots.
    let mut human = l.clone();
    human.votes.retain(|v| v.source == Source::Policy || !is_bot(&v.voter));
    ensure!(
        tally_of(&human) == t,
        "without the bots' votes: {:?}, with them: {t:?}",
        tally_of(&human)
    );
    // With distinct times the ledger's order does not matter.
    let mut distinct = l.clone();
    for (i, v) in distinct.votes.iter_mut().enumerate() {
        v.at = v.at * 100 + i as i64;
    }
    let base = tally_of(&distinct);
    let mut reversed = distinct.clone();
    reversed.votes.reverse();
    ensure!(
        tally_of(&reversed) == base,
        "order changed the verdict: {:?} vs {base:?}",
        tally_of(&reversed)
    );
    // Logins compare case-insensitively (GitHub logins are ASCII).
    let mut upper = l.clone();
    for v in upper.votes.iter_mut().filter(|v| v.source != Source::Policy) {
        v.voter = v.voter.to_ascii_uppercase();
    }
    let u = tally_of(&upper);
    let shape = |t: &Tally| match t {
        Tally::Approved { approvers } => ("approved", lower(approvers)),
        Tally::Rejected { by, .. } => ("rejected", [by.to_lowercase()].into_iter().collect()),
        Tally::Pending { approvers, .. } => ("pending", lower(approvers)),
    };
    ensure!(shape(&u) == shape(&t), "upper-cased logins: {u:?} vs {t:?}");
    Ok(())
}

#[test]
fn tally_approves_only_with_a_quorum_and_a_rejection_always_wins() {
    let seen = std::sync::Mutex::new(BTreeMap::<&'static str, usize>::new());
    let n = check(
        "approval::tally",
        20_000,
        gen_ledger,
        |l| {
            let mut out: Vec<Ledger> = without_one(&l.votes)
                .into_iter()
                .map(|votes| Ledger { votes, ..l.clone() })
                .collect();
            if l.rules.required > 1 {
                let mut r = l.clone();
                r.rules.required -= 1;
                out.push(r);
            }
            out
        },
        |l| {
            tally_properties(l)?;
            let what = match tally_of(l) {
                Tally::Approved { .. } if l.votes.iter().any(|v| v.source == Source::Policy && v.binding == l.current) => {
                    "approved by policy"
                }
                Tally::Approved { .. } if l.rules.required > 1 => "approved by a quorum of several",
                Tally::Approved { .. } => "approved",
                Tally::Rejected { .. } => "rejected",
                Tally::Pending {
                    self_approval_only: true, ..
                } => "pending: self-approval only",
                Tally::Pending { .. } => "pending",
            };
            *seen.lock().unwrap_or_else(|p| p.into_inner()).entry(what).or_default() += 1;
            Ok(())
        },
    );
    let seen = seen.into_inner().unwrap();
    eprintln!("approval::tally verdicts: {seen:?}");
    // The generator must produce every kind of verdict, or the properties prove little.
    if n >= 2000 {
        assert_eq!(seen.len(), 6, "{seen:?}");
    }
}

/// A ledger of accounts by id, each vote cast under the account's original login or a renamed
/// one: (account id, decision, bound to the current proposal, time, renamed).
#[derive(Debug, Clone)]
struct Renames {
    votes: Vec<(i64, Decision, bool, i64, bool)>,
    /// The requester's id, and whether they renamed themselves since asking.
    requester: Option<(i64, bool)>,
    rules: Rules,
}

fn login_of(id: i64, renamed: bool) -> String {
    if renamed {
        format!("renamed-{id}")
    } else {
        format!("user-{id}")
    }
}

fn tally_renamed(r: &Renames, renames: bool) -> Tally {
    let current = binding("the proposal", None, "policy-1");
    let stale = binding("an older proposal", None, "policy-1");
    let votes: Vec<Vote> = r
        .votes
        .iter()
        .map(|&(id, decision, is_current, at, renamed)| Vote {
            voter: login_of(id, renames && renamed),
            voter_id: Some(id),
            decision,
            source: Source::Command,
            binding: if is_current { current.clone() } else { stale.clone() },
            reason: None,
            at,
        })
        .collect();
    let requester = r
        .requester
        .map(|(id, renamed)| approval::Person::new(Some(id), login_of(id, renames && renamed)));
    approval::tally(&votes, &current, requester.as_ref(), &r.rules)
}

/// What a tally decided, without the logins it names.
fn verdict(t: &Tally) -> (&'static str, usize, u32, bool) {
    match t {
        Tally::Approved { approvers } => ("approved", approvers.len(), 0, false),
        Tally::Rejected { .. } => ("rejected", 0, 0, false),
        Tally::Pending {
            approvers,
            needed,
            self_approval_only,
            ..
        } => ("pending", approvers.len(), *needed, *self_approval_only),
    }
}

/// People are their account ids: renaming any account, between any two votes or after asking,
/// changes no verdict; and the requester's id alone never approves without
/// `allow_self_approval`, under whatever logins.
#[test]
fn tally_by_account_id_ignores_renames() {
    check(
        "approval::tally by account id",
        20_000,
        |rng| Renames {
            votes: (0..rng.below(8))
                .map(|_| {
                    let decision = if rng.chance(0.8) { Decision::Approve } else { Decision::Reject };
                    (
                        1 + rng.below(4) as i64,
                        decision,
                        rng.chance(0.85),
                        rng.below(6) as i64,
                        rng.chance(0.5),
                    )
                })
                .collect(),
            requester: (!rng.chance(0.1)).then(|| (1 + rng.below(4) as i64, rng.chance(0.5))),
            rules: Rules {
                required: 1 + rng.below(3) as u32,
                allow_self_approval: rng.chance(0.3),
            },
        },
        |r| {
            without_one(&r.votes)
                .into_iter()
                .map(|votes| Renames { votes, ..r.clone() })
                .collect()
        },
        |r| {
            let (renamed, original) = (tally_renamed(r, true), tally_renamed(r, false));
            ensure!(
                verdict(&renamed) == verdict(&original),
                "renames changed the verdict: {renamed:?} vs {original:?}"
            );
            if let (Some((requester, _)), false) = (r.requester, r.rules.allow_self_approval) {
                let others = r
                    .votes
                    .iter()
                    .any(|&(id, d, current, _, _)| id != requester && current && d == Decision::Approve);
                ensure!(others || !renamed.is_approved(), "the requester approved alone: {renamed:?}");
            }
            Ok(())
        },
    );
}

/// A ledger mixing votes with and without account ids (rows from before ids were stored),
/// renamed logins, bots and votes bound to superseded revisions, heads and policies.
#[derive(Debug, Clone)]
struct Mixed {
    /// (account 1..=4, or 9 for a bot; renamed; with its id; decision; binding 0 = current,
    /// 1..=3 stale; time).
    votes: Vec<(i64, bool, bool, Decision, usize, i64)>,
    /// The requester's account, renamed since asking, and whether the row has its id.
    requester: Option<(i64, bool, bool)>,
    rules: Rules,
}

fn mixed_login(account: i64, renamed: bool) -> String {
    match (account, renamed) {
        (9, false) => "helper[bot]".into(),
        (9, true) => "Helper-Renamed[BOT]".into(),
        (a, false) => format!("user-{a}"),
        (a, true) => format!("Renamed-{a}"),
    }
}

fn mixed_bindings() -> [Binding; 4] {
    [
        binding("the proposal", Some("head1"), "policy-1"),
        binding("a superseded proposal", Some("head1"), "policy-1"),
        binding("the proposal", Some("head0"), "policy-1"),
        binding("the proposal", Some("head1"), "policy-0"),
    ]
}

fn mixed_votes(m: &Mixed) -> Vec<Vote> {
    let bindings = mixed_bindings();
    m.votes
        .iter()
        .map(|&(account, renamed, with_id, decision, b, at)| Vote {
            voter: mixed_login(account, renamed),
            voter_id: with_id.then_some(account),
            decision,
            source: Source::Command,
            binding: bindings[b].clone(),
            reason: None,
            at,
        })
        .collect()
}

fn mixed_tally(m: &Mixed, votes: &[Vote]) -> Tally {
    let requester = m
        .requester
        .map(|(a, renamed, with_id)| approval::Person::new(with_id.then_some(a), mixed_login(a, renamed)));
    approval::tally(votes, &mixed_bindings()[0], requester.as_ref(), &m.rules)
}

/// SPEC §6 by account id, computed here: each account's latest current vote (a row without an id
/// is the account's whose login it carries, since these logins are never reused); a rejection
/// rejects; else approved when `required` distinct non-bot accounts approve, one of them not the
/// requester unless self-approval is allowed.
fn mixed_expected(m: &Mixed) -> (&'static str, BTreeSet<i64>) {
    let mut latest: BTreeMap<i64, (i64, usize, Decision)> = BTreeMap::new();
    for (i, &(account, _, _, decision, b, at)) in m.votes.iter().enumerate() {
        if b != 0 || account == 9 {
            continue;
        }
        let e = latest.entry(account).or_insert((at, i, decision));
        if (at, i) > (e.0, e.1) {
            *e = (at, i, decision);
        }
    }
    if latest.values().any(|(_, _, d)| *d == Decision::Reject) {
        return ("rejected", BTreeSet::new());
    }
    let approving: BTreeSet<i64> = latest.keys().copied().collect();
    let requester = m.requester.map(|(a, _, _)| a);
    let self_ok = m.rules.allow_self_approval || approving.iter().any(|a| Some(*a) != requester);
    if approving.len() as u32 >= m.rules.required && self_ok {
        ("approved", approving)
    } else {
        ("pending", approving)
    }
}

/// `tally` over ledgers that mix ids, id-less rows, renames, bots and stale bindings agrees with
/// an account-id reading of SPEC §6 computed independently. Id-less requester rows are compared
/// by login, so the requester's id is always known when their own votes lack it, and vice versa
/// (what orch stores since migration 0008).
#[test]
fn tally_counts_distinct_accounts_of_the_current_binding() {
    check(
        "approval::tally, mixed ledgers",
        20_000,
        |rng| {
            let votes = (0..rng.below(9))
                .map(|_| {
                    let account = if rng.chance(0.12) { 9 } else { 1 + rng.below(4) as i64 };
                    (
                        account,
                        rng.chance(0.5),
                        rng.chance(0.75),
                        if rng.chance(0.82) { Decision::Approve } else { Decision::Reject },
                        if rng.chance(0.6) { 0 } else { 1 + rng.below(3) },
                        rng.below(6) as i64,
                    )
                })
                .collect();
            Mixed {
                votes,
                requester: (!rng.chance(0.1)).then(|| (1 + rng.below(4) as i64, rng.chance(0.5), true)),
                rules: Rules {
                    required: 1 + rng.below(3) as u32,
                    allow_self_approval: rng.chance(0.3),
                },
            }
        },
        |m| {
            without_one(&m.votes)
                .into_iter()
                .map(|votes| Mixed { votes, ..m.clone() })
                .collect()
        },
        |m| {
            // An id-less row of the requester is matched by login: give it the requester's
            // current login, as the row was written under it.
            let mut m = m.clone();
            if let Some((r, renamed, _)) = m.requester {
                for v in m.votes.iter_mut().filter(|v| v.0 == r && !v.2) {
                    v.1 = renamed;
                }
            }
            // An id-less row belongs to its login's account when that login appears with an id in
            // the ledger; otherwise it is a voter of its own (its login). Keep the id-less current
            // rows whose login a current row with an id names, so that each is its account's.
            let with_ids: BTreeSet<String> = m
                .votes
                .iter()
                .filter(|v| v.2 && v.4 == 0)
                .map(|v| mixed_login(v.0, v.1).to_lowercase())
                .collect();
            m.votes
                .retain(|v| v.2 || with_ids.contains(&mixed_login(v.0, v.1).to_lowercase()) || v.4 != 0);
            let t = mixed_tally(&m, &mixed_votes(&m));
            let (expected, approving) = mixed_expected(&m);
            let got = match &t {
                Tally::Approved { .. } => "approved",
                Tally::Rejected { .. } => "rejected",
                Tally::Pending { .. } => "pending",
            };
            ensure!(got == expected, "{t:?}, expected {expected} with accounts {approving:?}");
            if let Tally::Approved { approvers } | Tally::Pending { approvers, .. } = &t {
                ensure!(
                    approvers.len() == approving.len(),
                    "{t:?} names {} approvers, the distinct accounts are {approving:?}",
                    approvers.len()
                );
                ensure!(!approvers.iter().any(|a| is_bot(a)), "a bot counted: {t:?}");
            }
            // Stale bindings change nothing.
            let current: Vec<Vote> = mixed_votes(&m).into_iter().filter(|v| v.binding == mixed_bindings()[0]).collect();
            ensure!(mixed_tally(&m, &current) == t, "stale votes changed {t:?}");
            Ok(())
        },
    );
}

/// Bots are bots by their account type (or a `[bot]` login, which only App bots have): a login
/// compared with orch's decides nothing, since logins can be renamed. orch is a Bot account.
#[test]
fn may_vote_refuses_bots_in_any_case() {
    check(
        "approval::may_vote",
        5000,
        |rng| {
            let base = rng
                .pick(&["alice", "orch", "orchestra", "dependabot", "renovate", "", "o"])
                .to_string();
            let suffix = *rng.pick(&["", "", "[bot]", "[BOT]", "[Bot]", "bot"]);
            let mut login = format!("{base}{suffix}");
            if rng.chance(0.5) {
                login = login.to_ascii_uppercase();
            }
            let kind = rng.pick(&["User", "Bot", "bot", "Organization"]).to_string();
            (login, kind)
        },
        |_| Vec::new(),
        |(login, kind)| {
            let got = approval::may_vote(login, kind);
            let expected = !login.is_empty() && !kind.eq_ignore_ascii_case("bot") && !is_bot(login);
            ensure!(got == expected, "may_vote({login:?}, {kind:?}) = {got}");
            ensure!(
                approval::may_vote(&login.to_ascii_lowercase(), kind) == got,
                "case changed may_vote for {login:?}"
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 1c. End to end: random traffic against a real orch (SQLite), then invariants on what it did
// ---------------------------------------------------------------------------------------------

/// Everything enabled; the approval rules are added per seed.
const POLICY: &str = "phase: 4\n";
/// Users with the permission to act.
const WRITERS: [&str; 3] = ["mara", "lee", "kai"];
/// Users without it.
const READERS: [&str; 2] = ["rin", "tess"];
/// Bots, one of them renamed to a login without `[bot]` (type `Bot`): their comments must never
/// run commands. (A person's account named like orch is a person: identity is the account, and
/// orch's own account is a bot.)
const BOT_LIKE: [&str; 3] = ["dependabot[bot]", "renovate[bot]", payloads::RENAMED_BOT];

#[derive(Debug, Clone)]
enum Event {
    Label {
        issue: usize,
        by: &'static str,
    },
    Command {
        issue: usize,
        by: &'static str,
        body: String,
    },
    React {
        issue: usize,
        by: &'static str,
        content: &'static str,
    },
    Settle,
    Pause(u64),
    /// GitHub answers the next `times` POSTs whose path contains `path` after `ms`: wider
    /// windows for commands to race with the steps that make those writes.
    SlowGithub {
        path: &'static str,
        times: u32,
        ms: u64,
    },
}

fn any_user(rng: &mut Rng) -> &'static str {
    match rng.below(10) {
        0..=5 => rng.pick_str(&WRITERS),
        6..=8 => rng.pick_str(&READERS),
        _ => rng.pick_str(&BOT_LIKE),
    }
}

fn gen_event(rng: &mut Rng, issues: usize) -> Event {
    let issue = rng.below(issues);
    let roll = rng.below(100);
    match roll {
        0..=13 => Event::Label {
            issue,
            by: if rng.chance(0.85) { rng.pick_str(&WRITERS) } else { any_user(rng) },
        },
        14..=71 => {
            let body = match rng.below(20) {
                0..=6 => "/orch approve".to_string(),
                7..=8 => "/orch reject looks wrong".to_string(),
                9..=10 => "/orch request-changes please be more specific".to_string(),
                11..=13 => "/orch retry".to_string(),
                14 => "/orch cancel".to_string(),
                15..=16 => "/orch status".to_string(),
                17 => "Thanks!\n\n/orch approve\n/orch status".to_string(),
                18 => "> /orch approve\n\nquoted, not a command".to_string(),
                _ => "/orch aprove".to_string(),
            };
            Event::Command {
                issue,
                by: any_user(rng),
                body,
            }
        }
        72..=89 => Event::React {
            issue,
            by: any_user(rng),
            content: if rng.chance(0.75) { "+1" } else { "-1" },
        },
        90..=93 => Event::Settle,
        94..=96 => Event::SlowGithub {
            path: rng.pick_str(&["/labels", "/comments", "/reactions"]),
            times: 1 + rng.below(3) as u32,
            ms: 100 + rng.below(700) as u64,
        },
        _ => Event::Pause(20 + rng.below(300) as u64),
    }
}

/// `sender` adds `label` on the fake (keeping the labels orch applied) and `issues.labeled` is
/// delivered.
async fn add_label(o: &Orch, issue: &mut IssueSpec, label: &str, sender: &str) {
    let mut now = o.fake.state.labels(REPO, issue.number);
    if !now.iter().any(|l| l == label) {
        now.push(label.to_string());
    }
    let refs: Vec<&str> = now.iter().map(String::as_str).collect();
    o.fake.state.set_labels(REPO, issue.number, &refs);
    issue.labels = now.clone();
    o.deliver("issues", &payloads::issue_labeled(&o.repo, issue, label, sender)).await;
}

fn markers(body: &str) -> Vec<i64> {
    body.match_indices("<!-- orch:action:")
        .filter_map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest.split([':', ' ']).next().and_then(|n| n.parse().ok())
        })
        .collect()
}

/// The labels a triage proposal applies: the model's labels and `priority:<p>`.
fn proposal_labels(proposal: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(proposal).unwrap_or_default();
    let mut labels: Vec<String> = v["labels"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if let Some(p) = v["priority"].as_str() {
        let p = format!("priority:{p}");
        if !labels.contains(&p) {
            labels.push(p);
        }
    }
    labels
}

struct StoredWorkflow {
    id: i64,
    kind: Kind,
    number: i64,
    state: State,
    requested_by: String,
    proposal: Option<String>,
}

struct StoredTransition {
    from: Option<State>,
    to: State,
    actor: String,
    at: i64,
}

async fn stored_workflows(o: &Orch) -> Vec<StoredWorkflow> {
    sqlx::query("SELECT id, kind, number, state, requested_by, proposal FROM workflows ORDER BY id")
        .fetch_all(o.store.pool())
        .await
        .expect("workflows are readable")
        .iter()
        .map(|r| StoredWorkflow {
            id: r.get(0),
            kind: r.get::<String, _>(1).parse().expect("a known kind"),
            number: r.get(2),
            state: r.get::<String, _>(3).parse().expect("a known state"),
            requested_by: r.get(4),
            proposal: r.get(5),
        })
        .collect()
}

async fn stored_transitions(o: &Orch, id: i64) -> Vec<StoredTransition> {
    sqlx::query("SELECT from_state, to_state, actor, at FROM workflow_transitions WHERE workflow_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(o.store.pool())
        .await
        .expect("transitions are readable")
        .iter()
        .map(|r| StoredTransition {
            from: r.get::<Option<String>, _>(0).map(|s| s.parse().expect("a known state")),
            to: r.get::<String, _>(1).parse().expect("a known state"),
            actor: r.get(2),
            at: r.get(3),
        })
        .collect()
}

/// (voter, decision, at) of every vote of a workflow, voided ones included.
async fn stored_votes(o: &Orch, id: i64) -> Vec<(String, String, String, i64)> {
    sqlx::query("SELECT voter, decision, source, at FROM approvals WHERE workflow_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(o.store.pool())
        .await
        .expect("approvals are readable")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Checks what orch did after the random traffic; returns every violation found.
async fn e2e_violations(o: &Orch, issues: &[IssueSpec], rules: &Rules) -> (Vec<String>, BTreeMap<String, usize>) {
    let mut bad = Vec::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let wfs = stored_workflows(o).await;
    let writer = |login: &str| WRITERS.iter().any(|w| w.eq_ignore_ascii_case(login));
    for wf in &wfs {
        *states.entry(wf.state.to_string()).or_default() += 1;
        let rows = stored_transitions(o, wf.id).await;
        let path: Vec<String> = rows.iter().map(|r| r.to.to_string()).collect();
        let w = format!("workflow {} ({} #{}, path {path:?})", wf.id, wf.kind, wf.number);
        match rows.first() {
            Some(r) if r.from.is_none() && r.to == State::START => {}
            _ => bad.push(format!("{w}: does not start with the creation row")),
        }
        for (i, pair) in rows.windows(2).enumerate() {
            let (prev, row) = (&pair[0], &pair[1]);
            let Some(from) = row.from else {
                bad.push(format!("{w}: row {} has no from state", i + 1));
                continue;
            };
            if from != prev.to {
                bad.push(format!("{w}: row {} leaves {from} but the workflow was in {}", i + 1, prev.to));
            }
            let steps: Vec<Step> = Step::ALL.into_iter().filter(|s| next(wf.kind, from, *s) == Ok(row.to)).collect();
            if steps.is_empty() {
                bad.push(format!("{w}: {from} → {} is no step of state::next", row.to));
            }
            if row.to == State::Approved {
                match from {
                    State::WaitingUserApproval => {
                        // A quorum before it: `required` writers whose latest vote then was an
                        // approval, one of them not the requester unless self-approval is allowed.
                        let votes = stored_votes(o, wf.id).await;
                        let mut latest: BTreeMap<String, &str> = BTreeMap::new();
                        for (voter, decision, _, _) in votes.iter().filter(|v| v.3 <= row.at) {
                            latest.insert(voter.to_lowercase(), decision.as_str());
                        }
                        let approving: Vec<&String> = latest
                            .iter()
                            .filter(|(v, d)| **d == "approve" && writer(v))
                            .map(|(v, _)| v)
                            .collect();
                        let other = approving.iter().any(|v| !v.eq_ignore_ascii_case(&wf.requested_by));
                        if (approving.len() as u32) < rules.required || !(rules.allow_self_approval || other) {
                            bad.push(format!(
                                "{w}: APPROVED by {} without a quorum ({rules:?}, requester {}) before it: {votes:?}",
                                row.actor, wf.requested_by
                            ));
                        }
                        if !writer(&row.actor) {
                            bad.push(format!("{w}: APPROVED with actor {}", row.actor));
                        }
                    }
                    // `add_labels` needs approval under this policy: no auto-approval either.
                    _ => bad.push(format!("{w}: APPROVED from {from} by {}", row.actor)),
                }
            }
            if row.to == State::ApplyingChanges && prev.to != State::Approved {
                bad.push(format!("{w}: APPLYING_CHANGES after {}", prev.to));
            }
        }
        if rows.last().map(|r| r.to) != Some(wf.state) {
            bad.push(format!("{w}: stored state {} is not where its history ends", wf.state));
        }
        for (voter, _, source, _) in stored_votes(o, wf.id).await {
            if source != "policy" && !writer(&voter) {
                bad.push(format!("{w}: a vote by {voter} ({source}), who may not vote, is in the ledger"));
            }
        }
    }
    // At most one live workflow of a kind per issue.
    let mut live: HashMap<(i64, Kind), usize> = HashMap::new();
    for wf in wfs.iter().filter(|w| !w.state.is_terminal()) {
        *live.entry((wf.number, wf.kind)).or_default() += 1;
    }
    for ((number, kind), n) in live.into_iter().filter(|(_, n)| *n > 1) {
        bad.push(format!("#{number}: {n} live {kind} workflows"));
    }
    // Labels: only DONE triage workflows applied any, and only those they proposed.
    let rows = sqlx::query("SELECT idempotency_key, status FROM actions WHERE kind = 'labels' ORDER BY id")
        .fetch_all(o.store.pool())
        .await
        .expect("actions are readable");
    for r in rows {
        let (key, status): (String, String) = (r.get(0), r.get(1));
        let id: Option<i64> = key
            .strip_prefix("wf")
            .and_then(|k| k.split(':').next())
            .and_then(|n| n.parse().ok());
        let wf = wfs.iter().find(|w| Some(w.id) == id);
        match wf {
            Some(wf) if wf.kind == Kind::Triage && wf.state == State::Done => {}
            Some(wf) => bad.push(format!(
                "labels action {key} ({status}) of workflow {} which is a {} workflow in {}",
                wf.id, wf.kind, wf.state
            )),
            None => bad.push(format!("labels action {key} ({status}) of no workflow")),
        }
    }
    let posts = o.fake.state.log();
    for issue in issues {
        let done: Vec<&StoredWorkflow> = wfs
            .iter()
            .filter(|w| w.number == issue.number && w.kind == Kind::Triage && w.state == State::Done)
            .collect();
        let allowed: BTreeSet<String> = done
            .iter()
            .flat_map(|w| proposal_labels(w.proposal.as_deref().unwrap_or("null")))
            .chain(["orch:triage".to_string()])
            .collect();
        let labels = o.fake.state.labels(REPO, issue.number);
        for l in &labels {
            if !allowed.contains(l) {
                bad.push(format!(
                    "#{}: label `{l}` but no DONE triage workflow proposed it ({labels:?})",
                    issue.number
                ));
            }
        }
        let label_posts = posts
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with(&format!("/issues/{}/labels", issue.number)))
            .count();
        if label_posts > done.len() {
            bad.push(format!(
                "#{}: labels were added {label_posts} times by {} DONE triage workflows",
                issue.number,
                done.len()
            ));
        }
        // Commands of bots, renamed or not, never ran: no 👀 on their comments.
        for c in o.fake.state.comments(REPO, issue.number) {
            let acknowledged = o.fake.state.reactions(c.id).iter().any(|(content, _)| content == "eyes");
            if acknowledged && (BOT_LIKE.contains(&c.author.as_str()) || c.author == orch::github::fake::APP_LOGIN) {
                bad.push(format!(
                    "#{}: orch acknowledged a command of {}: {:?}",
                    issue.number, c.author, c.body
                ));
            }
        }
    }
    // Every orch comment carries one marker, and no marker is on GitHub twice.
    let mut seen: HashMap<i64, (i64, usize)> = HashMap::new();
    for issue in issues {
        for c in o.fake.state.bot_comments(REPO, issue.number) {
            let m = markers(&c.body);
            if m.len() != 1 {
                bad.push(format!("#{}: orch comment {} has markers {m:?}: {:?}", issue.number, c.id, c.body));
            }
            for id in m {
                let e = seen.entry(id).or_insert((issue.number, 0));
                e.1 += 1;
                if e.1 == 2 {
                    let body: String = c.body.chars().take(160).collect();
                    bad.push(format!(
                        "action {id}: its comment is on GitHub more than once (#{} and #{}): {body:?}",
                        e.0, issue.number
                    ));
                }
            }
        }
    }
    // Nothing failed for good.
    for (sql, what) in [
        ("SELECT COUNT(*) FROM deliveries WHERE status = 'failed'", "failed deliveries"),
        ("SELECT COUNT(*) FROM jobs WHERE status = 'failed'", "failed jobs"),
    ] {
        let n: i64 = sqlx::query(sql).fetch_one(o.store.pool()).await.expect("readable").get(0);
        if n > 0 {
            bad.push(format!("{n} {what}"));
        }
    }
    (bad, states)
}

async fn random_traffic_keeps_every_invariant(backend: Backend) {
    let seed = master_seed();
    let events = cases(300);
    let mut rng = Rng::new(seed);
    // The approval rules vary with the seed.
    let rules = Rules {
        required: 1 + rng.below(2) as u32,
        allow_self_approval: rng.chance(0.3),
    };
    let policy = format!(
        "{POLICY}approvals: {{required: {}, allow_self_approval: {}, reactions: true}}\n",
        rules.required, rules.allow_self_approval
    );
    let Some(mut o) = Orch::start(backend, &policy).await else { return };
    for w in WRITERS {
        o.user(w, if w == "mara" { "maintain" } else { "write" });
    }
    o.user("kai", "admin");
    for r in READERS {
        o.user(r, "read");
    }
    o.user(payloads::RENAMED_BOT, "admin");
    let titles = [
        ("Crash on start", "It crashes when the config is empty."),
        ("How do I configure the port?", "Where is it set?"),
        ("Add dark mode", "Please add a dark theme."),
        ("Parser panics on empty input", "Stack trace attached."),
    ];
    let mut issues: Vec<IssueSpec> = titles.iter().map(|(t, b)| o.open_issue(t, b, "dev-kim")).collect();
    let started = Instant::now();
    let mut log: Vec<String> = Vec::new();
    for n in 0..events {
        // Bounded in time: what was sent so far is checked all the same.
        if started.elapsed() > Duration::from_secs(20) {
            log.push(format!("(stopped after {n} events: time budget)"));
            break;
        }
        let event = gen_event(&mut rng, issues.len());
        log.push(format!("{event:?}"));
        match event {
            Event::Label { issue, by } => add_label(&o, &mut issues[issue], "orch:triage", by).await,
            Event::Command { issue, by, body } => {
                o.comment(&issues[issue], by, &body).await;
            }
            Event::React { issue, by, content } => {
                // On one of the issue's proposal comments, old ones included.
                let proposals: Vec<i64> = o
                    .fake
                    .state
                    .bot_comments(REPO, issues[issue].number)
                    .into_iter()
                    .filter(|c| c.body.contains(" proposal (workflow "))
                    .map(|c| c.id)
                    .collect();
                if proposals.is_empty() {
                    continue;
                }
                let comment = *rng.pick(&proposals);
                // GitHub keeps one reaction of a kind per user.
                if !o.fake.state.reactions(comment).contains(&(content.to_string(), by.to_string())) {
                    o.fake.state.react(comment, by, payloads::user_type(by), content);
                }
            }
            Event::Settle => o.wait_idle(30).await,
            Event::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Event::SlowGithub { path, times, ms } => o.fake.state.inject(orch::github::fake::Fault::new(
                "POST".parse().unwrap(),
                path,
                times,
                orch::github::fake::FaultKind::Delay(Duration::from_millis(ms)),
            )),
        }
    }
    o.wait_idle(30).await;
    // Reactions added last are seen by the next poll; then nothing may move while we look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    o.wait_idle(30).await;
    let mut diagnostics = o.diagnostics().await;
    o.stop().await;
    // Jobs claimed more than once: taken over after a lease ran out, or retried after an error.
    let again: Vec<(String, Option<String>, Option<i64>, i64)> =
        sqlx::query("SELECT kind, delivery_guid, workflow_id, attempts FROM jobs WHERE attempts > 1 ORDER BY id")
            .fetch_all(o.store.pool())
            .await
            .expect("jobs are readable")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
    diagnostics.push_str(&format!(
        "jobs claimed more than once (kind, delivery, workflow, attempts): {again:?}\n"
    ));
    let (bad, states) = e2e_violations(&o, &issues, &rules).await;
    let wfs = stored_workflows(&o).await;
    let mut paths = String::new();
    for wf in &wfs {
        let rows = stored_transitions(&o, wf.id).await;
        let p: Vec<String> = rows.iter().map(|r| format!("{}({})", r.to, r.actor)).collect();
        paths.push_str(&format!("  {} #{} {}: {}\n", wf.id, wf.number, wf.kind, p.join(" → ")));
    }
    eprintln!(
        "e2e property: {} events in {:.1}s, {rules:?}, {} workflows, final states {states:?} (seed {seed:#x})",
        log.len(),
        started.elapsed().as_secs_f64(),
        wfs.len()
    );
    assert!(
        bad.is_empty(),
        "{} invariant violation(s) (seed {seed:#x}; replay with ORCH_PROPERTY_SEED={seed:#x} ORCH_PROPERTY_CASES={events}):\n  {}\n\
         events:\n  {}\nworkflows:\n{paths}\n{diagnostics}",
        bad.len(),
        bad.join("\n  "),
        log.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_random_traffic_keeps_every_invariant() {
    random_traffic_keeps_every_invariant(Backend::Sqlite).await
}

/// A deterministic witness for the invariant "labels come only from DONE triage workflows":
/// `/orch cancel` arrives while the approved workflow is applying (GitHub holds the labels
/// request for 2 s). The same checks as after the random traffic apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cancel_while_applying_keeps_every_invariant() {
    use orch::github::fake::{Fault, FaultKind};
    let Some(mut o) = Orch::start(Backend::Sqlite, POLICY).await else {
        return;
    };
    o.user("mara", "maintain");
    o.user("lee", "write");
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    add_label(&o, &mut issue, "orch:triage", "mara").await;
    o.eventually("the proposal", Duration::from_secs(15), || async {
        let w = o.workflow_states().await;
        w.first().filter(|(_, _, s)| s == "WAITING_USER_APPROVAL").map(|_| ())
    })
    .await;
    let labels = format!("/issues/{}/labels", issue.number);
    o.fake.state.inject(Fault::new(
        "POST".parse().unwrap(),
        &labels,
        1,
        FaultKind::Delay(Duration::from_secs(2)),
    ));
    o.comment(&issue, "lee", "/orch approve").await;
    o.eventually_sync("the labels request", Duration::from_secs(15), || {
        o.fake
            .state
            .log()
            .iter()
            .any(|(m, p)| m == "POST" && p.ends_with(&labels))
            .then_some(())
    })
    .await;
    // The workflow is in APPLYING_CHANGES now, its labels on their way to GitHub.
    o.comment(&issue, "mara", "/orch cancel").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    o.wait_idle(30).await;
    o.stop().await;
    let rules = Rules::default();
    let (bad, states) = e2e_violations(&o, std::slice::from_ref(&issue), &rules).await;
    let comments: Vec<String> = o.fake.state.bot_comments(REPO, issue.number).into_iter().map(|c| c.body).collect();
    let path: Vec<String> = o.transitions(1).await.into_iter().map(|(_, to, a)| format!("{to}({a})")).collect();
    assert!(
        bad.is_empty(),
        "cancel while applying: {states:?}, path {path:?}\nviolations:\n  {}\nlabels on GitHub: {:?}\norch's comments: {comments:#?}",
        bad.join("\n  "),
        o.fake.state.labels(REPO, issue.number)
    );
}

// ---------------------------------------------------------------------------------------------
// 1d. End to end: votes, proposal revisions, pushes and policy changes interleaved at random.
//     Every write orch made was caused by an approval of the then-current revision by a quorum
//     of distinct authorized account ids, not the requester's alone (issue 13).
// ---------------------------------------------------------------------------------------------

/// The policy file with the given approval rules. QA plans need approval too, so that a pull
/// request (which has a head that pushes move) has something to approve.
fn revision_policy(required: u32, allow_self_approval: bool) -> String {
    format!(
        "phase: 4\napprovals: {{required: {required}, allow_self_approval: {allow_self_approval}, reactions: true}}\n\
         actions: {{add_comment: approval_required}}\n"
    )
}

/// The version a policy text is bound under, computed here from SPEC §6's definition (the first
/// 16 hex digits of the file's SHA-256), not by orch's code.
fn policy_version_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", &hex::encode(Sha256::digest(text.as_bytes()))[..16])
}

/// People of the revision test: (login, account id of the login's account, permission, type).
/// `mara-2` and `lee-2` are mara and lee renamed (same account, same permission); the requester
/// is whoever asks, so a renamed requester votes too.
const REV_AUTHORIZED: [&str; 3] = ["mara", "lee", "kai"];
const REV_VOTERS: [&str; 8] = [
    "mara",
    "lee",
    "kai",
    "mara-2",
    "lee-2",
    "rin",
    "dependabot[bot]",
    payloads::RENAMED_BOT,
];

/// Stands for whoever last asked for a workflow on the target, under their login or renamed.
const REQUESTER: &str = "<requester>";

/// The login `by` stands for: [`REQUESTER`] is the target's last asker, renamed half the time.
fn resolve(by: &'static str, asker: Option<&'static str>, rng: &mut Rng) -> &'static str {
    if by != REQUESTER {
        return by;
    }
    let asker = asker.unwrap_or("mara");
    let base = asker.trim_end_matches("-2");
    match (base, rng.chance(0.5)) {
        ("mara", true) => "mara-2",
        ("lee", true) => "lee-2",
        ("mara", false) => "mara",
        ("lee", false) => "lee",
        _ => asker,
    }
}

/// The account behind a login of [`REV_VOTERS`].
fn rev_account(login: &str) -> i64 {
    match login {
        "mara-2" => payloads::stable_id("user", "mara"),
        "lee-2" => payloads::stable_id("user", "lee"),
        other => payloads::stable_id("user", other),
    }
}

#[derive(Debug, Clone)]
enum RevEvent {
    /// Ask for a triage of issue `target` (0 or 1), a QA plan of the pull request (2) or a
    /// patch for issue 3.
    Ask {
        target: usize,
        by: &'static str,
    },
    Command {
        target: usize,
        by: &'static str,
        body: &'static str,
    },
    /// A 👍 / 👎 on one of the target's proposal comments: the latest one, or any (old ones too).
    React {
        target: usize,
        by: &'static str,
        content: &'static str,
        latest: bool,
    },
    /// A press of the patch check run's Approve or Reject button: on the current check run, or
    /// on any of orch's patch check runs (superseded ones too).
    Button {
        by: &'static str,
        approve: bool,
        latest: bool,
    },
    /// New commits on the pull request.
    Push,
    /// `.github/orch.yml` on the default branch changes to these rules.
    Policy {
        required: u32,
        allow_self_approval: bool,
    },
    Settle,
    Pause(u64),
}

fn gen_rev_event(rng: &mut Rng) -> RevEvent {
    let target = rng.below(4);
    let voter = |rng: &mut Rng| match rng.below(12) {
        0..=6 => rng.pick_str(&REV_VOTERS[..5]),
        7..=9 => REQUESTER,
        _ => rng.pick_str(&REV_VOTERS[5..]),
    };
    match rng.below(100) {
        0..=11 => RevEvent::Ask {
            target,
            // The renamed accounts ask too: a renamed requester is still the requester.
            by: rng.pick_str(&REV_VOTERS[..5]),
        },
        12..=54 => RevEvent::Command {
            target,
            by: voter(rng),
            body: match rng.below(12) {
                0..=6 => "/orch approve",
                7 => "/orch reject not this one",
                8..=9 => "/orch request-changes be more specific",
                _ => "/orch retry",
            },
        },
        55..=77 => RevEvent::React {
            target,
            by: voter(rng),
            content: if rng.chance(0.85) { "+1" } else { "-1" },
            latest: rng.chance(0.6),
        },
        78..=81 => RevEvent::Button {
            by: voter(rng),
            approve: rng.chance(0.85),
            latest: rng.chance(0.6),
        },
        82..=85 => RevEvent::Push,
        86..=89 => RevEvent::Policy {
            required: 1 + rng.below(2) as u32,
            allow_self_approval: rng.chance(0.4),
        },
        90..=93 => RevEvent::Settle,
        _ => RevEvent::Pause(20 + rng.below(250) as u64),
    }
}

/// `login` comments `body` on `issue`; the payload names the login's account id (a renamed
/// account keeps its id).
async fn comment_by_account(o: &Orch, issue: &IssueSpec, login: &str, body: &str) {
    let kind = payloads::user_type(login);
    let comment = o.fake.state.user_comment(REPO, issue.number, login, kind, body);
    let mut payload = payloads::issue_comment_created(&o.repo, issue, comment, body, login, kind);
    payload["comment"]["user"]["id"] = rev_account(login).into();
    payload["sender"]["id"] = rev_account(login).into();
    o.deliver("issue_comment", &payload).await;
}

/// A vote as stored, every column the check needs.
#[derive(Debug, Clone)]
struct StoredVote {
    row: i64,
    voter: String,
    voter_id: Option<i64>,
    decision: String,
    source: String,
    proposal_hash: String,
    head_sha: Option<String>,
    policy_version: String,
    at: i64,
    voided_at: Option<i64>,
}

async fn stored_votes_full(o: &Orch, id: i64) -> Vec<StoredVote> {
    sqlx::query(
        "SELECT id, voter, voter_id, decision, source, proposal_hash, head_sha, policy_version, at, voided_at \
         FROM approvals WHERE workflow_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(o.store.pool())
    .await
    .expect("approvals are readable")
    .iter()
    .map(|r| StoredVote {
        row: r.get(0),
        voter: r.get(1),
        voter_id: r.get(2),
        decision: r.get(3),
        source: r.get(4),
        proposal_hash: r.get(5),
        head_sha: r.get(6),
        policy_version: r.get(7),
        at: r.get(8),
        voided_at: r.get(9),
    })
    .collect()
}

/// What the test sent that moves a binding: heads of the pull request (with the wall-clock time
/// they were pushed) and the policy texts it installed.
struct RevHistory {
    heads: Vec<(i64, String)>,
    /// The default branch's commits (a patch is bound to the base it was made on; a policy
    /// change is a commit there).
    main: Vec<(i64, String)>,
    rules_by_version: HashMap<String, Rules>,
}

/// The distinct approving accounts, or why they are no quorum.
type Quorum = Result<Vec<i64>, String>;

/// Whether the votes live at `t` (cast by then, not voided by then) for `binding` make a quorum
/// under `rules`, judged here from SPEC §6 alone: each account's latest such vote; no rejection
/// among them; at least `required` distinct approving accounts, each authorized and no bot; and
/// one of them not the requester, unless self-approval is allowed. Err says why not.
fn quorum_at(votes: &[StoredVote], t: i64, binding: (&str, Option<&str>, &str), rules: &Rules, requester_id: Option<i64>) -> Quorum {
    let authorized: BTreeSet<i64> = REV_AUTHORIZED.iter().map(|l| rev_account(l)).collect();
    let mut latest: BTreeMap<String, &StoredVote> = BTreeMap::new();
    for v in votes.iter().filter(|v| {
        v.at <= t
            && v.voided_at.map_or(true, |x| x > t)
            && (v.proposal_hash.as_str(), v.head_sha.as_deref(), v.policy_version.as_str()) == binding
    }) {
        let key = v.voter_id.map(|i| i.to_string()).unwrap_or_else(|| v.voter.to_lowercase());
        if latest.get(&key).map_or(true, |w| (w.at, w.row) <= (v.at, v.row)) {
            latest.insert(key, v);
        }
    }
    if let Some(r) = latest.values().find(|v| v.decision != "approve") {
        return Err(format!("{} rejected ({:?})", r.voter, r.voter_id));
    }
    let mut ids = BTreeSet::new();
    for v in latest.values() {
        let Some(id) = v.voter_id else {
            return Err(format!("a counted vote by {} has no account id", v.voter));
        };
        if v.source == "policy" || !authorized.contains(&id) || v.voter.ends_with("[bot]") {
            return Err(format!("{} (id {id}, {}) may not approve", v.voter, v.source));
        }
        ids.insert(id);
    }
    if (ids.len() as u32) < rules.required {
        return Err(format!("{} distinct approving account(s) of {}", ids.len(), rules.required));
    }
    if !rules.allow_self_approval && ids.iter().all(|id| Some(*id) == requester_id) {
        return Err(format!("only the requester (id {requester_id:?}) approved"));
    }
    Ok(ids.into_iter().collect())
}

/// Checks every write orch made against the approvals that caused it; returns the violations.
async fn revision_violations(o: &Orch, pr_number: i64, history: &RevHistory) -> (Vec<String>, BTreeMap<&'static str, usize>) {
    let mut bad = Vec::new();
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    let wfs = stored_workflows(o).await;
    let mut applied_by_number: HashMap<(i64, Kind), usize> = HashMap::new();
    for wf in &wfs {
        let rows = stored_transitions(o, wf.id).await;
        let path: Vec<String> = rows.iter().map(|r| format!("{}@{}", r.to, r.at)).collect();
        let w = format!("workflow {} ({} #{}, path {path:?})", wf.id, wf.kind, wf.number);
        let (hash, head, version, requester_id): (Option<String>, Option<String>, Option<String>, Option<i64>) =
            sqlx::query("SELECT proposal_hash, head_sha, policy_version, requested_by_id FROM workflows WHERE id = $1")
                .bind(wf.id)
                .fetch_one(o.store.pool())
                .await
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .expect("the workflow is readable");
        let votes = stored_votes_full(o, wf.id).await;
        if wf.proposal.is_some() && votes.iter().any(|v| Some(&v.proposal_hash) != hash.as_ref()) {
            *seen.entry("votes on a superseded revision recorded").or_default() += 1;
        }
        let writes = rows
            .windows(2)
            .filter(|p| p[0].to == State::Approved && p[1].to == State::ApplyingChanges)
            .count();
        *applied_by_number.entry((wf.number, wf.kind)).or_default() += writes;
        if rows.iter().any(|r| r.to == State::Approved) {
            *seen.entry("approved").or_default() += 1;
        }
        // The APPROVED transition that led to the write: the binding then is the workflow's
        // final one (no revision, push or policy change moves an applying workflow, except a
        // push, for which every head pushed by then is a candidate) under the rules of its
        // policy version.
        for pair in rows
            .windows(2)
            .filter(|p| p[0].to == State::Approved && p[1].to == State::ApplyingChanges)
        {
            *seen.entry("written").or_default() += 1;
            let t = pair[0].at;
            let (Some(hash), Some(version)) = (hash.as_deref(), version.as_deref()) else {
                bad.push(format!("{w}: applied without a proposal hash or policy version"));
                continue;
            };
            let Some(rules) = history.rules_by_version.get(version) else {
                bad.push(format!(
                    "{w}: applied under policy version {version}, which the test never installed"
                ));
                continue;
            };
            // The head orch knew at `t`: any commit pushed by then (orch may not have seen the
            // latest push yet; the check is that the counted votes all name the same one).
            let pushed = match wf.kind {
                Kind::QaPlan => Some(&history.heads),
                Kind::Patch => Some(&history.main),
                Kind::Triage => None,
            };
            let heads: Vec<Option<&str>> = match pushed {
                Some(list) => list.iter().filter(|(at, _)| *at <= t).map(|(_, h)| Some(h.as_str())).collect(),
                None => vec![None],
            };
            if let (Some(list), Some(h)) = (pushed, head.as_deref()) {
                if !list.iter().any(|(_, x)| x == h) {
                    bad.push(format!("{w}: bound to head {h}, which the test never pushed"));
                }
            }
            let mut verdicts: Vec<(Option<&str>, Quorum)> = heads
                .iter()
                .map(|h| (*h, quorum_at(&votes, t, (hash, *h, version), rules, requester_id)))
                .collect();
            // The workflow's own head first, for the report.
            verdicts.sort_by_key(|(h, _)| *h != head.as_deref());
            match verdicts.iter().find_map(|(_, v)| v.as_ref().ok()) {
                Some(ids) => {
                    if ids.len() > 1 {
                        *seen.entry("written with several approvers").or_default() += 1;
                    }
                    if ids.contains(&requester_id.unwrap_or_default()) {
                        *seen.entry("written with the requester among the approvers").or_default() += 1;
                    }
                }
                None => bad.push(format!(
                    "{w}: APPROVED at {t} → written without a quorum of the current revision \
                     (hash {hash}, policy {version}, {rules:?}, requester id {requester_id:?}): {verdicts:?}\n    votes: {votes:?}"
                )),
            }
        }
        if rows.iter().filter(|r| r.to == State::WaitingUserApproval).count() > 1 {
            *seen.entry("asked again (revision, push or policy change)").or_default() += 1;
        }
        if rows.iter().any(|r| r.to == State::WaitingUserApproval) && writes == 0 {
            *seen.entry("waited, never written").or_default() += 1;
        }
    }
    // No write without a workflow that was approved and applied: the store's exactly-once
    // actions, and what GitHub shows.
    let actions = sqlx::query("SELECT idempotency_key, status FROM actions ORDER BY id")
        .fetch_all(o.store.pool())
        .await
        .expect("actions are readable");
    for r in actions {
        let (key, status): (String, String) = (r.get(0), r.get(1));
        let Some(rest) = key.strip_prefix("wf") else { continue };
        let mut parts = rest.splitn(2, ':');
        let (Some(id), Some(what)) = (parts.next().and_then(|n| n.parse::<i64>().ok()), parts.next()) else {
            continue;
        };
        if !["labels", "qa-check", "qa-comment", "commit", "pull"].contains(&what) {
            continue;
        }
        let applied = match wfs.iter().find(|w| w.id == id) {
            Some(_) => stored_transitions(o, id)
                .await
                .windows(2)
                .any(|p| p[0].to == State::Approved && p[1].to == State::ApplyingChanges),
            None => false,
        };
        if !applied {
            bad.push(format!(
                "write {key} ({status}) of workflow {id}, which was never approved and applied"
            ));
        }
    }
    let log = o.fake.state.log();
    for wf in &wfs {
        let label_posts = log
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with(&format!("/issues/{}/labels", wf.number)))
            .count();
        let applied = applied_by_number.get(&(wf.number, Kind::Triage)).copied().unwrap_or(0);
        if label_posts > applied {
            bad.push(format!(
                "#{}: labels added {label_posts} times, {applied} triage(s) approved and applied",
                wf.number
            ));
        }
    }
    let pulls = o.fake.state.pulls(REPO).into_iter().filter(|p| p.head.starts_with("orch/")).count();
    let applied: usize = applied_by_number
        .iter()
        .filter(|((_, kind), _)| *kind == Kind::Patch)
        .map(|(_, n)| n)
        .sum();
    if pulls > applied {
        bad.push(format!(
            "{pulls} pull requests opened by orch, {applied} patch(es) approved and applied"
        ));
    }
    let plans = o
        .fake
        .state
        .check_runs(REPO)
        .into_iter()
        .filter(|c| c.name == "orch/qa-plan")
        .count();
    let applied = applied_by_number.get(&(pr_number, Kind::QaPlan)).copied().unwrap_or(0);
    if plans > applied {
        bad.push(format!(
            "#{pr_number}: {plans} QA plan check runs, {applied} QA plan(s) approved and applied"
        ));
    }
    (bad, seen)
}

async fn revisions_votes_pushes_and_policies(backend: Backend) {
    let seed = master_seed();
    let events = cases(400);
    let mut rng = Rng::new(seed);
    let mut history = RevHistory {
        heads: Vec::new(),
        main: Vec::new(),
        rules_by_version: HashMap::new(),
    };
    let mut rules_of = |required: u32, allow_self_approval: bool| {
        let text = revision_policy(required, allow_self_approval);
        history.rules_by_version.insert(
            policy_version_of(&text),
            Rules {
                required,
                allow_self_approval,
            },
        );
        text
    };
    let first = rules_of(1 + rng.below(2) as u32, rng.chance(0.4));
    for r in [1, 2] {
        for a in [false, true] {
            rules_of(r, a);
        }
    }
    let Some(mut o) = Orch::start(backend, &first).await else { return };
    for (login, permission) in [
        ("mara", "maintain"),
        ("mara-2", "maintain"),
        ("lee", "write"),
        ("lee-2", "write"),
        ("kai", "admin"),
        ("rin", "read"),
        (payloads::RENAMED_BOT, "admin"),
        ("dependabot[bot]", "write"),
    ] {
        o.user(login, permission);
        o.fake.state.set_user_id(login, rev_account(login));
    }
    let mut issues = vec![
        o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim"),
        o.open_issue("Parser panics on empty input", "Stack trace attached.", "dev-kim"),
        o.open_issue("Off by one", "answer() should be 42", "dev-kim"),
    ];
    let mut pr = o.open_pull("Faster parser", "feature", &[("src/parse.rs", Some("fn parse() {}\n"))], "dev-kim");
    history.heads.push((0, pr.head_sha.clone()));
    history.main.push((0, o.main_sha.clone()));
    let started = Instant::now();
    let mut log: Vec<String> = Vec::new();
    let mut pushes = 0;
    let mut askers: [Option<&'static str>; 4] = [None; 4];
    for n in 0..events {
        if started.elapsed() > Duration::from_secs(20) {
            log.push(format!("(stopped after {n} events: time budget)"));
            break;
        }
        let mut event = gen_rev_event(&mut rng);
        match &mut event {
            RevEvent::Ask { target, by } => askers[*target] = Some(*by),
            RevEvent::Command { target, by, .. } | RevEvent::React { target, by, .. } => *by = resolve(by, askers[*target], &mut rng),
            RevEvent::Button { by, .. } => *by = resolve(by, askers[3], &mut rng),
            _ => {}
        }
        log.push(format!("{event:?}"));
        let target_issue = |target: usize, issues: &[IssueSpec], pr: &payloads::PullSpec| match target {
            2 => pr.as_issue(),
            3 => issues[2].clone(),
            _ => issues[target].clone(),
        };
        match event {
            RevEvent::Ask { target: 2, by } => comment_by_account(&o, &pr.as_issue(), by, "/orch plan").await,
            RevEvent::Ask { target: 3, by } => comment_by_account(&o, &issues[2], by, "/orch propose fix `src/lib.rs` to return 42").await,
            RevEvent::Ask { target, by } if issues[target].labels.is_empty() => add_label(&o, &mut issues[target], "orch:triage", by).await,
            RevEvent::Ask { target, by } => comment_by_account(&o, &issues[target], by, "/orch triage").await,
            RevEvent::Command { target, by, body } => comment_by_account(&o, &target_issue(target, &issues, &pr), by, body).await,
            RevEvent::React {
                target,
                by,
                content,
                latest,
            } => {
                let number = target_issue(target, &issues, &pr).number;
                let proposals: Vec<i64> = o
                    .fake
                    .state
                    .bot_comments(REPO, number)
                    .into_iter()
                    .filter(|c| c.body.contains("proposal") || c.body.contains("QA plan"))
                    .map(|c| c.id)
                    .collect();
                let Some(&newest) = proposals.last() else { continue };
                let comment = if latest { newest } else { *rng.pick(&proposals) };
                if !o.fake.state.reactions(comment).contains(&(content.to_string(), by.to_string())) {
                    o.fake.state.react(comment, by, payloads::user_type(by), content);
                }
            }
            RevEvent::Button { by, approve, latest } => {
                let runs: Vec<(i64, String, i64)> = o
                    .fake
                    .state
                    .check_runs(REPO)
                    .into_iter()
                    .filter(|c| c.name == "orch/patch")
                    .filter_map(|c| {
                        let title = c.title.clone().unwrap_or_default();
                        let wf = title.split("(workflow ").nth(1)?.split(',').next()?.trim().parse().ok()?;
                        Some((c.id, c.head_sha.clone(), wf))
                    })
                    .collect();
                let current: Option<i64> =
                    sqlx::query_scalar("SELECT check_run_id FROM workflows WHERE kind = 'patch' ORDER BY id DESC LIMIT 1")
                        .fetch_optional(o.store.pool())
                        .await
                        .expect("workflows are readable")
                        .flatten();
                let run = if latest {
                    runs.iter().find(|r| Some(r.0) == current)
                } else if runs.is_empty() {
                    None
                } else {
                    Some(rng.pick(&runs))
                };
                let Some((run, head, wf)) = run.cloned() else { continue };
                let mut press = payloads::check_run_requested_action(
                    &o.repo,
                    run,
                    "orch/patch",
                    &head,
                    Some(&format!("workflow:{wf}")),
                    if approve { "approve" } else { "reject" },
                    by,
                    payloads::user_type(by),
                );
                press["sender"]["id"] = rev_account(by).into();
                o.deliver("check_run", &press).await;
            }
            RevEvent::Push => {
                pushes += 1;
                let before = pr.head_sha.clone();
                let at = chrono_ms();
                let after = o.fake.state.push(
                    REPO,
                    "feature",
                    &[("src/parse.rs", Some(format!("fn parse() {{ /* {pushes} */ }}\n").as_str()))],
                );
                history.heads.push((at, after.clone()));
                pr.head_sha = after.clone();
                o.deliver(
                    "pull_request",
                    &payloads::pull_request_synchronize(&o.repo, &pr, &before, &after, "dev-kim"),
                )
                .await;
            }
            RevEvent::Policy {
                required,
                allow_self_approval,
            } => {
                let at = chrono_ms();
                let sha = o.set_policy(&revision_policy(required, allow_self_approval));
                history.main.push((at, sha));
            }
            RevEvent::Settle => o.wait_idle(30).await,
            RevEvent::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }
    o.wait_idle(30).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    o.wait_idle(30).await;
    let diagnostics = o.diagnostics().await;
    o.stop().await;
    let (bad, seen) = revision_violations(&o, pr.number, &history).await;
    let mut paths = String::new();
    for wf in stored_workflows(&o).await {
        let rows = stored_transitions(&o, wf.id).await;
        let p: Vec<String> = rows.iter().map(|r| format!("{}({})", r.to, r.actor)).collect();
        paths.push_str(&format!("  {} #{} {}: {}\n", wf.id, wf.number, wf.kind, p.join(" → ")));
    }
    eprintln!(
        "revision property: {} events in {:.1}s, {seen:?} (seed {seed:#x})",
        log.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        bad.is_empty(),
        "{} violation(s) (seed {seed:#x}; replay with ORCH_PROPERTY_SEED={seed:#x} ORCH_PROPERTY_CASES={events}):\n  {}\n\
         events:\n  {}\nworkflows:\n{paths}\n{diagnostics}",
        bad.len(),
        bad.join("\n  "),
        log.join("\n  ")
    );
}

/// Wall-clock unix milliseconds, the clock orch stamps transitions and votes with.
fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_writes_only_with_a_quorum_of_the_current_revision() {
    revisions_votes_pushes_and_policies(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_writes_only_with_a_quorum_of_the_current_revision_postgres() {
    revisions_votes_pushes_and_policies(Backend::Postgres).await
}
