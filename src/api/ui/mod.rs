//! The dashboard (SPEC §15): server-rendered pages under `/ui/`, no JavaScript. Every value is
//! escaped ([`html::esc`]). Reading needs a session ([`auth`]); every form carries the
//! session's CSRF token, and a POST without the session cookie or with a missing or wrong token
//! is refused with 403. Logging in takes an operator's token; the session remembers whose, every
//! page says who is logged in, and votes and resets are that operator's: they go through the
//! application service ([`crate::workflow::service::Service`]) into the same approval ledger as
//! `/orch approve` (source `api`, voter `operator:<name>`), audited as `operator` entries. One
//! credential is one voter, whether it votes here or through the admin API.

pub mod auth;
pub mod html;

use super::AppState;
use crate::audit;
use crate::store::workflows::{self, Workflow};
use crate::store::{model_calls, now_ms, Db};
use crate::workflow::approval::{Decision, Tally};
use crate::workflow::guard;
use crate::workflow::service::{Service, VoteError};
use crate::workflow::state::{Kind, State};
use auth::{Session, Sessions};
use axum::extract::{Path, Query, State as Extract};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use html::{csrf_field, esc, page, time, url};
use sqlx::Row;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;
type Sess = Extension<Arc<Sessions>>;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(workflows_page))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/pending", get(pending_page))
        .route("/ui/workflows/{id}", get(workflow_page))
        .route("/ui/workflows/{id}/{decision}", post(vote))
        .route("/ui/audit", get(audit_page))
        .route("/ui/breaker", get(breaker_page))
        .route("/ui/breaker/reset", post(breaker_reset))
        .layer(Extension(Arc::new(Sessions::default())))
}

fn status_page(status: StatusCode, title: &str, session: Option<&Session>, message: &str) -> Response {
    (
        status,
        Html(page(title, session, &format!("<p class=\"error\">{}</p>", esc(message)))),
    )
        .into_response()
}

fn internal(context: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "dashboard: {context}");
    status_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Error",
        None,
        "internal error; see the server log",
    )
}

fn closed() -> Response {
    status_page(
        StatusCode::FORBIDDEN,
        "Dashboard closed",
        None,
        "The dashboard is closed: ORCH_ADMIN_TOKEN is not set.",
    )
}

/// The session of a page request; otherwise the answer to give (the login page).
fn reader(state: &AppState, sessions: &Sessions, headers: &HeaderMap) -> Result<Session, Box<Response>> {
    if state.operators.is_empty() {
        return Err(Box::new(closed()));
    }
    auth::cookie_value(headers)
        .and_then(|id| sessions.get(&id, now_ms()))
        .ok_or_else(|| Box::new(Redirect::to("/ui/login").into_response()))
}

/// The form of a POST whose session and CSRF token check out; otherwise 403.
fn writer(
    state: &AppState,
    sessions: &Sessions,
    headers: &HeaderMap,
    body: &str,
) -> Result<(Session, HashMap<String, String>), Box<Response>> {
    if state.operators.is_empty() {
        return Err(Box::new(closed()));
    }
    let forbidden = |why: &str| Box::new(status_page(StatusCode::FORBIDDEN, "Forbidden", None, why));
    let session = auth::cookie_value(headers)
        .and_then(|id| sessions.get(&id, now_ms()))
        .ok_or_else(|| forbidden("no session: log in first"))?;
    let form = html::form(body);
    if !auth::csrf_matches(&session, form.get("csrf").map(String::as_str)) {
        return Err(forbidden("missing or wrong CSRF token"));
    }
    Ok((session, form))
}

async fn login_page(Extract(state): Extract<AppState>) -> Response {
    if state.operators.is_empty() {
        return closed();
    }
    login_form(StatusCode::OK, None)
}

fn login_form(status: StatusCode, error: Option<&str>) -> Response {
    let error = error.map(|e| format!("<p class=\"error\">{}</p>", esc(e))).unwrap_or_default();
    let body = format!(
        "{error}<form method=\"post\" action=\"/ui/login\"><label>Admin token <input type=\"password\" name=\"token\" \
         autocomplete=\"current-password\" autofocus></label> <button>Log in</button></form>"
    );
    (status, Html(page("Log in", None, &body))).into_response()
}

async fn login(Extract(state): Extract<AppState>, sessions: Sess, body: String) -> Response {
    if state.operators.is_empty() {
        return closed();
    }
    let form = html::form(&body);
    let Some(operator) = form.get("token").and_then(|t| state.operators.identify(t)) else {
        tracing::warn!("dashboard: a login with a wrong token");
        return login_form(StatusCode::FORBIDDEN, Some("Wrong token."));
    };
    tracing::info!(operator, "dashboard: operator logged in");
    let (id, _csrf) = sessions.open(now_ms(), operator);
    let mut r = Redirect::to("/ui/").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::SET_COOKIE, auth::set_cookie(&id).parse().expect("a valid cookie header"));
    r
}

async fn logout(Extract(state): Extract<AppState>, sessions: Sess, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = writer(&state, &sessions, &headers, &body) {
        return *r;
    }
    if let Some(id) = auth::cookie_value(&headers) {
        sessions.close(&id);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::SET_COOKIE, auth::clear_cookie().parse().expect("a valid cookie header"));
    r
}

fn see_other(to: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

/// Workflows newest first, filtered by exact state, kind and repository (at most 200).
async fn list(state: &AppState, filters: &[(&str, Option<&String>)]) -> sqlx::Result<Vec<Workflow>> {
    let mut sql = String::from("SELECT id FROM workflows WHERE 1 = 1");
    let mut values = Vec::new();
    for (column, value) in filters {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            values.push(v.clone());
            let _ = write!(sql, " AND {column} = ${}", values.len());
        }
    }
    sql.push_str(" ORDER BY id DESC LIMIT 200");
    let mut q = sqlx::query::<Db>(&sql);
    for v in values {
        q = q.bind(v);
    }
    let ids: Vec<i64> = q
        .fetch_all(state.store.pool())
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<sqlx::Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(wf) = workflows::get(state.store.pool(), id).await? {
            out.push(wf);
        }
    }
    Ok(out)
}

fn state_badge(s: State) -> String {
    format!("<span class=\"state\" data-state=\"{0}\">{0}</span>", esc(s.as_str()))
}

fn workflow_rows(list: &[Workflow], actions: Option<&str>) -> String {
    let mut out = String::from(
        "<table><tr><th>ID</th><th>Kind</th><th>Repository</th><th>Issue/PR</th><th>State</th><th>Requested by</th>\
         <th>Reason</th><th>Updated (UTC)</th>",
    );
    if actions.is_some() {
        out.push_str("<th>Decide</th>");
    }
    out.push_str("</tr>");
    for wf in list {
        let _ = write!(
            out,
            "<tr><td><a class=\"workflow\" href=\"/ui/workflows/{id}\">#{id}</a></td><td>{}</td><td>{}</td><td>#{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td>",
            esc(wf.kind.as_str()),
            esc(&wf.repository),
            wf.number,
            state_badge(wf.state),
            esc(&wf.requested_by),
            esc(wf.reason.as_deref().unwrap_or("")),
            time(wf.updated_at),
            id = wf.id,
        );
        if let Some(csrf) = actions {
            let _ = write!(out, "<td>{}</td>", vote_forms(wf.id, csrf));
        }
        out.push_str("</tr>");
    }
    if list.is_empty() {
        out.push_str("<tr><td colspan=\"9\">None.</td></tr>");
    }
    out.push_str("</table>");
    out
}

fn vote_forms(id: i64, csrf: &str) -> String {
    let csrf = csrf_field(csrf);
    format!(
        "<form class=\"inline\" method=\"post\" action=\"/ui/workflows/{id}/approve\">{csrf}<button class=\"approve\">Approve</button></form> \
         <form class=\"inline\" method=\"post\" action=\"/ui/workflows/{id}/reject\">{csrf}<input name=\"reason\" placeholder=\"reason (optional)\">\
         <button class=\"reject\">Reject</button></form>"
    )
}

fn options(name: &str, all: &[&str], selected: Option<&String>) -> String {
    let mut out = format!("<select name=\"{name}\"><option value=\"\">any</option>");
    for v in all {
        let sel = if selected.is_some_and(|s| s == v) { " selected" } else { "" };
        let _ = write!(out, "<option{sel}>{}</option>", esc(v));
    }
    out.push_str("</select>");
    out
}

async fn workflows_page(Extract(state): Extract<AppState>, sessions: Sess, headers: HeaderMap, Query(q): Q) -> Response {
    let session = match reader(&state, &sessions, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (st, kind, repo) = (q.get("state"), q.get("kind"), q.get("repo"));
    let list = match list(&state, &[("state", st), ("kind", kind), ("repository", repo)]).await {
        Ok(l) => l,
        Err(e) => return internal("listing workflows", e),
    };
    let states: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let body = format!(
        "<form method=\"get\" action=\"/ui/\">State {} Kind {} Repository <input name=\"repo\" value=\"{}\" placeholder=\"owner/name\"> \
         <button>Filter</button></form>{}",
        options("state", &states, st),
        options("kind", &kinds, kind),
        esc(repo.map(String::as_str).unwrap_or("")),
        workflow_rows(&list, None)
    );
    Html(page("Workflows", Some(&session), &body)).into_response()
}

async fn pending_page(Extract(state): Extract<AppState>, sessions: Sess, headers: HeaderMap) -> Response {
    let session = match reader(&state, &sessions, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let waiting = State::WaitingUserApproval.as_str().to_string();
    let list = match list(&state, &[("state", Some(&waiting))]).await {
        Ok(l) => l,
        Err(e) => return internal("listing pending workflows", e),
    };
    let note = if state.engine.is_none() {
        "<p class=\"error\">No GitHub App is configured: votes cannot be settled from here.</p>"
    } else {
        ""
    };
    let body = format!("{note}{}", workflow_rows(&list, Some(&session.csrf)));
    Html(page("Pending approvals", Some(&session), &body)).into_response()
}

fn notice(key: Option<&String>) -> &'static str {
    match key.map(String::as_str) {
        Some("approved") => "Your approval was recorded; the proposal is approved and is being applied.",
        Some("rejected") => "Your rejection was recorded; the workflow was rejected.",
        Some("pending") => "Your vote was recorded; more approvals are needed.",
        Some("reset") => "The circuit breaker was reset.",
        _ => "",
    }
}

/// The files of a patch proposal, with their new content.
fn patch_files(proposal: &serde_json::Value) -> String {
    let Some(files) = proposal.get("files").and_then(|f| f.as_array()) else {
        return String::new();
    };
    let mut out = String::from("<h2>Files</h2><table><tr><th>Path</th><th>Action</th><th>Lines</th></tr>");
    for f in files {
        let content = f["content"].as_str().unwrap_or("");
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(f["path"].as_str().unwrap_or("?")),
            esc(f["action"].as_str().unwrap_or("?")),
            content.lines().count()
        );
    }
    out.push_str("</table>");
    for f in files {
        let sign = if f["action"] == "delete" { '-' } else { '+' };
        let mut diff = format!("--- {0}\n+++ {0}\n", f["path"].as_str().unwrap_or("?"));
        for line in f["content"].as_str().unwrap_or("").lines() {
            diff.push(sign);
            diff.push_str(line);
            diff.push('\n');
        }
        let _ = write!(out, "<pre class=\"diff\">{}</pre>", esc(&diff));
    }
    out
}

async fn workflow_page(
    Extract(state): Extract<AppState>,
    sessions: Sess,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Q,
) -> Response {
    let session = match reader(&state, &sessions, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let pool = state.store.pool();
    let wf = match workflows::get(pool, id).await {
        Ok(Some(wf)) => wf,
        Ok(None) => return status_page(StatusCode::NOT_FOUND, "Not found", Some(&session), &format!("No workflow {id}.")),
        Err(e) => return internal("reading a workflow", e),
    };
    let subject = format!("workflow:{id}");
    let filter = audit::Filter {
        subject: Some(subject),
        ..Default::default()
    };
    let (transitions, votes, calls, entries) = match tokio::try_join!(
        workflows::transitions(pool, id),
        workflows::votes(pool, id),
        model_calls::for_workflow(pool, id),
        audit::page(pool, 0, audit::PAGE_MAX, &filter),
    ) {
        Ok(v) => v,
        Err(e) => return internal("reading a workflow's history", e),
    };
    let mut b = String::new();
    let note = notice(q.get("notice"));
    if !note.is_empty() {
        let _ = write!(b, "<p class=\"notice\">{}</p>", esc(note));
    }
    let _ = write!(
        b,
        "<table><tr><th>State</th><td id=\"state\">{}</td></tr><tr><th>Kind</th><td>{}</td></tr><tr><th>Repository</th><td>{} #{}</td></tr>\
         <tr><th>Requested by</th><td>{}</td></tr><tr><th>Attempt</th><td>{}</td></tr><tr><th>Reason</th><td>{}</td></tr>\
         <tr><th>Instruction</th><td>{}</td></tr><tr><th>Proposal hash</th><td><code>{}</code></td></tr>\
         <tr><th>Policy version</th><td><code>{}</code></td></tr><tr><th>Head SHA</th><td><code>{}</code></td></tr></table>",
        state_badge(wf.state),
        esc(wf.kind.as_str()),
        esc(&wf.repository),
        wf.number,
        esc(&wf.requested_by),
        wf.attempt,
        esc(wf.reason.as_deref().unwrap_or("")),
        esc(wf.instruction.as_deref().unwrap_or("")),
        esc(wf.proposal_hash.as_deref().unwrap_or("")),
        esc(wf.policy_version.as_deref().unwrap_or("")),
        esc(wf.head_sha.as_deref().unwrap_or("")),
    );
    match crate::store::jobs::workflow_waits_for_github(pool, id, crate::store::now_ms()).await {
        Ok(Some(until)) => {
            let _ = write!(
                b,
                "<p class=\"notice\" id=\"github-wait\">Workflow {id} {}.</p>",
                esc(&crate::workflow::messages::waits_for_github(until))
            );
        }
        Ok(None) => {}
        Err(e) => return internal("reading a workflow's job", e),
    }
    if wf.state == State::WaitingUserApproval {
        let _ = write!(b, "<h2>Decide</h2><p>{}</p>", vote_forms(id, &session.csrf));
    }
    b.push_str("<h2>Transitions</h2><table><tr><th>At (UTC)</th><th>From</th><th>To</th><th>Actor</th><th>Reason</th></tr>");
    for t in &transitions {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(t.at),
            esc(t.from.map(State::as_str).unwrap_or("")),
            esc(t.to.as_str()),
            esc(&t.actor),
            esc(&t.reason)
        );
    }
    b.push_str("</table><h2>Proposal</h2>");
    match wf.proposal.as_deref() {
        Some(raw) => {
            let value: serde_json::Value = serde_json::from_str(raw).unwrap_or(serde_json::Value::String(raw.to_string()));
            let pretty = serde_json::to_string_pretty(&value).unwrap_or_else(|_| raw.to_string());
            let _ = write!(b, "<pre class=\"proposal\">{}</pre>{}", esc(&pretty), patch_files(&value));
        }
        None => b.push_str("<p>No proposal yet.</p>"),
    }
    // The whole diff, nothing cut: the page a check run links to when GitHub's limit cut it.
    if let Ok(Some(diff)) = workflows::proposal_diff(pool, wf.id).await {
        let _ = write!(
            b,
            "<h2 id=\"diff\">Diff (revision <code>{}</code>)</h2><pre class=\"diff\">{}</pre>",
            esc(&wf.proposal_hash.as_deref().unwrap_or_default().chars().take(12).collect::<String>()),
            esc(&diff)
        );
    }
    b.push_str(
        "<h2>Approvals</h2><table><tr><th>At (UTC)</th><th>Voter</th><th>Decision</th><th>Source</th><th>Reason</th><th>Counts</th></tr>",
    );
    let binding = wf.binding();
    for v in &votes {
        let counts = if binding.as_ref() == Some(&v.binding) {
            "yes"
        } else {
            "no (another proposal, head or policy)"
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(v.at),
            esc(&v.voter),
            esc(v.decision.as_str()),
            esc(v.source.as_str()),
            esc(v.reason.as_deref().unwrap_or("")),
            counts
        );
    }
    if votes.is_empty() {
        b.push_str("<tr><td colspan=\"6\">No votes.</td></tr>");
    }
    b.push_str(
        "</table><h2>Model calls</h2><table><tr><th>Started (UTC)</th><th>Task</th><th>Provider / model</th><th>Outcome</th>\
         <th>Tokens in</th><th>Tokens out</th><th>Cost (USD)</th><th>Prompt SHA-256</th></tr>",
    );
    let (mut tin, mut tout, mut cost) = (0, 0, 0.0);
    for c in &calls {
        tin += c.tokens_in;
        tout += c.tokens_out;
        cost += c.cost_usd;
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.6}{}</td><td><code>{}</code></td></tr>",
            time(c.started_at),
            esc(&c.task),
            esc(&c.provider),
            esc(&c.model),
            esc(c.outcome.as_str()),
            c.tokens_in,
            c.tokens_out,
            c.cost_usd,
            if c.price_known { "" } else { " (price unknown)" },
            esc(&c.prompt_sha256[..c.prompt_sha256.len().min(16)])
        );
    }
    let _ = write!(
        b,
        "<tr><th colspan=\"4\">Total</th><th>{tin}</th><th>{tout}</th><th>{cost:.6}</th><th></th></tr></table>"
    );
    b.push_str("<h2>Audit entries</h2>");
    b.push_str(&audit_rows(&entries));
    Html(page(&format!("Workflow #{id}"), Some(&session), &b)).into_response()
}

fn audit_rows(entries: &[audit::Record]) -> String {
    let mut b = String::from(
        "<table><tr><th>Seq</th><th>At (UTC)</th><th>Kind</th><th>Actor</th><th>Subject</th><th>Details</th><th>Hash</th></tr>",
    );
    for e in entries {
        let _ = write!(
            b,
            "<tr class=\"audit-{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            esc(&e.kind),
            e.seq,
            time(e.at),
            esc(&e.kind),
            esc(&e.actor),
            esc(&e.subject),
            esc(&e.details.to_string()),
            esc(&e.hash[..e.hash.len().min(12)])
        );
    }
    if entries.is_empty() {
        b.push_str("<tr><td colspan=\"7\">None.</td></tr>");
    }
    b.push_str("</table>");
    b
}

async fn vote(
    Extract(state): Extract<AppState>,
    sessions: Sess,
    headers: HeaderMap,
    Path((id, decision)): Path<(i64, String)>,
    body: String,
) -> Response {
    let (session, form) = match writer(&state, &sessions, &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let csrf = Some(&session);
    let decision = match decision.as_str() {
        "approve" => Decision::Approve,
        "reject" => Decision::Reject,
        _ => return status_page(StatusCode::NOT_FOUND, "Not found", csrf, "No such action."),
    };
    let Some(engine) = state.engine.clone() else {
        return status_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Cannot vote",
            csrf,
            "No GitHub App is configured (ORCH_GITHUB_APP_ID and a private key): there is no engine to settle the vote.",
        );
    };
    let reason = form.get("reason").map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
    let reason = if decision == Decision::Reject { reason } else { None };
    let voted = Service::new(&engine)
        .operator_vote(&session.operator, id, decision, reason, "dashboard")
        .await;
    let key = match voted {
        Ok(v) => match v.tally {
            Some(Tally::Approved { .. }) => "approved",
            Some(Tally::Rejected { .. }) => "rejected",
            _ => "pending",
        },
        Err(VoteError::NotFound(_)) => return status_page(StatusCode::NOT_FOUND, "Not found", csrf, &format!("No workflow {id}.")),
        Err(VoteError::NotWaiting { state: s, .. }) => {
            let msg = format!("Workflow {id} is {s}: only a workflow waiting for approval takes votes.");
            return status_page(StatusCode::CONFLICT, "Cannot vote", csrf, &msg);
        }
        Err(VoteError::WaitsForGithub { until, .. }) => {
            let msg = format!(
                "The vote was recorded. Settling workflow {id} {}.",
                crate::workflow::messages::waits_for_github(until)
            );
            return status_page(StatusCode::ACCEPTED, "Vote recorded", csrf, &msg);
        }
        Err(VoteError::Settle { source, .. }) => {
            tracing::error!(workflow = id, error = %source, "dashboard: settling after a vote");
            let msg = "The vote was recorded, but settling the workflow failed (see the server log); the worker will settle it later.";
            return status_page(StatusCode::BAD_GATEWAY, "Vote recorded", csrf, msg);
        }
        Err(e) => return internal("recording a dashboard vote", e),
    };
    see_other(&format!("/ui/workflows/{id}?notice={key}"))
}

async fn audit_page(Extract(state): Extract<AppState>, sessions: Sess, headers: HeaderMap, Query(q): Q) -> Response {
    let session = match reader(&state, &sessions, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let pool = state.store.pool();
    let verdict = match audit::verify(pool).await {
        Ok(v) => v,
        Err(e) => return internal("verifying the audit chain", e),
    };
    let last: i64 = match sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM audit_log")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get(0))
    {
        Ok(n) => n,
        Err(e) => return internal("reading the audit log", e),
    };
    const PAGE: i64 = 100;
    let filter = audit::Filter {
        kind: q.get("kind").filter(|v| !v.is_empty()).cloned(),
        subject: q.get("subject").filter(|v| !v.is_empty()).cloned(),
        actor: q.get("actor").filter(|v| !v.is_empty()).cloned(),
    };
    let filtered = filter != audit::Filter::default();
    let after = q
        .get("after")
        .and_then(|a| a.parse::<i64>().ok())
        .unwrap_or(if filtered { 0 } else { (last - PAGE).max(0) });
    let entries = match audit::page(pool, after, PAGE, &filter).await {
        Ok(e) => e,
        Err(e) => return internal("reading the audit log", e),
    };
    let chain = match &verdict {
        audit::Verdict::Intact { rows, head } => format!(
            "<p id=\"chain\" class=\"ok\">Chain intact: {rows} rows, head <code>{}</code></p>",
            esc(head)
        ),
        audit::Verdict::Broken { seq, problem } => {
            format!("<p id=\"chain\" class=\"bad\">Chain BROKEN at seq {seq}: {}</p>", esc(problem))
        }
    };
    let keep = |k: &str| q.get(k).map(|v| format!("&{k}={}", url(v))).unwrap_or_default();
    let keep = format!("{}{}{}", keep("kind"), keep("subject"), keep("actor"));
    let mut nav = String::new();
    if after > 0 {
        let _ = write!(nav, "<a href=\"/ui/audit?after={}{keep}\">Earlier</a> ", (after - PAGE).max(0));
    }
    if let Some(l) = entries.last().filter(|l| l.seq < last) {
        let _ = write!(nav, "<a href=\"/ui/audit?after={}{keep}\">Later</a>", l.seq);
    }
    let field = |k: &str, hint: &str| {
        format!(
            "{k} <input name=\"{k}\" value=\"{}\" placeholder=\"{hint}\"> ",
            esc(q.get(k).map(String::as_str).unwrap_or(""))
        )
    };
    let body = format!(
        "{chain}<form method=\"get\" action=\"/ui/audit\">{}{}{}<button>Filter</button></form><p>{nav}</p>{}<p>{nav}</p>",
        field("kind", "vote"),
        field("subject", "workflow:1"),
        field("actor", "operator:admin"),
        audit_rows(&entries)
    );
    Html(page("Audit log", Some(&session), &body)).into_response()
}

async fn breaker_page(Extract(state): Extract<AppState>, sessions: Sess, headers: HeaderMap, Query(q): Q) -> Response {
    let session = match reader(&state, &sessions, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let b = match guard::breaker(state.store.pool()).await {
        Ok(b) => b,
        Err(e) => return internal("reading the breaker", e),
    };
    let note = notice(q.get("notice"));
    let note = if note.is_empty() {
        String::new()
    } else {
        format!("<p class=\"notice\">{}</p>", esc(note))
    };
    let status = if b.is_open {
        "<span id=\"breaker\" class=\"bad\">OPEN: no model calls are made</span>"
    } else {
        "<span id=\"breaker\" class=\"ok\">closed</span>"
    };
    let body = format!(
        "{note}<table><tr><th>State</th><td>{status}</td></tr><tr><th>Tasks since last closed</th><td>{}</td></tr>\
         <tr><th>Failed tasks</th><td>{}</td></tr><tr><th>Total cost (USD)</th><td>{:.4}</td></tr><tr><th>Opened at (UTC)</th><td>{}</td></tr></table>\
         <form method=\"post\" action=\"/ui/breaker/reset\">{}<button>Reset (close and count afresh)</button></form>",
        b.total_tasks,
        b.failed_tasks,
        b.total_cost_usd,
        b.opened_at.map(time).unwrap_or_default(),
        csrf_field(&session.csrf)
    );
    Html(page("Circuit breaker", Some(&session), &body)).into_response()
}

async fn breaker_reset(Extract(state): Extract<AppState>, sessions: Sess, headers: HeaderMap, body: String) -> Response {
    let session = match writer(&state, &sessions, &headers, &body) {
        Ok((session, _)) => session,
        Err(r) => return *r,
    };
    let actor = format!("operator:{}", session.operator);
    match Service::reset_breaker(&state.store, &actor, "dashboard").await {
        Ok(_) => see_other("/ui/breaker?notice=reset"),
        Err(e) => internal("resetting the breaker", e),
    }
}
