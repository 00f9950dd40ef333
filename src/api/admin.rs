//! The operator API (SPEC §14), behind `Authorization: Bearer <token>` of an operator credential
//! (`ORCH_ADMIN_TOKENS`, or `ORCH_ADMIN_TOKEN` as the operator `admin`).
//!
//! [`ROUTES`] is the single table of the HTTP routes it mounts and documents (see
//! [`super::openapi`]). Every operator action appends an audit entry of kind `operator` with
//! actor `operator:<name>`, the name of the credential that authenticated the request. A body
//! that names an `operator` is refused (400): who acts is the credential, never a claim.
//!
//! Approvals: `POST /approve/{id}` and `POST /reject/{id}` add a vote to the same ledger as
//! commands, reactions and buttons (source `api`, voter `operator:<name>`, bound to the
//! workflow's current proposal) through [`crate::workflow::service::Service`], then settle the
//! workflow by that ledger. A credential counts as one approver toward `approvals.required`,
//! like any GitHub user, however often it votes; Gate 3 still runs before anything is applied.
//! A rejection rejects at once (reject wins).

use super::openapi::{opt, req, Auth, Field, Method, Route, Ty};
use super::{ApiError, AppState};
use crate::audit::{self, Filter, Verdict};
use crate::store::now_ms;
use crate::store::workflows::{self, Created};
use crate::workflow::approval::{Decision, Tally};
use crate::workflow::engine::Engine;
use crate::workflow::service::{Caller, Refusal, Service, Start, VoteError};
use crate::workflow::state::{Kind, State as WfState};
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Answer = Result<(StatusCode, Json<Value>), ApiError>;

// --- Schemas -------------------------------------------------------------------------------

// No body names an operator: the credential does (`operator:<name>`). A body with an
// `operator` field is refused with 400.
const EMPTY_BODY: Ty = Ty::Obj(&[]);
const VOTE_BODY: Ty = Ty::Obj(&[opt("reason", Ty::Str, "why (kept in the ledger and the audit log)")]);
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
    req(
        "requested_by",
        Ty::Str,
        "the requester's login when they asked (display only), or `operator:<name>`",
    ),
    req(
        "requested_by_id",
        Ty::Nullable(&Ty::Int),
        "the requester's GitHub account id, which the self-approval rule compares; null for operators and older workflows",
    ),
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
        summary: "Approve a waiting workflow as the credential's operator (one vote per credential in the approval ledger, source `api`; a body `operator` field is refused)",
        auth: Auth::Admin,
        query: &[],
        body: Some((VOTE_BODY, true)),
        ok: (200, "the vote was recorded and the workflow settled", VOTED),
        errors: &[
            (400, "malformed id or body, or a body that names an `operator`"),
            (404, "no such workflow"),
            (409, "the workflow is not waiting for approval"),
        ],
        handler: Some(|m| on(m, approve)),
    },
    Route {
        method: Method::Post,
        path: "/reject/{id}",
        operation_id: "reject",
        summary: "Reject a waiting workflow as the credential's operator (it fails; nothing is applied)",
        auth: Auth::Admin,
        query: &[],
        body: Some((VOTE_BODY, true)),
        ok: (200, "the vote was recorded and the workflow settled", VOTED),
        errors: &[
            (400, "malformed id or body, or a body that names an `operator`"),
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
            (400, "malformed body, or one that names an `operator`"),
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
            (400, "malformed body, or one that names an `operator`"),
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
        body: Some((EMPTY_BODY, true)),
        ok: (200, "the breaker after the reset", BREAKER),
        errors: &[(400, "malformed body, or one that names an `operator`")],
        handler: Some(|m| on(m, circuit_reset)),
    },
];

// --- Authentication ------------------------------------------------------------------------

/// The operator a request authenticated as: the name of the credential whose token it bore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorName(pub String);

impl OperatorName {
    pub fn actor(&self) -> String {
        format!("operator:{}", self.0)
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The bearer check of every [`Auth::Admin`] route: the token must be an operator credential;
/// the handler learns which operator from the request's [`OperatorName`] extension. An unknown
/// token gets 401 and reaches no handler.
pub async fn require_admin(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if state.operators.is_empty() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "admin API disabled: set ORCH_ADMIN_TOKEN").into_response();
    }
    let given = bearer(request.headers());
    match given.and_then(|t| state.operators.identify(t)) {
        Some(name) => {
            let name = OperatorName(name.to_string());
            request.extensions_mut().insert(name);
            next.run(request).await
        }
        None => {
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

/// A body may not say who acts: the credential does. Refused rather than ignored, so that a
/// script that believes it votes as someone else learns that it does not.
fn refuse_claimed_operator(body: &Bytes) -> Result<(), ApiError> {
    let claims = serde_json::from_slice::<Value>(body)
        .ok()
        .is_some_and(|v| v.get("operator").is_some());
    if claims {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "operator: the acting operator is the name of the bearer token's credential (ORCH_ADMIN_TOKENS); a body may not name one",
        ));
    }
    Ok(())
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
            "requested_by_id": wf.requested_by_id,
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
}

async fn approve(State(state): State<AppState>, Extension(op): Extension<OperatorName>, Path(id): Path<String>, body: Bytes) -> Answer {
    vote(state, &op, &id, Decision::Approve, &body).await
}

async fn reject(State(state): State<AppState>, Extension(op): Extension<OperatorName>, Path(id): Path<String>, body: Bytes) -> Answer {
    vote(state, &op, &id, Decision::Reject, &body).await
}

async fn vote(state: AppState, op: &OperatorName, id: &str, decision: Decision, body: &Bytes) -> Answer {
    let id = parse_id(id)?;
    refuse_claimed_operator(body)?;
    let body: VoteBody = optional_body(body)?;
    let engine = engine(&state)?;
    let voted = Service::new(engine)
        .operator_vote(&op.0, id, decision, body.reason, "api")
        .await
        .map_err(|e| match e {
            VoteError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            VoteError::NotWaiting { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            VoteError::WaitsForGithub { .. } => ApiError::new(StatusCode::ACCEPTED, e.to_string()),
            e => ApiError::internal("vote", e),
        })?;
    Ok((
        StatusCode::OK,
        Json(json!({ "id": id, "state": voted.state.as_str(), "approvals": approvals_json(voted.tally.as_ref()) })),
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
}

async fn dispatch_triage(State(state): State<AppState>, Extension(op): Extension<OperatorName>, body: Bytes) -> Answer {
    dispatch(state, &op, Kind::Triage, &body).await
}

async fn dispatch_qa_plan(State(state): State<AppState>, Extension(op): Extension<OperatorName>, body: Bytes) -> Answer {
    dispatch(state, &op, Kind::QaPlan, &body).await
}

async fn installation_of(state: &AppState, repository: &str) -> Result<Option<i64>, ApiError> {
    sqlx::query_scalar("SELECT installation_id FROM repositories WHERE full_name = $1 AND removed = 0 ORDER BY updated_at DESC LIMIT 1")
        .bind(repository.to_string())
        .fetch_optional(state.store.pool())
        .await
        .map_err(|e| ApiError::internal("dispatch: installation", e))
}

async fn dispatch(state: AppState, op: &OperatorName, kind: Kind, body: &Bytes) -> Answer {
    refuse_claimed_operator(body)?;
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
    let actor = op.actor();
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
    let caller = Caller::Operator(op.0.clone());
    let req = Start {
        installation,
        repo: &body.repository,
        number: body.number,
        kind,
        requester: &caller,
        instruction: None,
        head_sha: None,
        how: "dispatched",
        retry: false,
        tasks_before: 0,
    };
    let service = Service::new(engine);
    // Gate 1, as for a command; the operator's credential stands for the requester's permission.
    let admitted = service
        .admit(&req, &policy)
        .await
        .map_err(|e| ApiError::internal("dispatch: admission", e))?;
    let mut new = match admitted {
        Ok(new) => new,
        Err(Refusal::Phase { needed, phase }) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{} needs phase {needed}; {} is at phase {phase}", kind.as_str(), body.repository),
            ))
        }
        Err(Refusal::Policy(e)) => return Err(ApiError::new(StatusCode::FORBIDDEN, format!("the policy does not compile: {e}"))),
        Err(Refusal::Model(text)) => return Err(ApiError::new(StatusCode::FORBIDDEN, text)),
        Err(Refusal::Gate1(lines)) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Gate 1 refused: {}", lines.join("; ")),
            ))
        }
        Err(Refusal::Denied { permission }) => return Err(ApiError::new(StatusCode::FORBIDDEN, format!("not authorized ({permission})"))),
    };
    if kind == Kind::QaPlan {
        let head = engine
            .github
            .pull(installation, &body.repository, body.number)
            .await
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("the pull request could not be read: {e}")))?
            .head
            .sha;
        new.head_sha = Some(head);
    }
    let now = now_ms();
    let mut tx = state.store.begin().await.map_err(|e| ApiError::internal("dispatch: begin", e))?;
    let created = Service::create(&mut tx, new, now)
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

async fn circuit_reset(State(state): State<AppState>, Extension(op): Extension<OperatorName>, body: Bytes) -> Answer {
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ResetBody {}
    refuse_claimed_operator(&body)?;
    let _: ResetBody = optional_body(&body)?;
    let b = Service::reset_breaker(&state.store, &op.actor(), "api")
        .await
        .map_err(|e| ApiError::internal("reset", e))?;
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
