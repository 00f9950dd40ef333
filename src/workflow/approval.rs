//! The approval ledger's arithmetic (SPEC §6). Command, reaction and check-run button votes go
//! into one ledger; [`tally`] decides from it whether a proposal is approved, rejected or still
//! waiting. A vote is bound to the exact proposal it was cast on ([`Binding`]): when the
//! proposal, the PR head or the policy changes, the old votes simply stop counting.

use super::state::UnknownName;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// What a vote approves: this proposal, on this head, under this policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    /// [`proposal_hash`] of the proposal's canonical JSON.
    pub proposal_hash: String,
    /// The PR head SHA, for workflows on a pull request.
    pub head_sha: Option<String>,
    pub policy_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub const ALL: [Decision; 2] = [Decision::Approve, Decision::Reject];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Decision::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName {
            what: "approval decision",
            name: s.to_string(),
        })
    }
}

/// How a vote reached orch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// `/orch approve`, `/orch reject`.
    Command,
    /// 👍 / 👎 on the proposal comment, found by polling.
    Reaction,
    /// A check-run `requested_action` button.
    Button,
    /// The operator's HTTP API.
    Api,
    /// The policy itself, for an auto-safe proposal (SPEC §3).
    Policy,
}

impl Source {
    pub const ALL: [Source; 5] = [Source::Command, Source::Reaction, Source::Button, Source::Api, Source::Policy];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Command => "command",
            Source::Reaction => "reaction",
            Source::Button => "button",
            Source::Api => "api",
            Source::Policy => "policy",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownName {
            what: "approval source",
            name: s.to_string(),
        })
    }
}

/// Someone the ledger compares: a requester or a voter.
///
/// GitHub accounts are told apart by their numeric account id (`user.id`, `sender.id`): a login
/// can be renamed, and a freed login taken by someone else, so it is kept for display only.
/// `id` is None for operators (`operator:<name>`, one identity per credential) and the policy,
/// and for requesters and votes recorded before ids were stored (migration 0008); only then do
/// two people compare by login, case-insensitively, as GitHub's logins do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub id: Option<i64>,
    pub login: String,
}

impl Person {
    pub fn new(id: Option<i64>, login: impl Into<String>) -> Self {
        Person { id, login: login.into() }
    }

    /// Whether `self` and `other` are the same account: by id when both have one, by login
    /// only when one of them predates stored ids (or is not a GitHub account).
    pub fn same(&self, other: &Person) -> bool {
        match (self.id, other.id) {
            (Some(a), Some(b)) => a == b,
            _ => !self.login.is_empty() && self.login.eq_ignore_ascii_case(&other.login),
        }
    }

    /// `@login (id 123)`, or `@login` without an id; operators and the policy as their name.
    pub fn display(&self) -> String {
        match self.id {
            Some(id) => format!("@{} (id {id})", self.login),
            None if self.login.contains(':') => self.login.clone(),
            None => format!("@{}", self.login),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The GitHub login at the time of the vote, for display (for [`Source::Api`],
    /// `operator:<name>`; for [`Source::Policy`], a name for the policy, e.g. `policy`).
    pub voter: String,
    /// The voter's GitHub account id: what identifies them ([`Person`]). None for operators,
    /// the policy and votes recorded before ids were stored.
    pub voter_id: Option<i64>,
    pub decision: Decision,
    pub source: Source,
    pub binding: Binding,
    /// `/orch reject <reason>`; None for approvals and reasonless rejections.
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

impl Vote {
    pub fn person(&self) -> Person {
        Person::new(self.voter_id, self.voter.clone())
    }
}

/// `approvals.required` and `approvals.allow_self_approval` of the repository's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub required: u32,
    pub allow_self_approval: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            required: 1,
            allow_self_approval: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tally {
    /// Logins in the order their (counted) approvals arrived.
    Approved { approvers: Vec<String> },
    /// The earliest counted rejection, the one that decided.
    Rejected { by: String, reason: Option<String> },
    Pending {
        approvers: Vec<String>,
        required: u32,
        /// More approvals needed.
        needed: u32,
        /// Every approval so far comes from the requester, who may not approve alone.
        self_approval_only: bool,
        /// The requester, when the approvals still needed must come from someone else and the
        /// requester might think otherwise (see [`tally`]).
        other_than: Option<String>,
    },
}

impl Tally {
    pub fn is_approved(&self) -> bool {
        matches!(self, Tally::Approved { .. })
    }

    /// One line for comments and `/orch status`, e.g. "1 of 2 approvals; still needed: 1 more
    /// approval from someone other than @alice".
    pub fn summary(&self) -> String {
        let mention = |logins: &[String]| logins.iter().map(|l| format!("@{l}")).collect::<Vec<_>>().join(", ");
        match self {
            Tally::Approved { approvers } => format!("approved by {}", mention(approvers)),
            Tally::Rejected { by, reason: Some(reason) } => format!("rejected by @{by}: {reason}"),
            Tally::Rejected { by, reason: None } => format!("rejected by @{by}"),
            Tally::Pending {
                approvers,
                required,
                needed,
                other_than,
                ..
            } => {
                let of = format!(
                    "{} of {required} approval{}",
                    approvers.len(),
                    if *required == 1 { "" } else { "s" }
                );
                let still = match (needed, other_than) {
                    (1, Some(who)) => format!("1 more approval from someone other than @{who}"),
                    (n, Some(who)) => format!("{n} more approvals from people other than @{who}"),
                    (1, None) => "1 more approval".to_string(),
                    (n, None) => format!("{n} more approvals"),
                };
                format!("{of}; still needed: {still}")
            }
        }
    }
}

/// Decides a proposal from its ledger.
///
/// - Only votes bound to `current` count: a changed proposal, head or policy voids the rest.
/// - Each voter's latest vote (by `at`, then by position in `votes`) replaces their earlier ones,
///   whatever its source, so `/orch approve` after a 👎 approves. Voters are told apart by
///   account id ([`Person`]); a vote recorded without an id (before ids were stored) belongs to
///   the account that voted under the same login with an id, if any, else to its login.
/// - Reject wins: one counted rejection rejects, however many approvals there are, because a
///   maintainer's explicit no must not be outvoted by a quorum reached around it (SPEC §3 sends
///   `/orch reject` straight to FAILED).
/// - A policy approval bound to `current` approves on its own: it records that the policy
///   classified exactly this proposal `auto_safe`, which needs no human quorum. Policy votes are
///   kept apart from human ones, so a GitHub user named like the policy cannot replace them.
/// - Bot logins (`…[bot]`) never count, as a second line behind [`may_vote`] at recording time.
/// - Otherwise approved when the distinct approvers reach `rules.required` and, unless
///   self-approval is allowed, at least one of them is not the requester (compared by id, so a
///   renamed requester is still the requester).
pub fn tally(votes: &[Vote], current: &Binding, requester: Option<&Person>, rules: &Rules) -> Tally {
    #[derive(PartialEq, Eq, Hash)]
    enum Key {
        Policy(String),
        Account(i64),
        Login(String),
    }
    // Logins seen with an id in this ledger: an id-less (older) vote under one of them is that
    // account's, not a second voter.
    let ids: std::collections::HashMap<String, i64> = votes
        .iter()
        .filter(|v| v.source != Source::Policy)
        .filter_map(|v| Some((v.voter.to_lowercase(), v.voter_id?)))
        .collect();
    let mut latest: std::collections::HashMap<Key, (i64, usize)> = std::collections::HashMap::new();
    for (i, v) in votes.iter().enumerate() {
        let policy = v.source == Source::Policy;
        if v.binding != *current || (!policy && is_bot_login(&v.voter)) || v.voter.is_empty() {
            continue;
        }
        let login = v.voter.to_lowercase();
        let key = match (policy, v.voter_id.or_else(|| ids.get(&login).copied())) {
            (true, _) => Key::Policy(login),
            (false, Some(id)) => Key::Account(id),
            (false, None) => Key::Login(login),
        };
        let entry = latest.entry(key).or_insert((v.at, i));
        if (v.at, i) > *entry {
            *entry = (v.at, i);
        }
    }
    let mut winners: Vec<(i64, usize)> = latest.into_values().collect();
    winners.sort();
    let winners: Vec<&Vote> = winners.iter().map(|(_, i)| &votes[*i]).collect();

    if let Some(reject) = winners.iter().find(|v| v.decision == Decision::Reject) {
        return Tally::Rejected {
            by: reject.voter.clone(),
            reason: reject.reason.clone(),
        };
    }
    let approvers: Vec<String> = winners.iter().map(|v| v.voter.clone()).collect();
    if winners.iter().any(|v| v.source == Source::Policy) {
        return Tally::Approved { approvers };
    }
    let is_requester = |v: &Vote| requester.is_some_and(|r| r.same(&v.person()));
    let has_other = winners.iter().any(|v| !is_requester(v));
    let self_ok = rules.allow_self_approval || requester.is_none() || has_other;
    let count = approvers.len() as u32;
    if count >= rules.required && self_ok {
        return Tally::Approved { approvers };
    }
    let mut needed = rules.required.saturating_sub(count);
    if !self_ok {
        // A quorum of the requester alone is no quorum: one more, from someone else.
        needed = needed.max(1);
    }
    // Worth saying only when the requester could otherwise believe their own vote would do:
    // they approved already, or a single approval is missing. Two or more missing approvals
    // from distinct voters include someone else anyway.
    let requester_approved = winners.iter().any(|v| is_requester(v));
    let other_than = (!self_ok && (requester_approved || needed == 1))
        .then(|| requester.map(|r| r.login.clone()))
        .flatten();
    Tally::Pending {
        self_approval_only: count > 0 && !has_other,
        other_than,
        approvers,
        required: rules.required,
        needed,
    }
}

fn is_bot_login(login: &str) -> bool {
    // GitHub logins cannot contain brackets: only App bot accounts end in `[bot]`.
    login.to_ascii_lowercase().ends_with("[bot]")
}

/// Whether a GitHub account is a bot: `type == "Bot"` decides whatever its login is (a bot
/// renamed to a plain-looking login is still a bot), and a `[bot]` login is one too. orch's own
/// account is an App bot, so it is covered.
pub fn is_bot(login: &str, user_type: &str) -> bool {
    user_type.eq_ignore_ascii_case("bot") || is_bot_login(login)
}

/// Whether a GitHub user may vote at all (SPEC §5, §6): never bots, and so never orch itself.
/// Authorization (write permission, `approvals.approvers`) is checked separately. Logins are not
/// compared with orch's: an account's type, not its name, says what it is.
pub fn may_vote(login: &str, user_type: &str) -> bool {
    !login.is_empty() && !is_bot(login, user_type)
}

/// The SHA-256 of a proposal's canonical JSON, lowercase hex: what approvals are bound to.
pub fn proposal_hash(canonical_json: &str) -> String {
    hex::encode(Sha256::digest(canonical_json.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            proposal_hash: proposal_hash(r#"{"labels":["bug"]}"#),
            head_sha: Some("abc123".into()),
            policy_version: "policy-1".into(),
        }
    }

    fn vote(voter: &str, decision: Decision, source: Source, at: i64) -> Vote {
        Vote {
            voter: voter.into(),
            voter_id: None,
            decision,
            source,
            binding: binding(),
            reason: None,
            at,
        }
    }

    /// A requester known by login only, as before ids were stored.
    fn req(login: &str) -> Person {
        Person::new(None, login)
    }

    fn with_id(mut v: Vote, id: i64) -> Vote {
        v.voter_id = Some(id);
        v
    }

    fn approve(voter: &str, at: i64) -> Vote {
        vote(voter, Decision::Approve, Source::Command, at)
    }

    fn rules(required: u32, allow_self_approval: bool) -> Rules {
        Rules {
            required,
            allow_self_approval,
        }
    }

    #[test]
    fn default_rules_are_the_spec_defaults() {
        assert_eq!(Rules::default(), rules(1, false));
    }

    #[test]
    fn quorum_of_one() {
        let r = Rules::default();
        let none = tally(&[], &binding(), Some(&req("alice")), &r);
        assert_eq!(
            none,
            Tally::Pending {
                approvers: vec![],
                required: 1,
                needed: 1,
                self_approval_only: false,
                other_than: Some("alice".into())
            }
        );
        assert_eq!(
            none.summary(),
            "0 of 1 approval; still needed: 1 more approval from someone other than @alice"
        );
        let t = tally(&[approve("bob", 1)], &binding(), Some(&req("alice")), &r);
        assert_eq!(
            t,
            Tally::Approved {
                approvers: vec!["bob".into()]
            }
        );
        assert_eq!(t.summary(), "approved by @bob");
    }

    #[test]
    fn quorum_of_two_counts_distinct_voters() {
        let r = rules(2, false);
        let one = tally(&[approve("bob", 1), approve("bob", 2)], &binding(), Some(&req("alice")), &r);
        assert_eq!(
            one,
            Tally::Pending {
                approvers: vec!["bob".into()],
                required: 2,
                needed: 1,
                self_approval_only: false,
                other_than: None
            }
        );
        assert_eq!(one.summary(), "1 of 2 approvals; still needed: 1 more approval");
        let two = tally(&[approve("bob", 1), approve("carol", 2)], &binding(), Some(&req("alice")), &r);
        assert_eq!(
            two,
            Tally::Approved {
                approvers: vec!["bob".into(), "carol".into()]
            }
        );
        let none = tally(&[], &binding(), None, &r);
        assert_eq!(none.summary(), "0 of 2 approvals; still needed: 2 more approvals");
    }

    #[test]
    fn self_approval_is_refused_by_default() {
        let r = rules(1, false);
        let t = tally(&[approve("alice", 1)], &binding(), Some(&req("Alice")), &r);
        assert_eq!(
            t,
            Tally::Pending {
                approvers: vec!["alice".into()],
                required: 1,
                needed: 1,
                self_approval_only: true,
                other_than: Some("Alice".into())
            }
        );
        // With quorum 2 the requester counts as one of two, as long as someone else is the other.
        let r2 = rules(2, false);
        let t = tally(&[approve("alice", 1)], &binding(), Some(&req("alice")), &r2);
        assert_eq!(
            t.summary(),
            "1 of 2 approvals; still needed: 1 more approval from someone other than @alice"
        );
        let t = tally(&[approve("alice", 1), approve("bob", 2)], &binding(), Some(&req("alice")), &r2);
        assert!(t.is_approved(), "{t:?}");
        // Two distinct approvers include someone else anyway: nothing to add.
        let t = tally(&[], &binding(), Some(&req("alice")), &r2);
        assert_eq!(t.summary(), "0 of 2 approvals; still needed: 2 more approvals");
        let t = tally(&[approve("alice", 1)], &binding(), Some(&req("alice")), &rules(3, false));
        assert_eq!(
            t.summary(),
            "1 of 3 approvals; still needed: 2 more approvals from people other than @alice"
        );
        // An unknown requester cannot be the one approving alone.
        assert!(tally(&[approve("alice", 1)], &binding(), None, &r).is_approved());
    }

    #[test]
    fn self_approval_when_allowed() {
        let t = tally(&[approve("alice", 1)], &binding(), Some(&req("alice")), &rules(1, true));
        assert_eq!(
            t,
            Tally::Approved {
                approvers: vec!["alice".into()]
            }
        );
        let t = tally(&[approve("alice", 1)], &binding(), Some(&req("alice")), &rules(2, true));
        assert_eq!(t.summary(), "1 of 2 approvals; still needed: 1 more approval");
    }

    #[test]
    fn stale_bindings_do_not_count() {
        let r = Rules::default();
        let mut hash = approve("bob", 1);
        hash.binding.proposal_hash = proposal_hash("{}");
        let mut head = approve("bob", 1);
        head.binding.head_sha = Some("def456".into());
        let mut no_head = approve("bob", 1);
        no_head.binding.head_sha = None;
        let mut policy = approve("bob", 1);
        policy.binding.policy_version = "policy-2".into();
        for stale in [hash, head, no_head, policy] {
            let t = tally(std::slice::from_ref(&stale), &binding(), Some(&req("alice")), &r);
            assert!(!t.is_approved(), "{stale:?} counted");
            // A stale rejection does not reject either.
            let mut reject = stale.clone();
            reject.decision = Decision::Reject;
            assert!(matches!(
                tally(&[reject], &binding(), Some(&req("alice")), &r),
                Tally::Pending { .. }
            ));
        }
    }

    #[test]
    fn the_latest_vote_of_a_voter_wins_across_sources() {
        let r = Rules::default();
        let votes = [
            vote("bob", Decision::Reject, Source::Reaction, 1),
            vote("bob", Decision::Approve, Source::Command, 2),
        ];
        assert!(tally(&votes, &binding(), Some(&req("alice")), &r).is_approved());
        let votes = [
            vote("bob", Decision::Approve, Source::Button, 2),
            vote("bob", Decision::Reject, Source::Reaction, 3),
        ];
        assert!(matches!(tally(&votes, &binding(), Some(&req("alice")), &r), Tally::Rejected { .. }));
        // Same time: the later in the ledger wins.
        let votes = [
            vote("bob", Decision::Reject, Source::Reaction, 5),
            vote("bob", Decision::Approve, Source::Command, 5),
        ];
        assert!(tally(&votes, &binding(), Some(&req("alice")), &r).is_approved());
        // Order in the slice does not matter when times differ.
        let votes = [
            vote("bob", Decision::Approve, Source::Command, 9),
            vote("bob", Decision::Reject, Source::Reaction, 5),
        ];
        assert!(tally(&votes, &binding(), Some(&req("alice")), &r).is_approved());
    }

    #[test]
    fn a_rejection_wins_over_a_quorum() {
        let mut no = vote("carol", Decision::Reject, Source::Command, 3);
        no.reason = Some("labels are wrong".into());
        let votes = [
            approve("bob", 1),
            approve("dave", 2),
            no,
            vote("erin", Decision::Reject, Source::Button, 4),
        ];
        let t = tally(&votes, &binding(), Some(&req("alice")), &rules(2, false));
        assert_eq!(
            t,
            Tally::Rejected {
                by: "carol".into(),
                reason: Some("labels are wrong".into())
            }
        );
        assert_eq!(t.summary(), "rejected by @carol: labels are wrong");
    }

    #[test]
    fn logins_compare_case_insensitively() {
        // BOB and bob are one voter: their latest vote decides, and they count once.
        let votes = [approve("bob", 1), approve("BOB", 2)];
        let t = tally(&votes, &binding(), Some(&req("alice")), &rules(2, false));
        assert_eq!(
            t,
            Tally::Pending {
                approvers: vec!["BOB".into()],
                required: 2,
                needed: 1,
                self_approval_only: false,
                other_than: None
            }
        );
        let votes = [approve("bob", 1), vote("Bob", Decision::Reject, Source::Reaction, 2)];
        assert!(matches!(tally(&votes, &binding(), None, &Rules::default()), Tally::Rejected { .. }));
        assert!(!tally(&[approve("ALICE", 1)], &binding(), Some(&req("alice")), &Rules::default()).is_approved());
    }

    #[test]
    fn bots_never_count() {
        let votes = [approve("dependabot[bot]", 1), approve("orch[BOT]", 2)];
        assert!(!tally(&votes, &binding(), Some(&req("alice")), &Rules::default()).is_approved());
        let no = vote("renovate[bot]", Decision::Reject, Source::Command, 1);
        assert!(tally(&[no, approve("bob", 2)], &binding(), Some(&req("alice")), &Rules::default()).is_approved());
    }

    #[test]
    fn a_policy_approval_approves_alone_and_cannot_be_replaced_by_a_user() {
        let policy = vote("policy", Decision::Approve, Source::Policy, 1);
        let t = tally(std::slice::from_ref(&policy), &binding(), Some(&req("alice")), &rules(2, false));
        assert!(t.is_approved());
        // A user named `policy` voting later is a different voter; their rejection still wins.
        let user = vote("policy", Decision::Reject, Source::Command, 2);
        assert!(matches!(
            tally(&[policy.clone(), user], &binding(), Some(&req("alice")), &Rules::default()),
            Tally::Rejected { .. }
        ));
        let mut stale = policy;
        stale.binding.policy_version = "policy-2".into();
        assert!(!tally(&[stale], &binding(), Some(&req("alice")), &Rules::default()).is_approved());
    }

    #[test]
    fn who_may_vote() {
        assert!(may_vote("alice", "User"));
        assert!(!may_vote("dependabot[bot]", "Bot"));
        // A bot renamed to a plain login is still a bot: the type decides.
        assert!(!may_vote("sneaky", "Bot"));
        assert!(!may_vote("sneaky", "bot"));
        assert!(!may_vote("sneaky[BOT]", "User"));
        assert!(!may_vote("orch[bot]", "Bot"));
        assert!(!may_vote("", "User"));
        // A person whose login looks like orch's is a person; orch's own account is a Bot.
        assert!(may_vote("orchestra", "User"));
    }

    #[test]
    fn people_are_their_account_ids() {
        let alice = Person::new(Some(7), "alice");
        // Renamed: same id, new login. Still the requester, who may not approve alone.
        let renamed = with_id(approve("alice-new", 1), 7);
        let t = tally(std::slice::from_ref(&renamed), &binding(), Some(&alice), &Rules::default());
        assert!(!t.is_approved(), "{t:?}");
        assert!(
            matches!(
                t,
                Tally::Pending {
                    self_approval_only: true,
                    ..
                }
            ),
            "{t:?}"
        );
        // Someone else who took the old login is someone else.
        let squatter = with_id(approve("alice", 2), 99);
        assert!(tally(&[squatter], &binding(), Some(&alice), &Rules::default()).is_approved());
        // One account under two logins is one voter; two accounts are two.
        let r2 = rules(2, false);
        let same = [with_id(approve("bob", 1), 5), with_id(approve("bobby", 2), 5)];
        assert!(!tally(&same, &binding(), Some(&alice), &r2).is_approved());
        let two = [with_id(approve("bob", 1), 5), with_id(approve("carol", 2), 6)];
        assert!(tally(&two, &binding(), Some(&alice), &r2).is_approved());
        // A vote recorded before ids (no id) under a login the account used with an id is
        // that account's, not a second voter.
        let old_and_new = [approve("bob", 1), with_id(approve("bob", 2), 5)];
        assert!(!tally(&old_and_new, &binding(), Some(&alice), &r2).is_approved());
        // A requester recorded before ids compares by login.
        let t = tally(
            &[with_id(approve("Alice", 1), 7)],
            &binding(),
            Some(&req("alice")),
            &Rules::default(),
        );
        assert!(!t.is_approved());
        assert_eq!(alice.display(), "@alice (id 7)");
        assert_eq!(req("operator:ana").display(), "operator:ana");
    }

    #[test]
    fn proposal_hash_is_sha256_hex() {
        assert_eq!(
            proposal_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(proposal_hash("{}").len(), 64);
        assert_ne!(proposal_hash("{}"), proposal_hash("{ }"));
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(Source::ALL.map(Source::as_str), ["command", "reaction", "button", "api", "policy"]);
        for s in Source::ALL {
            assert_eq!(s.as_str().parse::<Source>(), Ok(s));
        }
        for d in Decision::ALL {
            assert_eq!(d.as_str().parse::<Decision>(), Ok(d));
        }
        assert!("thumbs".parse::<Source>().is_err());
    }
}
