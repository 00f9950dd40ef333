//! A stateful fake GitHub served over real HTTP, for tests and the demo: an in-memory model of
//! installations, repositories, issues, pull requests, comments, labels, reactions, permissions,
//! check runs and git objects, and a stand-in for codeload, GitHub's archive download host
//! (`/_codeload/…` on the fake's own address), which needs no token and is not rate-limited. It checks the App JWT and installation tokens the way GitHub does,
//! answers with GitHub's status codes and headers, and injects faults on request.
//!
//! One middleware ([`gate`]) does what every request goes through on GitHub: it is logged, its
//! JSON body kept, faults applied, the token and the repository's installation checked and the
//! rate limit counted, and — once the tests attached GitHub's REST description
//! ([`FakeState::check_bodies_against`]) — a body GitHub's schema refuses is refused with a 422
//! and remembered ([`FakeState::body_violations`]). Handlers only model.
//!
//! # Rate limits, and the scaled clock
//!
//! The fake applies GitHub's limits per installation, as [`FakeLimits`] sets them
//! ([`FakeState::set_limits`]):
//! - the primary limit: so many requests an hour (GitHub: 5,000), in a window that starts with
//!   the installation's first request and resets an hour later. Every answer carries
//!   `x-ratelimit-limit`, `-remaining`, `-used`, `-reset` and `-resource`; once the hour's
//!   requests are used up, GitHub answers 403 "API rate limit exceeded" with
//!   `x-ratelimit-remaining: 0`. Not counted: a 304 (a conditional request that found nothing
//!   new), a refused request, and the App's own endpoints (`/app/…`, token exchange,
//!   `/repos/{owner}/{repo}/installation`), which take the App's JWT;
//! - the secondary limits on content-creating requests (`POST` and `PUT`: comments, reactions,
//!   labels, check runs, git objects, pull requests): so many a minute (GitHub: 80) and an hour
//!   (500), over sliding windows. Beyond either GitHub answers 403 "You have exceeded a secondary
//!   rate limit" with `retry-after`, the whole seconds until the request would be allowed.
//!
//! **Time scale.** With scale `S` every window lasts `1/S` of its real length: at `S = 60` the
//! limit's hour is one real minute and its minute one real second. What the fake tells orch is
//! in real time — `x-ratelimit-reset` is the real unix second the scaled hour ends (rounded up),
//! `retry-after` the real seconds to wait (rounded up, at least 1) — so orch, which reads the real
//! clock, sees consistent numbers. A span of `t` real seconds is `t·S` seconds of the emulated
//! GitHub's time ([`FakeLimits::fake_time`]).

// Handlers short-circuit with the ready HTTP answer GitHub would give; boxing those answers
// would buy nothing in a test double.
#![allow(clippy::result_large_err)]

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::rest_schema::RestDescription;

/// The login orch's installation token acts as.
pub const APP_LOGIN: &str = "orch[bot]";
/// The App's slug, as `GET /app` answers (its bot account is `<slug>[bot]`).
pub const APP_SLUG: &str = "orch";

/// The numeric account id of `login`: stable, GitHub-like, and the same as the test payloads'
/// (`tests/common/payloads.rs`, `stable_id("user", login)`), so a payload's `user.id` and the
/// fake's agree. orch's bot account `orch[bot]` has one too, and only orch's token writes as it.
pub fn user_id(login: &str) -> i64 {
    stable_id(&["user", login])
}

/// An id made from `parts` (NUL-separated): FNV-1a, folded into a range that looks like GitHub
/// ids.
fn stable_id(parts: &[&str]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let separator = if i == 0 { None } else { Some(0) };
        for b in separator.into_iter().chain(part.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    1_000_000 + (h % 900_000_000) as i64
}

/// What a fault does to a matching request.
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer with this status (and `Retry-After` seconds, if given) without applying anything.
    Status { code: u16, retry_after: Option<u64> },
    /// Wait this long, then handle the request normally (a slow GitHub).
    Delay(Duration),
    /// Close the connection without applying the request or answering.
    Drop,
    /// Apply the request, then wait this long before answering: with a shorter client timeout,
    /// the change is made and its answer lost.
    ApplyThenStall(Duration),
    /// Apply the request, then close the connection instead of answering.
    ApplyThenDrop,
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

impl Fault {
    pub fn new(method: Method, path_contains: &str, times: u32, kind: FaultKind) -> Self {
        Fault {
            method,
            path_contains: path_contains.to_string(),
            times,
            kind,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FakeComment {
    pub id: i64,
    pub body: String,
    pub author: String,
    /// `User` or `Bot`, as GitHub's `user.type`.
    pub author_type: String,
    /// The App whose installation token wrote it (GitHub's `performed_via_github_app.id`);
    /// None for a comment a person wrote.
    pub via_app: Option<u64>,
}

/// An issue, or the issue side of a pull request (GitHub numbers both from one sequence).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FakeIssue {
    pub number: i64,
    pub title: String,
    pub body: String,
    pub author: String,
    pub state: String,
    pub is_pull: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FakeRepo {
    pub id: i64,
    pub installation: i64,
    pub default_branch: String,
}

/// What an installation token may reach, as it was asked for (`repositories`, `permissions`).
#[derive(Debug, Clone, Default)]
struct TokenScope {
    /// Repository names (without the owner); None: every repository of the installation.
    repositories: Option<Vec<String>>,
    /// Permission → `read` or `write`; None: everything the App may do.
    permissions: Option<BTreeMap<String, String>>,
}

#[derive(Default)]
struct Model {
    /// Installation tokens: token → (installation, expiry unix seconds).
    tokens: HashMap<String, (i64, u64)>,
    /// What each token was scoped to when it was made.
    token_scopes: HashMap<String, TokenScope>,
    /// owner/repo → repository. Requests for a repository that is registered here must come
    /// from its installation (others get GitHub's 404); unregistered ones are open to any token.
    repos: BTreeMap<String, FakeRepo>,
    /// (owner/repo, number) → issue or pull request.
    issues: BTreeMap<(String, i64), FakeIssue>,
    /// (owner/repo, issue number) → comments.
    comments: BTreeMap<(String, i64), Vec<FakeComment>>,
    /// (owner/repo, issue number) → labels.
    labels: BTreeMap<(String, i64), Vec<String>>,
    /// owner/repo → the repository's labels, in the order they were made.
    repo_labels: BTreeMap<String, Vec<FakeLabel>>,
    /// Archives served by the fake's codeload.
    tarball_downloads: u64,
    /// (owner/repo, login) → permission.
    permissions: HashMap<(String, String), String>,
    /// Logins whose account id is not [`user_id`] of the login: accounts renamed in a test.
    user_ids: HashMap<String, i64>,
    check_runs: BTreeMap<i64, FakeCheckRun>,
    /// comment id → reactions as (id, content, login, user type).
    reactions: BTreeMap<i64, Vec<(i64, String, String, String)>>,
    /// (owner/repo, path) → text on the default branch, for repositories without git history.
    files: HashMap<(String, String), String>,
    /// While set and in the future, the primary rate limit is used up until then (unix seconds).
    rate_reset_at: Option<u64>,
    /// The limits applied, and the scale of their clock.
    limits: FakeLimits,
    /// installation → its standing against the limits.
    budgets: BTreeMap<i64, Budget>,
    git: Git,
    faults: Vec<Fault>,
    /// Every request: (method, path).
    log: Vec<(String, String)>,
    /// The requests answered 304 Not Modified, as (method, path): uncounted, as on GitHub.
    not_modified: Vec<(String, String)>,
    /// Requests refused before anything was applied (see `FakeState::refused`).
    refused: Vec<(String, String)>,
    /// The JSON bodies of those requests: (method, path, body).
    refused_bodies: Vec<(String, String, serde_json::Value)>,
    /// Every JSON body received: (method, path, body), for checks against GitHub's description.
    bodies: Vec<(String, String, serde_json::Value)>,
    /// GitHub's REST description, when attached: request bodies are checked against it.
    description: Option<Arc<RestDescription>>,
    /// What the description found wrong with request bodies, one line per problem.
    body_violations: Vec<String>,
    /// The App's webhook deliveries, one per attempt, in the order they were made.
    hook_deliveries: Vec<FakeHookDelivery>,
    /// Where redeliveries are sent: (orch's base URL, webhook secret).
    webhook_target: Option<(String, String)>,
    /// The GUIDs of redelivery requests (`POST /app/hook/deliveries/{id}/attempts`), in order.
    redelivery_requests: Vec<String>,
}

/// One attempt to deliver a webhook to orch, as GitHub keeps it for the App.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FakeHookDelivery {
    pub id: i64,
    pub guid: String,
    /// Unix seconds.
    pub delivered_at: u64,
    pub redelivery: bool,
    /// What orch's endpoint answered (0: it could not be reached).
    pub status_code: u16,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<i64>,
    /// The body sent (and sent again on redelivery).
    pub payload: serde_json::Value,
}

impl FakeHookDelivery {
    fn json(&self) -> serde_json::Value {
        let ok = (200..300).contains(&self.status_code);
        json!({ "id": self.id, "guid": self.guid, "delivered_at": format_timestamp(self.delivered_at),
                "redelivery": self.redelivery, "duration": 0.01,
                "status": if ok { "OK".to_string() } else { format!("Invalid HTTP Response: {}", self.status_code) },
                "status_code": self.status_code, "event": self.event, "action": self.action,
                "installation_id": self.installation_id, "repository_id": null })
    }
}

/// GitHub's rate limits as the fake applies them to each installation (see the module's
/// documentation). `None` switches a limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeLimits {
    /// The primary limit: requests an hour.
    pub requests_per_hour: Option<u64>,
    /// The secondary limit on content-creating requests a minute.
    pub content_per_minute: Option<u64>,
    /// The secondary limit on content-creating requests an hour.
    pub content_per_hour: Option<u64>,
    /// How much faster than real time the limits' clock runs (1: real time).
    pub time_scale: f64,
}

impl FakeLimits {
    /// GitHub's limits for an installation: 5,000 requests an hour, 80 content-creating
    /// requests a minute and 500 an hour, in real time.
    pub const GITHUB: FakeLimits = FakeLimits {
        requests_per_hour: Some(5000),
        content_per_minute: Some(80),
        content_per_hour: Some(500),
        time_scale: 1.0,
    };

    /// No limit at all (requests are still counted).
    pub const OFF: FakeLimits = FakeLimits {
        requests_per_hour: None,
        content_per_minute: None,
        content_per_hour: None,
        time_scale: 1.0,
    };

    /// The same limits on a clock `scale` times faster than real time.
    pub fn scaled(self, scale: f64) -> Self {
        assert!(scale.is_finite() && scale > 0.0, "a time scale is positive");
        Self { time_scale: scale, ..self }
    }

    /// The real length of the limits' hour.
    pub fn hour(&self) -> Duration {
        Duration::from_secs_f64(3600.0 / self.time_scale)
    }

    /// The real length of the limits' minute.
    pub fn minute(&self) -> Duration {
        Duration::from_secs_f64(60.0 / self.time_scale)
    }

    /// The emulated GitHub's time that `real` spans.
    pub fn fake_time(&self, real: Duration) -> Duration {
        real.mul_f64(self.time_scale)
    }
}

impl Default for FakeLimits {
    /// What the fake applies unless told otherwise: GitHub's primary limit, no secondary limit
    /// (tests that are not about them post faster than GitHub allows), real time.
    fn default() -> Self {
        FakeLimits {
            content_per_minute: None,
            content_per_hour: None,
            ..FakeLimits::GITHUB
        }
    }
}

/// What an installation did against the limits since the fake started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimitCounters {
    /// Requests counted against the primary limit.
    pub counted: u64,
    /// Of those, content-creating requests.
    pub content_creating: u64,
    /// 403s sent because the primary limit was used up.
    pub primary_refusals: u64,
    /// 403s sent for a secondary limit.
    pub secondary_refusals: u64,
}

impl LimitCounters {
    /// Every 403 sent for a rate limit.
    pub fn refusals(&self) -> u64 {
        self.primary_refusals + self.secondary_refusals
    }
}

/// One installation's standing against the limits.
#[derive(Default)]
struct Budget {
    /// When the primary limit's current hour began (real unix seconds; None: no request yet).
    hour_started: Option<f64>,
    /// Requests counted in that hour.
    used: u64,
    /// When the content-creating requests of the last (scaled) hour were made (real unix seconds).
    content_times: VecDeque<f64>,
    counters: LimitCounters,
}

/// Why a request is refused for a rate limit.
enum Refusal {
    /// The primary limit is used up until the reset.
    Primary { limit: u64, used: u64, reset: u64 },
    /// A secondary limit: allowed again after this many real seconds.
    Secondary { retry_after: u64 },
}

impl Model {
    /// The installation's primary rate limit as (limit, used, reset in real unix seconds).
    fn rate_status(&self, installation: i64) -> (u64, u64, u64) {
        let limit = self.limits.requests_per_hour.unwrap_or(u64::MAX);
        let Some(b) = self.budgets.get(&installation) else {
            return (limit, 0, unix_now() + self.limits.hour().as_secs_f64().ceil() as u64);
        };
        let started = b.hour_started.unwrap_or_else(real_unix_now);
        let reset = (started + self.limits.hour().as_secs_f64()).ceil() as u64;
        (limit, b.used, reset)
    }

    /// Counts a request of `installation` against the limits, or says why GitHub refuses it.
    fn spend(&mut self, installation: i64, content_creating: bool) -> Result<(), Refusal> {
        let limits = self.limits;
        let now = real_unix_now();
        let (hour, minute) = (limits.hour().as_secs_f64(), limits.minute().as_secs_f64());
        let b = self.budgets.entry(installation).or_default();
        if !b.hour_started.is_some_and(|started| now < started + hour) {
            b.hour_started = Some(now);
            b.used = 0;
        }
        if let Some(limit) = limits.requests_per_hour {
            if b.used >= limit {
                b.counters.primary_refusals += 1;
                let reset = (b.hour_started.unwrap_or(now) + hour).ceil() as u64;
                return Err(Refusal::Primary {
                    limit,
                    used: b.used,
                    reset,
                });
            }
        }
        let secondary = limits.content_per_minute.is_some() || limits.content_per_hour.is_some();
        if content_creating && secondary {
            while b.content_times.front().is_some_and(|t| *t <= now - hour) {
                b.content_times.pop_front();
            }
            // The request is allowed once the oldest of the `limit` latest requests leaves the
            // window: the wait is the latest such moment over both windows.
            let mut wait: f64 = 0.0;
            for (limit, window) in [(limits.content_per_minute, minute), (limits.content_per_hour, hour)] {
                let Some(limit) = limit else { continue };
                let in_window = b.content_times.iter().rev().take_while(|t| **t > now - window).count() as u64;
                if limit == 0 {
                    wait = wait.max(window);
                } else if in_window >= limit {
                    let oldest = b.content_times[b.content_times.len() - limit as usize];
                    wait = wait.max(oldest + window - now);
                }
            }
            if wait > 0.0 {
                b.counters.secondary_refusals += 1;
                return Err(Refusal::Secondary {
                    retry_after: (wait.ceil() as u64).max(1),
                });
            }
            b.content_times.push_back(now);
        }
        b.used += 1;
        b.counters.counted += 1;
        if content_creating {
            b.counters.content_creating += 1;
        }
        Ok(())
    }

    /// Takes back a request's count: GitHub does not count a 304.
    fn refund(&mut self, installation: i64) {
        if let Some(b) = self.budgets.get_mut(&installation) {
            b.used = b.used.saturating_sub(1);
            b.counters.counted = b.counters.counted.saturating_sub(1);
        }
    }

    /// The next issue or pull request number of `repo`.
    fn next_number(&self, repo: &str) -> i64 {
        let issues = self.issues.keys().filter(|(r, _)| r == repo).map(|(_, n)| *n);
        let pulls = self.git.pulls.keys().filter(|(r, _)| r == repo).map(|(_, n)| *n);
        issues.chain(pulls).max().unwrap_or(0) + 1
    }
}

/// A label of a repository.
#[derive(Debug, Clone)]
struct FakeLabel {
    id: i64,
    name: String,
    description: Option<String>,
    color: String,
}

impl FakeLabel {
    fn new(repo: &str, name: &str, description: Option<String>) -> Self {
        FakeLabel {
            // Stable: the same label set again is the same label, with the same ETag.
            id: stable_id(&["label", repo, name]),
            name: name.to_string(),
            description,
            // GitHub's grey for a label made by adding it to an issue.
            color: "ededed".into(),
        }
    }

    /// The label as GitHub's REST API shows one.
    fn json(&self, repo: &str) -> serde_json::Value {
        let escaped: String = self
            .name
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        json!({ "id": self.id, "node_id": format!("LA_{}", self.id),
                "url": format!("https://api.github.com/repos/{repo}/labels/{escaped}"),
                "name": self.name, "description": self.description, "color": self.color, "default": false })
    }
}

impl Model {
    /// Makes the labels of `names` that `repo` does not have yet, without a description, as
    /// GitHub does when an issue is given a label its repository lacks.
    fn ensure_repo_labels(&mut self, repo: &str, names: &[String]) {
        let list = self.repo_labels.entry(repo.to_string()).or_default();
        for name in names {
            if !list.iter().any(|l| l.name == *name) {
                list.push(FakeLabel::new(repo, name, None));
            }
        }
    }

    /// Labels of `repo` named `names` as the REST API shows them on an issue.
    fn labels_json(&self, repo: &str, names: &[String]) -> serde_json::Value {
        let known = self.repo_labels.get(repo).map(Vec::as_slice).unwrap_or_default();
        json!(names
            .iter()
            .map(|name| match known.iter().find(|l| l.name == *name) {
                Some(label) => label.json(repo),
                None => FakeLabel::new(repo, name, None).json(repo),
            })
            .collect::<Vec<_>>())
    }
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
    /// Commits made through the API so far: each one's stamp (see [`Git::made_commit`]).
    made: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FakePull {
    pub number: i64,
    pub title: String,
    pub head: String,
    pub base: String,
    pub body: String,
    pub author: String,
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
        self.commit_stamped(tree, parents, message, "")
    }

    /// A commit made with `POST /git/commits`. GitHub stamps it with its author and committer
    /// dates, so the same request made again later is another commit with another sha; the
    /// fake stamps each with a count, so that nothing can count on making the same commit twice
    /// (a run repeated after a crash makes a new one).
    fn made_commit(&mut self, tree: &str, parents: Vec<String>, message: &str) -> String {
        self.made += 1;
        let stamp = format!("|made {}", self.made);
        self.commit_stamped(tree, parents, message, &stamp)
    }

    fn commit_stamped(&mut self, tree: &str, parents: Vec<String>, message: &str, stamp: &str) -> String {
        let sha = object_sha("commit", &format!("{tree}|{}|{message}{stamp}", parents.join(",")));
        self.commits.insert(sha.clone(), (tree.to_string(), parents, message.to_string()));
        sha
    }

    /// The tip commit of `branch` and its files (path → blob).
    fn tip(&self, repo: &str, branch: &str) -> Option<(String, BTreeMap<String, String>)> {
        let head = self.refs.get(&(repo.to_string(), format!("heads/{branch}")))?;
        Some((head.clone(), self.trees[&self.commits[head].0].clone()))
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
    pub title: Option<String>,
    pub summary: String,
    pub text: Option<String>,
    pub annotations: Vec<serde_json::Value>,
    pub actions: Vec<serde_json::Value>,
    /// Annotations received per request, in order.
    pub annotation_batches: Vec<usize>,
    /// The App that created it (GitHub's `app.id`): only Apps create check runs.
    pub app_id: u64,
    /// Where the run's "Details" link leads, when its App set one.
    pub details_url: Option<String>,
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

/// Now in unix seconds, with the fraction the scaled windows need.
fn real_unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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

/// GitHub's account of the primary limit, sent with every authenticated answer.
fn rate_headers(h: &mut HeaderMap, limit: u64, used: u64, reset: u64) {
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(limit.saturating_sub(used)));
    h.insert("x-ratelimit-used", HeaderValue::from(used));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
}

/// Requests GitHub counts against its secondary limits on content creation.
fn creates_content(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PUT
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

fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not Found")
}

fn unprocessable(text: &str) -> Response {
    message(StatusCode::UNPROCESSABLE_ENTITY, text)
}

fn json_body(body: &[u8]) -> Result<serde_json::Value, Response> {
    serde_json::from_slice(body).map_err(|_| message(StatusCode::BAD_REQUEST, "Problems parsing JSON"))
}

/// Ends the connection without an answer, as a network failure would: unwinding the task that
/// serves the connection drops its socket.
fn drop_connection() -> ! {
    std::panic::resume_unwind(Box::new("fake GitHub: connection dropped"))
}

/// Every request passes here first; see the module's documentation.
async fn gate(State(s): State<Arc<FakeState>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return message(StatusCode::BAD_REQUEST, "Problems reading the body");
    };
    s.record(&method, &path, &bytes);
    let fault = s.arrive(&method, &path);
    match &fault {
        Some(FaultKind::Status { code, retry_after }) => {
            let mut r = message(
                StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "injected fault",
            );
            if let Some(secs) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from(*secs));
            }
            s.note_refused(&method, &path, &bytes);
            return r;
        }
        Some(FaultKind::Delay(d)) => tokio::time::sleep(*d).await,
        Some(FaultKind::Drop) => drop_connection(),
        _ => {}
    }
    // Endpoints that take the App's JWT check it themselves, and codeload takes no credentials;
    // the rest need an installation token.
    let authenticated = !(path == "/app" || path.starts_with("/app/") || path.ends_with("/installation") || path.starts_with(CODELOAD));
    let installation = if authenticated {
        match s.authorize(&parts.headers, &method, &path) {
            Ok(installation) => Some(installation),
            Err(r) => {
                s.note_refused(&method, &path, &bytes);
                return r;
            }
        }
    } else {
        None
    };
    if let Err(r) = s.check_body(&method, &path, &bytes) {
        return r;
    }
    let mut response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if let Some(installation) = installation {
        let mut m = s.model();
        if response.status() == StatusCode::NOT_MODIFIED {
            m.refund(installation);
        }
        if m.limits.requests_per_hour.is_some() {
            let (limit, used, reset) = m.rate_status(installation);
            drop(m);
            rate_headers(response.headers_mut(), limit, used, reset);
        }
    }
    match fault {
        Some(FaultKind::ApplyThenStall(d)) => {
            tokio::time::sleep(d).await;
            response
        }
        Some(FaultKind::ApplyThenDrop) => drop_connection(),
        _ => response,
    }
}

impl FakeState {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request answered with a refusal before anything was applied (an injected status, bad
    /// credentials, a rate limit): it stays in the log, and is listed here too.
    fn note_refused(&self, method: &Method, path: &str, body: &[u8]) {
        let mut m = self.model();
        m.refused.push((method.to_string(), path.to_string()));
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            m.refused_bodies.push((method.to_string(), path.to_string(), v));
        }
    }

    fn record(&self, method: &Method, path: &str, body: &[u8]) {
        let mut m = self.model();
        m.log.push((method.to_string(), path.to_string()));
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            m.bodies.push((method.to_string(), path.to_string(), v));
        }
    }

    /// Checks a request's JSON body against GitHub's description, when one is attached: GitHub
    /// answers a body its schema refuses with 422 "Invalid request", and so does the fake, which
    /// also remembers the problems for the tests to assert on.
    fn check_body(&self, method: &Method, path: &str, body: &[u8]) -> Result<(), Response> {
        let mut m = self.model();
        let Some(description) = m.description.clone() else { return Ok(()) };
        if body.is_empty() {
            return Ok(());
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Ok(()); // the handler answers "Problems parsing JSON"
        };
        let problems = description.problems(method.as_str(), path, &value);
        if problems.is_empty() {
            return Ok(());
        }
        m.body_violations.extend(problems.iter().cloned());
        drop(m);
        Err(unprocessable(&format!("Invalid request.\n\n{}", problems.join("\n"))))
    }

    /// From now on, request bodies are checked against `description` (see [`gate`]).
    pub fn check_bodies_against(&self, description: RestDescription) {
        self.model().description = Some(Arc::new(description));
    }

    /// Every problem GitHub's description found with a request body since it was attached.
    pub fn body_violations(&self) -> Vec<String> {
        self.model().body_violations.clone()
    }

    /// Takes the fault that applies to a request, if any.
    fn arrive(&self, method: &Method, path: &str) -> Option<FaultKind> {
        let mut m = self.model();
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

    /// Checks an installation token as GitHub does: known and unexpired, its installation the
    /// repository's, and the rate limit not used up. Counts the request against the limit.
    fn authorize(&self, headers: &HeaderMap, method: &Method, path: &str) -> Result<i64, Response> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("token ")))
            .ok_or_else(|| message(StatusCode::UNAUTHORIZED, "Requires authentication"))?;
        let mut m = self.model();
        let installation = match m.tokens.get(token) {
            Some((installation, expiry)) if *expiry > unix_now() => *installation,
            _ => return Err(message(StatusCode::UNAUTHORIZED, "Bad credentials")),
        };
        if let Some(repo) = repo_of(path) {
            // GitHub hides repositories an installation cannot see behind a 404.
            if m.repos.get(&repo).is_some_and(|r| r.installation != installation) {
                return Err(not_found());
            }
            // A token asked for some repositories sees no other: GitHub answers 404, as for a
            // repository that does not exist.
            let scope = m.token_scopes.get(token).cloned().unwrap_or_default();
            let name = repo.split_once('/').map(|(_, n)| n).unwrap_or_default();
            if scope.repositories.as_ref().is_some_and(|names| !names.iter().any(|n| n == name)) {
                return Err(not_found());
            }
            // A token without the permission the endpoint needs is refused.
            if let (Some(permissions), Some((needed, level))) = (&scope.permissions, permission_needed(method, path)) {
                let held = permissions.get(needed).map(String::as_str);
                let enough = match level {
                    "read" => matches!(held, Some("read" | "write")),
                    _ => held == Some("write"),
                };
                if !enough {
                    return Err(message(StatusCode::FORBIDDEN, "Resource not accessible by integration"));
                }
            }
        }
        if let Some(reset) = m.rate_reset_at {
            if unix_now() < reset {
                m.budgets.entry(installation).or_default().counters.primary_refusals += 1;
                drop(m);
                let mut r = message(StatusCode::FORBIDDEN, "API rate limit exceeded for installation.");
                r.headers_mut().insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
                r.headers_mut().insert("x-ratelimit-reset", HeaderValue::from(reset));
                return Err(r);
            }
            m.rate_reset_at = None;
        }
        match m.spend(installation, creates_content(method)) {
            Ok(()) => Ok(installation),
            Err(Refusal::Primary { limit, used, reset }) => {
                drop(m);
                let mut r = message(StatusCode::FORBIDDEN, "API rate limit exceeded for installation.");
                rate_headers(r.headers_mut(), limit, used, reset);
                Err(r)
            }
            Err(Refusal::Secondary { retry_after }) => {
                let status = m.limits.requests_per_hour.map(|_| m.rate_status(installation));
                drop(m);
                let mut r = answer(
                    StatusCode::FORBIDDEN,
                    json!({
                        "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID FAKE:0001.",
                        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
                    }),
                );
                if let Some((limit, used, reset)) = status {
                    rate_headers(r.headers_mut(), limit, used, reset);
                }
                r.headers_mut().insert("retry-after", HeaderValue::from(retry_after));
                Err(r)
            }
        }
    }

    /// Checks the App's JWT as GitHub does: RS256 by the App's key, `iss` the App id, `iat` not
    /// in the future and a lifetime of at most ten minutes.
    fn verify_jwt(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(jwt) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err(message(StatusCode::UNAUTHORIZED, "A JSON web token could not be decoded"));
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[self.app_id.to_string()]);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<super::auth::AppClaims>(jwt, &self.public_key, &validation)
            .map_err(|e| message(StatusCode::UNAUTHORIZED, &format!("A JSON web token could not be decoded: {e}")))?
            .claims;
        if claims.exp.saturating_sub(claims.iat) > 600 || claims.iat > unix_now() {
            return Err(message(
                StatusCode::UNAUTHORIZED,
                "'Expiration time' claim ('exp') is too far in the future",
            ));
        }
        Ok(())
    }

    fn next_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn inject(&self, fault: Fault) {
        self.model().faults.push(fault);
    }

    /// Drops every fault still waiting to be applied.
    pub fn clear_faults(&self) {
        self.model().faults.clear();
    }

    /// Registers a repository of `installation` whose default branch is `default_branch`.
    pub fn add_repo(&self, repo: &str, installation: i64, default_branch: &str) {
        let id = self.next_id();
        self.model().repos.insert(
            repo.to_string(),
            FakeRepo {
                id,
                installation,
                default_branch: default_branch.to_string(),
            },
        );
    }

    /// A user opens an issue; returns its number.
    pub fn open_issue(&self, repo: &str, title: &str, body: &str, author: &str) -> i64 {
        let mut m = self.model();
        let number = m.next_number(repo);
        let issue = FakeIssue {
            number,
            title: title.to_string(),
            body: body.to_string(),
            author: author.to_string(),
            state: "open".into(),
            is_pull: false,
        };
        m.issues.insert((repo.to_string(), number), issue);
        number
    }

    pub fn issue(&self, repo: &str, number: i64) -> Option<FakeIssue> {
        self.model().issues.get(&(repo.to_string(), number)).cloned()
    }

    /// A user comments on an issue or pull request; returns the comment's id.
    pub fn user_comment(&self, repo: &str, issue: i64, login: &str, user_type: &str, body: &str) -> i64 {
        let id = self.next_id();
        self.model()
            .comments
            .entry((repo.to_string(), issue))
            .or_default()
            .push(FakeComment {
                id,
                body: body.to_string(),
                author: login.to_string(),
                author_type: user_type.to_string(),
                via_app: None,
            });
        id
    }

    /// Comments of an issue as the fake holds them.
    pub fn comments(&self, repo: &str, issue: i64) -> Vec<FakeComment> {
        self.model().comments.get(&(repo.to_string(), issue)).cloned().unwrap_or_default()
    }

    /// Comments orch made on an issue.
    pub fn bot_comments(&self, repo: &str, issue: i64) -> Vec<FakeComment> {
        self.comments(repo, issue).into_iter().filter(|c| c.author == APP_LOGIN).collect()
    }

    /// JSON bodies received, as (method, path, body).
    pub fn bodies(&self) -> Vec<(String, String, serde_json::Value)> {
        self.model().bodies.clone()
    }

    /// Requests received, as (method, path).
    pub fn log(&self) -> Vec<(String, String)> {
        self.model().log.clone()
    }

    /// The requests answered 304 Not Modified (a conditional read whose ETag still matched), as
    /// (method, path): GitHub does not count them against the rate limit.
    pub fn not_modified(&self) -> Vec<(String, String)> {
        self.model().not_modified.clone()
    }

    /// Requests refused before anything was applied (injected statuses, bad credentials, rate
    /// limits), as (method, path); each is in [`Self::log`] too.
    pub fn refused(&self) -> Vec<(String, String)> {
        self.model().refused.clone()
    }

    /// The JSON bodies of the refused requests, as (method, path, body); each is in
    /// [`Self::bodies`] too.
    pub fn refused_bodies(&self) -> Vec<(String, String, serde_json::Value)> {
        self.model().refused_bodies.clone()
    }

    /// Requests received from the `start`-th on (for callers that follow the log as it grows).
    pub fn log_from(&self, start: usize) -> Vec<(String, String)> {
        let m = self.model();
        m.log.get(start..).map(<[_]>::to_vec).unwrap_or_default()
    }

    pub fn labels(&self, repo: &str, issue: i64) -> Vec<String> {
        self.model().labels.get(&(repo.to_string(), issue)).cloned().unwrap_or_default()
    }

    /// Labels set by a user (no request, no log entry); the repository gets those it lacks.
    pub fn set_labels(&self, repo: &str, issue: i64, labels: &[&str]) {
        let names: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        let mut m = self.model();
        m.ensure_repo_labels(repo, &names);
        m.labels.insert((repo.to_string(), issue), names);
    }

    /// The repository's labels are now `labels`, as (name, description; empty: none), in this
    /// order (no request, no log entry). Issues keep the labels they have.
    pub fn set_repo_labels(&self, repo: &str, labels: &[(&str, &str)]) {
        let list = labels
            .iter()
            .map(|(name, description)| FakeLabel::new(repo, name, Some(description.to_string()).filter(|d| !d.is_empty())))
            .collect();
        self.model().repo_labels.insert(repo.to_string(), list);
    }

    /// The repository's labels as (name, description), in the order GitHub lists them.
    pub fn repo_labels(&self, repo: &str) -> Vec<(String, Option<String>)> {
        self.model()
            .repo_labels
            .get(repo)
            .map(|list| list.iter().map(|l| (l.name.clone(), l.description.clone())).collect())
            .unwrap_or_default()
    }

    /// How many archives the fake's codeload served (tarball downloads that followed their
    /// redirect).
    pub fn tarball_downloads(&self) -> u64 {
        self.model().tarball_downloads
    }

    /// `login` is the account `id` (a renamed account keeps its id; a freed login taken over is
    /// another account). Shown in the permission API's `user`; payloads are the test's to build.
    pub fn set_user_id(&self, login: &str, id: i64) {
        self.model().user_ids.insert(login.to_string(), id);
    }

    pub fn set_permission(&self, repo: &str, login: &str, permission: &str) {
        self.model()
            .permissions
            .insert((repo.to_string(), login.to_string()), permission.to_string());
    }

    /// A user reacts on GitHub (there is no webhook for it; orch polls).
    pub fn react(&self, comment_id: i64, login: &str, user_type: &str, content: &str) {
        let id = self.next_id();
        self.model()
            .reactions
            .entry(comment_id)
            .or_default()
            .push((id, content.to_string(), login.to_string(), user_type.to_string()));
    }

    /// The reactions of a comment as (content, login).
    pub fn reactions(&self, comment_id: i64) -> Vec<(String, String)> {
        self.model()
            .reactions
            .get(&comment_id)
            .map(|l| l.iter().map(|(_, c, login, _)| (c.clone(), login.clone())).collect())
            .unwrap_or_default()
    }

    /// A file on the default branch of a repository without git history.
    pub fn set_file(&self, repo: &str, path: &str, text: &str) {
        self.model().files.insert((repo.to_string(), path.to_string()), text.to_string());
    }

    /// Creates `repo` with one commit holding `files` on `branch`; returns the commit.
    pub fn init_repo(&self, repo: &str, branch: &str, files: &[(&str, &str)]) -> String {
        let mut m = self.model();
        let entries = files.iter().map(|(path, text)| (path.to_string(), m.git.blob(text))).collect();
        let tree = m.git.tree(entries);
        let commit = m.git.commit(&tree, vec![], "initial");
        m.git.refs.insert((repo.to_string(), format!("heads/{branch}")), commit.clone());
        commit
    }

    /// A commit on top of `branch` that sets or (with None) deletes files, as a push would.
    /// The branch is created from the default branch's tip when it does not exist.
    pub fn push(&self, repo: &str, branch: &str, changes: &[(&str, Option<&str>)]) -> String {
        let mut m = self.model();
        let key = (repo.to_string(), format!("heads/{branch}"));
        let head = match m.git.refs.get(&key) {
            Some(h) => h.clone(),
            None => m.git.refs[&(repo.to_string(), format!("heads/{}", default_branch(&m, repo)))].clone(),
        };
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
        m.git.refs.insert(key, commit.clone());
        commit
    }

    /// A user opens a pull request from `head` into `base`; returns its number.
    pub fn open_pull(&self, repo: &str, title: &str, head: &str, base: &str, author: &str) -> i64 {
        let mut m = self.model();
        let number = m.next_number(repo);
        m.git.pulls.insert(
            (repo.to_string(), number),
            FakePull {
                number,
                title: title.to_string(),
                head: head.to_string(),
                base: base.to_string(),
                body: String::new(),
                author: author.to_string(),
            },
        );
        number
    }

    /// The files at the tip of `branch`, path → text; None when there is no such branch.
    pub fn files_at(&self, repo: &str, branch: &str) -> Option<BTreeMap<String, String>> {
        let m = self.model();
        let (_, tree) = m.git.tip(repo, branch)?;
        Some(tree.iter().map(|(p, b)| (p.clone(), m.git.blobs[b].clone())).collect())
    }

    /// The parents and message of a branch's tip commit.
    /// The commit `branch` points at.
    pub fn branch_sha(&self, repo: &str, branch: &str) -> Option<String> {
        self.model().git.refs.get(&(repo.to_string(), format!("heads/{branch}"))).cloned()
    }

    pub fn tip(&self, repo: &str, branch: &str) -> Option<(Vec<String>, String)> {
        let m = self.model();
        let head = m.git.refs.get(&(repo.to_string(), format!("heads/{branch}")))?;
        let (_, parents, message) = &m.git.commits[head];
        Some((parents.clone(), message.clone()))
    }

    /// The branches of `repo`.
    pub fn branches(&self, repo: &str) -> Vec<String> {
        self.model()
            .git
            .refs
            .keys()
            .filter(|(r, _)| r == repo)
            .filter_map(|(_, name)| name.strip_prefix("heads/").map(str::to_string))
            .collect()
    }

    pub fn pulls(&self, repo: &str) -> Vec<FakePull> {
        self.model()
            .git
            .pulls
            .iter()
            .filter(|((r, _), _)| r == repo)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Uses up the primary rate limit until `for_` from now (rounded up to whole seconds, as
    /// GitHub's reset is).
    pub fn exhaust_rate_limit(&self, for_: Duration) {
        let reset = unix_now() + for_.as_secs_f64().ceil() as u64;
        self.model().rate_reset_at = Some(reset);
    }

    /// Lets each hour hold only `per_hour` requests (GitHub's primary rate limit; 5,000 unless set).
    pub fn set_rate_limit(&self, per_hour: u64) {
        self.model().limits.requests_per_hour = Some(per_hour);
    }

    /// Applies `limits` from now on (the counts so far stay).
    pub fn set_limits(&self, limits: FakeLimits) {
        self.model().limits = limits;
    }

    pub fn limits(&self) -> FakeLimits {
        self.model().limits
    }

    /// Requests counted against the primary limit in each installation's current hour, summed.
    pub fn rate_used(&self) -> u64 {
        self.model().budgets.values().map(|b| b.used).sum()
    }

    /// What `installation` did against the limits since the fake started.
    pub fn limit_counters(&self, installation: i64) -> LimitCounters {
        self.model().budgets.get(&installation).map(|b| b.counters).unwrap_or_default()
    }

    pub fn check_run(&self, id: i64) -> Option<FakeCheckRun> {
        self.model().check_runs.get(&id).cloned()
    }

    /// The check runs of `repo`, oldest first.
    pub fn check_runs(&self, repo: &str) -> Vec<FakeCheckRun> {
        self.model().check_runs.values().filter(|r| r.repo == repo).cloned().collect()
    }

    /// Expires every installation token now (as if GitHub revoked them).
    pub fn revoke_tokens(&self) {
        let mut m = self.model();
        m.tokens.clear();
        m.token_scopes.clear();
    }

    /// Another App (`app_id`, acting as `login`, e.g. `other[bot]`) comments on an issue through
    /// its own installation token; returns the comment's id.
    pub fn app_comment(&self, repo: &str, issue: i64, app_id: u64, login: &str, body: &str) -> i64 {
        let id = self.next_id();
        self.model()
            .comments
            .entry((repo.to_string(), issue))
            .or_default()
            .push(FakeComment {
                id,
                body: body.to_string(),
                author: login.to_string(),
                author_type: "Bot".into(),
                via_app: Some(app_id),
            });
        id
    }

    /// Another App (`app_id`) creates a check run on `head_sha`; returns its id.
    pub fn app_check_run(&self, repo: &str, app_id: u64, name: &str, head_sha: &str, summary: &str) -> i64 {
        let id = self.next_id();
        let run = FakeCheckRun {
            id,
            repo: repo.to_string(),
            name: name.to_string(),
            head_sha: head_sha.to_string(),
            status: "completed".into(),
            conclusion: Some("neutral".into()),
            title: None,
            summary: summary.to_string(),
            text: None,
            annotations: vec![],
            actions: vec![],
            annotation_batches: vec![],
            app_id,
            details_url: None,
        };
        self.model().check_runs.insert(id, run);
        id
    }

    /// GitHub delivered `event` with the GUID `guid` and orch's endpoint answered `status_code`
    /// (a test's way to say a delivery was missed). The payload is `{"action": action}`; see
    /// [`FakeState::record_hook_delivery_with_payload`] for a real one. Returns the attempt's id.
    pub fn record_hook_delivery(&self, guid: &str, event: &str, action: Option<&str>, status_code: u16) -> i64 {
        self.record_hook_delivery_with_payload(guid, event, action, status_code, json!({ "action": action }))
    }

    /// [`FakeState::record_hook_delivery`] with the payload a redelivery sends again.
    pub fn record_hook_delivery_with_payload(
        &self,
        guid: &str,
        event: &str,
        action: Option<&str>,
        status_code: u16,
        payload: serde_json::Value,
    ) -> i64 {
        self.record_hook_attempts(guid, event, action, payload, &[status_code])[0]
    }

    /// Several attempts of one delivery at once (no reconciliation run sees only some of them):
    /// the first is the original, the others redeliveries, answered with `status_codes` in order.
    /// Returns their ids.
    pub fn record_hook_attempts(
        &self,
        guid: &str,
        event: &str,
        action: Option<&str>,
        payload: serde_json::Value,
        status_codes: &[u16],
    ) -> Vec<i64> {
        let installation_id = payload.pointer("/installation/id").and_then(|v| v.as_i64());
        let mut m = self.model();
        let mut ids = Vec::new();
        for (n, status_code) in status_codes.iter().enumerate() {
            let id = self.next_id();
            ids.push(id);
            m.hook_deliveries.push(FakeHookDelivery {
                id,
                guid: guid.to_string(),
                delivered_at: unix_now(),
                redelivery: n > 0,
                status_code: *status_code,
                event: event.to_string(),
                action: action.map(str::to_string),
                installation_id,
                payload: payload.clone(),
            });
        }
        ids
    }

    /// A redelivery of `guid` (its latest attempt, again) that orch's endpoint answered with
    /// `status_code`, as if someone had pressed "Redeliver" on GitHub. Returns the attempt's id.
    pub fn record_hook_redelivery(&self, guid: &str, status_code: u16) -> Option<i64> {
        let id = self.next_id();
        let mut m = self.model();
        let latest = m.hook_deliveries.iter().rev().find(|d| d.guid == guid)?.clone();
        m.hook_deliveries.push(FakeHookDelivery {
            id,
            delivered_at: unix_now(),
            redelivery: true,
            status_code,
            ..latest
        });
        Some(id)
    }

    /// Where redeliveries go: orch's base URL (`/webhook` is appended) and the webhook secret
    /// they are signed with.
    pub fn set_webhook_target(&self, base_url: &str, secret: &str) {
        self.model().webhook_target = Some((base_url.trim_end_matches('/').to_string(), secret.to_string()));
    }

    /// Every attempt to deliver `guid`, oldest first (redeliveries included).
    pub fn hook_attempts(&self, guid: &str) -> Vec<FakeHookDelivery> {
        self.model().hook_deliveries.iter().filter(|d| d.guid == guid).cloned().collect()
    }

    /// The GUIDs GitHub was asked to redeliver, in order (one entry per request).
    pub fn redelivery_requests(&self) -> Vec<String> {
        self.model().redelivery_requests.clone()
    }
}

async fn get_app(State(s): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    if let Err(r) = s.verify_jwt(&headers) {
        return r;
    }
    answer(
        StatusCode::OK,
        json!({ "id": s.app_id, "slug": APP_SLUG, "name": "orch", "owner": { "login": "acme" } }),
    )
}

#[derive(serde::Deserialize)]
struct DeliveryPaging {
    per_page: Option<usize>,
    cursor: Option<String>,
}

/// `GET /app/hook/deliveries`: newest first, cursor pagination with a `Link` header as GitHub's.
async fn list_hook_deliveries(State(s): State<Arc<FakeState>>, headers: HeaderMap, Query(paging): Query<DeliveryPaging>) -> Response {
    if let Err(r) = s.verify_jwt(&headers) {
        return r;
    }
    let per_page = paging.per_page.unwrap_or(30).clamp(1, 100);
    // The cursor is the id of the last delivery of the previous page.
    let after = match paging.cursor.as_deref().map(|c| c.strip_prefix("v1_").unwrap_or(c).parse::<i64>()) {
        None => i64::MAX,
        Some(Ok(id)) => id,
        Some(Err(_)) => return unprocessable("Invalid cursor"),
    };
    let m = s.model();
    let mut older: Vec<&FakeHookDelivery> = m.hook_deliveries.iter().filter(|d| d.id < after).collect();
    older.sort_by_key(|d| std::cmp::Reverse(d.id));
    let more = older.len() > per_page;
    older.truncate(per_page);
    let page: Vec<serde_json::Value> = older.iter().map(|d| d.json()).collect();
    let last = older.last().map(|d| d.id);
    drop(m);
    let mut r = answer(StatusCode::OK, json!(page));
    if let (true, Some(last)) = (more, last) {
        let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
        let link = format!("<http://{host}/app/hook/deliveries?per_page={per_page}&cursor=v1_{last}>; rel=\"next\"");
        r.headers_mut().insert("link", HeaderValue::from_str(&link).expect("ascii"));
    }
    r
}

/// `POST /app/hook/deliveries/{id}/attempts`: answered 202; the delivery is then sent again, with
/// its GUID, to the webhook target and recorded as a new attempt.
async fn redeliver_hook(State(s): State<Arc<FakeState>>, Path(id): Path<i64>, headers: HeaderMap) -> Response {
    if let Err(r) = s.verify_jwt(&headers) {
        return r;
    }
    let (original, target) = {
        let mut m = s.model();
        let Some(original) = m.hook_deliveries.iter().find(|d| d.id == id).cloned() else {
            return not_found();
        };
        m.redelivery_requests.push(original.guid.clone());
        (original, m.webhook_target.clone())
    };
    let state = s.clone();
    tokio::spawn(async move {
        let body = serde_json::to_vec(&original.payload).expect("JSON serializes");
        let status_code = match target {
            None => 0,
            Some((base, secret)) => {
                let sent = reqwest::Client::new()
                    .post(format!("{base}/webhook"))
                    .header("content-type", "application/json")
                    .header("user-agent", "GitHub-Hookshot/fake")
                    .header("x-github-event", &original.event)
                    .header("x-github-delivery", &original.guid)
                    .header("x-hub-signature-256", crate::webhook::signature::sign(&secret, &body))
                    .body(body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                sent.map(|r| r.status().as_u16()).unwrap_or(0)
            }
        };
        let id = state.next_id();
        state.model().hook_deliveries.push(FakeHookDelivery {
            id,
            delivered_at: unix_now(),
            redelivery: true,
            status_code,
            ..original
        });
    });
    answer(StatusCode::ACCEPTED, json!({}))
}

/// The permission GitHub requires of an installation token for a repository endpoint, as its
/// documentation lists per endpoint: (permission, `read` or `write`). None: metadata, which every
/// token has.
fn permission_needed(method: &Method, path: &str) -> Option<(&'static str, &'static str)> {
    let rest = path.strip_prefix("/repos/")?;
    let tail: Vec<&str> = rest.split('/').skip(2).collect();
    let permission = match tail.first().copied()? {
        "collaborators" | "installation" => return None,
        "issues" | "labels" => "issues",
        "pulls" => "pull_requests",
        "check-runs" | "check-suites" => "checks",
        "commits" if tail.get(2) == Some(&"check-runs") => "checks",
        "git" | "contents" | "commits" | "branches" | "compare" | "tarball" => "contents",
        _ => return None,
    };
    let level = if *method == Method::GET || *method == Method::HEAD {
        "read"
    } else {
        "write"
    };
    Some((permission, level))
}

/// `GET /users/{username}`: a public account (the fake knows every login; its id is [`user_id`]).
async fn get_user(Path(login): Path<String>) -> Response {
    let kind = if login.ends_with("[bot]") { "Bot" } else { "User" };
    answer(
        StatusCode::OK,
        json!({ "login": login, "id": user_id(&login), "type": kind, "site_admin": false }),
    )
}

/// `owner/repo` of a `/repos/{owner}/{repo}/…` path.
fn repo_of(path: &str) -> Option<String> {
    let mut parts = path.strip_prefix("/repos/")?.splitn(3, '/');
    Some(format!("{}/{}", parts.next()?, parts.next()?))
}

type RepoPath = Path<(String, String)>;
type ItemPath = Path<(String, String, i64)>;

async fn access_tokens(State(s): State<Arc<FakeState>>, Path(installation): Path<i64>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = s.verify_jwt(&headers) {
        return r;
    }
    // `repositories` (names) and `permissions` narrow the token; without them it reaches every
    // repository of the installation with all the App's permissions.
    let mut scope = TokenScope::default();
    if !body.is_empty() {
        let request = match json_body(&body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Some(names) = request.get("repositories") {
            let Some(names) = names
                .as_array()
                .and_then(|a| a.iter().map(|n| n.as_str().map(str::to_string)).collect())
            else {
                return unprocessable("Invalid request: `repositories` must be an array of names");
            };
            scope.repositories = Some(names);
        }
        if let Some(permissions) = request.get("permissions") {
            let Some(permissions) = permissions
                .as_object()
                .and_then(|o| o.iter().map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            else {
                return unprocessable("Invalid request: `permissions` must map names to levels");
            };
            scope.permissions = Some(permissions);
        }
    }
    let mut m = s.model();
    // A repository the installation does not grant cannot be asked for (GitHub: 422).
    if let Some(names) = &scope.repositories {
        let granted = |name: &String| {
            m.repos.is_empty()
                || m.repos
                    .iter()
                    .any(|(full, r)| r.installation == installation && full.split_once('/').is_some_and(|(_, n)| n == name))
        };
        if !names.iter().all(granted) {
            return unprocessable("There is at least one repository that does not exist or is not accessible to the parent installation.");
        }
    }
    // With repositories registered, only their installations exist.
    if !m.repos.is_empty() && !m.repos.values().any(|r| r.installation == installation) {
        return not_found();
    }
    let mut random = [0u8; 16];
    getrandom::getrandom(&mut random).expect("system randomness");
    let token = format!("ghs_{}", hex::encode(random));
    let expires = unix_now() + s.token_lifetime.as_secs();
    m.tokens.insert(token.clone(), (installation, expires));
    m.token_scopes.insert(token.clone(), scope);
    answer(
        StatusCode::CREATED,
        json!({ "token": token, "expires_at": format_timestamp(expires) }),
    )
}

async fn repo_installation(State(s): State<Arc<FakeState>>, Path((owner, repo)): RepoPath, headers: HeaderMap) -> Response {
    if let Err(r) = s.verify_jwt(&headers) {
        return r;
    }
    match s.model().repos.get(&format!("{owner}/{repo}")) {
        Some(r) => answer(StatusCode::OK, json!({ "id": r.installation, "app_id": s.app_id })),
        None => not_found(),
    }
}

/// The default branch: the registered one, else `main`.
fn default_branch(m: &Model, repo: &str) -> String {
    m.repos.get(repo).map(|r| r.default_branch.clone()).unwrap_or_else(|| "main".into())
}

async fn get_repo(State(s): State<Arc<FakeState>>, Path((owner, repo)): RepoPath) -> Response {
    let m = s.model();
    let full = format!("{owner}/{repo}");
    match m.repos.get(&full) {
        Some(r) => answer(
            StatusCode::OK,
            json!({ "id": r.id, "name": repo, "full_name": full, "default_branch": r.default_branch,
                    "owner": { "login": owner }, "private": false }),
        ),
        None => not_found(),
    }
}

async fn get_issue(State(s): State<Arc<FakeState>>, Path((owner, repo, number)): ItemPath) -> Response {
    let m = s.model();
    let full = format!("{owner}/{repo}");
    let labels = m.labels_json(&full, m.labels.get(&(full.clone(), number)).map(Vec::as_slice).unwrap_or_default());
    if let Some(i) = m.issues.get(&(full.clone(), number)) {
        return answer(
            StatusCode::OK,
            json!({ "number": number, "title": i.title, "body": i.body, "state": i.state,
                    "user": user_json(&i.author, "User"), "labels": labels }),
        );
    }
    match m.git.pulls.get(&(full, number)) {
        Some(p) => answer(
            StatusCode::OK,
            json!({ "number": number, "title": p.title, "body": p.body, "state": "open",
                    "user": user_json(&p.author, "User"), "labels": labels,
                    "pull_request": { "url": format!("/repos/{owner}/{repo}/pulls/{number}") } }),
        ),
        None => not_found(),
    }
}

#[derive(serde::Deserialize)]
struct Paging {
    per_page: Option<usize>,
    page: Option<usize>,
}

impl Paging {
    fn per_page(&self) -> usize {
        self.per_page.unwrap_or(30).clamp(1, 100)
    }

    fn number(&self) -> usize {
        self.page.unwrap_or(1).max(1)
    }

    fn page<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        let per_page = self.per_page();
        items.into_iter().skip((self.number() - 1) * per_page).take(per_page).collect()
    }

    /// GitHub's `Link` header for this page of `total` items at `path`: the next and last pages
    /// after it, the first and previous before it; None when there is one page.
    fn link(&self, host: &str, path: &str, total: usize) -> Option<String> {
        let (per_page, page) = (self.per_page(), self.number());
        let last = total.div_ceil(per_page).max(1);
        let url = |n: usize, rel: &str| format!("<http://{host}{path}?per_page={per_page}&page={n}>; rel=\"{rel}\"");
        let mut links = Vec::new();
        if page < last {
            links.push(url(page + 1, "next"));
            links.push(url(last, "last"));
        }
        if page > 1 {
            links.push(url(1, "first"));
            links.push(url((page - 1).min(last), "prev"));
        }
        (!links.is_empty()).then(|| links.join(", "))
    }
}

fn comment_json(c: &FakeComment) -> serde_json::Value {
    let app = c.via_app.map(|id| json!({ "id": id, "slug": if c.author == APP_LOGIN { APP_SLUG.to_string() } else { c.author.trim_end_matches("[bot]").to_string() } }));
    json!({ "id": c.id, "body": c.body, "user": user_json(&c.author, &c.author_type),
            "performed_via_github_app": app })
}

async fn list_comments(State(s): State<Arc<FakeState>>, Path((owner, repo, issue)): ItemPath, Query(paging): Query<Paging>) -> Response {
    let all = s.comments(&format!("{owner}/{repo}"), issue);
    answer(StatusCode::OK, json!(paging.page(all.iter().map(comment_json))))
}

/// The comment text of a request body: an object with exactly one string `body` (as GitHub's
/// description says) within GitHub's size limit.
fn comment_text(body: &[u8]) -> Result<String, Response> {
    let text = match json_body(body)? {
        serde_json::Value::Object(o) if o.len() == 1 => match o.get("body") {
            Some(serde_json::Value::String(t)) => t.clone(),
            _ => return Err(unprocessable("Invalid request: `body` must be a string")),
        },
        _ => return Err(unprocessable("Invalid request: expected an object with `body`")),
    };
    if text.chars().count() > super::actions::COMMENT_LIMIT {
        return Err(unprocessable("Validation Failed: body is too long (maximum is 65536 characters)"));
    }
    Ok(text)
}

async fn create_comment(State(s): State<Arc<FakeState>>, Path((owner, repo, issue)): ItemPath, body: Bytes) -> Response {
    let text = match comment_text(&body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let id = s.next_id();
    // Written with the App's installation token: GitHub names the App and its bot account.
    let comment = FakeComment {
        id,
        body: text,
        author: APP_LOGIN.into(),
        author_type: "Bot".into(),
        via_app: Some(s.app_id),
    };
    s.model()
        .comments
        .entry((format!("{owner}/{repo}"), issue))
        .or_default()
        .push(comment.clone());
    answer(StatusCode::CREATED, comment_json(&comment))
}

/// The comment `id` of `repo`, for reading or changing.
fn find_comment<'m>(m: &'m mut Model, repo: &str, id: i64) -> Option<&'m mut FakeComment> {
    m.comments
        .iter_mut()
        .filter(|((r, _), _)| r == repo)
        .flat_map(|(_, list)| list.iter_mut())
        .find(|c| c.id == id)
}

async fn get_comment(State(s): State<Arc<FakeState>>, Path((owner, repo, id)): ItemPath) -> Response {
    let mut m = s.model();
    match find_comment(&mut m, &format!("{owner}/{repo}"), id) {
        Some(c) => answer(StatusCode::OK, comment_json(c)),
        None => not_found(),
    }
}

async fn update_comment(State(s): State<Arc<FakeState>>, Path((owner, repo, id)): ItemPath, body: Bytes) -> Response {
    let text = match comment_text(&body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut m = s.model();
    match find_comment(&mut m, &format!("{owner}/{repo}"), id) {
        Some(c) => {
            c.body = text;
            answer(StatusCode::OK, comment_json(c))
        }
        None => not_found(),
    }
}

async fn list_labels(State(s): State<Arc<FakeState>>, Path((owner, repo, issue)): ItemPath) -> Response {
    let full = format!("{owner}/{repo}");
    let m = s.model();
    answer(
        StatusCode::OK,
        m.labels_json(&full, m.labels.get(&(full.clone(), issue)).map(Vec::as_slice).unwrap_or_default()),
    )
}

/// `GET /repos/{owner}/{repo}/labels`: paged as GitHub pages (30 a page unless `per_page`, at
/// most 100; a `Link` header to the others), each page with an ETag of its content.
async fn list_repo_labels(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo)): RepoPath,
    Query(paging): Query<Paging>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let full = format!("{owner}/{repo}");
    let (page, total) = {
        let m = s.model();
        let all = m.repo_labels.get(&full).map(Vec::as_slice).unwrap_or_default();
        (paging.page(all.iter().map(|l| l.json(&full))), all.len())
    };
    let mut r = conditional(&s, uri.path(), &headers, json!(page));
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    if let Some(link) = paging.link(host, uri.path(), total) {
        r.headers_mut().insert("link", HeaderValue::from_str(&link).expect("ascii"));
    }
    r
}

async fn add_labels(State(s): State<Arc<FakeState>>, Path((owner, repo, issue)): ItemPath, body: Bytes) -> Response {
    let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return unprocessable("Invalid request: expected an object with `labels`");
    };
    let Some(serde_json::Value::Array(new)) = o.get("labels") else {
        return unprocessable("Invalid request: `labels` must be an array");
    };
    let Some(new): Option<Vec<&str>> = new.iter().map(|l| l.as_str()).collect() else {
        return unprocessable("Invalid request: labels must be strings");
    };
    let full = format!("{owner}/{repo}");
    let new: Vec<String> = new.into_iter().map(str::to_string).collect();
    let mut m = s.model();
    m.ensure_repo_labels(&full, &new);
    let labels = m.labels.entry((full.clone(), issue)).or_default();
    for name in new {
        if !labels.contains(&name) {
            labels.push(name);
        }
    }
    let labels = labels.clone();
    answer(StatusCode::OK, m.labels_json(&full, &labels))
}

async fn remove_label(State(s): State<Arc<FakeState>>, Path((owner, repo, issue, name)): Path<(String, String, i64, String)>) -> Response {
    let full = format!("{owner}/{repo}");
    let mut m = s.model();
    let labels = m.labels.entry((full.clone(), issue)).or_default();
    let Some(i) = labels.iter().position(|l| *l == name) else {
        return message(StatusCode::NOT_FOUND, "Label does not exist");
    };
    labels.remove(i);
    let labels = labels.clone();
    answer(StatusCode::OK, m.labels_json(&full, &labels))
}

async fn permission(State(s): State<Arc<FakeState>>, Path((owner, repo, login)): Path<(String, String, String)>) -> Response {
    let m = s.model();
    let id = m.user_ids.get(&login).copied().unwrap_or_else(|| user_id(&login));
    match m.permissions.get(&(format!("{owner}/{repo}"), login.clone())) {
        Some(p) => answer(StatusCode::OK, json!({ "permission": p, "user": { "login": login, "id": id } })),
        // GitHub answers 404 for someone who is not a collaborator.
        None => message(StatusCode::NOT_FOUND, &format!("{login} is not a user")),
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

fn check_run_json(r: &FakeCheckRun) -> serde_json::Value {
    json!({ "id": r.id, "name": r.name, "head_sha": r.head_sha, "status": r.status, "conclusion": r.conclusion,
            "app": { "id": r.app_id }, "details_url": r.details_url,
            "output": { "title": r.title, "summary": r.summary, "text": r.text, "annotations_count": r.annotations.len() } })
}

async fn create_check_run(State(s): State<Arc<FakeState>>, Path((owner, repo)): RepoPath, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (Some(name), Some(head_sha)) = (
        body.get("name").and_then(|v| v.as_str()),
        body.get("head_sha").and_then(|v| v.as_str()),
    ) else {
        return unprocessable("Invalid request: `name` and `head_sha` are required");
    };
    if let Some(problem) = check_run_problem(&body) {
        return unprocessable(&format!("Invalid request: {problem}"));
    }
    let output = body.get("output").cloned().unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let annotations: Vec<serde_json::Value> = output.get("annotations").and_then(|a| a.as_array()).cloned().unwrap_or_default();
    let run = FakeCheckRun {
        id: s.next_id(),
        repo: format!("{owner}/{repo}"),
        name: name.to_string(),
        head_sha: head_sha.to_string(),
        status: text(&body, "status").unwrap_or_else(|| "queued".into()),
        conclusion: text(&body, "conclusion"),
        title: text(&output, "title"),
        summary: text(&output, "summary").unwrap_or_default(),
        text: text(&output, "text"),
        annotation_batches: vec![annotations.len()],
        annotations,
        actions: body.get("actions").and_then(|a| a.as_array()).cloned().unwrap_or_default(),
        app_id: s.app_id,
        details_url: text(&body, "details_url"),
    };
    let json = check_run_json(&run);
    s.model().check_runs.insert(run.id, run);
    answer(StatusCode::CREATED, json)
}

async fn update_check_run(State(s): State<Arc<FakeState>>, Path((owner, repo, id)): ItemPath, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(problem) = check_run_problem(&body) {
        return unprocessable(&format!("Invalid request: {problem}"));
    }
    let mut m = s.model();
    let Some(run) = m.check_runs.get_mut(&id).filter(|r| r.repo == format!("{owner}/{repo}")) else {
        return not_found();
    };
    if let Some(output) = body.get("output") {
        let more: Vec<serde_json::Value> = output.get("annotations").and_then(|a| a.as_array()).cloned().unwrap_or_default();
        run.annotation_batches.push(more.len());
        run.annotations.extend(more);
        if let Some(summary) = output.get("summary").and_then(|v| v.as_str()) {
            run.summary = summary.to_string();
        }
        if let Some(text) = output.get("text").and_then(|v| v.as_str()) {
            run.text = Some(text.to_string());
        }
        if let Some(title) = output.get("title").and_then(|v| v.as_str()) {
            run.title = Some(title.to_string());
        }
    }
    if let Some(status) = body.get("status").and_then(|v| v.as_str()) {
        run.status = status.to_string();
    }
    if let Some(conclusion) = body.get("conclusion").and_then(|v| v.as_str()) {
        run.conclusion = Some(conclusion.to_string());
    }
    if let Some(actions) = body.get("actions").and_then(|a| a.as_array()) {
        run.actions = actions.clone();
    }
    if let Some(url) = body.get("details_url").and_then(|v| v.as_str()) {
        run.details_url = Some(url.to_string());
    }
    answer(StatusCode::OK, check_run_json(run))
}

async fn check_runs_for_ref(State(s): State<Arc<FakeState>>, Path((owner, repo, git_ref)): Path<(String, String, String)>) -> Response {
    let m = s.model();
    let full = format!("{owner}/{repo}");
    let runs: Vec<serde_json::Value> = m
        .check_runs
        .values()
        .rev()
        .filter(|r| r.repo == full && r.head_sha == git_ref)
        .map(check_run_json)
        .collect();
    answer(StatusCode::OK, json!({ "total_count": runs.len(), "check_runs": runs }))
}

async fn get_ref(State(s): State<Arc<FakeState>>, Path((owner, repo, git_ref)): Path<(String, String, String)>) -> Response {
    match s.model().git.refs.get(&(format!("{owner}/{repo}"), git_ref.clone())) {
        Some(sha) => answer(
            StatusCode::OK,
            json!({ "ref": format!("refs/{git_ref}"), "object": { "sha": sha, "type": "commit" } }),
        ),
        None => not_found(),
    }
}

/// `GET /branches/{branch}`: the tip commit as the commits API describes it, its tree included.
async fn get_branch(State(s): State<Arc<FakeState>>, Path((owner, repo, branch)): Path<(String, String, String)>) -> Response {
    let m = s.model();
    let full = format!("{owner}/{repo}");
    let Some(sha) = m.git.refs.get(&(full.clone(), format!("heads/{branch}"))) else {
        return message(StatusCode::NOT_FOUND, "Branch not found");
    };
    let (tree, parents, msg) = &m.git.commits[sha];
    answer(
        StatusCode::OK,
        json!({ "name": branch, "protected": false,
                "commit": { "sha": sha,
                            "commit": { "message": msg, "tree": { "sha": tree, "url": format!("https://api.github.com/repos/{full}/git/trees/{tree}") } },
                            "parents": parents.iter().map(|p| json!({ "sha": p })).collect::<Vec<_>>() } }),
    )
}

async fn get_commit(State(s): State<Arc<FakeState>>, Path((_owner, _repo, sha)): Path<(String, String, String)>) -> Response {
    match s.model().git.commits.get(&sha) {
        Some((tree, parents, msg)) => answer(
            StatusCode::OK,
            json!({ "sha": sha, "tree": { "sha": tree }, "message": msg, "parents": parents.iter().map(|p| json!({ "sha": p })).collect::<Vec<_>>() }),
        ),
        None => not_found(),
    }
}

/// A tree, as GitHub lists it with `recursive`: the fake's trees are flat, so every entry is a
/// file (`blob`) with its full path.
async fn get_tree(State(s): State<Arc<FakeState>>, Path((_owner, _repo, sha)): Path<(String, String, String)>) -> Response {
    match s.model().git.trees.get(&sha) {
        Some(entries) => answer(
            StatusCode::OK,
            json!({ "sha": sha, "truncated": false,
                    "tree": entries.iter().map(|(path, blob)| json!({ "path": path, "mode": "100644", "type": "blob", "sha": blob })).collect::<Vec<_>>() }),
        ),
        None => not_found(),
    }
}

/// A Git Data write, applied under the model's lock.
fn apply_git_write(m: &mut Model, full: &str, kind: &str, body: &serde_json::Value) -> Result<serde_json::Value, Response> {
    let refuse = |text: &str| Err(unprocessable(text));
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
                // An entry names its blob by `sha` (null deletes the path) or gives its text
                // inline as `content`, which GitHub writes as a blob itself; never both.
                match (entry.get("sha"), entry.get("content")) {
                    (Some(_), Some(_)) => return refuse(&format!("tree entry {path}: use either `sha` or `content`, not both")),
                    (None, Some(serde_json::Value::String(text))) => {
                        let blob = m.git.blob(text);
                        entries.insert(path.to_string(), blob);
                    }
                    (Some(serde_json::Value::Null), None) => {
                        entries.remove(path);
                    }
                    (Some(serde_json::Value::String(sha)), None) if m.git.blobs.contains_key(sha) => {
                        entries.insert(path.to_string(), sha.clone());
                    }
                    _ => return refuse(&format!("tree entry {path}: not a valid blob sha or content")),
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
            Ok(json!({ "sha": m.git.made_commit(&tree, parents, &msg) }))
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
        _ => Err(not_found()),
    }
}

async fn git_write(State(s): State<Arc<FakeState>>, Path((owner, repo, kind)): Path<(String, String, String)>, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match apply_git_write(&mut s.model(), &format!("{owner}/{repo}"), &kind, &body) {
        Ok(created) => answer(StatusCode::CREATED, created),
        Err(r) => r,
    }
}

fn pull_json(m: &Model, repo: &str, p: &FakePull) -> serde_json::Value {
    let sha = |branch: &str| m.git.tip(repo, branch).map(|(sha, _)| sha).unwrap_or_default();
    let (owner, _) = repo.split_once('/').unwrap_or((repo, ""));
    json!({ "number": p.number, "title": p.title, "state": "open", "body": p.body,
            "user": user_json(&p.author, if p.author == APP_LOGIN { "Bot" } else { "User" }),
            "head": { "ref": p.head, "sha": sha(&p.head), "label": format!("{owner}:{}", p.head) },
            "base": { "ref": p.base, "sha": sha(&p.base) } })
}

async fn create_pull(State(s): State<Arc<FakeState>>, Path((owner, repo)): RepoPath, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (head, base) = (text("head"), text("base"));
    let full = format!("{owner}/{repo}");
    let mut m = s.model();
    for branch in [&head, &base] {
        if m.git.tip(&full, branch).is_none() {
            return unprocessable(&format!("Validation Failed: no branch {branch}"));
        }
    }
    if m.git.pulls.iter().any(|((r, _), p)| *r == full && p.head == head) {
        return unprocessable(&format!("Validation Failed: A pull request already exists for {owner}:{head}."));
    }
    let number = m.next_number(&full);
    let pull = FakePull {
        number,
        title: text("title"),
        head,
        base,
        body: text("body"),
        author: APP_LOGIN.into(),
    };
    let json = pull_json(&m, &full, &pull);
    m.git.pulls.insert((full, number), pull);
    answer(StatusCode::CREATED, json)
}

#[derive(serde::Deserialize)]
struct PullFilter {
    /// `owner:branch`, as GitHub's `head` filter.
    head: Option<String>,
}

async fn list_pulls(State(s): State<Arc<FakeState>>, Path((owner, repo)): RepoPath, Query(filter): Query<PullFilter>) -> Response {
    let m = s.model();
    let full = format!("{owner}/{repo}");
    let list: Vec<serde_json::Value> = m
        .git
        .pulls
        .iter()
        .filter(|((r, _), p)| *r == full && filter.head.as_ref().map_or(true, |h| *h == format!("{owner}:{}", p.head)))
        .map(|(_, p)| pull_json(&m, &full, p))
        .collect();
    answer(StatusCode::OK, json!(list))
}

async fn get_pull(State(s): State<Arc<FakeState>>, Path((owner, repo, number)): ItemPath) -> Response {
    let m = s.model();
    let full = format!("{owner}/{repo}");
    match m.git.pulls.get(&(full.clone(), number)) {
        Some(pull) => answer(StatusCode::OK, pull_json(&m, &full, pull)),
        None => not_found(),
    }
}

async fn pull_files(State(s): State<Arc<FakeState>>, Path((owner, repo, number)): ItemPath, Query(paging): Query<Paging>) -> Response {
    let m = s.model();
    let full = format!("{owner}/{repo}");
    let Some(pull) = m.git.pulls.get(&(full.clone(), number)) else {
        return not_found();
    };
    let (Some((_, base)), Some((_, head))) = (m.git.tip(&full, &pull.base), m.git.tip(&full, &pull.head)) else {
        return not_found();
    };
    let text = |blob: &String| m.git.blobs.get(blob).cloned().unwrap_or_default();
    let mut files = Vec::new();
    for (path, blob) in &head {
        match base.get(path) {
            None => files.push(pull_file(path, "added", "", &text(blob))),
            Some(old) if old != blob => files.push(pull_file(path, "modified", &text(old), &text(blob))),
            _ => {}
        }
    }
    for (path, blob) in base.iter().filter(|(p, _)| !head.contains_key(*p)) {
        files.push(pull_file(path, "removed", &text(blob), ""));
    }
    answer(StatusCode::OK, json!(paging.page(files)))
}

/// One file of `GET /pulls/{n}/files` with its `patch` as GitHub gives it: the hunks without
/// the `---`/`+++` header. The fake shows each change as one hunk with the whole file as context
/// (GitHub shows three lines; a reader of the hunk cannot tell the difference in kind).
fn pull_file(path: &str, status: &str, old: &str, new: &str) -> serde_json::Value {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lines = Vec::new();
    let (mut additions, mut deletions) = (0, 0);
    for op in similar::capture_diff_slices(similar::Algorithm::Myers, &a, &b) {
        for change in op.iter_changes(&a, &b) {
            let (sign, line) = match change.tag() {
                similar::ChangeTag::Equal => (' ', change.value()),
                similar::ChangeTag::Delete => {
                    deletions += 1;
                    ('-', change.value())
                }
                similar::ChangeTag::Insert => {
                    additions += 1;
                    ('+', change.value())
                }
            };
            lines.push(format!("{sign}{line}"));
        }
    }
    let start = |n: usize| if n == 0 { 0 } else { 1 };
    let patch = format!(
        "@@ -{},{} +{},{} @@\n{}",
        start(a.len()),
        a.len(),
        start(b.len()),
        b.len(),
        lines.join("\n")
    );
    json!({ "filename": path, "status": status, "additions": additions, "deletions": deletions,
            "changes": additions + deletions, "patch": patch })
}

/// A user as the REST API shows one: login, account id and type.
fn user_json(login: &str, kind: &str) -> serde_json::Value {
    json!({ "login": login, "id": user_id(login), "type": kind })
}

/// A renamed account (see [`FakeState::set_user_id`]) reacts under its new login with its old id.
fn reactions_json(list: &[(i64, String, String, String)], ids: &HashMap<String, i64>) -> serde_json::Value {
    json!(list
        .iter()
        .map(|(id, content, login, kind)| {
            let mut user = user_json(login, kind);
            if let Some(account) = ids.get(login) {
                user["id"] = (*account).into();
            }
            json!({ "id": id, "content": content, "user": user })
        })
        .collect::<Vec<_>>())
}

async fn list_reactions(
    State(s): State<Arc<FakeState>>,
    Path((_owner, _repo, comment)): ItemPath,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let body = {
        let m = s.model();
        reactions_json(m.reactions.get(&comment).map(Vec::as_slice).unwrap_or_default(), &m.user_ids)
    };
    conditional(&s, uri.path(), &headers, body)
}

/// A GET's answer with a weak ETag of its body, or 304 Not Modified when the request's
/// `If-None-Match` is that ETag: GitHub does not count a 304 against the rate limit.
fn conditional(s: &FakeState, path: &str, headers: &HeaderMap, body: serde_json::Value) -> Response {
    let etag = format!("W/\"{:08x}\"", crc32fast::hash(body.to_string().as_bytes()));
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        // Not counted against the rate limit: the gate takes a 304's count back.
        let mut m = s.model();
        m.not_modified.push(("GET".into(), path.to_string()));
        drop(m);
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert("etag", HeaderValue::from_str(&etag).expect("ascii"));
        return r;
    }
    let mut r = answer(StatusCode::OK, body);
    r.headers_mut().insert("etag", HeaderValue::from_str(&etag).expect("ascii"));
    r
}

async fn create_reaction(State(s): State<Arc<FakeState>>, Path((_owner, _repo, comment)): ItemPath, body: Bytes) -> Response {
    const CONTENTS: [&str; 8] = ["+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"];
    let content = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("content").and_then(|c| c.as_str()).map(str::to_string));
    let Some(content) = content.filter(|c| CONTENTS.contains(&c.as_str())) else {
        return unprocessable("Validation Failed: content is not a valid reaction");
    };
    let id = s.next_id();
    let mut m = s.model();
    let list = m.reactions.entry(comment).or_default();
    // The App reacts as its bot user; the same reaction twice is answered 200 and not added.
    if let Some((id, ..)) = list.iter().find(|(_, c, login, _)| *c == content && login == APP_LOGIN) {
        return answer(StatusCode::OK, json!({ "id": id, "content": content }));
    }
    list.push((id, content.clone(), APP_LOGIN.into(), "Bot".into()));
    answer(StatusCode::CREATED, json!({ "id": id, "content": content }))
}

#[derive(serde::Deserialize)]
struct ContentRef {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

async fn get_content(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    Query(at): Query<ContentRef>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    use base64::Engine;
    let m = s.model();
    let full = format!("{owner}/{repo}");
    // A branch name or a commit; without one, the default branch. Repositories without git
    // history serve the files set with `set_file`.
    let branch = at.git_ref.clone().unwrap_or_else(|| default_branch(&m, &full));
    let tree = match m.git.tip(&full, &branch) {
        Some((_, tree)) => Some(tree),
        None => at
            .git_ref
            .as_ref()
            .and_then(|sha| m.git.commits.get(sha))
            .map(|(tree, _, _)| m.git.trees[tree].clone()),
    };
    let text = match tree {
        Some(tree) => tree.get(&path).map(|blob| m.git.blobs[blob].clone()),
        None => m.files.get(&(full, path.clone())).cloned(),
    };
    let Some(text) = text else {
        return not_found();
    };
    // GitHub wraps the base64 at 60 characters.
    let encoded = base64::engine::general_purpose::STANDARD.encode(&text);
    let wrapped: Vec<String> = encoded
        .as_bytes()
        .chunks(60)
        .map(|c| String::from_utf8_lossy(c).to_string())
        .collect();
    drop(m);
    conditional(
        &s,
        uri.path(),
        &headers,
        json!({ "type": "file", "encoding": "base64", "path": path, "size": text.len(), "content": wrapped.join("\n") + "\n" }),
    )
}

/// Where the fake's codeload serves archives, on the fake's own address.
const CODELOAD: &str = "/_codeload/";

/// `GET /repos/{owner}/{repo}/tarball/{ref}`: a redirect to the archive of the commit that `ref`
/// names (a branch, or a commit's sha), as GitHub redirects to codeload. Counted against the
/// rate limit like any request; the download is not.
async fn tarball_redirect(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, git_ref)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let sha = {
        let m = s.model();
        let full = format!("{owner}/{repo}");
        m.git
            .refs
            .get(&(full, format!("heads/{git_ref}")))
            .cloned()
            .or_else(|| m.git.commits.contains_key(&git_ref).then(|| git_ref.clone()))
    };
    let Some(sha) = sha else {
        return not_found();
    };
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let location = format!("http://{host}{CODELOAD}{owner}/{repo}/legacy.tar.gz/{sha}");
    let mut r = StatusCode::FOUND.into_response();
    r.headers_mut().insert("location", HeaderValue::from_str(&location).expect("ascii"));
    r.headers_mut().insert("x-github-request-id", HeaderValue::from_static("FAKE:0001"));
    r
}

/// The fake's codeload: the commit's files as a gzipped tar under `{owner}-{repo}-{sha7}/`, as
/// GitHub's archives are. It takes no credentials; one that comes with an `Authorization` header
/// is refused, since orch must never send its installation token beyond the API.
async fn codeload(
    State(s): State<Arc<FakeState>>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if headers.contains_key("authorization") {
        return message(
            StatusCode::BAD_REQUEST,
            "the fake's codeload was sent an Authorization header: the installation token must stay with the API",
        );
    }
    let files: Vec<(String, String)> = {
        let mut m = s.model();
        let Some((tree, _, _)) = m.git.commits.get(&sha) else {
            return not_found();
        };
        let files = m.git.trees[tree]
            .iter()
            .map(|(path, blob)| (path.clone(), m.git.blobs[blob].clone()))
            .collect();
        m.tarball_downloads += 1;
        files
    };
    let folder = format!("{owner}-{repo}-{}", &sha[..sha.len().min(7)]);
    let archive = match tar_gz(&folder, &sha, &files) {
        Ok(a) => a,
        Err(e) => return message(StatusCode::INTERNAL_SERVER_ERROR, &format!("the archive could not be made: {e}")),
    };
    let disposition = format!("attachment; filename={folder}.tar.gz");
    let mut r = archive.into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/x-gzip"));
    r.headers_mut()
        .insert("content-disposition", HeaderValue::from_str(&disposition).expect("ascii"));
    r
}

/// A gzipped tar of `files` (path, text) under `folder/`, laid out as `git archive` lays one
/// out: a pax global header naming the commit, then each folder before what it holds.
fn tar_gz(folder: &str, sha: &str, files: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    use tar::{EntryType, Header};
    let mut b = tar::Builder::new(Vec::new());
    let comment = pax_record("comment", sha);
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::XGlobalHeader);
    h.set_size(comment.len() as u64);
    h.set_mode(0o666);
    b.append_data(&mut h, "pax_global_header", comment.as_bytes())?;
    let mut folders = std::collections::BTreeSet::new();
    let mut add_folder = |b: &mut tar::Builder<Vec<u8>>, path: String| -> std::io::Result<()> {
        if folders.insert(path.clone()) {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o775);
            b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
        }
        Ok(())
    };
    add_folder(&mut b, folder.to_string())?;
    for (path, text) in files {
        let mut parent = folder.to_string();
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments[..segments.len() - 1] {
            parent = format!("{parent}/{segment}");
            add_folder(&mut b, parent.clone())?;
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(text.len() as u64);
        h.set_mode(0o664);
        b.append_data(&mut h, format!("{folder}/{path}"), text.as_bytes())?;
    }
    let tar = b.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    gz.finish()
}

/// One pax record, `"<length> <key>=<value>\n"`, its length counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut length = body.len() + 1;
    while length.to_string().len() + body.len() != length {
        length = length.to_string().len() + body.len();
    }
    format!("{length}{body}")
}

impl FakeGithub {
    /// Starts the fake on a free local port for the App `app_id` whose public key is `public_pem`.
    pub async fn start(app_id: u64, public_pem: &[u8], token_lifetime: Duration) -> anyhow::Result<Self> {
        use axum::routing::patch;
        let state = Arc::new(FakeState {
            app_id,
            public_key: DecodingKey::from_rsa_pem(public_pem)?,
            token_lifetime,
            next_id: AtomicI64::new(1_000_001),
            model: Mutex::new(Model::default()),
        });
        let app = Router::new()
            .route("/app/installations/{id}/access_tokens", post(access_tokens))
            .route("/app", get(get_app))
            .route("/app/hook/deliveries", get(list_hook_deliveries))
            .route("/app/hook/deliveries/{id}/attempts", post(redeliver_hook))
            .route("/users/{username}", get(get_user))
            .route("/repos/{owner}/{repo}", get(get_repo))
            .route("/repos/{owner}/{repo}/installation", get(repo_installation))
            .route("/repos/{owner}/{repo}/issues/{issue}", get(get_issue))
            .route(
                "/repos/{owner}/{repo}/issues/{issue}/comments",
                get(list_comments).post(create_comment),
            )
            .route("/repos/{owner}/{repo}/issues/{issue}/labels", get(list_labels).post(add_labels))
            .route(
                "/repos/{owner}/{repo}/issues/{issue}/labels/{name}",
                axum::routing::delete(remove_label),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{comment}",
                get(get_comment).patch(update_comment),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{comment}/reactions",
                get(list_reactions).post(create_reaction),
            )
            .route("/repos/{owner}/{repo}/collaborators/{login}/permission", get(permission))
            .route("/repos/{owner}/{repo}/branches/{*branch}", get(get_branch))
            .route("/repos/{owner}/{repo}/git/ref/{*git_ref}", get(get_ref))
            .route("/repos/{owner}/{repo}/git/commits/{sha}", get(get_commit))
            .route("/repos/{owner}/{repo}/git/trees/{sha}", get(get_tree))
            .route("/repos/{owner}/{repo}/git/{kind}", post(git_write))
            .route("/repos/{owner}/{repo}/pulls", get(list_pulls).post(create_pull))
            .route("/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
            .route("/repos/{owner}/{repo}/pulls/{number}/files", get(pull_files))
            .route("/repos/{owner}/{repo}/check-runs", post(create_check_run))
            .route("/repos/{owner}/{repo}/check-runs/{id}", patch(update_check_run))
            .route("/repos/{owner}/{repo}/commits/{git_ref}/check-runs", get(check_runs_for_ref))
            .route("/repos/{owner}/{repo}/contents/{*path}", get(get_content))
            .route("/repos/{owner}/{repo}/labels", get(list_repo_labels))
            .route("/repos/{owner}/{repo}/tarball/{*git_ref}", get(tarball_redirect))
            .route("/_codeload/{owner}/{repo}/legacy.tar.gz/{sha}", get(codeload))
            .fallback(|| async { not_found() })
            .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
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

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(
            super::pax_record("comment", &"a".repeat(40)),
            format!("52 comment={}\n", "a".repeat(40))
        );
        assert_eq!(super::pax_record("k", "v"), "6 k=v\n");
        let r = super::pax_record("comment", &"b".repeat(91));
        assert_eq!(r.len().to_string(), r.split(' ').next().unwrap());
    }

    #[test]
    fn repository_of_a_path() {
        assert_eq!(super::repo_of("/repos/acme/app/issues/1").as_deref(), Some("acme/app"));
        assert_eq!(super::repo_of("/repos/acme/app").as_deref(), Some("acme/app"));
        assert_eq!(super::repo_of("/app/installations/1/access_tokens"), None);
    }
}
