//! A stateful fake GitHub served over real HTTP, for tests and the demo: it keeps issue comments
//! per repository, checks the App JWT and installation tokens the way GitHub does, answers with
//! GitHub's status codes and headers, validates request bodies, and injects faults on request.
//! It grows with the operations orch uses.

// Handlers short-circuit with the ready HTTP answer GitHub would give; boxing those answers
// would buy nothing in a test double.
#![allow(clippy::result_large_err)]

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a fault does to a matching request.
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer with this status (and `Retry-After` seconds, if given) without applying anything.
    Status { code: u16, retry_after: Option<u64> },
    /// Apply the request, then wait this long before answering: with a shorter client timeout,
    /// the change is made and its answer lost.
    ApplyThenStall(Duration),
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Method,
    /// Matches when the request path contains this.
    pub path_contains: String,
    /// How many matching requests it affects.
    pub times: u32,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FakeComment {
    pub id: i64,
    pub body: String,
    pub author: String,
}

#[derive(Default)]
struct Model {
    /// Installation tokens: token → (installation, expiry unix seconds).
    tokens: HashMap<String, (i64, u64)>,
    /// (owner/repo, issue number) → comments.
    comments: BTreeMap<(String, i64), Vec<FakeComment>>,
    /// (owner/repo, issue number) → labels.
    labels: BTreeMap<(String, i64), Vec<String>>,
    /// (owner/repo, login) → permission.
    permissions: HashMap<(String, String), String>,
    check_runs: BTreeMap<i64, FakeCheckRun>,
    /// comment id → reactions as (id, content, login, user type).
    reactions: BTreeMap<i64, Vec<(i64, String, String, String)>>,
    /// (owner/repo, path) → text on the default branch.
    files: HashMap<(String, String), String>,
    /// Authenticated requests that count against the rate limit (a 304 does not).
    rate_used: u64,
    /// While set and in the future, the primary rate limit is used up until then (unix seconds).
    rate_reset_at: Option<u64>,
    git: Git,
    faults: Vec<Fault>,
    /// Every request: (method, path).
    log: Vec<(String, String)>,
    /// Every JSON body received: (method, path, body), for checks against GitHub's description.
    bodies: Vec<(String, String, serde_json::Value)>,
}

/// Git objects, content-addressed, and refs and pull requests per repository. Trees are kept
/// flat (full path → blob), which is all orch's use of the Git Data API needs.
#[derive(Default)]
struct Git {
    blobs: HashMap<String, String>,
    trees: HashMap<String, BTreeMap<String, String>>,
    /// sha → (tree, parents, message)
    commits: HashMap<String, (String, Vec<String>, String)>,
    /// (owner/repo, "heads/main") → commit
    refs: BTreeMap<(String, String), String>,
    /// (owner/repo, number) → pull request
    pulls: BTreeMap<(String, i64), FakePull>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FakePull {
    pub number: i64,
    pub title: String,
    pub head: String,
    pub base: String,
    pub body: String,
}

fn object_sha(kind: &str, content: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{kind}\0{content}")))[..40].to_string()
}

impl Git {
    fn blob(&mut self, content: &str) -> String {
        let sha = object_sha("blob", content);
        self.blobs.insert(sha.clone(), content.to_string());
        sha
    }

    fn tree(&mut self, entries: BTreeMap<String, String>) -> String {
        let sha = object_sha("tree", &serde_json::to_string(&entries).expect("strings"));
        self.trees.insert(sha.clone(), entries);
        sha
    }

    fn commit(&mut self, tree: &str, parents: Vec<String>, message: &str) -> String {
        let sha = object_sha("commit", &format!("{tree}|{}|{message}", parents.join(",")));
        self.commits.insert(sha.clone(), (tree.to_string(), parents, message.to_string()));
        sha
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FakeCheckRun {
    pub id: i64,
    pub repo: String,
    pub name: String,
    pub head_sha: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub summary: String,
    pub text: Option<String>,
    pub annotations: Vec<serde_json::Value>,
    pub actions: Vec<serde_json::Value>,
    /// Annotations received per request, in order.
    pub annotation_batches: Vec<usize>,
}

pub struct FakeState {
    app_id: u64,
    public_key: DecodingKey,
    token_lifetime: Duration,
    next_id: AtomicI64,
    model: Mutex<Model>,
}

/// A running fake GitHub.
pub struct FakeGithub {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn format_timestamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    let h = r.headers_mut();
    h.insert("x-github-request-id", HeaderValue::from_static("FAKE:0001"));
    h.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
    h.insert("x-ratelimit-remaining", HeaderValue::from_static("4999"));
    r
}

fn message(status: StatusCode, text: &str) -> Response {
    answer(
        status,
        json!({ "message": text, "documentation_url": "https://docs.github.com/rest" }),
    )
}

impl FakeState {
    /// Records the request and takes the fault that applies to it, if any.
    fn arrive(&self, method: &Method, path: &str) -> Option<FaultKind> {
        let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        m.log.push((method.to_string(), path.to_string()));
        let i = m
            .faults
            .iter()
            .position(|f| f.method == *method && path.contains(&f.path_contains) && f.times > 0)?;
        m.faults[i].times -= 1;
        let kind = m.faults[i].kind.clone();
        if m.faults[i].times == 0 {
            m.faults.remove(i);
        }
        Some(kind)
    }

    /// The installation a request's token belongs to, or the message of the 401 GitHub would give.
    fn installation(&self, headers: &HeaderMap) -> Result<i64, &'static str> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("token ")))
            .ok_or("Requires authentication")?;
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        match m.tokens.get(token) {
            Some((installation, expiry)) if *expiry > unix_now() => Ok(*installation),
            _ => Err("Bad credentials"),
        }
    }

    pub fn inject(&self, fault: Fault) {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).faults.push(fault);
    }

    /// Comments of an issue as the fake holds them.
    pub fn comments(&self, repo: &str, issue: i64) -> Vec<FakeComment> {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        m.comments.get(&(repo.to_string(), issue)).cloned().unwrap_or_default()
    }

    fn record_body(&self, method: &Method, path: &str, body: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
            m.bodies.push((method.to_string(), path.to_string(), v));
        }
    }

    /// JSON bodies received, as (method, path, body).
    pub fn bodies(&self) -> Vec<(String, String, serde_json::Value)> {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).bodies.clone()
    }

    /// Requests received, as (method, path).
    pub fn log(&self) -> Vec<(String, String)> {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).log.clone()
    }

    pub fn labels(&self, repo: &str, issue: i64) -> Vec<String> {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        m.labels.get(&(repo.to_string(), issue)).cloned().unwrap_or_default()
    }

    pub fn set_permission(&self, repo: &str, login: &str, permission: &str) {
        let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        m.permissions.insert((repo.to_string(), login.to_string()), permission.to_string());
    }

    /// A user reacts on GitHub (there is no webhook for it; orch polls).
    pub fn react(&self, comment_id: i64, login: &str, user_type: &str, content: &str) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        m.reactions
            .entry(comment_id)
            .or_default()
            .push((id, content.to_string(), login.to_string(), user_type.to_string()));
    }

    pub fn set_file(&self, repo: &str, path: &str, text: &str) {
        let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        m.files.insert((repo.to_string(), path.to_string()), text.to_string());
    }

    /// Creates `repo` with one commit holding `files` on `branch`; returns the commit.
    pub fn init_repo(&self, repo: &str, branch: &str, files: &[(&str, &str)]) -> String {
        let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let entries = files.iter().map(|(path, text)| (path.to_string(), m.git.blob(text))).collect();
        let tree = m.git.tree(entries);
        let commit = m.git.commit(&tree, vec![], "initial");
        m.git.refs.insert((repo.to_string(), format!("heads/{branch}")), commit.clone());
        commit
    }

    /// A commit on top of `branch` that sets or (with None) deletes files, as a push would.
    pub fn push(&self, repo: &str, branch: &str, changes: &[(&str, Option<&str>)]) -> String {
        let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let head = m.git.refs[&(repo.to_string(), format!("heads/{branch}"))].clone();
        let mut entries = m.git.trees[&m.git.commits[&head].0].clone();
        for (path, text) in changes {
            match text {
                Some(t) => {
                    let blob = m.git.blob(t);
                    entries.insert(path.to_string(), blob);
                }
                None => {
                    entries.remove(*path);
                }
            }
        }
        let tree = m.git.tree(entries);
        let commit = m.git.commit(&tree, vec![head], "push");
        m.git.refs.insert((repo.to_string(), format!("heads/{branch}")), commit.clone());
        commit
    }

    /// The files at the tip of `branch`, path → text; None when there is no such branch.
    pub fn files_at(&self, repo: &str, branch: &str) -> Option<BTreeMap<String, String>> {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let head = m.git.refs.get(&(repo.to_string(), format!("heads/{branch}")))?;
        let tree = &m.git.trees[&m.git.commits[head].0];
        Some(tree.iter().map(|(p, b)| (p.clone(), m.git.blobs[b].clone())).collect())
    }

    /// The parents and message of a branch's tip commit.
    pub fn tip(&self, repo: &str, branch: &str) -> Option<(Vec<String>, String)> {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let head = m.git.refs.get(&(repo.to_string(), format!("heads/{branch}")))?;
        let (_, parents, message) = &m.git.commits[head];
        Some((parents.clone(), message.clone()))
    }

    pub fn pulls(&self, repo: &str) -> Vec<FakePull> {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        m.git.pulls.iter().filter(|((r, _), _)| r == repo).map(|(_, p)| p.clone()).collect()
    }

    /// Uses up the primary rate limit until `for_` from now (rounded up to whole seconds, as
    /// GitHub's reset is).
    pub fn exhaust_rate_limit(&self, for_: Duration) {
        let reset = unix_now() + for_.as_secs_f64().ceil() as u64;
        self.model.lock().unwrap_or_else(|p| p.into_inner()).rate_reset_at = Some(reset);
    }

    /// Requests counted against the rate limit so far.
    pub fn rate_used(&self) -> u64 {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).rate_used
    }

    pub fn check_run(&self, id: i64) -> Option<FakeCheckRun> {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).check_runs.get(&id).cloned()
    }

    /// Expires every installation token now (as if GitHub revoked them).
    pub fn revoke_tokens(&self) {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).tokens.clear();
    }
}

async fn stall_or_status(kind: Option<FaultKind>) -> Result<Option<Duration>, Response> {
    match kind {
        None => Ok(None),
        Some(FaultKind::Status { code, retry_after }) => {
            let mut r = message(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "injected fault",
            );
            if let Some(secs) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from(secs));
            }
            Err(r)
        }
        Some(FaultKind::ApplyThenStall(d)) => Ok(Some(d)),
    }
}

async fn access_tokens(State(s): State<Arc<FakeState>>, Path(installation): Path<i64>, headers: HeaderMap) -> Response {
    if let Err(r) = stall_or_status(s.arrive(&Method::POST, &format!("/app/installations/{installation}/access_tokens"))).await {
        return r;
    }
    let Some(jwt) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return message(StatusCode::UNAUTHORIZED, "A JSON web token could not be decoded");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[s.app_id.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<super::auth::AppClaims>(jwt, &s.public_key, &validation) {
        Ok(d) => d.claims,
        Err(e) => return message(StatusCode::UNAUTHORIZED, &format!("A JSON web token could not be decoded: {e}")),
    };
    if claims.exp.saturating_sub(claims.iat) > 600 || claims.iat > unix_now() {
        return message(StatusCode::UNAUTHORIZED, "'Expiration time' claim ('exp') is too far in the future");
    }
    let mut random = [0u8; 16];
    getrandom::getrandom(&mut random).expect("system randomness");
    let token = format!("ghs_{}", hex::encode(random));
    let expires = unix_now() + s.token_lifetime.as_secs();
    s.model
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .tokens
        .insert(token.clone(), (installation, expires));
    answer(
        StatusCode::CREATED,
        json!({ "token": token, "expires_at": format_timestamp(expires) }),
    )
}

#[derive(serde::Deserialize)]
struct Paging {
    per_page: Option<usize>,
    page: Option<usize>,
}

async fn list_comments(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, issue)): Path<(String, String, i64)>,
    Query(paging): Query<Paging>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&s, Method::GET, &format!("/repos/{owner}/{repo}/issues/{issue}/comments"), &headers).await {
        return r;
    }
    let per_page = paging.per_page.unwrap_or(30).clamp(1, 100);
    let page = paging.page.unwrap_or(1).max(1);
    let all = s.comments(&format!("{owner}/{repo}"), issue);
    let items: Vec<_> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|c| json!({ "id": c.id, "body": c.body, "user": { "login": c.author, "type": "Bot" } }))
        .collect();
    answer(StatusCode::OK, json!(items))
}

async fn create_comment(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, issue)): Path<(String, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.record_body(&Method::POST, &format!("/repos/{owner}/{repo}/issues/{issue}/comments"), &body);
    let stall = match admit(
        &s,
        Method::POST,
        &format!("/repos/{owner}/{repo}/issues/{issue}/comments"),
        &headers,
    )
    .await
    {
        Ok(stall) => stall,
        Err(r) => return r,
    };
    // The reference description: an object with a required string `body`, nothing else.
    let text = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(o)) if o.len() == 1 => match o.get("body") {
            Some(serde_json::Value::String(t)) => t.clone(),
            _ => return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: `body` must be a string"),
        },
        Ok(_) => return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: expected an object with `body`"),
        Err(_) => return message(StatusCode::BAD_REQUEST, "Problems parsing JSON"),
    };
    if text.chars().count() > super::actions::COMMENT_LIMIT {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: body is too long (maximum is 65536 characters)",
        );
    }
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let comment = FakeComment {
        id,
        body: text,
        author: "orch[bot]".into(),
    };
    s.model
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .comments
        .entry((format!("{owner}/{repo}"), issue))
        .or_default()
        .push(comment.clone());
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    answer(
        StatusCode::CREATED,
        json!({ "id": comment.id, "body": comment.body, "user": { "login": comment.author, "type": "Bot" } }),
    )
}

/// The checks every label, permission and check-run handler starts with: record, faults, token.
async fn admit(s: &FakeState, method: Method, path: &str, headers: &HeaderMap) -> Result<Option<Duration>, Response> {
    let stall = stall_or_status(s.arrive(&method, path)).await?;
    s.installation(headers).map_err(|text| message(StatusCode::UNAUTHORIZED, text))?;
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(reset) = m.rate_reset_at {
        if unix_now() < reset {
            drop(m);
            let mut r = message(StatusCode::FORBIDDEN, "API rate limit exceeded for installation.");
            r.headers_mut().insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            r.headers_mut().insert("x-ratelimit-reset", HeaderValue::from(reset));
            return Err(r);
        }
        m.rate_reset_at = None;
    }
    m.rate_used += 1;
    Ok(stall)
}

fn labels_json(labels: &[String]) -> serde_json::Value {
    json!(labels.iter().map(|l| json!({ "name": l })).collect::<Vec<_>>())
}

async fn list_labels(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, issue)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&s, Method::GET, &format!("/repos/{owner}/{repo}/issues/{issue}/labels"), &headers).await {
        return r;
    }
    answer(StatusCode::OK, labels_json(&s.labels(&format!("{owner}/{repo}"), issue)))
}

async fn add_labels(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, issue)): Path<(String, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.record_body(&Method::POST, &format!("/repos/{owner}/{repo}/issues/{issue}/labels"), &body);
    if let Err(r) = admit(&s, Method::POST, &format!("/repos/{owner}/{repo}/issues/{issue}/labels"), &headers).await {
        return r;
    }
    let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request: expected an object with `labels`",
        );
    };
    let Some(serde_json::Value::Array(new)) = o.get("labels") else {
        return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: `labels` must be an array");
    };
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let labels = m.labels.entry((format!("{owner}/{repo}"), issue)).or_default();
    for l in new {
        let Some(name) = l.as_str() else {
            return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: labels must be strings");
        };
        if !labels.iter().any(|x| x == name) {
            labels.push(name.to_string());
        }
    }
    let all = labels.clone();
    drop(m);
    answer(StatusCode::OK, labels_json(&all))
}

async fn remove_label(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, issue, name)): Path<(String, String, i64, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(
        &s,
        Method::DELETE,
        &format!("/repos/{owner}/{repo}/issues/{issue}/labels/{name}"),
        &headers,
    )
    .await
    {
        return r;
    }
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let labels = m.labels.entry((format!("{owner}/{repo}"), issue)).or_default();
    let Some(i) = labels.iter().position(|l| *l == name) else {
        return message(StatusCode::NOT_FOUND, "Label does not exist");
    };
    labels.remove(i);
    let all = labels.clone();
    drop(m);
    answer(StatusCode::OK, labels_json(&all))
}

async fn permission(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, login)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(
        &s,
        Method::GET,
        &format!("/repos/{owner}/{repo}/collaborators/{login}/permission"),
        &headers,
    )
    .await
    {
        return r;
    }
    let m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    match m.permissions.get(&(format!("{owner}/{repo}"), login.clone())) {
        Some(p) => answer(StatusCode::OK, json!({ "permission": p, "user": { "login": login } })),
        None => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// GitHub's limits on a check run's output and buttons; the first broken one, if any.
fn check_run_problem(body: &serde_json::Value) -> Option<String> {
    let text_len = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(|t| t.chars().count()).unwrap_or(0);
    if let Some(output) = body.get("output") {
        if !output.is_object() {
            return Some("`output` must be an object".into());
        }
        if text_len(output.get("summary")) > 65_535 || text_len(output.get("text")) > 65_535 {
            return Some("output summary and text are limited to 65535 characters".into());
        }
        if output.get("annotations").and_then(|a| a.as_array()).is_some_and(|a| a.len() > 50) {
            return Some("at most 50 annotations per request".into());
        }
    }
    if let Some(actions) = body.get("actions") {
        let Some(actions) = actions.as_array() else {
            return Some("`actions` must be an array".into());
        };
        if actions.len() > 3 {
            return Some("at most 3 actions".into());
        }
        for a in actions {
            if text_len(a.get("label")) > 20 || text_len(a.get("identifier")) > 20 || text_len(a.get("description")) > 40 {
                return Some("action label, identifier or description too long".into());
            }
        }
    }
    None
}

async fn create_check_run(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.record_body(&Method::POST, &format!("/repos/{owner}/{repo}/check-runs"), &body);
    let stall = match admit(&s, Method::POST, &format!("/repos/{owner}/{repo}/check-runs"), &headers).await {
        Ok(stall) => stall,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return message(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    let (Some(name), Some(head_sha)) = (
        body.get("name").and_then(|v| v.as_str()),
        body.get("head_sha").and_then(|v| v.as_str()),
    ) else {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request: `name` and `head_sha` are required",
        );
    };
    if let Some(problem) = check_run_problem(&body) {
        return message(StatusCode::UNPROCESSABLE_ENTITY, &format!("Invalid request: {problem}"));
    }
    let output = body.get("output").cloned().unwrap_or_default();
    let annotations: Vec<serde_json::Value> = output.get("annotations").and_then(|a| a.as_array()).cloned().unwrap_or_default();
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let run = FakeCheckRun {
        id,
        repo: format!("{owner}/{repo}"),
        name: name.to_string(),
        head_sha: head_sha.to_string(),
        status: body.get("status").and_then(|v| v.as_str()).unwrap_or("queued").to_string(),
        conclusion: body.get("conclusion").and_then(|v| v.as_str()).map(str::to_string),
        summary: output.get("summary").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
        text: output.get("text").and_then(|v| v.as_str()).map(str::to_string),
        annotation_batches: vec![annotations.len()],
        annotations,
        actions: body.get("actions").and_then(|a| a.as_array()).cloned().unwrap_or_default(),
    };
    s.model.lock().unwrap_or_else(|p| p.into_inner()).check_runs.insert(id, run);
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    answer(StatusCode::CREATED, json!({ "id": id, "name": name, "head_sha": head_sha }))
}

async fn update_check_run(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, id)): Path<(String, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.record_body(&Method::PATCH, &format!("/repos/{owner}/{repo}/check-runs/{id}"), &body);
    if let Err(r) = admit(&s, Method::PATCH, &format!("/repos/{owner}/{repo}/check-runs/{id}"), &headers).await {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return message(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    if let Some(problem) = check_run_problem(&body) {
        return message(StatusCode::UNPROCESSABLE_ENTITY, &format!("Invalid request: {problem}"));
    }
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let Some(run) = m.check_runs.get_mut(&id) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Some(output) = body.get("output") {
        let more: Vec<serde_json::Value> = output.get("annotations").and_then(|a| a.as_array()).cloned().unwrap_or_default();
        run.annotation_batches.push(more.len());
        run.annotations.extend(more);
        if let Some(summary) = output.get("summary").and_then(|v| v.as_str()) {
            run.summary = summary.to_string();
        }
    }
    if let Some(status) = body.get("status").and_then(|v| v.as_str()) {
        run.status = status.to_string();
    }
    if let Some(conclusion) = body.get("conclusion").and_then(|v| v.as_str()) {
        run.conclusion = Some(conclusion.to_string());
    }
    answer(StatusCode::OK, json!({ "id": id }))
}

async fn check_runs_for_ref(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, git_ref)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(
        &s,
        Method::GET,
        &format!("/repos/{owner}/{repo}/commits/{git_ref}/check-runs"),
        &headers,
    )
    .await
    {
        return r;
    }
    let m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let full = format!("{owner}/{repo}");
    let runs: Vec<serde_json::Value> = m
        .check_runs
        .values()
        .rev()
        .filter(|r| r.repo == full && r.head_sha == git_ref)
        .map(|r| {
            json!({ "id": r.id, "name": r.name, "head_sha": r.head_sha, "status": r.status, "conclusion": r.conclusion,
                    "output": { "summary": r.summary, "text": r.text, "annotations_count": r.annotations.len() } })
        })
        .collect();
    answer(StatusCode::OK, json!({ "total_count": runs.len(), "check_runs": runs }))
}

async fn update_comment(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, comment)): Path<(String, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.record_body(&Method::PATCH, &format!("/repos/{owner}/{repo}/issues/comments/{comment}"), &body);
    if let Err(r) = admit(
        &s,
        Method::PATCH,
        &format!("/repos/{owner}/{repo}/issues/comments/{comment}"),
        &headers,
    )
    .await
    {
        return r;
    }
    let text = match serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("body").and_then(|b| b.as_str()).map(str::to_string))
    {
        Some(t) if t.chars().count() <= super::actions::COMMENT_LIMIT => t,
        Some(_) => {
            return message(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation Failed: body is too long (maximum is 65536 characters)",
            )
        }
        None => return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request: `body` must be a string"),
    };
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let full = format!("{owner}/{repo}");
    let found = m
        .comments
        .iter_mut()
        .filter(|((r, _), _)| *r == full)
        .flat_map(|(_, list)| list.iter_mut())
        .find(|c| c.id == comment);
    match found {
        Some(c) => {
            c.body = text;
            let c = c.clone();
            drop(m);
            answer(
                StatusCode::OK,
                json!({ "id": c.id, "body": c.body, "user": { "login": c.author, "type": "Bot" } }),
            )
        }
        None => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn json_body(body: &[u8]) -> Result<serde_json::Value, Response> {
    serde_json::from_slice(body).map_err(|_| message(StatusCode::BAD_REQUEST, "Problems parsing JSON"))
}

async fn get_ref(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, git_ref)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&s, Method::GET, &format!("/repos/{owner}/{repo}/git/ref/{git_ref}"), &headers).await {
        return r;
    }
    let m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    match m.git.refs.get(&(format!("{owner}/{repo}"), git_ref.clone())) {
        Some(sha) => answer(
            StatusCode::OK,
            json!({ "ref": format!("refs/{git_ref}"), "object": { "sha": sha, "type": "commit" } }),
        ),
        None => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn get_commit(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&s, Method::GET, &format!("/repos/{owner}/{repo}/git/commits/{sha}"), &headers).await {
        return r;
    }
    let m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    match m.git.commits.get(&sha) {
        Some((tree, parents, msg)) => answer(
            StatusCode::OK,
            json!({ "sha": sha, "tree": { "sha": tree }, "message": msg, "parents": parents.iter().map(|p| json!({ "sha": p })).collect::<Vec<_>>() }),
        ),
        None => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// The part of a Git Data write done under the model's lock.
fn apply_git_write(s: &FakeState, full: &str, kind: &str, body: &serde_json::Value) -> Result<serde_json::Value, Response> {
    let refuse = |text: &str| Err(message(StatusCode::UNPROCESSABLE_ENTITY, text));
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    match kind {
        "blobs" => match body.get("content").and_then(|c| c.as_str()) {
            Some(content) => Ok(json!({ "sha": m.git.blob(content) })),
            None => refuse("Invalid request: `content` is required"),
        },
        "trees" => {
            let mut entries = match body.get("base_tree").and_then(|b| b.as_str()) {
                Some(base) => match m.git.trees.get(base) {
                    Some(t) => t.clone(),
                    None => return refuse("base_tree is not a valid tree"),
                },
                None => BTreeMap::new(),
            };
            for entry in body.get("tree").and_then(|t| t.as_array()).into_iter().flatten() {
                let Some(path) = entry.get("path").and_then(|p| p.as_str()) else {
                    return refuse("tree entries need a path");
                };
                match entry.get("sha") {
                    Some(serde_json::Value::Null) => {
                        entries.remove(path);
                    }
                    Some(serde_json::Value::String(sha)) if m.git.blobs.contains_key(sha) => {
                        entries.insert(path.to_string(), sha.clone());
                    }
                    _ => return refuse(&format!("tree entry {path}: not a valid blob sha")),
                }
            }
            Ok(json!({ "sha": m.git.tree(entries) }))
        }
        "commits" => {
            let tree = body.get("tree").and_then(|t| t.as_str()).unwrap_or_default().to_string();
            if !m.git.trees.contains_key(&tree) {
                return refuse("tree is not a valid tree");
            }
            let parents: Vec<String> = body
                .get("parents")
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            if parents.iter().any(|p| !m.git.commits.contains_key(p)) {
                return refuse("parents must be commits");
            }
            let msg = body.get("message").and_then(|t| t.as_str()).unwrap_or_default().to_string();
            Ok(json!({ "sha": m.git.commit(&tree, parents, &msg) }))
        }
        "refs" => {
            let (Some(name), Some(sha)) = (body.get("ref").and_then(|r| r.as_str()), body.get("sha").and_then(|r| r.as_str())) else {
                return refuse("Invalid request: `ref` and `sha` are required");
            };
            let Some(short) = name.strip_prefix("refs/") else {
                return refuse("Reference name must start with refs/");
            };
            if !m.git.commits.contains_key(sha) {
                return refuse("Object does not exist");
            }
            let key = (full.to_string(), short.to_string());
            if m.git.refs.contains_key(&key) {
                return refuse("Reference already exists");
            }
            m.git.refs.insert(key, sha.to_string());
            Ok(json!({ "ref": name, "object": { "sha": sha, "type": "commit" } }))
        }
        _ => Err(message(StatusCode::NOT_FOUND, "Not Found")),
    }
}

async fn git_write(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, kind)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/git/{kind}");
    s.record_body(&Method::POST, &path, &body);
    let stall = match admit(&s, Method::POST, &path, &headers).await {
        Ok(stall) => stall,
        Err(r) => return r,
    };
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let created = match apply_git_write(&s, &format!("{owner}/{repo}"), &kind, &body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    answer(StatusCode::CREATED, created)
}

/// Opens a pull request under the model's lock; its number, or GitHub's refusal.
fn apply_pull(s: &FakeState, owner: &str, repo: &str, body: &serde_json::Value) -> Result<i64, Response> {
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (head, base) = (text("head"), text("base"));
    let full = format!("{owner}/{repo}");
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    for branch in [&head, &base] {
        if !m.git.refs.contains_key(&(full.clone(), format!("heads/{branch}"))) {
            return Err(message(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Validation Failed: no branch {branch}"),
            ));
        }
    }
    if m.git.pulls.iter().any(|((r, _), p)| *r == full && p.head == head) {
        return Err(message(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Validation Failed: A pull request already exists for {owner}:{head}."),
        ));
    }
    let number = m.git.pulls.keys().filter(|(r, _)| *r == full).map(|(_, n)| *n).max().unwrap_or(100) + 1;
    m.git.pulls.insert(
        (full, number),
        FakePull {
            number,
            title: text("title"),
            head,
            base,
            body: text("body"),
        },
    );
    Ok(number)
}

/// The files of a branch's tip: path → blob.
fn tip_tree(m: &Model, repo: &str, branch: &str) -> Option<(String, BTreeMap<String, String>)> {
    let head = m.git.refs.get(&(repo.to_string(), format!("heads/{branch}")))?;
    Some((head.clone(), m.git.trees[&m.git.commits[head].0].clone()))
}

async fn get_pull(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&s, Method::GET, &format!("/repos/{owner}/{repo}/pulls/{number}"), &headers).await {
        return r;
    }
    let m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let full = format!("{owner}/{repo}");
    let Some(pull) = m.git.pulls.get(&(full.clone(), number)) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let sha = |branch: &str| tip_tree(&m, &full, branch).map(|(sha, _)| sha).unwrap_or_default();
    answer(
        StatusCode::OK,
        json!({ "number": number, "title": pull.title, "state": "open", "body": pull.body,
                "head": { "ref": pull.head, "sha": sha(&pull.head) }, "base": { "ref": pull.base, "sha": sha(&pull.base) } }),
    )
}

async fn pull_files(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, number)): Path<(String, String, i64)>,
    Query(paging): Query<Paging>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&s, Method::GET, &format!("/repos/{owner}/{repo}/pulls/{number}/files"), &headers).await {
        return r;
    }
    let m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let full = format!("{owner}/{repo}");
    let Some(pull) = m.git.pulls.get(&(full.clone(), number)) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let (Some((_, base)), Some((_, head))) = (tip_tree(&m, &full, &pull.base), tip_tree(&m, &full, &pull.head)) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    let mut files = Vec::new();
    for (path, blob) in &head {
        match base.get(path) {
            None => files.push(json!({ "filename": path, "status": "added" })),
            Some(old) if old != blob => files.push(json!({ "filename": path, "status": "modified" })),
            _ => {}
        }
    }
    for path in base.keys().filter(|p| !head.contains_key(*p)) {
        files.push(json!({ "filename": path, "status": "removed" }));
    }
    let per_page = paging.per_page.unwrap_or(30).clamp(1, 100);
    let page = paging.page.unwrap_or(1).max(1);
    let items: Vec<_> = files.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    answer(StatusCode::OK, json!(items))
}

async fn create_pull(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/repos/{owner}/{repo}/pulls");
    s.record_body(&Method::POST, &path, &body);
    let stall = match admit(&s, Method::POST, &path, &headers).await {
        Ok(stall) => stall,
        Err(r) => return r,
    };
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let number = match apply_pull(&s, &owner, &repo, &body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    answer(StatusCode::CREATED, json!({ "number": number, "state": "open" }))
}

fn reactions_json(list: &[(i64, String, String, String)]) -> serde_json::Value {
    json!(list
        .iter()
        .map(|(id, content, login, kind)| json!({ "id": id, "content": content, "user": { "login": login, "type": kind } }))
        .collect::<Vec<_>>())
}

async fn list_reactions(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, comment)): Path<(String, String, i64)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(
        &s,
        Method::GET,
        &format!("/repos/{owner}/{repo}/issues/comments/{comment}/reactions"),
        &headers,
    )
    .await
    {
        return r;
    }
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let body = reactions_json(m.reactions.get(&comment).map(Vec::as_slice).unwrap_or_default());
    let etag = format!("W/\"{:08x}\"", crc32fast::hash(body.to_string().as_bytes()));
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        // GitHub does not count a 304 against the rate limit.
        m.rate_used -= 1;
        drop(m);
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert("etag", HeaderValue::from_str(&etag).expect("ascii"));
        return r;
    }
    drop(m);
    let mut r = answer(StatusCode::OK, body);
    r.headers_mut().insert("etag", HeaderValue::from_str(&etag).expect("ascii"));
    r
}

async fn create_reaction(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, comment)): Path<(String, String, i64)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    s.record_body(
        &Method::POST,
        &format!("/repos/{owner}/{repo}/issues/comments/{comment}/reactions"),
        &body,
    );
    if let Err(r) = admit(
        &s,
        Method::POST,
        &format!("/repos/{owner}/{repo}/issues/comments/{comment}/reactions"),
        &headers,
    )
    .await
    {
        return r;
    }
    const CONTENTS: [&str; 8] = ["+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"];
    let content = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("content").and_then(|c| c.as_str()).map(str::to_string));
    let Some(content) = content.filter(|c| CONTENTS.contains(&c.as_str())) else {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation Failed: content is not a valid reaction",
        );
    };
    let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let list = m.reactions.entry(comment).or_default();
    // The App reacts as its bot user; the same reaction twice is answered 200 and not added.
    if let Some((id, ..)) = list.iter().find(|(_, c, login, _)| *c == content && login == "orch[bot]") {
        let id = *id;
        drop(m);
        return answer(StatusCode::OK, json!({ "id": id, "content": content }));
    }
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    list.push((id, content.clone(), "orch[bot]".into(), "Bot".into()));
    drop(m);
    answer(StatusCode::CREATED, json!({ "id": id, "content": content }))
}

async fn get_content(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    use base64::Engine;
    if let Err(r) = admit(&s, Method::GET, &format!("/repos/{owner}/{repo}/contents/{path}"), &headers).await {
        return r;
    }
    let m = s.model.lock().unwrap_or_else(|p| p.into_inner());
    let Some(text) = m.files.get(&(format!("{owner}/{repo}"), path.clone())) else {
        return message(StatusCode::NOT_FOUND, "Not Found");
    };
    // GitHub wraps the base64 at 60 characters.
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    let wrapped: Vec<String> = encoded
        .as_bytes()
        .chunks(60)
        .map(|c| String::from_utf8_lossy(c).to_string())
        .collect();
    answer(
        StatusCode::OK,
        json!({ "type": "file", "encoding": "base64", "path": path, "size": text.len(), "content": wrapped.join("\n") + "\n" }),
    )
}

impl FakeGithub {
    /// Starts the fake on a free local port for the App `app_id` whose public key is `public_pem`.
    pub async fn start(app_id: u64, public_pem: &[u8], token_lifetime: Duration) -> anyhow::Result<Self> {
        let state = Arc::new(FakeState {
            app_id,
            public_key: DecodingKey::from_rsa_pem(public_pem)?,
            token_lifetime,
            next_id: AtomicI64::new(1_000_001),
            model: Mutex::new(Model::default()),
        });
        let app = Router::new()
            .route("/app/installations/{id}/access_tokens", post(access_tokens))
            .route(
                "/repos/{owner}/{repo}/issues/{issue}/comments",
                get(list_comments).post(create_comment),
            )
            .route("/repos/{owner}/{repo}/issues/{issue}/labels", get(list_labels).post(add_labels))
            .route(
                "/repos/{owner}/{repo}/issues/{issue}/labels/{name}",
                axum::routing::delete(remove_label),
            )
            .route("/repos/{owner}/{repo}/collaborators/{login}/permission", get(permission))
            .route(
                "/repos/{owner}/{repo}/issues/comments/{comment}",
                axum::routing::patch(update_comment),
            )
            .route("/repos/{owner}/{repo}/git/ref/{*git_ref}", get(get_ref))
            .route("/repos/{owner}/{repo}/git/commits/{sha}", get(get_commit))
            .route("/repos/{owner}/{repo}/git/{kind}", post(git_write))
            .route("/repos/{owner}/{repo}/pulls", post(create_pull))
            .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
            .route("/repos/{owner}/{repo}/pulls/{number}/files", get(pull_files))
            .route("/repos/{owner}/{repo}/check-runs", post(create_check_run))
            .route("/repos/{owner}/{repo}/commits/{git_ref}/check-runs", get(check_runs_for_ref))
            .route(
                "/repos/{owner}/{repo}/issues/comments/{comment}/reactions",
                get(list_reactions).post(create_reaction),
            )
            .route("/repos/{owner}/{repo}/contents/{*path}", get(get_content))
            .route("/repos/{owner}/{repo}/check-runs/{id}", axum::routing::patch(update_check_run))
            .fallback(|| async { message(StatusCode::NOT_FOUND, "Not Found") })
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_round_trip_with_the_parser() {
        for t in [0u64, 1_468_275_250, 1_709_208_000, 4_102_444_800] {
            assert_eq!(super::super::auth::parse_timestamp(&super::format_timestamp(t)), Some(t));
        }
    }
}
