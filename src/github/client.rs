//! The GitHub REST client: installation-token authentication (one refresh on 401) over the retry
//! layer. Operations are added here as the pipeline needs them.

use super::auth::{AuthError, TokenCache};
use super::marks::{AppIdentity, MarkerKey};
use super::retry::{self, GithubError, RetryPolicy};
use reqwest::{Method, Response};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use super::tarball::{RepoFile, RepoSnapshot, SkippedFile, Tarball, TarballLimits};

/// How long a collaborator's permission is trusted before asking GitHub again.
pub const PERMISSION_TTL: Duration = Duration::from_secs(60);
/// GitHub accepts at most this many annotations per check-run request.
pub const ANNOTATIONS_PER_REQUEST: usize = 50;

/// A check run to create: what orch shows on a commit.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRunSpec {
    pub name: String,
    pub head_sha: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub title: String,
    pub summary: String,
    pub text: Option<String>,
    pub annotations: Vec<Annotation>,
    pub actions: Vec<CheckAction>,
}

/// A change to a completed check run: its conclusion, what it says, its buttons (an empty
/// list takes them all away) and, when set, where its "Details" link leads.
#[derive(Debug, Clone)]
pub struct CheckRunUpdate {
    pub conclusion: String,
    pub title: String,
    pub summary: String,
    pub actions: Vec<CheckAction>,
    pub details_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    pub annotation_level: String,
    pub message: String,
}

/// A check-run button (GitHub: at most 3; label ≤ 20, identifier ≤ 20, description ≤ 40 characters).
#[derive(Debug, Clone, Serialize)]
pub struct CheckAction {
    pub label: String,
    pub description: String,
    pub identifier: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Github(#[from] GithubError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("GitHub's answer could not be read: {0}")]
    Decode(String),
    /// `ORCH_GITHUB_DRY_RUN`: the write was logged and not sent.
    #[error("dry-run: {method} {path} was not sent")]
    DryRun { method: String, path: String },
    /// A path that must not go into a URL (see [`check_path`]); nothing was sent.
    #[error(transparent)]
    Path(#[from] PathError),
}

/// The GitHub client's error behind an error chain, if any: found directly or inside the
/// exactly-once layer's `ActionError`, which wraps it transparently (so a plain walk of the
/// chain's sources skips it).
pub fn client_error_of(e: &anyhow::Error) -> Option<&ClientError> {
    e.chain().find_map(|c| {
        c.downcast_ref::<ClientError>()
            .or_else(|| match c.downcast_ref::<crate::github::actions::ActionError>() {
                Some(crate::github::actions::ActionError::Github(inner)) => Some(inner),
                _ => None,
            })
    })
}

/// How long GitHub's rate limit holds the request behind an error chain, if that is why it
/// failed: the job waits that long and runs again, it has not failed (SPEC §11).
pub fn rate_limit_of(e: &anyhow::Error) -> Option<Duration> {
    let limited = |g: &GithubError| match g {
        GithubError::RateLimited { wait, .. } => Some(*wait),
        _ => None,
    };
    client_error_of(e).and_then(ClientError::rate_limit).or_else(|| {
        e.chain().find_map(|c| {
            c.downcast_ref::<GithubError>().and_then(limited).or_else(|| {
                c.downcast_ref::<AuthError>().and_then(|a| match a {
                    AuthError::Github(g) => limited(g),
                    _ => None,
                })
            })
        })
    })
}

impl ClientError {
    /// How long GitHub's rate limit holds the request, when that is why it failed.
    pub fn rate_limit(&self) -> Option<Duration> {
        match self {
            ClientError::Github(GithubError::RateLimited { wait, .. })
            | ClientError::Auth(AuthError::Github(GithubError::RateLimited { wait, .. })) => Some(*wait),
            _ => None,
        }
    }

    /// Whether repeating the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Github(GithubError::Exhausted { .. } | GithubError::RateLimited { .. }) | ClientError::Decode(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssueComment {
    pub id: i64,
    #[serde(default)]
    pub body: String,
    /// The author (GitHub's `user`; null for a deleted account).
    #[serde(default)]
    pub user: Option<Account>,
    /// The App that wrote it, when an App's token did (GitHub's `performed_via_github_app`).
    #[serde(default)]
    pub performed_via_github_app: Option<AppRef>,
}

impl IssueComment {
    /// Whether orch's App wrote this comment (by ids, never by login or by what it says).
    pub fn written_by(&self, me: &AppIdentity) -> bool {
        me.wrote(
            self.user.as_ref().map(|u| u.id),
            self.performed_via_github_app.as_ref().map(|a| a.id),
        )
    }
}

/// A GitHub account as payloads and answers describe it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Account {
    pub id: i64,
    #[serde(default)]
    pub login: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// A GitHub App as named in an answer (`performed_via_github_app`, a check run's `app`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppRef {
    pub id: i64,
    #[serde(default)]
    pub slug: Option<String>,
}

/// (repository, login) → (permission, when GitHub said so).
/// (repository, login) → (permission, the account id GitHub says the login is now, when read).
type PermissionCache = HashMap<(String, String), (String, Option<i64>, Instant)>;

#[derive(Clone)]
pub struct GithubClient {
    http: reqwest::Client,
    api_url: String,
    tokens: Arc<TokenCache>,
    policy: RetryPolicy,
    permissions: Arc<Mutex<PermissionCache>>,
    permission_ttl: Duration,
    /// The latest `x-ratelimit-remaining` / `x-ratelimit-limit` GitHub sent, for `/metrics`.
    rate_limit: Arc<Mutex<Option<(i64, i64)>>>,
    /// Content-creating requests of one installation are spaced by at least this much
    /// (GitHub asks for a second between them to stay clear of its secondary limits).
    pace: Duration,
    /// Per installation, the earliest moment its next content-creating request may leave. A
    /// writer reserves its slot under a short lock and waits outside it, so one installation's
    /// wait never holds up another's writes.
    next_write: Arc<Mutex<HashMap<i64, Instant>>>,
    /// Writes are logged and refused before they leave (reads still go out).
    dry_run: bool,
    /// Tags orch's hidden markers (SPEC §6).
    marker_key: Arc<MarkerKey>,
    /// orch's App and bot account ids, learned once from GitHub.
    identity: Arc<tokio::sync::OnceCell<AppIdentity>>,
    /// Where GitHub's budget is shared with the other replicas (SPEC §11); None: not shared
    /// (tools and tests that use the client alone).
    budget: Option<SharedBudget>,
    /// A client that answers redirects instead of following them, made on first use: the
    /// tarball's redirect is followed by hand, so that the token never leaves with it.
    unredirected: Arc<OnceLock<reqwest::Client>>,
}

/// What a request carries besides its method, path and body.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RequestOptions<'a> {
    /// It creates something: one attempt, and the caller checks before trying again.
    pub creates: bool,
    /// The ETag of the previous read, for a conditional request.
    pub if_none_match: Option<&'a str>,
    /// A redirect is answered to the caller instead of being followed.
    pub keep_redirect: bool,
}

/// The store that holds GitHub's budget per installation, and the secondary limits orch paces
/// content-creating requests under.
#[derive(Clone)]
struct SharedBudget {
    store: crate::store::Store,
    writes: Arc<crate::store::github_budget::WriteLimits>,
}

/// A full write window that frees within this long is waited out in-process (bounded by the
/// policy's `max_rate_limit_wait`); a longer wait defers the job instead.
const IN_PROCESS_WRITE_WAIT: Duration = Duration::from_secs(2);

/// GitHub's headroom is written to the store only once it runs this low (a fraction of the
/// limit), so that the budget costs no database write per request while it is plentiful.
const LOW_REMAINING: f64 = 0.1;

/// The default spacing of content-creating requests per installation.
pub const DEFAULT_PACE: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
struct Label {
    name: String,
}

#[derive(Deserialize)]
struct Permission {
    permission: String,
    #[serde(default)]
    user: Option<PermissionUser>,
}

#[derive(Deserialize)]
struct PermissionUser {
    id: i64,
}

#[derive(Deserialize)]
struct Created {
    id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReactionUser {
    pub login: String,
    /// The account id: who the user is (the login is for display; it can be renamed).
    pub id: i64,
    #[serde(rename = "type", default)]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reaction {
    pub id: i64,
    /// `+1`, `-1`, `laugh`, `confused`, `heart`, `hooray`, `rocket` or `eyes`.
    pub content: String,
    pub user: ReactionUser,
}

/// The reactions of a comment, read with a conditional request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reactions {
    /// Nothing changed since the ETag given (GitHub does not count this against the rate limit).
    NotModified,
    Changed {
        etag: Option<String>,
        reactions: Vec<Reaction>,
    },
}

/// A check run as listed for a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRunSummary {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub summary: String,
    /// The App that created it (GitHub's `app.id`).
    pub app_id: Option<i64>,
}

#[derive(Deserialize)]
struct CheckRunList {
    check_runs: Vec<ListedCheckRun>,
}

#[derive(Deserialize)]
struct ListedCheckRun {
    id: i64,
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    output: Option<ListedOutput>,
    #[serde(default)]
    app: Option<AppRef>,
}

#[derive(Deserialize)]
struct ListedOutput {
    #[serde(default)]
    summary: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: String,
}

impl GithubClient {
    /// The web address matching the API address, for links in what orch writes:
    /// `https://github.com` for `https://api.github.com`, `https://HOST` for GitHub Enterprise's
    /// `https://HOST/api/v3`, the API address itself otherwise (the fake).
    pub fn html_url(&self) -> String {
        match self.api_url.as_str() {
            "https://api.github.com" => "https://github.com".to_string(),
            url => url.strip_suffix("/api/v3").unwrap_or(url).to_string(),
        }
    }

    pub fn new(http: reqwest::Client, api_url: &str, tokens: Arc<TokenCache>, policy: RetryPolicy) -> Self {
        Self {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            tokens,
            policy,
            permissions: Arc::default(),
            permission_ttl: PERMISSION_TTL,
            rate_limit: Arc::default(),
            pace: DEFAULT_PACE,
            next_write: Arc::default(),
            dry_run: false,
            marker_key: Arc::new(MarkerKey::random()),
            identity: Arc::default(),
            budget: None,
            unredirected: Arc::default(),
        }
    }

    /// The API's address, without a trailing `/`.
    pub(super) fn api_url(&self) -> &str {
        &self.api_url
    }

    /// A client that does not follow redirects and sends no credentials of its own (built with
    /// reqwest's defaults otherwise).
    pub(super) fn unredirected_http(&self) -> &reqwest::Client {
        self.unredirected.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent("orch")
                .build()
                .expect("the TLS backend initialises (it did for the main client)")
        })
    }

    /// The same client sharing GitHub's budget through `store` (every replica must use the
    /// same store), pacing content-creating requests under `writes`.
    pub fn with_budget(mut self, store: crate::store::Store, writes: crate::store::github_budget::WriteLimits) -> Self {
        self.budget = Some(SharedBudget {
            store,
            writes: Arc::new(writes),
        });
        self
    }

    /// The same client tagging markers with `key` (every replica must use the same key).
    pub fn with_marker_key(mut self, key: MarkerKey) -> Self {
        self.marker_key = Arc::new(key);
        self
    }

    /// The hidden marker of action `id`, tagged with the server key.
    pub fn marker(&self, id: i64) -> String {
        self.marker_key.marker(id)
    }

    pub fn marker_key(&self) -> &MarkerKey {
        &self.marker_key
    }

    /// The same client in dry-run: no write reaches GitHub, whichever code path asks for it.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// The same client with another spacing of content-creating requests.
    pub fn with_pace(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }

    /// How far apart deferred jobs of one repository are put (see `worker::defer_for_github`).
    pub fn deferral_spacing_ms(&self) -> i64 {
        self.budget.as_ref().map(|b| b.writes.spacing_ms()).unwrap_or(0)
    }

    /// GitHub's rate-limit headroom as its latest answer gave it: (remaining, limit).
    pub fn rate_limit(&self) -> Option<(i64, i64)> {
        *self.rate_limit.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn note_rate_limit(&self, installation: i64, headers: &reqwest::header::HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        let (Some(remaining), Some(limit)) = (number("x-ratelimit-remaining"), number("x-ratelimit-limit")) else {
            return;
        };
        *self.rate_limit.lock().unwrap_or_else(|p| p.into_inner()) = Some((remaining, limit));
        let Some(budget) = &self.budget else { return };
        if (remaining as f64) > (limit as f64) * LOW_REMAINING {
            return;
        }
        use crate::store::github_budget;
        let now = crate::store::now_ms();
        let reset_at = number("x-ratelimit-reset").map(|s| s * 1000).unwrap_or(now);
        let mut written = github_budget::record_remaining(&budget.store, installation, remaining, limit, reset_at, now).await;
        // Spent: no replica sends another request of this installation before the reset (one
        // second more: the reset is a whole second and clocks differ a little).
        if remaining == 0 && written.is_ok() {
            written = github_budget::record_block(&budget.store, installation, reset_at + 1000, false, now).await;
        }
        if let Err(e) = written {
            tracing::warn!(error = %e, installation, "could not record GitHub's rate limit in the store");
        }
    }

    /// Until when the store says GitHub's budget holds this request back (None: it may leave).
    /// A content-creating request takes its slot in the secondary limits' windows here; a
    /// window that frees within moments is waited for in-process.
    async fn budget_hold(&self, installation: i64, write: bool) -> Option<i64> {
        use crate::store::{github_budget, now_ms};
        let budget = self.budget.as_ref()?;
        loop {
            let now = now_ms();
            let held = if write {
                github_budget::reserve_write(&budget.store, installation, &budget.writes, now)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            installation,
                            "could not take a write slot in the store; sending"
                        );
                        Ok(())
                    })
                    .err()
            } else {
                github_budget::blocked_until(budget.store.pool(), installation, false, now)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, installation, "could not read GitHub's budget from the store; sending");
                        None
                    })
            };
            let until = held?;
            let short = IN_PROCESS_WRITE_WAIT.min(self.policy.max_rate_limit_wait).as_millis() as i64;
            if !write || until - now > short {
                return Some(until);
            }
            tokio::time::sleep(Duration::from_millis((until - now).max(1) as u64)).await;
        }
    }

    /// Records for every replica that GitHub's limit holds the installation for `wait` (its
    /// content-creating requests only, when a secondary limit refused a write).
    async fn note_block(&self, installation: i64, wait: Duration, writes_only: bool) {
        let Some(budget) = &self.budget else { return };
        let now = crate::store::now_ms();
        let until = now + wait.as_millis() as i64;
        if let Err(e) = crate::store::github_budget::record_block(&budget.store, installation, until, writes_only, now).await {
            tracing::warn!(error = %e, installation, "could not record GitHub's rate limit in the store");
        }
    }

    /// How long a collaborator's permission is trusted (zero: always asked).
    pub fn with_permission_ttl(mut self, ttl: Duration) -> Self {
        self.permission_ttl = ttl;
        self
    }

    /// Waits until this installation may send its next content-creating request. Writes of one
    /// installation leave in the order they reserved their slots, one pace apart; installations
    /// do not wait on each other (no lock is held while waiting).
    async fn pace_write(&self, installation: i64) {
        let slot = {
            let mut next = self.next_write.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = next.get(&installation).copied().filter(|at| *at > now).unwrap_or(now);
            next.insert(installation, slot + self.pace);
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Sends a request as `installation`. Reads are retried by the retry layer; writes that
    /// create (`creates`) get one attempt, and their callers check before trying again.
    async fn request(
        &self,
        installation: i64,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        creates: bool,
    ) -> Result<Response, ClientError> {
        self.request_with(installation, method, path, body, creates, None).await
    }

    async fn request_with(
        &self,
        installation: i64,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        creates: bool,
        if_none_match: Option<&str>,
    ) -> Result<Response, ClientError> {
        let options = RequestOptions {
            creates,
            if_none_match,
            keep_redirect: false,
        };
        self.request_as(installation, method, path, body, options).await
    }

    /// Sends a request as `installation` through the token cache, GitHub's shared budget and
    /// the retry layer: what every request to the API goes through.
    pub(super) async fn request_as(
        &self,
        installation: i64,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        options: RequestOptions<'_>,
    ) -> Result<Response, ClientError> {
        let RequestOptions {
            creates,
            if_none_match,
            keep_redirect,
        } = options;
        // A path that could step out of its repository never leaves (SPEC §12).
        check_url_path(path)?;
        let scope = token_scope(&method, path);
        let url = format!("{}{path}", self.api_url);
        let http = if keep_redirect { self.unredirected_http() } else { &self.http };
        let policy = if creates {
            self.policy.single_attempt()
        } else {
            self.policy.clone()
        };
        if method != Method::GET {
            if self.dry_run {
                tracing::info!(%method, %path, installation, "dry-run: GitHub write not sent");
                return Err(ClientError::DryRun {
                    method: method.to_string(),
                    path: path.to_string(),
                });
            }
            self.pace_write(installation).await;
        }
        let write = method != Method::GET;
        if let Some(until) = self.budget_hold(installation, write).await {
            let wait = Duration::from_millis((until - crate::store::now_ms()).max(0) as u64);
            tracing::debug!(%method, %path, installation, ?wait, "GitHub's budget holds the request: not sent");
            return Err(ClientError::Github(GithubError::RateLimited {
                wait,
                secondary: write,
                request_id: "none: not sent".into(),
            }));
        }
        for refreshed in [false, true] {
            let token = self.tokens.scoped_token(installation, &scope).await?;
            let result = retry::send(
                || {
                    let mut r = http
                        .request(method.clone(), &url)
                        .bearer_auth(token.expose_secret())
                        .header("accept", "application/vnd.github+json")
                        .header("x-github-api-version", "2022-11-28")
                        .header("user-agent", "orch");
                    if let Some(b) = body {
                        r = r.json(b);
                    }
                    if let Some(etag) = if_none_match {
                        r = r.header("if-none-match", etag);
                    }
                    r
                },
                &policy,
            )
            .await;
            match result {
                // The token was revoked or expired early: fetch a new one, once.
                Err(GithubError::Permanent { status: 401, .. }) if !refreshed => self.tokens.invalidate(installation),
                Err(e @ GithubError::RateLimited { .. }) => {
                    if let GithubError::RateLimited { wait, secondary, .. } = &e {
                        self.note_block(installation, *wait, *secondary && write).await;
                    }
                    return Err(e.into());
                }
                other => {
                    let response = other?;
                    self.note_rate_limit(installation, response.headers()).await;
                    return Ok(response);
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Every comment of an issue or pull request, oldest first.
    pub async fn list_issue_comments(&self, installation: i64, repo: &str, issue: i64) -> Result<Vec<IssueComment>, ClientError> {
        let mut all = Vec::new();
        for page in 1.. {
            let path = format!("/repos/{repo}/issues/{issue}/comments?per_page=100&page={page}");
            let batch: Vec<IssueComment> = self
                .request(installation, Method::GET, &path, None, false)
                .await?
                .json()
                .await
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            let last = batch.len() < 100;
            all.extend(batch);
            if last {
                break;
            }
        }
        Ok(all)
    }

    pub async fn create_issue_comment(&self, installation: i64, repo: &str, issue: i64, body: &str) -> Result<IssueComment, ClientError> {
        let path = format!("/repos/{repo}/issues/{issue}/comments");
        self.request(installation, Method::POST, &path, Some(&serde_json::json!({ "body": body })), true)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn json<T: serde::de::DeserializeOwned>(response: Response) -> Result<T, ClientError> {
        response.json().await.map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn list_labels(&self, installation: i64, repo: &str, issue: i64) -> Result<Vec<String>, ClientError> {
        let path = format!("/repos/{repo}/issues/{issue}/labels?per_page=100");
        let labels: Vec<Label> = Self::json(self.request(installation, Method::GET, &path, None, false).await?).await?;
        Ok(labels.into_iter().map(|l| l.name).collect())
    }

    /// Replaces the body of an existing comment (orch edits its own proposal comments in place).
    pub async fn update_issue_comment(
        &self,
        installation: i64,
        repo: &str,
        comment_id: i64,
        body: &str,
    ) -> Result<IssueComment, ClientError> {
        let path = format!("/repos/{repo}/issues/comments/{comment_id}");
        let body = super::actions::truncate(body, super::actions::COMMENT_LIMIT, 0);
        // Setting the same body twice leaves the same comment: safe to retry.
        Self::json(
            self.request(
                installation,
                Method::PATCH,
                &path,
                Some(&serde_json::json!({ "body": body })),
                false,
            )
            .await?,
        )
        .await
    }

    /// orch's own comment that carries `marker` (a hidden `<!-- orch:… -->` line), if any. A
    /// comment is orch's only when GitHub says orch's App wrote it: the same text in anyone
    /// else's comment (an outsider's, another App's) is not orch's write.
    pub async fn find_comment_with_marker(
        &self,
        installation: i64,
        repo: &str,
        issue: i64,
        marker: &str,
    ) -> Result<Option<IssueComment>, ClientError> {
        let me = self.app_identity(installation).await?;
        Ok(self
            .list_issue_comments(installation, repo, issue)
            .await?
            .into_iter()
            .find(|c| c.written_by(&me) && c.body.contains(marker)))
    }

    /// Adds labels (adding one that is there already changes nothing, so this is idempotent).
    pub async fn add_labels(&self, installation: i64, repo: &str, issue: i64, labels: &[String]) -> Result<Vec<String>, ClientError> {
        let path = format!("/repos/{repo}/issues/{issue}/labels");
        let body = serde_json::json!({ "labels": labels });
        let labels: Vec<Label> = Self::json(self.request(installation, Method::POST, &path, Some(&body), false).await?).await?;
        Ok(labels.into_iter().map(|l| l.name).collect())
    }

    /// Removes a label; one that is not there is already removed.
    pub async fn remove_label(&self, installation: i64, repo: &str, issue: i64, label: &str) -> Result<(), ClientError> {
        let path = format!("/repos/{repo}/issues/{issue}/labels/{}", encode_path_segment(label));
        match self.request(installation, Method::DELETE, &path, None, false).await {
            Ok(_) | Err(ClientError::Github(GithubError::Permanent { status: 404, .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A user's permission on a repository (`admin`, `maintain`, `write`, `triage`, `read` or
    /// `none`), cached for [`PERMISSION_TTL`] unless configured otherwise.
    pub async fn collaborator_permission(&self, installation: i64, repo: &str, login: &str) -> Result<String, ClientError> {
        Ok(self.collaborator(installation, repo, login, None).await?.0)
    }

    /// The permission of `login` and the account id that login belongs to now (None when GitHub
    /// did not say, e.g. for a non-collaborator): a login can have changed hands since a vote.
    /// A cached answer for another account than `account` is not used: the login may have
    /// changed hands since it was cached.
    pub async fn collaborator(
        &self,
        installation: i64,
        repo: &str,
        login: &str,
        account: Option<i64>,
    ) -> Result<(String, Option<i64>), ClientError> {
        let key = (repo.to_string(), login.to_string());
        if let Some((permission, id, at)) = self.permissions.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            let same = account.is_none() || id.is_none() || *id == account;
            if same && at.elapsed() < self.permission_ttl {
                return Ok((permission.clone(), *id));
            }
        }
        let path = format!("/repos/{repo}/collaborators/{}/permission", encode_path_segment(login));
        let (permission, id) = match self.request(installation, Method::GET, &path, None, false).await {
            Ok(r) => {
                let p = Self::json::<Permission>(r).await?;
                (p.permission, p.user.map(|u| u.id))
            }
            // Not a collaborator at all.
            Err(ClientError::Github(GithubError::Permanent { status: 404, .. })) => ("none".to_string(), None),
            Err(e) => return Err(e),
        };
        self.permissions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (permission.clone(), id, Instant::now()));
        Ok((permission, id))
    }

    /// Creates a check run; annotations beyond the first 50 follow in updates of 50 each.
    /// Texts are cut at GitHub's limits and buttons checked against GitHub's.
    pub async fn create_check_run(&self, installation: i64, repo: &str, spec: &CheckRunSpec) -> Result<i64, ClientError> {
        use super::actions::{truncate, CHECK_RUN_TEXT_LIMIT};
        if spec.actions.len() > 3
            || spec
                .actions
                .iter()
                .any(|a| a.label.chars().count() > 20 || a.identifier.chars().count() > 20 || a.description.chars().count() > 40)
        {
            return Err(ClientError::Decode(
                "check-run buttons exceed GitHub's limits (3 buttons; 20/20/40 characters)".into(),
            ));
        }
        let mut batches = spec.annotations.chunks(ANNOTATIONS_PER_REQUEST);
        let output = |annotations: &[Annotation]| {
            let mut o = serde_json::json!({
                "title": spec.title,
                "summary": truncate(&spec.summary, CHECK_RUN_TEXT_LIMIT, 0),
                "annotations": annotations,
            });
            if let Some(text) = &spec.text {
                o["text"] = serde_json::json!(truncate(text, CHECK_RUN_TEXT_LIMIT, 0));
            }
            o
        };
        let mut body = serde_json::json!({
            "name": spec.name,
            "head_sha": spec.head_sha,
            "status": spec.status,
            "output": output(batches.next().unwrap_or(&[])),
        });
        if let Some(c) = &spec.conclusion {
            body["conclusion"] = serde_json::json!(c);
        }
        if let Some(e) = &spec.external_id {
            body["external_id"] = serde_json::json!(e);
        }
        if !spec.actions.is_empty() {
            body["actions"] = serde_json::json!(spec.actions);
        }
        let path = format!("/repos/{repo}/check-runs");
        let created: Created = Self::json(self.request(installation, Method::POST, &path, Some(&body), true).await?).await?;
        for batch in batches {
            let path = format!("/repos/{repo}/check-runs/{}", created.id);
            let body = serde_json::json!({ "output": output(batch) });
            // Updating with the same annotations twice would duplicate them, so one attempt.
            self.request(installation, Method::PATCH, &path, Some(&body), true).await?;
        }
        Ok(created.id)
    }

    /// Updates check run `id` (`PATCH /repos/{repo}/check-runs/{id}`): conclusion, title,
    /// summary (cut at GitHub's limit), buttons and details link. Repeating it changes nothing
    /// more.
    pub async fn update_check_run(&self, installation: i64, repo: &str, id: i64, update: &CheckRunUpdate) -> Result<(), ClientError> {
        use super::actions::{truncate, CHECK_RUN_TEXT_LIMIT};
        let mut body = serde_json::json!({
            "conclusion": update.conclusion,
            "output": { "title": update.title, "summary": truncate(&update.summary, CHECK_RUN_TEXT_LIMIT, 0) },
            "actions": update.actions,
        });
        if let Some(url) = &update.details_url {
            body["details_url"] = serde_json::json!(url);
        }
        let path = format!("/repos/{repo}/check-runs/{id}");
        self.request(installation, Method::PATCH, &path, Some(&body), true).await?;
        Ok(())
    }
}

impl GithubClient {
    /// The reactions of an issue comment; with the ETag of the previous read, a conditional
    /// request that costs no rate limit when nothing changed (orch polls these: GitHub sends no
    /// webhook for reactions).
    pub async fn comment_reactions(
        &self,
        installation: i64,
        repo: &str,
        comment_id: i64,
        etag: Option<&str>,
    ) -> Result<Reactions, ClientError> {
        let path = format!("/repos/{repo}/issues/comments/{comment_id}/reactions?per_page=100");
        let response = self.request_with(installation, Method::GET, &path, None, false, etag).await?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Reactions::NotModified);
        }
        let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Reactions::Changed {
            etag,
            reactions: Self::json(response).await?,
        })
    }

    /// The check runs of a commit (orch's and others'), newest first as GitHub lists them.
    pub async fn check_runs_for_ref(&self, installation: i64, repo: &str, git_ref: &str) -> Result<Vec<CheckRunSummary>, ClientError> {
        let path = format!("/repos/{repo}/commits/{}/check-runs?per_page=100", encode_path_segment(git_ref));
        let list: CheckRunList = Self::json(self.request(installation, Method::GET, &path, None, false).await?).await?;
        Ok(list
            .check_runs
            .into_iter()
            .map(|r| CheckRunSummary {
                id: r.id,
                name: r.name,
                status: r.status,
                summary: r.output.and_then(|o| o.summary).unwrap_or_default(),
                app_id: r.app.map(|a| a.id),
            })
            .collect())
    }

    /// Adds a reaction to an issue comment (GitHub answers 200 if it was there: idempotent).
    pub async fn react_to_comment(&self, installation: i64, repo: &str, comment_id: i64, content: &str) -> Result<(), ClientError> {
        let path = format!("/repos/{repo}/issues/comments/{comment_id}/reactions");
        let body = serde_json::json!({ "content": content });
        self.request(installation, Method::POST, &path, Some(&body), false).await?;
        Ok(())
    }

    /// A file's text at `git_ref` (the default branch when None); None when there is no such file.
    pub async fn file(&self, installation: i64, repo: &str, path: &str, git_ref: Option<&str>) -> Result<Option<String>, ClientError> {
        let mut url = format!("/repos/{repo}/contents/{}", encode_path(path)?);
        if let Some(r) = git_ref {
            url.push_str(&format!("?ref={}", encode_path_segment(r)));
        }
        let response = match self.request(installation, Method::GET, &url, None, false).await {
            Ok(r) => r,
            Err(ClientError::Github(GithubError::Permanent { status: 404, .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        Self::file_text(path, response).await.map(Some)
    }

    /// A file on the default branch read with a conditional request: with the ETag of the
    /// previous read, an unchanged file is a 304, which GitHub does not count against the rate
    /// limit.
    pub async fn file_if_changed(&self, installation: i64, repo: &str, path: &str, etag: Option<&str>) -> Result<FileRead, ClientError> {
        let url = format!("/repos/{repo}/contents/{}", encode_path(path)?);
        let response = match self.request_with(installation, Method::GET, &url, None, false, etag).await {
            Ok(r) => r,
            Err(ClientError::Github(GithubError::Permanent { status: 404, .. })) => return Ok(FileRead::Absent),
            Err(e) => return Err(e),
        };
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(FileRead::NotModified);
        }
        let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(FileRead::Found {
            text: Self::file_text(path, response).await?,
            etag,
        })
    }

    async fn file_text(path: &str, response: Response) -> Result<String, ClientError> {
        use base64::Engine;
        let content: Content = Self::json(response).await?;
        if content.encoding != "base64" {
            return Err(ClientError::Decode(format!("{path}: unexpected encoding {:?}", content.encoding)));
        }
        let compact: String = content.content.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| ClientError::Decode(format!("{path}: {e}")))?;
        String::from_utf8(bytes).map_err(|_| ClientError::Decode(format!("{path} is not UTF-8 text")))
    }
}

/// A conditional read of a file (see [`GithubClient::file_if_changed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRead {
    /// Unchanged since the ETag given.
    NotModified,
    Found {
        text: String,
        etag: Option<String>,
    },
    /// No such file.
    Absent,
}

/// A label of a repository, as the model is told about the labels it may choose from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoLabel {
    pub name: String,
    /// None when the label has none (GitHub's `null`; an empty text is read as none too).
    #[serde(default)]
    pub description: Option<String>,
}

/// A conditional read of a repository's labels (see [`GithubClient::repo_labels_if_changed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelsRead {
    /// Unchanged since the ETag given.
    NotModified,
    Found {
        labels: Vec<RepoLabel>,
        /// What to give the next read; None when the list is longer than one page, which a
        /// conditional request cannot vouch for.
        etag: Option<String>,
    },
}

/// GitHub lists at most this many labels per page.
const LABELS_PER_PAGE: usize = 100;
/// Labels are read from at most this many pages (1,000 labels).
const LABEL_PAGES: usize = 10;

impl GithubClient {
    /// Every label of a repository with its description, read with a conditional request: with
    /// the ETag of the previous read, an unchanged list is a 304, which GitHub does not count
    /// against the rate limit. `etag` must be one this method returned.
    ///
    /// Only the first page is asked conditionally, and its ETag is handed back only when the
    /// whole list fit on it: a 304 of page one cannot tell that a later page changed, so a list
    /// of more than one page gets no ETag and the next read reads every page again. A full first
    /// page counts as "more than one": a label added past it would leave page one as it was.
    pub async fn repo_labels_if_changed(&self, installation: i64, repo: &str, etag: Option<&str>) -> Result<LabelsRead, ClientError> {
        let mut labels = Vec::new();
        for page in 1..=LABEL_PAGES {
            let path = format!("/repos/{repo}/labels?per_page={LABELS_PER_PAGE}&page={page}");
            let condition = if page == 1 { etag } else { None };
            let response = self.request_with(installation, Method::GET, &path, None, false, condition).await?;
            if response.status() == reqwest::StatusCode::NOT_MODIFIED {
                // Only page one is conditional, and its ETag was handed out only for a list
                // that fit on it: the whole list is unchanged.
                return Ok(LabelsRead::NotModified);
            }
            let page_etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
            let batch: Vec<RepoLabel> = Self::json(response).await?;
            let last = batch.len() < LABELS_PER_PAGE;
            labels.extend(batch.into_iter().map(|l| RepoLabel {
                description: l.description.filter(|d| !d.is_empty()),
                ..l
            }));
            if last {
                let etag = if page == 1 { page_etag } else { None };
                return Ok(LabelsRead::Found { labels, etag });
            }
        }
        tracing::warn!(
            repo,
            labels = labels.len(),
            "the repository has more labels than orch reads; the rest are left out"
        );
        Ok(LabelsRead::Found { labels, etag: None })
    }
}

/// One entry of a new tree: a file's new text, or `None` to delete the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeChange {
    pub path: String,
    pub content: Option<String>,
}

/// A branch's tip as `GET /repos/{owner}/{repo}/branches/{branch}` describes it: the commit and
/// that commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchTip {
    pub commit: String,
    pub tree: String,
}

#[derive(Deserialize)]
struct Sha {
    sha: String,
}

#[derive(Deserialize)]
struct RefObject {
    object: Sha,
}

#[derive(Deserialize)]
struct CommitTree {
    tree: Sha,
}

#[derive(Deserialize)]
struct Branch {
    commit: BranchCommit,
}

#[derive(Deserialize)]
struct BranchCommit {
    sha: String,
    commit: CommitTree,
}

#[derive(Deserialize)]
struct CommitWithParents {
    tree: Sha,
    #[serde(default)]
    parents: Vec<Sha>,
}

/// A commit as the Git Data API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCommit {
    pub tree: String,
    pub parents: Vec<String>,
}

#[derive(Deserialize)]
struct TreeListing {
    tree: Vec<TreeEntry>,
    #[serde(default)]
    truncated: bool,
}

#[derive(Deserialize)]
struct TreeEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    sha: String,
}

#[derive(Deserialize)]
struct PullNumber {
    number: i64,
}

/// A pull request as orch reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullInfo {
    pub number: i64,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub state: String,
    pub head: PullRef,
    pub base: PullRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRef {
    #[serde(rename = "ref")]
    pub name: String,
    pub sha: String,
}

/// A file a pull request changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullFile {
    pub filename: String,
    /// `added`, `removed`, `modified`, `renamed`, …
    pub status: String,
    #[serde(default)]
    pub previous_filename: Option<String>,
    #[serde(default)]
    pub patch: Option<String>,
}

/// Git data and pull requests: what applying an approved patch needs.
impl GithubClient {
    /// The commit a ref points at (`heads/main`); None when there is no such ref.
    pub async fn ref_sha(&self, installation: i64, repo: &str, git_ref: &str) -> Result<Option<String>, ClientError> {
        let path = format!("/repos/{repo}/git/ref/{git_ref}");
        match self.request(installation, Method::GET, &path, None, false).await {
            Ok(r) => Ok(Some(Self::json::<RefObject>(r).await?.object.sha)),
            Err(ClientError::Github(GithubError::Permanent { status: 404, .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The tip of `branch` with its tree, in one request (the Git Data API takes two: the ref,
    /// then the commit); None when there is no such branch.
    pub async fn branch(&self, installation: i64, repo: &str, branch: &str) -> Result<Option<BranchTip>, ClientError> {
        // Branch names may hold slashes: each segment is encoded on its own.
        let path = format!("/repos/{repo}/branches/{}", encode_path(branch)?);
        match self.request(installation, Method::GET, &path, None, false).await {
            Ok(r) => {
                let b = Self::json::<Branch>(r).await?;
                Ok(Some(BranchTip {
                    commit: b.commit.sha,
                    tree: b.commit.commit.tree.sha,
                }))
            }
            Err(ClientError::Github(GithubError::Permanent { status: 404, .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A commit's tree and parents (Git Data API).
    pub async fn git_commit(&self, installation: i64, repo: &str, commit: &str) -> Result<GitCommit, ClientError> {
        let path = format!("/repos/{repo}/git/commits/{commit}");
        let c = Self::json::<CommitWithParents>(self.request(installation, Method::GET, &path, None, false).await?).await?;
        Ok(GitCommit {
            tree: c.tree.sha,
            parents: c.parents.into_iter().map(|p| p.sha).collect(),
        })
    }

    /// Every file of a tree, recursively: path → blob sha (subtrees themselves are left out).
    /// A listing GitHub cut (`truncated`) is an error: a partial tree cannot be compared.
    pub async fn tree_files(
        &self,
        installation: i64,
        repo: &str,
        tree: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        let path = format!("/repos/{repo}/git/trees/{tree}?recursive=1");
        let t = Self::json::<TreeListing>(self.request(installation, Method::GET, &path, None, false).await?).await?;
        if t.truncated {
            return Err(ClientError::Decode(format!("the tree {tree} is too large to list")));
        }
        Ok(t.tree
            .into_iter()
            .filter(|e| e.kind == "blob" || e.kind == "commit")
            .map(|e| (e.path, e.sha))
            .collect())
    }

    /// A tree: `base_tree` with `changes` applied (content-addressed: safe to repeat). The new
    /// texts go inline (`content`: GitHub writes each blob itself), so a patch of any number of
    /// files is one request, not one blob request per file and then the tree; `sha: null`
    /// deletes a path.
    pub async fn create_tree(&self, installation: i64, repo: &str, base_tree: &str, changes: &[TreeChange]) -> Result<String, ClientError> {
        let path = format!("/repos/{repo}/git/trees");
        let entries: Vec<serde_json::Value> = changes
            .iter()
            .map(|c| match &c.content {
                // GitHub refuses an entry with both `sha` and `content`.
                Some(text) => serde_json::json!({ "path": c.path, "mode": "100644", "type": "blob", "content": text }),
                None => serde_json::json!({ "path": c.path, "mode": "100644", "type": "blob", "sha": null }),
            })
            .collect();
        let body = serde_json::json!({ "base_tree": base_tree, "tree": entries });
        Ok(
            Self::json::<Sha>(self.request(installation, Method::POST, &path, Some(&body), false).await?)
                .await?
                .sha,
        )
    }

    /// A commit of `tree` on `parent`.
    pub async fn create_commit(
        &self,
        installation: i64,
        repo: &str,
        message: &str,
        tree: &str,
        parent: &str,
    ) -> Result<String, ClientError> {
        let path = format!("/repos/{repo}/git/commits");
        let body = serde_json::json!({ "message": message, "tree": tree, "parents": [parent] });
        Ok(
            Self::json::<Sha>(self.request(installation, Method::POST, &path, Some(&body), true).await?)
                .await?
                .sha,
        )
    }

    /// Creates `refs/heads/<branch>` at `sha`.
    pub async fn create_branch(&self, installation: i64, repo: &str, branch: &str, sha: &str) -> Result<(), ClientError> {
        let path = format!("/repos/{repo}/git/refs");
        let body = serde_json::json!({ "ref": format!("refs/heads/{branch}"), "sha": sha });
        self.request(installation, Method::POST, &path, Some(&body), true).await?;
        Ok(())
    }

    pub async fn pull(&self, installation: i64, repo: &str, number: i64) -> Result<PullInfo, ClientError> {
        let path = format!("/repos/{repo}/pulls/{number}");
        Self::json(self.request(installation, Method::GET, &path, None, false).await?).await
    }

    /// Every file a pull request changes (GitHub lists at most 3,000).
    pub async fn pull_files(&self, installation: i64, repo: &str, number: i64) -> Result<Vec<PullFile>, ClientError> {
        let mut all = Vec::new();
        for page in 1..=30 {
            let path = format!("/repos/{repo}/pulls/{number}/files?per_page=100&page={page}");
            let batch: Vec<PullFile> = Self::json(self.request(installation, Method::GET, &path, None, false).await?).await?;
            let last = batch.len() < 100;
            all.extend(batch);
            if last {
                break;
            }
        }
        Ok(all)
    }

    /// Opens a pull request from `head` into `base`; returns its number.
    pub async fn create_pull(
        &self,
        installation: i64,
        repo: &str,
        title: &str,
        head: &str,
        base: &str,
        body: &str,
    ) -> Result<i64, ClientError> {
        let path = format!("/repos/{repo}/pulls");
        let body = serde_json::json!({ "title": title, "head": head, "base": base, "body": super::actions::truncate(body, super::actions::COMMENT_LIMIT, 0) });
        Ok(
            Self::json::<PullNumber>(self.request(installation, Method::POST, &path, Some(&body), true).await?)
                .await?
                .number,
        )
    }
}

/// An issue or pull request as orch reads it (GitHub's issues API serves both).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssueInfo {
    pub number: i64,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub state: String,
    pub user: ReactionUser,
    #[serde(default)]
    pub labels: Vec<IssueLabel>,
    /// Present when the issue is a pull request.
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssueLabel {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RepoInfo {
    pub full_name: String,
    pub default_branch: String,
}

/// Issues, repositories and the lookups that exactly-once writes need.
impl GithubClient {
    pub async fn issue(&self, installation: i64, repo: &str, number: i64) -> Result<IssueInfo, ClientError> {
        let path = format!("/repos/{repo}/issues/{number}");
        Self::json(self.request(installation, Method::GET, &path, None, false).await?).await
    }

    pub async fn repository(&self, installation: i64, repo: &str) -> Result<RepoInfo, ClientError> {
        let path = format!("/repos/{repo}");
        Self::json(self.request(installation, Method::GET, &path, None, false).await?).await
    }

    pub async fn issue_comment(&self, installation: i64, repo: &str, id: i64) -> Result<IssueComment, ClientError> {
        let path = format!("/repos/{repo}/issues/comments/{id}");
        Self::json(self.request(installation, Method::GET, &path, None, false).await?).await
    }

    /// The pull request whose head is `branch` of this repository, open or closed, if any: how a
    /// pull request whose creation answer was lost is found again.
    pub async fn pull_for_branch(&self, installation: i64, repo: &str, branch: &str) -> Result<Option<PullInfo>, ClientError> {
        let owner = repo.split_once('/').map(|(o, _)| o).unwrap_or(repo);
        let head = encode_path_segment(&format!("{owner}:{branch}"));
        let path = format!("/repos/{repo}/pulls?head={head}&state=all&per_page=1");
        let found: Vec<PullInfo> = Self::json(self.request(installation, Method::GET, &path, None, false).await?).await?;
        Ok(found.into_iter().next())
    }
}

/// The App itself, as `GET /app` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppInfo {
    pub id: i64,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub name: String,
}

/// One attempt to deliver a webhook, as `GET /app/hook/deliveries` lists it. A redelivery is a
/// new item with its own `id` and the original's `guid`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HookDelivery {
    pub id: i64,
    pub guid: String,
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub delivered_at: String,
    #[serde(default)]
    pub redelivery: bool,
    #[serde(default)]
    pub status: String,
    /// The HTTP status orch's endpoint answered (0 or absent when it could not be reached).
    #[serde(default)]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub installation_id: Option<i64>,
    #[serde(default)]
    pub repository_id: Option<i64>,
}

impl HookDelivery {
    /// Whether orch's endpoint accepted this attempt (answered 2xx).
    pub fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// GitHub lists at most this many hook deliveries per page.
pub const HOOK_DELIVERIES_PER_PAGE: u32 = 100;

/// The `cursor` of the `rel="next"` link of a `Link` header, if there is a next page.
pub fn next_cursor(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.split(';').any(|p| p.trim().replace(' ', "") == "rel=\"next\"") {
            return None;
        }
        let url = target.trim().trim_start_matches('<').trim_end_matches('>');
        let query = url.split_once('?')?.1;
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("cursor="))
            .filter(|c| !c.is_empty())
            .map(str::to_string)
    })
}

/// Requests made as the App itself, authenticated with the App JWT (not an installation token).
impl GithubClient {
    /// Sends a request with a fresh App JWT through the retry layer. In dry-run, only reads leave.
    pub async fn app_request(&self, method: Method, path: &str, body: Option<&serde_json::Value>) -> Result<Response, ClientError> {
        if method != Method::GET && self.dry_run {
            tracing::info!(%method, %path, "dry-run: GitHub App request not sent");
            return Err(ClientError::DryRun {
                method: method.to_string(),
                path: path.to_string(),
            });
        }
        check_url_path(path)?;
        let url = format!("{}{path}", self.api_url);
        let jwt = self.tokens.app_jwt();
        let response = retry::send(
            || {
                let mut r = self
                    .http
                    .request(method.clone(), &url)
                    .bearer_auth(&jwt)
                    .header("accept", "application/vnd.github+json")
                    .header("x-github-api-version", "2022-11-28")
                    .header("user-agent", "orch");
                if let Some(b) = body {
                    r = r.json(b);
                }
                r
            },
            &self.policy,
        )
        .await?;
        Ok(response)
    }

    /// orch's App id and its bot account's id, asked once (`GET /app`, then
    /// `GET /users/<slug>[bot]`) and kept: what tells orch's own comments and check runs apart.
    pub async fn app_identity(&self, installation: i64) -> Result<AppIdentity, ClientError> {
        self.identity
            .get_or_try_init(|| async {
                let app = self.app_info().await?;
                let slug = app
                    .slug
                    .ok_or_else(|| ClientError::Decode("GET /app answered without the App's slug".into()))?;
                let path = format!("/users/{}", encode_path_segment(&format!("{slug}[bot]")));
                let bot: Account = Self::json(self.request(installation, Method::GET, &path, None, false).await?).await?;
                Ok(AppIdentity {
                    app_id: app.id,
                    bot_user_id: bot.id,
                })
            })
            .await
            .copied()
    }

    /// `GET /app`: the App the JWT belongs to; proves the key and App id are what GitHub knows.
    pub async fn app_info(&self) -> Result<AppInfo, ClientError> {
        Self::json(self.app_request(Method::GET, "/app", None).await?).await
    }

    /// One page of the App's webhook deliveries, newest first, and the cursor of the next page.
    pub async fn list_hook_deliveries(
        &self,
        cursor: Option<&str>,
        per_page: u32,
    ) -> Result<(Vec<HookDelivery>, Option<String>), ClientError> {
        let mut path = format!("/app/hook/deliveries?per_page={}", per_page.clamp(1, HOOK_DELIVERIES_PER_PAGE));
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", encode_path_segment(c)));
        }
        let response = self.app_request(Method::GET, &path, None).await?;
        let next = response.headers().get("link").and_then(|v| v.to_str().ok()).and_then(next_cursor);
        Ok((Self::json(response).await?, next))
    }

    /// `POST /app/hook/deliveries/{id}/attempts`: asks GitHub to deliver it again (202). A
    /// repeated request is harmless (orch acknowledges a known GUID without processing it twice),
    /// so this goes through the ordinary retries.
    pub async fn redeliver_hook(&self, delivery_id: i64) -> Result<(), ClientError> {
        self.app_request(Method::POST, &format!("/app/hook/deliveries/{delivery_id}/attempts"), None)
            .await?;
        Ok(())
    }
}

/// A path refused before it goes into a URL: it could name something outside what it is meant
/// to (`..` walks up to another repository's endpoints once the URL is normalised).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the path {path:?} is refused: {problem}")]
pub struct PathError {
    pub path: String,
    pub problem: &'static str,
}

/// Checks a repository-relative path (a file, a git ref): segments separated by `/`, none empty,
/// `.` or `..`, no leading `/`, no backslash, no control character.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let refuse = |problem| {
        Err(PathError {
            path: path.to_string(),
            problem,
        })
    };
    if path.is_empty() {
        return refuse("it is empty");
    }
    if path.starts_with('/') {
        return refuse("it starts with `/`");
    }
    if path.chars().any(char::is_control) {
        return refuse("it holds a control character");
    }
    if path.contains('\\') {
        return refuse("it holds a backslash");
    }
    for segment in path.split('/') {
        match segment {
            "" => return refuse("it has an empty segment (`//` or a trailing `/`)"),
            "." | ".." => return refuse("it has a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// A checked path, percent-encoded segment by segment (the `/` between segments kept).
pub fn encode_path(path: &str) -> Result<String, PathError> {
    check_path(path)?;
    Ok(path.split('/').map(encode_path_segment).collect::<Vec<_>>().join("/"))
}

/// The last check of every URL path orch sends (before the query): each segment, percent-decoded,
/// is neither empty, `.` nor `..` and holds no control character or backslash. Whatever built the
/// path, nothing that a URL parser would normalise away reaches GitHub.
fn check_url_path(path_and_query: &str) -> Result<(), PathError> {
    let path = path_and_query.split('?').next().unwrap_or_default();
    let refuse = |problem| {
        Err(PathError {
            path: path.to_string(),
            problem,
        })
    };
    let Some(rest) = path.strip_prefix('/') else {
        return refuse("a request path must start with `/`");
    };
    for segment in rest.split('/') {
        let decoded = percent_decode(segment);
        match decoded.as_str() {
            "" => return refuse("it has an empty segment"),
            "." | ".." => return refuse("it has a `.` or `..` segment"),
            d if d.chars().any(char::is_control) || d.contains('\\') => return refuse("it holds a control character or a backslash"),
            _ => {}
        }
    }
    Ok(())
}

/// `%XX` sequences decoded (lossily: only the checks above read the result).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token a request needs (SPEC §12): one for the repository it addresses, with the one
/// permission its endpoint needs — read for reads, write for writes — so that a token handed to
/// one repository's step can read nothing else. Requests outside `/repos/` (a user lookup) get a
/// metadata-only token.
fn token_scope(method: &Method, path_and_query: &str) -> super::auth::TokenScope {
    use super::auth::TokenScope;
    let path = path_and_query.split('?').next().unwrap_or_default();
    let Some(rest) = path.strip_prefix("/repos/") else {
        return TokenScope::new(None, "metadata", "read");
    };
    let mut parts = rest.split('/');
    let (_owner, name) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let tail: Vec<&str> = parts.collect();
    let permission = match tail.first().copied() {
        None | Some("collaborators" | "installation") => "metadata",
        Some("issues" | "labels") => "issues",
        Some("pulls") => "pull_requests",
        Some("check-runs" | "check-suites") => "checks",
        Some("commits") if tail.contains(&"check-runs") => "checks",
        _ => "contents",
    };
    let level = if permission == "metadata" || matches!(*method, Method::GET | Method::HEAD) {
        "read"
    } else {
        "write"
    };
    TokenScope::new(Some(percent_decode(name)), permission, level)
}

/// Percent-encodes a value for one path segment (labels may hold spaces, colons, slashes).
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn bad_paths_are_refused_with_their_reason() {
        use super::{check_path, encode_path};
        for (bad, why) in [
            ("../../acme/private/contents/secret.txt", "`..`"),
            ("src/./lib.rs", "`.`"),
            ("..", "`..`"),
            ("/etc/passwd", "starts with `/`"),
            ("src//lib.rs", "empty segment"),
            ("src/", "empty segment"),
            ("", "empty"),
            ("src/lib\u{0}.rs", "control character"),
            ("src/lib\n.rs", "control character"),
            ("src\\..\\x", "backslash"),
        ] {
            let err = check_path(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "the error names the path: {err}");
        }
        assert_eq!(encode_path("src/a b/..x.rs").unwrap(), "src/a%20b/..x.rs");
        assert_eq!(encode_path(".github/orch.yml").unwrap(), ".github/orch.yml");
    }

    #[test]
    fn no_request_path_can_be_normalised_elsewhere() {
        use super::check_url_path;
        assert!(check_url_path("/repos/acme/widgets/contents/src/lib.rs?ref=main").is_ok());
        assert!(check_url_path("/repos/acme/widgets/issues/1/labels/a%2Fb").is_ok());
        for bad in [
            "/repos/acme/widgets/contents/../../private/contents/x",
            "/repos/acme/widgets/contents/%2e%2E/x",
            "/repos/acme/widgets/contents/./x",
            "/repos/acme/widgets//x",
            "/repos/acme/widgets/contents/a%0Ab",
            "/repos/acme/widgets/contents/a%5Cb",
            "repos/acme/widgets",
        ] {
            assert!(check_url_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_request_gets_a_token_for_its_repository_and_permission() {
        use super::token_scope;
        use reqwest::Method;
        let s = token_scope(&Method::GET, "/repos/acme/widgets/contents/src/lib.rs?ref=x");
        assert_eq!(
            (s.repository.as_deref(), s.permissions.clone()),
            (Some("widgets"), vec![("contents", "read")])
        );
        let s = token_scope(&Method::POST, "/repos/acme/widgets/issues/3/comments");
        assert_eq!(s.permissions, vec![("issues", "write")]);
        assert_eq!(
            token_scope(&Method::PATCH, "/repos/acme/w/check-runs/9").permissions,
            vec![("checks", "write")]
        );
        assert_eq!(
            token_scope(&Method::GET, "/repos/acme/w/commits/abc/check-runs").permissions,
            vec![("checks", "read")]
        );
        assert_eq!(
            token_scope(&Method::POST, "/repos/acme/w/pulls").permissions,
            vec![("pull_requests", "write")]
        );
        assert_eq!(
            token_scope(&Method::POST, "/repos/acme/w/git/refs").permissions,
            vec![("contents", "write")]
        );
        assert_eq!(
            token_scope(&Method::GET, "/repos/acme/w/collaborators/bob/permission").permissions,
            vec![("metadata", "read")]
        );
        let s = token_scope(&Method::GET, "/users/orch%5Bbot%5D");
        assert_eq!((s.repository, s.permissions), (None, vec![("metadata", "read")]));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::encode_path_segment("priority: p1/x y"), "priority%3A%20p1%2Fx%20y");
        assert_eq!(super::encode_path_segment("bug"), "bug");
    }

    #[test]
    fn the_next_cursor_comes_from_the_link_header() {
        let link = "<https://api.github.com/app/hook/deliveries?per_page=100&cursor=v1_12345>; rel=\"next\", \
                    <https://api.github.com/app/hook/deliveries?per_page=100>; rel=\"first\"";
        assert_eq!(super::next_cursor(link).as_deref(), Some("v1_12345"));
        assert_eq!(super::next_cursor("<https://x/app/hook/deliveries?cursor=a>; rel=\"prev\""), None);
        assert_eq!(super::next_cursor(""), None);
    }
}
