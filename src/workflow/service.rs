//! The application service: the one place where a workflow is admitted (Gate 1) and started, a
//! vote is cast, and the circuit breaker is reset. GitHub triggers ([`super::triggers`]), the
//! admin API ([`crate::api::admin`]), the dashboard ([`crate::api::ui`]) and the CLI all go
//! through it, so the rules cannot drift apart between them.
//!
//! Who acts is a [`Caller`]: a GitHub account (identified by its numeric id, the login only
//! shown) or an operator credential (identified by the name the credential carries, never by
//! anything in a request body). One caller is one voter, however it votes.

use super::approval::{Decision, Person, Source, Tally, Vote};
use super::authz::{authorize, Authz};
use super::engine::Engine;
use super::guard::{self, Breaker};
use super::messages;
use super::state::{Kind, State};
use crate::audit;
use crate::policy::gates::{self, ActionKind, Admission, Verdict};
use crate::policy::{phase_needed, Effective, Work};
use crate::store::workflows::{self, Created, NewWorkflow, Workflow};
use crate::store::{jobs, now_ms, Store, WriteTx};

/// Who starts a workflow or votes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A GitHub account: its id decides who it is, its login (at the time) is shown.
    GitHub(Person),
    /// An operator credential (`ORCH_ADMIN_TOKENS`, `ORCH_ADMIN_TOKEN` as `admin`), by its name.
    Operator(String),
}

impl Caller {
    pub fn github(actor: &crate::webhook::event::Actor) -> Caller {
        Caller::GitHub(Person::new(Some(actor.id), actor.login.clone()))
    }

    /// The name recorded as the actor of transitions, votes and audit entries: the login, or
    /// `operator:<name>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::GitHub(p) => p.login.clone(),
            Caller::Operator(name) => format!("operator:{name}"),
        }
    }

    /// As the approval rules compare people (operators have no GitHub id).
    pub fn person(&self) -> Person {
        match self {
            Caller::GitHub(p) => p.clone(),
            Caller::Operator(_) => Person::new(None, self.actor()),
        }
    }
}

/// Why a workflow was not started; each caller words it its own way (a reply, an HTTP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The repository's phase is below what the work needs.
    Phase { needed: u8, phase: u8 },
    /// The requester lacks write permission and is not in `approvals.approvers`.
    Denied { permission: String },
    /// The policy does not compile.
    Policy(String),
    /// The policy asks for a model the server does not price (the reply names the allowed ones).
    Model(String),
    /// Gate 1's violated rules.
    Gate1(Vec<String>),
}

/// A request to start a workflow.
#[derive(Debug, Clone)]
pub struct Start<'r> {
    pub installation: i64,
    pub repo: &'r str,
    pub number: i64,
    pub kind: Kind,
    pub requester: &'r Caller,
    pub instruction: Option<String>,
    pub head_sha: Option<String>,
    /// How it was asked for, for the creation row's reason (`label`, `` `/orch triage` ``, …).
    pub how: &'r str,
    /// `/orch retry`: asking again is the point, so the dedupe window does not apply.
    pub retry: bool,
    /// Tasks the same run (comment) admitted before this one (Gate 1's per-run cap).
    pub tasks_before: u32,
}

/// Why an operator's vote was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    #[error("there is no workflow {0}")]
    NotFound(i64),
    #[error("workflow {id} is {state}, not WAITING_USER_APPROVAL")]
    NotWaiting { id: i64, state: State },
    /// The vote is recorded, but settling the workflow failed; the worker settles it later.
    #[error("the vote was recorded, but settling workflow {id} failed: {source:#}")]
    Settle { id: i64, source: anyhow::Error },
    /// The vote is recorded; settling the workflow waits for GitHub's rate limit, and its job
    /// is queued for when the limit lifts (a rate limit never fails anything, SPEC §11).
    #[error("the vote was recorded; settling workflow {id} {}", messages::waits_for_github(*until))]
    WaitsForGithub { id: i64, until: i64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// An operator's recorded vote and where the workflow stands after it.
#[derive(Debug, Clone)]
pub struct Voted {
    pub state: State,
    pub tally: Option<Tally>,
}

/// See the module documentation.
pub struct Service<'e> {
    engine: &'e Engine,
}

impl<'e> Service<'e> {
    pub fn new(engine: &'e Engine) -> Self {
        Service { engine }
    }

    /// Gate 1 for a request to start a workflow: phase, the requester's permission (a GitHub
    /// account's; an operator's credential stands for it), the policy, the breaker, the dedupe
    /// window and the run's task cap. Ok(Ok(new)) is the workflow to create.
    pub async fn admit(&self, req: &Start<'_>, policy: &Effective) -> anyhow::Result<Result<NewWorkflow, Refusal>> {
        let work = match req.kind {
            Kind::Triage => Work::Triage,
            Kind::QaPlan => Work::QaPlan,
            Kind::Patch => Work::Patch,
        };
        if policy.phase < phase_needed(work) {
            return Ok(Err(Refusal::Phase {
                needed: phase_needed(work),
                phase: policy.phase,
            }));
        }
        if let Caller::GitHub(person) = req.requester {
            let engine = self.engine;
            if let Authz::Denied { permission } = authorize(&engine.github, req.installation, req.repo, person, &policy.policy).await? {
                return Ok(Err(Refusal::Denied { permission }));
            }
        }
        // A model the server does not price could not be bounded: refused before anything runs.
        if let Some(text) = self.engine.caps.refuse_model(&policy.policy) {
            return Ok(Err(Refusal::Model(text)));
        }
        let compiled = match self.engine.compiled(policy) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Refusal::Policy(e.to_string()))),
        };
        let action = match req.kind {
            Kind::Triage => ActionKind::AddLabels,
            Kind::QaPlan => ActionKind::AddComment,
            Kind::Patch => ActionKind::CreatePr,
        };
        let mut admission = Admission::for_action(&compiled, action, false);
        // Verified before this point: the signature at the edge (or the operator's credential),
        // the GUID at ingest, the installation, the trigger and the phase above, the requester.
        admission.signature_valid = true;
        admission.delivery_new = true;
        admission.installation_known = true;
        admission.repository_allowed = true;
        admission.trigger_enabled = true;
        admission.requester_authorized = true;
        admission.phase_needed = admission.phase_needed.min(phase_needed(work));
        admission.breaker_open = guard::breaker(self.engine.store.pool()).await?.is_open;
        admission.tasks_in_run = req.tasks_before;
        let history = workflows::list_for_issue(self.engine.store.pool(), req.repo, req.number).await?;
        // The same request carried out within the dedupe window. Failed and blocked attempts do
        // not count: asking again is the point then.
        let since = now_ms() - i64::from(policy.policy.limits.dedupe_window_hours) * 3_600_000;
        admission.duplicate_within_window = !req.retry
            && history
                .iter()
                .any(|w| w.kind == req.kind && w.state == State::Done && w.instruction == req.instruction && w.created_at >= since);
        if let Verdict::Blocked { violations } = gates::gate1(&admission) {
            return Ok(Err(Refusal::Gate1(violations.iter().map(|r| r.to_string()).collect())));
        }
        Ok(Ok(self.new_workflow(req).await?))
    }

    /// The workflow a request creates, without Gate 1: for automatic triggers (issue or pull
    /// request opened), which the policy's `triggers` already decided.
    pub async fn new_workflow(&self, req: &Start<'_>) -> anyhow::Result<NewWorkflow> {
        let previous = workflows::latest_for(self.engine.store.pool(), req.repo, req.number, req.kind).await?;
        let (requested_by_id, shown) = match req.requester {
            Caller::GitHub(p) => (p.id, format!("@{}", p.login)),
            Caller::Operator(_) => (None, req.requester.actor()),
        };
        Ok(NewWorkflow {
            kind: req.kind,
            installation_id: req.installation,
            repository: req.repo.to_string(),
            number: req.number,
            requested_by: req.requester.actor(),
            requested_by_id,
            instruction: req.instruction.clone(),
            head_sha: req.head_sha.clone(),
            attempt: previous.as_ref().map(|p| p.attempt + 1).unwrap_or(1),
            previous_id: previous.as_ref().map(|p| p.id),
            reason: format!("{} by {shown}", req.how),
        })
    }

    /// Creates the workflow in the caller's transaction and queues its first job; a live
    /// workflow of the same kind on the issue is returned instead, and nothing is written.
    pub async fn create(tx: &mut WriteTx, new: NewWorkflow, now: i64) -> sqlx::Result<Created> {
        let created = workflows::create(tx, new, now).await?;
        if let Created::New(wf) = &created {
            jobs::enqueue_workflow_job(tx, wf.id, now, now).await?;
        }
        Ok(created)
    }

    /// A vote by `caller` on `wf`'s current proposal; None when `wf` has no proposal yet.
    pub fn ballot(wf: &Workflow, caller: &Caller, decision: Decision, source: Source, reason: Option<String>) -> Option<Vote> {
        let person = caller.person();
        Some(Vote {
            voter: person.login,
            voter_id: person.id,
            decision,
            source,
            binding: wf.binding()?,
            reason,
            at: now_ms(),
        })
    }

    /// Records a vote in the ledger, in the caller's transaction; false when that comment or
    /// reaction had voted already.
    pub async fn cast(tx: &mut WriteTx, workflow_id: i64, vote: &Vote, comment_id: Option<i64>) -> sqlx::Result<bool> {
        workflows::record_vote(tx, workflow_id, vote, comment_id).await
    }

    /// An operator's vote (admin API, dashboard): recorded as the credential's operator, audited
    /// as an `operator` entry, then the workflow is settled by its ledger. Voting twice with one
    /// credential replaces the earlier vote: one credential is one voter.
    pub async fn operator_vote(
        &self,
        operator: &str,
        id: i64,
        decision: Decision,
        reason: Option<String>,
        via: &str,
    ) -> Result<Voted, VoteError> {
        let store = &self.engine.store;
        let wf = workflows::get(store.pool(), id)
            .await
            .map_err(anyhow::Error::from)?
            .ok_or(VoteError::NotFound(id))?;
        let caller = Caller::Operator(operator.to_string());
        let reason = reason.filter(|r| !r.trim().is_empty());
        let vote = match (wf.state, Self::ballot(&wf, &caller, decision, Source::Api, reason)) {
            (State::WaitingUserApproval, Some(vote)) => vote,
            _ => return Err(VoteError::NotWaiting { id, state: wf.state }),
        };
        let mut tx = store.begin().await?;
        Self::cast(&mut tx, id, &vote, None).await.map_err(anyhow::Error::from)?;
        let subject = format!("workflow:{id}");
        let entry = audit::Entry::new(
            audit::kind::OPERATOR,
            &vote.voter,
            &subject,
            serde_json::json!({ "action": decision.as_str(), "via": via, "reason": vote.reason, "proposal_hash": vote.binding.proposal_hash }),
        );
        audit::append(&mut tx, store.backend(), &entry, vote.at)
            .await
            .map_err(anyhow::Error::from)?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        tracing::info!(workflow = id, decision = %decision, operator, via, "operator vote recorded");
        let settled = async {
            let policy = self.engine.policy(wf.installation_id, &wf.repository).await?;
            let tally = self.engine.settle(&wf, &policy).await?;
            let after = self.engine.load(id).await?;
            anyhow::Ok(Voted { state: after.state, tally })
        };
        match settled.await {
            Ok(voted) => Ok(voted),
            Err(source) => match crate::github::client::rate_limit_of(&source) {
                Some(wait) => {
                    let now = now_ms();
                    let until = now + wait.as_millis() as i64;
                    let mut tx = store.begin().await?;
                    jobs::enqueue_workflow_job(&mut tx, id, until, now)
                        .await
                        .map_err(anyhow::Error::from)?;
                    tx.commit().await.map_err(anyhow::Error::from)?;
                    Err(VoteError::WaitsForGithub { id, until })
                }
                None => Err(VoteError::Settle { id, source }),
            },
        }
    }

    /// Closes the circuit breaker and counts afresh (spending totals are kept), audited as an
    /// `operator` entry by `actor` (`operator:<name>`). Needs no GitHub: the CLI resets too.
    pub async fn reset_breaker(store: &Store, actor: &str, via: &str) -> anyhow::Result<Breaker> {
        let now = now_ms();
        let mut tx = store.begin().await?;
        // In the order every model call's transaction takes them (see `Engine::ask_model`): the
        // audit chain's lock, then the breaker's row.
        audit::lock_chain(&mut tx, store.backend()).await?;
        let before = guard::breaker(&mut *tx).await?;
        guard::reset(&mut *tx, now).await?;
        let entry = audit::Entry::new(
            audit::kind::OPERATOR,
            actor,
            "circuit_breaker",
            serde_json::json!({ "action": "reset", "via": via, "was_open": before.is_open,
                "failed_tasks": before.failed_tasks, "total_tasks": before.total_tasks }),
        );
        audit::append(&mut tx, store.backend(), &entry, now).await?;
        tx.commit().await?;
        Ok(guard::breaker(store.pool()).await?)
    }
}

impl Refusal {
    /// The reply to a GitHub request that was refused (`what`: e.g. "Triage").
    pub fn reply(&self, requester: &str, kind: Kind, what: &str, repo: &str) -> String {
        match self {
            Refusal::Phase { needed, phase } => messages::phase_too_low(what, *needed, *phase),
            Refusal::Denied { permission } => {
                let doing = format!("starting a {} workflow", messages::kind_name(kind));
                messages::denied(requester, &doing, repo, permission)
            }
            Refusal::Policy(e) => format!("The policy does not compile ({e}); nothing was started."),
            Refusal::Model(text) => text.clone(),
            Refusal::Gate1(lines) => {
                let lines: Vec<String> = lines.iter().map(|r| format!("- {r}")).collect();
                format!("Nothing was started: Gate 1 refused this request.\n\n{}", lines.join("\n"))
            }
        }
    }
}
