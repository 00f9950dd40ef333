//! Workflows, their append-only transition history and the approval ledger.
//!
//! The state machine itself is [`crate::workflow::state::next`]; this module only persists its
//! answers. [`transition`] writes a state change with optimistic concurrency (the UPDATE names
//! the state it expects to leave), so two workers acting on one workflow cannot both move it,
//! and writes the history row atomically with it.

use super::Db;
use super::WriteTx;
use crate::audit;
use crate::workflow::approval::{Binding, Person, Vote};
use crate::workflow::state::{self, IllegalTransition, Kind, State, Step};
use sqlx::any::AnyRow;
use sqlx::{Executor, Row};
use std::str::FromStr;

pub use super::jobs::enqueue_workflow_job;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    pub id: i64,
    pub kind: Kind,
    pub installation_id: i64,
    /// `owner/name`.
    pub repository: String,
    /// The issue or pull request number.
    pub number: i64,
    pub state: State,
    /// The requester's login when they asked (display only), or `operator:<name>`.
    pub requested_by: String,
    /// The requester's GitHub account id: what the self-approval rule compares. None for
    /// operators and for workflows created before ids were stored (migration 0008).
    pub requested_by_id: Option<i64>,
    /// `/orch propose <instruction>`.
    pub instruction: Option<String>,
    /// The PR head SHA the proposal was made for (PR workflows).
    pub head_sha: Option<String>,
    /// The proposal, as JSON.
    pub proposal: Option<String>,
    pub proposal_hash: Option<String>,
    pub policy_version: Option<String>,
    pub proposal_comment_id: Option<i64>,
    pub check_run_id: Option<i64>,
    /// The ETag of the last reactions poll of the proposal comment.
    pub reactions_etag: Option<String>,
    /// 1 for the first attempt; a retry after a terminal state is a new row with attempt + 1.
    pub attempt: i64,
    /// The attempt this one retries.
    pub previous_id: Option<i64>,
    /// The reason of the latest transition.
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Workflow {
    /// Who asked for this workflow, as the approval rules compare people.
    pub fn requester(&self) -> Person {
        Person::new(self.requested_by_id, self.requested_by.clone())
    }

    /// What a vote on the current proposal is bound to; None until a proposal is stored.
    pub fn binding(&self) -> Option<Binding> {
        Some(Binding {
            proposal_hash: self.proposal_hash.clone()?,
            head_sha: self.head_sha.clone(),
            policy_version: self.policy_version.clone()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkflow {
    pub kind: Kind,
    pub installation_id: i64,
    pub repository: String,
    pub number: i64,
    pub requested_by: String,
    /// See [`Workflow::requested_by_id`].
    pub requested_by_id: Option<i64>,
    pub instruction: Option<String>,
    pub head_sha: Option<String>,
    /// 1, or the previous attempt's + 1.
    pub attempt: i64,
    pub previous_id: Option<i64>,
    /// Why the workflow starts (the creation row's reason), e.g. `labeled orch:triage`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New(Workflow),
    /// A live workflow of this kind already exists on this issue; nothing was written.
    AlreadyActive(Workflow),
}

impl Created {
    pub fn workflow(&self) -> &Workflow {
        match self {
            Created::New(w) | Created::AlreadyActive(w) => w,
        }
    }
}

/// One row of `workflow_transitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRow {
    pub id: i64,
    pub workflow_id: i64,
    /// None for the creation row.
    pub from: Option<State>,
    pub to: State,
    pub actor: String,
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// Someone else moved the workflow first; re-read it and decide again.
    #[error("workflow {id} is no longer in {expected}: it is in {actual}")]
    Stale { id: i64, expected: State, actual: State },
    #[error("workflow {id} is a {actual} workflow, not {expected}")]
    WrongKind { id: i64, expected: Kind, actual: Kind },
    #[error("workflow {0} does not exist")]
    NotFound(i64),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

const COLUMNS: &str = "id, kind, installation_id, repository, number, state, requested_by, instruction, head_sha, proposal, \
                       proposal_hash, policy_version, proposal_comment_id, check_run_id, reactions_etag, attempt, previous_id, reason, \
                       created_at, updated_at, requested_by_id";

/// The partial unique index's condition, repeated in the upsert so that both databases infer
/// that index as the conflict target.
const ACTIVE: &str = "state NOT IN ('DONE', 'FAILED', 'BLOCKED_POLICY')";

fn parse<T: FromStr>(text: String) -> sqlx::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn workflow_from(r: &AnyRow) -> sqlx::Result<Workflow> {
    Ok(Workflow {
        id: r.try_get(0)?,
        kind: parse(r.try_get(1)?)?,
        installation_id: r.try_get(2)?,
        repository: r.try_get(3)?,
        number: r.try_get(4)?,
        state: parse(r.try_get(5)?)?,
        requested_by: r.try_get(6)?,
        instruction: r.try_get(7)?,
        head_sha: r.try_get(8)?,
        proposal: r.try_get(9)?,
        proposal_hash: r.try_get(10)?,
        policy_version: r.try_get(11)?,
        proposal_comment_id: r.try_get(12)?,
        check_run_id: r.try_get(13)?,
        reactions_etag: r.try_get(14)?,
        attempt: r.try_get(15)?,
        previous_id: r.try_get(16)?,
        reason: r.try_get(17)?,
        created_at: r.try_get(18)?,
        updated_at: r.try_get(19)?,
        requested_by_id: r.try_get(20)?,
    })
}

/// Creates a workflow in INGESTED with its creation row, unless a live workflow of the same kind
/// exists on the issue: then returns that one and writes nothing. Safe to race: the partial
/// unique index decides, and the loser sees the winner.
pub async fn create(tx: &mut WriteTx, new: NewWorkflow, now: i64) -> sqlx::Result<Created> {
    let sql = format!(
        "INSERT INTO workflows (kind, installation_id, repository, number, state, requested_by, instruction, head_sha, attempt, \
         previous_id, reason, created_at, updated_at, requested_by_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13) \
         ON CONFLICT (repository, number, kind) WHERE {ACTIVE} DO NOTHING RETURNING {COLUMNS}"
    );
    // A conflicting workflow can end between the refused insert and the look-up; then the insert
    // is tried again. Three rounds make a livelock visible instead of endless.
    for _ in 0..3 {
        // In the caller's transaction (the type says so): the row and its history commit
        // together. A conflict writes nothing and aborts nothing, so no savepoint is needed.
        let inserted = sqlx::query(&sql)
            .bind(new.kind.as_str())
            .bind(new.installation_id)
            .bind(new.repository.clone())
            .bind(new.number)
            .bind(State::START.as_str())
            .bind(new.requested_by.clone())
            .bind(new.instruction.clone())
            .bind(new.head_sha.clone())
            .bind(new.attempt)
            .bind(new.previous_id)
            .bind(new.reason.clone())
            .bind(now)
            .bind(new.requested_by_id)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(row) = inserted {
            let workflow = workflow_from(&row)?;
            insert_transition(tx, workflow.id, None, State::START, &new.requested_by, &new.reason, now).await?;
            return Ok(Created::New(workflow));
        }
        if let Some(active) = active_for(&mut **tx, &new.repository, new.number, new.kind).await? {
            return Ok(Created::AlreadyActive(active));
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "creating a {} workflow on {}#{}: the active one kept changing",
        new.kind, new.repository, new.number
    )))
}

/// Writes a history row and its audit entry (in the caller's transaction).
async fn insert_transition(
    tx: &mut WriteTx,
    workflow_id: i64,
    from: Option<State>,
    to: State,
    actor: &str,
    reason: &str,
    at: i64,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO workflow_transitions (workflow_id, from_state, to_state, actor, reason, at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(workflow_id)
        .bind(from.map(State::as_str))
        .bind(to.as_str())
        .bind(actor.to_string())
        .bind(reason.to_string())
        .bind(at)
        .execute(&mut **tx)
        .await?;
    let entry = audit::Entry {
        kind: audit::kind::TRANSITION,
        actor,
        subject: &format!("workflow:{workflow_id}"),
        details: serde_json::json!({ "from": from.map(State::as_str), "to": to.as_str(), "reason": reason }),
    };
    // At the commit: the chain's lock is held for the append alone, not for the rest of the
    // step's transaction.
    audit::append_at_commit(tx, &entry, at);
    Ok(())
}

pub async fn get<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64) -> sqlx::Result<Option<Workflow>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workflows WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(workflow_from).transpose()
}

/// The live (non-terminal) workflow of `kind` on an issue or PR, if any.
pub async fn active_for<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    number: i64,
    kind: Kind,
) -> sqlx::Result<Option<Workflow>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM workflows WHERE repository = $1 AND number = $2 AND kind = $3 AND {ACTIVE}"
    ))
    .bind(repository.to_string())
    .bind(number)
    .bind(kind.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(workflow_from).transpose()
}

/// The newest workflow of `kind` on an issue or PR, live or not: what `/orch retry` continues.
pub async fn latest_for<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    number: i64,
    kind: Kind,
) -> sqlx::Result<Option<Workflow>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM workflows WHERE repository = $1 AND number = $2 AND kind = $3 ORDER BY id DESC LIMIT 1"
    ))
    .bind(repository.to_string())
    .bind(number)
    .bind(kind.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(workflow_from).transpose()
}

/// Every live workflow on an issue or PR, oldest first (at most one per kind).
pub async fn list_active_for_issue<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    number: i64,
) -> sqlx::Result<Vec<Workflow>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM workflows WHERE repository = $1 AND number = $2 AND {ACTIVE} ORDER BY id"
    ))
    .bind(repository.to_string())
    .bind(number)
    .fetch_all(conn)
    .await?;
    rows.iter().map(workflow_from).collect()
}

/// Moves workflow `id` from `from` by `step`, as [`state::next`] decides, and records the
/// transition; returns the new state. Nothing is written when the step is illegal, or when the
/// workflow is no longer in `from` ([`TransitionError::Stale`]: another worker moved it).
///
/// It runs inside the transaction that holds the step's other effects (the type says so), so
/// the state, its history row and those effects commit together. A stale or illegal step
/// writes nothing, so the caller's transaction needs no savepoint to survive it.
// The arguments are the transition's columns and its precondition; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    tx: &mut WriteTx,
    id: i64,
    kind: Kind,
    from: State,
    step: Step,
    actor: &str,
    reason: &str,
    now: i64,
) -> Result<State, TransitionError> {
    let to = state::next(kind, from, step)?;
    // The WHERE on the old state is the concurrency control: on Postgres a concurrent UPDATE of
    // the row waits for the first to commit, then finds the state changed and matches nothing.
    let moved = sqlx::query("UPDATE workflows SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND kind = $5 AND state = $6")
        .bind(to.as_str())
        .bind(reason.to_string())
        .bind(now)
        .bind(id)
        .bind(kind.as_str())
        .bind(from.as_str())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if moved != 1 {
        let current = sqlx::query("SELECT kind, state FROM workflows WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = current else {
            return Err(TransitionError::NotFound(id));
        };
        let (actual_kind, actual): (Kind, State) = (parse(row.try_get(0)?)?, parse(row.try_get(1)?)?);
        if actual_kind != kind {
            return Err(TransitionError::WrongKind {
                id,
                expected: kind,
                actual: actual_kind,
            });
        }
        return Err(TransitionError::Stale {
            id,
            expected: from,
            actual,
        });
    }
    insert_transition(tx, id, Some(from), to, actor, reason, now).await?;
    Ok(to)
}

/// The history of a workflow, in order.
pub async fn transitions<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64) -> sqlx::Result<Vec<TransitionRow>> {
    let rows = sqlx::query(
        "SELECT id, workflow_id, from_state, to_state, actor, reason, at FROM workflow_transitions WHERE workflow_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(TransitionRow {
                id: r.try_get(0)?,
                workflow_id: r.try_get(1)?,
                from: r.try_get::<Option<String>, _>(2)?.map(parse).transpose()?,
                to: parse(r.try_get(3)?)?,
                actor: r.try_get(4)?,
                reason: r.try_get(5)?,
                at: r.try_get(6)?,
            })
        })
        .collect()
}

/// Stores the proposal and what it is bound to. Votes on the previous binding stay in the
/// ledger but stop counting (see [`crate::workflow::approval::tally`]); [`void_votes`] records
/// why. False when the workflow does not exist.
pub async fn set_proposal<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    id: i64,
    proposal_json: &str,
    hash: &str,
    policy_version: &str,
    head_sha: Option<&str>,
    now: i64,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE workflows SET proposal = $1, proposal_hash = $2, policy_version = $3, head_sha = $4, updated_at = $5 WHERE id = $6",
    )
    .bind(proposal_json.to_string())
    .bind(hash.to_string())
    .bind(policy_version.to_string())
    .bind(head_sha.map(str::to_string))
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The comment that shows the proposal (and whose reactions are polled).
pub async fn set_proposal_comment<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, comment_id: i64, now: i64) -> sqlx::Result<bool> {
    set_column(conn, id, "proposal_comment_id", Some(comment_id), now).await
}

pub async fn set_check_run<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, check_run_id: i64, now: i64) -> sqlx::Result<bool> {
    set_column(conn, id, "check_run_id", Some(check_run_id), now).await
}

/// The ETag of the last reactions poll; None forgets it (the next poll is unconditional).
pub async fn set_reactions_etag<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, etag: Option<&str>, now: i64) -> sqlx::Result<bool> {
    set_column(conn, id, "reactions_etag", etag.map(str::to_string), now).await
}

/// The PR's head moved. Approvals bound to the old head stop counting by themselves.
pub async fn set_head_sha<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, head_sha: &str, now: i64) -> sqlx::Result<bool> {
    set_column(conn, id, "head_sha", Some(head_sha.to_string()), now).await
}

/// `column` is one of this module's literals, never input.
async fn set_column<'c, E, T>(conn: E, id: i64, column: &'static str, value: Option<T>, now: i64) -> sqlx::Result<bool>
where
    E: Executor<'c, Database = Db>,
    T: for<'q> sqlx::Encode<'q, Db> + sqlx::Type<Db> + Send + 'static,
{
    let r = sqlx::query(&format!("UPDATE workflows SET {column} = $1, updated_at = $2 WHERE id = $3"))
        .bind(value)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Adds a vote to the ledger; false when it was already there. A vote with a `comment_id` (the
/// command comment, the reaction) is recorded once per (workflow, source, comment_id) — a
/// comment or reaction has one author, whatever login it is seen under — so a redelivered
/// comment or a reaction seen by the next poll does not vote twice, even after it was voided.
///
/// A new vote is audited in the same transaction.
pub async fn record_vote(tx: &mut WriteTx, workflow_id: i64, vote: &Vote, comment_id: Option<i64>) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO approvals (workflow_id, voter, decision, source, proposal_hash, head_sha, policy_version, reason, comment_id, at, voter_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (workflow_id, source, comment_id) WHERE comment_id IS NOT NULL DO NOTHING",
    )
    .bind(workflow_id)
    .bind(vote.voter.clone())
    .bind(vote.decision.as_str())
    .bind(vote.source.as_str())
    .bind(vote.binding.proposal_hash.clone())
    .bind(vote.binding.head_sha.clone())
    .bind(vote.binding.policy_version.clone())
    .bind(vote.reason.clone())
    .bind(comment_id)
    .bind(vote.at)
    .bind(vote.voter_id)
    .execute(&mut **tx)
    .await?;
    let inserted = r.rows_affected() == 1;
    if inserted {
        let entry = audit::Entry {
            kind: audit::kind::VOTE,
            actor: &vote.voter,
            subject: &format!("workflow:{workflow_id}"),
            details: serde_json::json!({
                "decision": vote.decision.as_str(), "source": vote.source.as_str(), "proposal_hash": vote.binding.proposal_hash,
                "head_sha": vote.binding.head_sha, "policy_version": vote.binding.policy_version, "reason": vote.reason, "comment_id": comment_id,
                "voter_id": vote.voter_id,
            }),
        };
        audit::append_at_commit(tx, &entry, vote.at);
    }
    Ok(inserted)
}

/// The votes not voided, in ledger order (time, then arrival), as [`crate::workflow::approval::tally`] wants them.
pub async fn votes<'c, E: Executor<'c, Database = Db>>(conn: E, workflow_id: i64) -> sqlx::Result<Vec<Vote>> {
    let rows = sqlx::query(
        "SELECT voter, decision, source, proposal_hash, head_sha, policy_version, reason, at, voter_id FROM approvals \
         WHERE workflow_id = $1 AND voided_at IS NULL ORDER BY at, id",
    )
    .bind(workflow_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Vote {
                voter: r.try_get(0)?,
                decision: parse(r.try_get(1)?)?,
                source: parse(r.try_get(2)?)?,
                binding: Binding {
                    proposal_hash: r.try_get(3)?,
                    head_sha: r.try_get(4)?,
                    policy_version: r.try_get(5)?,
                },
                reason: r.try_get(6)?,
                at: r.try_get(7)?,
                voter_id: r.try_get(8)?,
            })
        })
        .collect()
}

/// Voids every live vote of a workflow (head SHA, proposal or policy changed); returns how many.
/// The rows stay, with the time and reason, for the audit.
pub async fn void_votes<'c, E: Executor<'c, Database = Db>>(conn: E, workflow_id: i64, reason: &str, now: i64) -> sqlx::Result<u64> {
    let r = sqlx::query("UPDATE approvals SET voided_at = $1, void_reason = $2 WHERE workflow_id = $3 AND voided_at IS NULL")
        .bind(now)
        .bind(reason.to_string())
        .bind(workflow_id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

/// Voids the live votes of one voter (for example one who lost the permission to approve): the
/// votes with their account id, and those without an id under their login (see [`Person`]).
pub async fn void_votes_of<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    workflow_id: i64,
    voter: &Person,
    reason: &str,
    now: i64,
) -> sqlx::Result<u64> {
    let r = sqlx::query(
        "UPDATE approvals SET voided_at = $1, void_reason = $2 WHERE workflow_id = $3 AND voided_at IS NULL \
         AND (voter_id = $5 OR ((voter_id IS NULL OR $5 IS NULL) AND LOWER(voter) = LOWER($4)))",
    )
    .bind(now)
    .bind(reason.to_string())
    .bind(workflow_id)
    .bind(voter.login.clone())
    .bind(voter.id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// The workflow whose proposal check run is `check_run_id` in `repository`.
pub async fn by_check_run<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    repository: &str,
    check_run_id: i64,
) -> sqlx::Result<Option<Workflow>> {
    let sql = format!("SELECT {COLUMNS} FROM workflows WHERE repository = $1 AND check_run_id = $2 ORDER BY id DESC LIMIT 1");
    sqlx::query(&sql)
        .bind(repository.to_string())
        .bind(check_run_id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(workflow_from)
        .transpose()
}

/// Every workflow of an issue or pull request, newest first.
pub async fn list_for_issue<'c, E: Executor<'c, Database = Db>>(conn: E, repository: &str, number: i64) -> sqlx::Result<Vec<Workflow>> {
    let sql = format!("SELECT {COLUMNS} FROM workflows WHERE repository = $1 AND number = $2 ORDER BY id DESC");
    sqlx::query(&sql)
        .bind(repository.to_string())
        .bind(number)
        .fetch_all(conn)
        .await?
        .iter()
        .map(workflow_from)
        .collect()
}

/// Stores the unified diff a patch proposal is shown with (for the dashboard, which shows all
/// of it when GitHub's size limits cut the check run).
pub async fn set_proposal_diff<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64, diff: &str, now: i64) -> sqlx::Result<bool> {
    set_column(conn, id, "proposal_diff", Some(diff.to_string()), now).await
}

/// The diff stored by [`set_proposal_diff`], if any.
pub async fn proposal_diff<'c, E: Executor<'c, Database = Db>>(conn: E, id: i64) -> sqlx::Result<Option<String>> {
    let r = sqlx::query("SELECT proposal_diff FROM workflows WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(r.map(|r| r.try_get::<Option<String>, _>(0)).transpose()?.flatten())
}

/// Whether the reaction `reaction_id` was already recorded as a vote of `workflow_id` (counted
/// or voided since): it was cast while its proposal was the current one.
pub async fn reaction_recorded<'c, E: Executor<'c, Database = Db>>(conn: E, workflow_id: i64, reaction_id: i64) -> sqlx::Result<bool> {
    let r = sqlx::query("SELECT 1 FROM approvals WHERE workflow_id = $1 AND source = 'reaction' AND comment_id = $2 LIMIT 1")
        .bind(workflow_id)
        .bind(reaction_id)
        .fetch_optional(conn)
        .await?;
    Ok(r.is_some())
}
