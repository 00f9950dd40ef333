//! The operator API (SPEC §14), behind `Authorization: Bearer <ORCH_ADMIN_TOKEN>`.
//!
//! [`ROUTES`] is the single table of the HTTP routes it mounts and documents (see
//! [`super::openapi`]). Every operator action appends an audit entry of kind `operator` with
//! actor `operator:<name>` (the optional `operator` of the body, `admin` by default).
//!
//! Approvals: `POST /approve/{id}` and `POST /reject/{id}` add a vote to the same ledger as
//! commands, reactions and buttons (source `api`, voter `operator:<name>`, bound to the
//! workflow's current proposal), then settle the workflow by that ledger. An operator counts as
//! one approver toward `approvals.required`, like any GitHub user; Gate 3 still runs before
//! anything is applied. A rejection rejects at once (reject wins).

use super::openapi::{opt, req, Auth, Field, Method, Route, Ty};
use super::{ApiError, AppState};
use crate::audit::{self, Filter, Verdict};
use crate::policy::gates::{self, ActionKind, Admission};
use crate::policy::{phase_needed, Work};
use crate::store::workflows::{self, Created, NewWorkflow, Workflow};
use crate::store::{jobs, now_ms};
use crate::workflow::approval::{Decision, Source, Tally, Vote};
use crate::workflow::engine::Engine;
use crate::workflow::guard;
use crate::workflow::state::{Kind, State as WfState};
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

// --- Schemas -------------------------------------------------------------------------------

const OPERATOR: Field = opt("operator", Ty::Str, "who acts, recorded as `operator:<name>` (default `admin`)");
const OPERATOR_BODY: Ty = Ty::Obj(&[OPERATOR]);
const VOTE_BODY: Ty = Ty::Obj(&[opt("reason", Ty::Str, "why (kept in the ledger and the audit log)"), OPERATOR]);
const DISPATCH_BODY: Ty = Ty::Obj(&[
    req("repository", Ty::Str, "`owner/name` (alias `repo`)"),
    req(
        "number",
        Ty::Int,
        "the issue or pull request number (aliases `issueNumber`, `prNumber`)",
    ),
    opt(
        "installation_id",
        Ty::Int,
        "the App installation (alias `installationId`); default: the one that granted the repository",
    ),
    OPERATOR,
]);
const APPROVALS: Ty = Ty::Obj(&[
    req("decided", Ty::Str, "`approved`, `rejected` or `pending`"),
    req(
        "summary",
        Ty::Str,
        "one line, e.g. `1 of 2 approvals; still needed: 1 more approval`",
    ),
    req("approvers", Ty::Arr(&Ty::Str), "counted approvers"),
]);
const PENDING_ITEM: Ty = Ty::Obj(&[
    req("id", Ty::Int, ""),
    req("kind", Ty::Str, "`triage`, `qa_plan` or `patch`"),
    req("repository", Ty::Str, ""),
    req("number", Ty::Int, ""),
    req("requested_by", Ty::Str, ""),
    req("proposal_hash", Ty::Nullable(&Ty::Str), "what votes are bound to"),
    req("created_at", Ty::Int, "unix milliseconds"),
    req("approvals", Ty::Nullable(&APPROVALS), "null when the policy could not be read"),
]);
const PENDING: Ty = Ty::Obj(&[req("workflows", Ty::Arr(&PENDING_ITEM), "oldest first")]);
const VOTED: Ty = Ty::Obj(&[
    req("id", Ty::Int, ""),
    req("state", Ty::Str, "the workflow's state after settling"),
    req("approvals", Ty::Nullable(&APPROVALS), ""),
]);
const DISPATCHED: Ty = Ty::Obj(&[req("id", Ty::Int, "the new workflow"), req("state", Ty::Str, "")]);
const RECORD: Ty = Ty::Obj(&[
    req("seq", Ty::Int, ""),
    req("at", Ty::Int, "unix milliseconds"),
    req("kind", Ty::Str, ""),
    req("actor", Ty::Str, ""),
    req("subject", Ty::Str, ""),
    req("details", Ty::Any, ""),
    req("prev_hash", Ty::Str, ""),
    req("hash", Ty::Str, ""),
]);
const AUDIT_PAGE: Ty = Ty::Obj(&[
    req("records", Ty::Arr(&RECORD), "in seq order"),
    req(
        "next",
        Ty::Nullable(&Ty::Int),
        "the `after` of the next page; null when this page was the last",
    ),
]);
const VERDICT: Ty = Ty::Obj(&[
    req("intact", Ty::Bool, ""),
    opt("rows", Ty::Int, "when intact"),
    opt("head", Ty::Str, "the last row's hash, when intact"),
    opt("seq", Ty::Int, "the first broken seq"),
    opt("problem", Ty::Str, "what is wrong with it"),
]);
const BREAKER: Ty = Ty::Obj(&[
    req("isOpen", Ty::Bool, ""),
    req("totalTasks", Ty::Int, ""),
    req("failedTasks", Ty::Int, ""),
    req("totalCostUsd", Ty::Str, ""),
]);
const AUDIT_QUERY: &[Field] = &[
    opt("after", Ty::Int, "rows with a greater seq (default 0)"),
    opt("limit", Ty::Int, "at most this many (default 100, at most 1000)"),
    opt("kind", Ty::Str, "exact kind"),
    opt("subject", Ty::Str, "exact subject"),
    opt("actor", Ty::Str, "exact actor"),
];

// --- The route table -----------------------------------------------------------------------

/// Every route of the HTTP API this module and [`super::openapi`] mount and document.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::Post,
        path: "/webhook",
        operation_id: "receiveWebhook",
        summary: "A GitHub webhook delivery (202 queued; 200 duplicate, ping or ignored)",
        auth: Auth::WebhookSignature,
        query: &[],
        body: Some((Ty::Any, false)),
        ok: (202, "queued", Ty::Any),
        errors: &[
            (400, "missing headers or a body that is not JSON"),
            (401, "missing or wrong signature"),
            (413, "over 25 MiB"),
        ],
        handler: None,
    },
    Route {
        method: Method::Get,
        path: "/health",
        operation_id: "health",
        summary: "Status, phase, version, mode and the circuit breaker",
        auth: Auth::Public,
        query: &[],
        body: None,
        ok: (200, "ok", Ty::Any),
        errors: &[],
        handler: None,
    },
    Route {
        method: Method::Get,
        path: "/metrics",
        operation_id: "metrics",
        summary: "Prometheus metrics (mounted in api::router; checks the admin token itself)",
        auth: Auth::BearerInHandler,
        query: &[],
        body: None,
        ok: (200, "the Prometheus text exposition format", Ty::Text),
        errors: &[(401, "missing or wrong bearer token"), (403, "no ORCH_ADMIN_TOKEN is configured")],
        handler: None,
    },
    Route {
        method: Method::Get,
        path: "/ui/",
        operation_id: "dashboard",
        summary: "The dashboard (HTML; its pages live under /ui/ and are not part of this API)",
        auth: Auth::Session,
        query: &[],
        body: None,
        ok: (200, "the dashboard, or its login page", Ty::Html),
        errors: &[],
        handler: None,
    },
    Route {
        method: Method::Get,
        path: "/openapi.json",
        operation_id: "openapi",
        summary: "This document",
        auth: Auth::Public,
        query: &[],
        body: None,
        ok: (200, "OpenAPI 3.0 document", Ty::Any),
        errors: &[],
        handler: Some(|m| on(m, super::openapi::serve)),
    },
    Route {
        method: Method::Get,
        path: "/pending",
        operation_id: "listPending",
        summary: "Workflows waiting for approval, with their approval tally",
        auth: Auth::Admin,
        query: &[],
        body: None,
        ok: (200, "the waiting workflows", PENDING),
        errors: &[],
        handler: Some(|m| on(m, pending)),
    },
    Route {
        method: Method::Post,
        path: "/approve/{id}",
        operation_id: "approve",
        summary: "Approve a waiting workflow as the operator (one vote in the approval ledger, source `api`)",
        auth: Auth::Admin,
        query: &[],
        body: Some((VOTE_BODY, true)),
        ok: (200, "the vote was recorded and the workflow settled", VOTED),
        errors: &[
            (400, "malformed id or body"),
            (404, "no such workflow"),
            (409, "the workflow is not waiting for approval"),
        ],
        handler: Some(|m| on(m, approve)),
    },
    Route {
        method: Method::Post,
        path: "/reject/{id}",
        operation_id: "reject",
        summary: "Reject a waiting workflow as the operator (it fails; nothing is applied)",
        auth: Auth::Admin,
        query: &[],
        body: Some((VOTE_BODY, true)),
        ok: (200, "the vote was recorded and the workflow settled", VOTED),
        errors: &[
            (400, "malformed id or body"),
            (404, "no such workflow"),
            (409, "the workflow is not waiting for approval"),
        ],
        handler: Some(|m| on(m, reject)),
    },
    Route {
        method: Method::Post,
        path: "/dispatch/triage",
        operation_id: "dispatchTriage",
        summary: "Start a triage workflow on an issue, as the label or `/orch triage` would",
        auth: Auth::Admin,
        query: &[],
        body: Some((DISPATCH_BODY, false)),
        ok: (201, "the workflow was started", DISPATCHED),
        errors: &[
            (400, "malformed body"),
            (403, "the policy does not allow it (phase, Gate 1)"),
            (409, "a triage workflow is already active on the issue"),
            (422, "the repository's installation is unknown"),
        ],
        handler: Some(|m| on(m, dispatch_triage)),
    },
    Route {
        method: Method::Post,
        path: "/dispatch/qa-plan",
        operation_id: "dispatchQaPlan",
        summary: "Start a QA-plan workflow on a pull request, as the label or `/orch plan` would",
        auth: Auth::Admin,
        query: &[],
        body: Some((DISPATCH_BODY, false)),
        ok: (201, "the workflow was started", DISPATCHED),
        errors: &[
            (400, "malformed body"),
            (403, "the policy does not allow it (phase, Gate 1)"),
            (409, "a QA-plan workflow is already active on the pull request"),
            (422, "the repository's installation is unknown"),
        ],
        handler: Some(|m| on(m, dispatch_qa_plan)),
    },
    Route {
        method: Method::Get,
        path: "/audit",
        operation_id: "auditPage",
        summary: "A page of the audit log, filtered by exact kind, subject and actor",
        auth: Auth::Admin,
        query: AUDIT_QUERY,
        body: None,
        ok: (200, "one page", AUDIT_PAGE),
        errors: &[(400, "malformed query")],
        handler: Some(|m| on(m, audit_page)),
    },
    Route {
        method: Method::Get,
        path: "/audit/verify",
        operation_id: "auditVerify",
        summary: "Recompute the audit log's hash chain",
        auth: Auth::Admin,
        query: &[],
        body: None,
        ok: (200, "the verdict", VERDICT),
        errors: &[],
        handler: Some(|m| on(m, audit_verify)),
    },
    Route {
        method: Method::Post,
        path: "/circuit/reset",
        operation_id: "circuitReset",
        summary: "Close the circuit breaker and count afresh (spending totals are kept)",
        auth: Auth::Admin,
        query: &[],
        body: Some((OPERATOR_BODY, true)),
        ok: (200, "the breaker after the reset", BREAKER),
        errors: &[(400, "malformed body")],
        handler: Some(|m| on(m, circuit_reset)),
    },
];

// --- Authentication ------------------------------------------------------------------------

/// Equal-length digests compared without an early exit.
fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The bearer check of every [`Auth::Admin`] route.
pub async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.admin_token.as_ref() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "admin API disabled: set ORCH_ADMIN_TOKEN").into_response();
    };
    match bearer(request.headers()) {
        Some(given) if same_token(given, expected.expose_secret()) => next.run(request).await,
        given => {
            let message = if given.is_some() {
                "wrong bearer token"
            } else {
                "missing bearer token: send Authorization: Bearer <ORCH_ADMIN_TOKEN>"
            };
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
    }
}

// --- Helpers -------------------------------------------------------------------------------

/// A JSON body that may be empty (then `T::default()`).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
}

/// `operator:<name>`; names are short and plain so that they read well in the audit log.
fn operator_actor(name: Option<&str>) -> Result<String, ApiError> {
    let name = name.map(str::trim).filter(|n| !n.is_empty()).unwrap_or("admin");
    let plain = name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if !plain {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "operator: at most 64 characters of letters, digits, '-', '_', '.', '@'",
        ));
    }
    Ok(format!("operator:{name}"))
}

fn engine(state: &AppState) -> Result<&Arc<Engine>, ApiError> {
    state.engine.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no GitHub App is configured (ORCH_GITHUB_APP_ID): workflows cannot be acted on",
        )
    })
}

fn approvals_json(tally: Option<&Tally>) -> Value {
    let Some(tally) = tally else { return Value::Null };
    let (decided, approvers) = match tally {
        Tally::Approved { approvers } => ("approved", approvers.clone()),
        Tally::Rejected { .. } => ("rejected", Vec::new()),
        Tally::Pending { approvers, .. } => ("pending", approvers.clone()),
    };
    json!({ "decided": decided, "summary": tally.summary(), "approvers": approvers })
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("not a workflow id: {raw:?}")))
}

// --- Handlers ------------------------------------------------------------------------------

async fn pending(State(state): State<AppState>) -> Answer {
    let pool = state.store.pool();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM workflows WHERE state = $1 ORDER BY id LIMIT 500")
        .bind(WfState::WaitingUserApproval.as_str())
        .fetch_all(pool)
        .await
        .map_err(|e| ApiError::internal("pending: list", e))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(wf) = workflows::get(pool, id).await.map_err(|e| ApiError::internal("pending: get", e))? else {
            continue;
        };
        // The tally needs the policy's approval rules; without GitHub it is left out.
        let tally = match &state.engine {
            Some(engine) => match engine.policy(wf.installation_id, &wf.repository).await {
                Ok(policy) => engine
                    .tally(&wf, &policy)
                    .await
                    .map_err(|e| ApiError::internal("pending: tally", e))?,
                Err(e) => {
                    tracing::warn!(workflow = wf.id, error = %e, "pending: the policy could not be read");
                    None
                }
            },
            None => None,
        };
        out.push(json!({
            "id": wf.id,
            "kind": wf.kind.as_str(),
            "repository": wf.repository,
            "number": wf.number,
            "requested_by": wf.requested_by,
            "proposal_hash": wf.proposal_hash,
            "created_at": wf.created_at,
            "approvals": approvals_json(tally.as_ref()),
        }));
    }
    Ok((StatusCode::OK, Json(json!({ "workflows": out }))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    reason: Option<String>,
    operator: Option<String>,
}

async fn approve(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Answer {
    vote(state, &id, Decision::Approve, &body).await
}

async fn reject(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Answer {
    vote(state, &id, Decision::Reject, &body).await
}

async fn vote(state: AppState, id: &str, decision: Decision, body: &Bytes) -> Answer {
    let id = parse_id(id)?;
    let body: VoteBody = optional_body(body)?;
    let actor = operator_actor(body.operator.as_deref())?;
    let engine = engine(&state)?;
    let wf = workflows::get(state.store.pool(), id)
        .await
        .map_err(|e| ApiError::internal("vote: get", e))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("there is no workflow {id}")))?;
    let not_waiting = || {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("workflow {id} is {}, not WAITING_USER_APPROVAL", wf.state.as_str()),
        )
    };
    if wf.state != WfState::WaitingUserApproval {
        return Err(not_waiting());
    }
    let binding = wf.binding().ok_or_else(not_waiting)?;
    let policy = engine
        .policy(wf.installation_id, &wf.repository)
        .await
        .map_err(|e| ApiError::internal("vote: policy", e))?;
    let now = now_ms();
    let vote = Vote {
        voter: actor.clone(),
        decision,
        source: Source::Api,
        binding,
        reason: body.reason.clone().filter(|r| !r.trim().is_empty()),
        at: now,
    };
    {
        let mut tx = state.store.begin().await.map_err(|e| ApiError::internal("vote: begin", e))?;
        workflows::record_vote(&mut tx, id, &vote, None)
            .await
            .map_err(|e| ApiError::internal("vote: record", e))?;
        let subject = format!("workflow:{id}");
        let entry = audit::Entry::new(
            audit::kind::OPERATOR,
            &actor,
            &subject,
            json!({ "action": decision.as_str(), "reason": vote.reason, "proposal_hash": vote.binding.proposal_hash }),
        );
        audit::append(&mut tx, state.store.backend(), &entry, now)
            .await
            .map_err(|e| ApiError::internal("vote: audit", e))?;
        tx.commit().await.map_err(|e| ApiError::internal("vote: commit", e))?;
    }
    let tally = engine
        .settle(&wf, &policy)
        .await
        .map_err(|e| ApiError::internal("vote: settle", e))?;
    let after = engine.load(id).await.map_err(|e| ApiError::internal("vote: reload", e))?;
    Ok((
        StatusCode::OK,
        Json(json!({ "id": id, "state": after.state.as_str(), "approvals": approvals_json(tally.as_ref()) })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchBody {
    #[serde(alias = "repo")]
    repository: String,
    #[serde(alias = "issueNumber", alias = "prNumber")]
    number: i64,
    #[serde(default, alias = "installationId")]
    installation_id: Option<i64>,
    /// Accepted for compatibility (SPEC §14's `linkedIssue`); the QA plan reads the PR itself.
    #[serde(default, alias = "linkedIssue")]
    linked_issue: Option<i64>,
    #[serde(default)]
    operator: Option<String>,
}

async fn dispatch_triage(State(state): State<AppState>, body: Bytes) -> Answer {
    dispatch(state, Kind::Triage, &body).await
}

async fn dispatch_qa_plan(State(state): State<AppState>, body: Bytes) -> Answer {
    dispatch(state, Kind::QaPlan, &body).await
}

async fn installation_of(state: &AppState, repository: &str) -> Result<Option<i64>, ApiError> {
    sqlx::query_scalar("SELECT installation_id FROM repositories WHERE full_name = $1 AND removed = 0 ORDER BY updated_at DESC LIMIT 1")
        .bind(repository.to_string())
        .fetch_optional(state.store.pool())
        .await
        .map_err(|e| ApiError::internal("dispatch: installation", e))
}

async fn dispatch(state: AppState, kind: Kind, body: &Bytes) -> Answer {
    let body: DispatchBody =
        serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))?;
    let _ = body.linked_issue;
    let repo_ok = body
        .repository
        .split_once('/')
        .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
    if !repo_ok || body.number <= 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "repository must be owner/name and number a positive integer",
        ));
    }
    let actor = operator_actor(body.operator.as_deref())?;
    let engine = engine(&state)?;
    let installation = match body.installation_id {
        Some(i) => i,
        None => installation_of(&state, &body.repository).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("no installation is known for {}: pass installation_id", body.repository),
            )
        })?,
    };
    let policy = engine
        .policy(installation, &body.repository)
        .await
        .map_err(|e| ApiError::internal("dispatch: policy", e))?;
    let (work, action) = match kind {
        Kind::Triage => (Work::Triage, ActionKind::AddLabels),
        Kind::QaPlan => (Work::QaPlan, ActionKind::AddComment),
        Kind::Patch => (Work::Patch, ActionKind::CreatePr),
    };
    if policy.phase < phase_needed(work) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} needs phase {}; {} is at phase {}",
                kind.as_str(),
                phase_needed(work),
                body.repository,
                policy.phase
            ),
        ));
    }
    // Gate 1, as for a command; the operator's token stands for the requester's permission.
    let compiled = engine
        .compiled(&policy)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, format!("the policy does not compile: {e}")))?;
    let mut admission = Admission::for_action(&compiled, action, false);
    admission.signature_valid = true;
    admission.delivery_new = true;
    admission.installation_known = true;
    admission.repository_allowed = true;
    admission.trigger_enabled = true;
    admission.requester_authorized = true;
    admission.phase_needed = admission.phase_needed.min(phase_needed(work));
    admission.breaker_open = guard::breaker(state.store.pool())
        .await
        .map_err(|e| ApiError::internal("dispatch: breaker", e))?
        .is_open;
    admission.tasks_in_run = 0;
    let window_ms = i64::from(policy.policy.limits.dedupe_window_hours) * 3_600_000;
    let history = workflows::list_for_issue(state.store.pool(), &body.repository, body.number)
        .await
        .map_err(|e| ApiError::internal("dispatch: history", e))?;
    admission.duplicate_within_window = history
        .iter()
        .any(|w| w.kind == kind && w.state == WfState::Done && w.instruction.is_none() && w.created_at >= now_ms() - window_ms);
    if let gates::Verdict::Blocked { violations } = gates::gate1(&admission) {
        let lines: Vec<String> = violations.iter().map(|r| r.to_string()).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Gate 1 refused: {}", lines.join("; ")),
        ));
    }
    let head_sha = match kind {
        Kind::QaPlan => Some(
            engine
                .github
                .pull(installation, &body.repository, body.number)
                .await
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("the pull request could not be read: {e}")))?
                .head
                .sha,
        ),
        _ => None,
    };
    let previous: Option<&Workflow> = history.iter().find(|w| w.kind == kind);
    let new = NewWorkflow {
        kind,
        installation_id: installation,
        repository: body.repository.clone(),
        number: body.number,
        requested_by: actor.clone(),
        instruction: None,
        head_sha,
        attempt: previous.map(|p| p.attempt + 1).unwrap_or(1),
        previous_id: previous.map(|p| p.id),
        reason: format!("dispatched by {actor}"),
    };
    let now = now_ms();
    let mut tx = state.store.begin().await.map_err(|e| ApiError::internal("dispatch: begin", e))?;
    let created = workflows::create(&mut tx, new, now)
        .await
        .map_err(|e| ApiError::internal("dispatch: create", e))?;
    let wf = match created {
        Created::New(wf) => wf,
        Created::AlreadyActive(wf) => {
            tx.rollback().await.map_err(|e| ApiError::internal("dispatch: rollback", e))?;
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "a {} workflow is already active on {}#{}: workflow {} is {}",
                    kind.as_str(),
                    wf.repository,
                    wf.number,
                    wf.id,
                    wf.state.as_str()
                ),
            ));
        }
    };
    jobs::enqueue_workflow_job(&mut tx, wf.id, now, now)
        .await
        .map_err(|e| ApiError::internal("dispatch: enqueue", e))?;
    let subject = format!("{}#{}", wf.repository, wf.number);
    let entry = audit::Entry::new(
        audit::kind::OPERATOR,
        &actor,
        &subject,
        json!({ "action": format!("dispatch {}", kind.as_str()), "workflow": wf.id, "installation_id": installation }),
    );
    audit::append(&mut tx, state.store.backend(), &entry, now)
        .await
        .map_err(|e| ApiError::internal("dispatch: audit", e))?;
    tx.commit().await.map_err(|e| ApiError::internal("dispatch: commit", e))?;
    tracing::info!(workflow = wf.id, kind = %kind, repo = %wf.repository, number = wf.number, %actor, "workflow dispatched");
    Ok((StatusCode::CREATED, Json(json!({ "id": wf.id, "state": wf.state.as_str() }))))
}

async fn audit_page(State(state): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Answer {
    let int = |name: &str, default: i64| -> Result<i64, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("{name} must be a non-negative integer"))),
        }
    };
    let after = int("after", 0)?;
    let limit = int("limit", 100)?.clamp(1, audit::PAGE_MAX);
    if let Some(unknown) = query.keys().find(|k| !AUDIT_QUERY.iter().any(|f| f.name == k.as_str())) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown query parameter {unknown:?}"),
        ));
    }
    let filter = Filter {
        kind: query.get("kind").cloned(),
        subject: query.get("subject").cloned(),
        actor: query.get("actor").cloned(),
    };
    let records = audit::page(state.store.pool(), after, limit, &filter)
        .await
        .map_err(|e| ApiError::internal("audit: page", e))?;
    let next = (records.len() as i64 == limit).then(|| records.last().map(|r| r.seq)).flatten();
    Ok((StatusCode::OK, Json(json!({ "records": records, "next": next }))))
}

/// The JSON of a verdict (also what `orch audit verify` means).
pub fn verdict_json(verdict: &Verdict) -> Value {
    match verdict {
        Verdict::Intact { rows, head } => json!({ "intact": true, "rows": rows, "head": head }),
        Verdict::Broken { seq, problem } => json!({ "intact": false, "seq": seq, "problem": problem }),
    }
}

async fn audit_verify(State(state): State<AppState>) -> Answer {
    let verdict = audit::verify(state.store.pool())
        .await
        .map_err(|e| ApiError::internal("audit: verify", e))?;
    Ok((StatusCode::OK, Json(verdict_json(&verdict))))
}

async fn circuit_reset(State(state): State<AppState>, body: Bytes) -> Answer {
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ResetBody {
        operator: Option<String>,
    }
    let body: ResetBody = optional_body(&body)?;
    let actor = operator_actor(body.operator.as_deref())?;
    let now = now_ms();
    let mut tx = state.store.begin().await.map_err(|e| ApiError::internal("reset: begin", e))?;
    let before = guard::breaker(&mut *tx)
        .await
        .map_err(|e| ApiError::internal("reset: breaker", e))?;
    guard::reset(&mut *tx, now)
        .await
        .map_err(|e| ApiError::internal("reset: reset", e))?;
    let entry = audit::Entry::new(
        audit::kind::OPERATOR,
        &actor,
        "circuit_breaker",
        json!({ "action": "reset", "was_open": before.is_open, "failed_tasks": before.failed_tasks, "total_tasks": before.total_tasks }),
    );
    audit::append(&mut tx, state.store.backend(), &entry, now)
        .await
        .map_err(|e| ApiError::internal("reset: audit", e))?;
    tx.commit().await.map_err(|e| ApiError::internal("reset: commit", e))?;
    let b = guard::breaker(state.store.pool())
        .await
        .map_err(|e| ApiError::internal("reset: breaker", e))?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "isOpen": b.is_open,
            "totalTasks": b.total_tasks,
            "failedTasks": b.failed_tasks,
            "totalCostUsd": format!("{:.4}", b.total_cost_usd),
        })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_digest() {
        assert!(same_token("s3cret", "s3cret"));
        assert!(!same_token("s3cret", "s3cre"));
        assert!(!same_token("", "s3cret"));
    }

    #[test]
    fn operator_names_are_plain() {
        assert_eq!(operator_actor(None).unwrap(), "operator:admin");
        assert_eq!(operator_actor(Some("ana")).unwrap(), "operator:ana");
        assert!(operator_actor(Some("a b")).is_err());
    }
}
