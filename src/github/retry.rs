//! The one retry layer orch owns for GitHub (octocrab's own retries stay off): a timeout per
//! request, backoff for server errors, timeouts and dropped connections, `Retry-After` for 429
//! and secondary rate limits, a bounded wait for the primary limit's reset, and no retry for
//! permanent answers. Every failure names GitHub's request id.

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff; doubled per attempt (with jitter), capped by `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
    /// The longest orch waits in-process for a rate limit to lift; a longer wait is returned
    /// as [`GithubError::RateLimited`] and its job deferred until then.
    pub max_rate_limit_wait: Duration,
}

impl RetryPolicy {
    /// The same limits with one attempt: for requests that create something, which orch must
    /// not repeat blindly (the first may have been applied with its answer lost); the caller
    /// checks what happened before it tries again.
    pub fn single_attempt(&self) -> Self {
        Self {
            max_attempts: 1,
            ..self.clone()
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_secs(15),
            max_rate_limit_wait: Duration::from_secs(5),
        }
    }
}

/// Why a GitHub request failed for good.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub answered {status} (request id {request_id}): {message}")]
    Permanent { status: u16, message: String, request_id: String },
    /// GitHub's rate limit holds the request for `wait` (or held it: orch did not send it). Not
    /// a failure: the job waits and runs again (SPEC §11).
    #[error("GitHub's {} rate limit holds requests for {wait:?} (request id {request_id})", if *.secondary { "secondary" } else { "primary" })]
    RateLimited {
        wait: Duration,
        secondary: bool,
        request_id: String,
    },
    #[error("GitHub request failed after {attempts} attempts; last: {last}")]
    Exhausted { attempts: u32, last: String },
}

/// What to do with one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Transient: retry after this long (from `Retry-After` of a server error, or backoff when None).
    Retry(Option<Duration>),
    /// A rate limit (primary, or secondary with `Retry-After`) that lifts after `wait`, within
    /// what orch waits in-process.
    Limited {
        wait: Duration,
        secondary: bool,
    },
    /// The rate limit lifts only after this long (beyond what orch waits in-process).
    RateLimitedFor {
        wait: Duration,
        secondary: bool,
    },
    Permanent,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// `Retry-After` as seconds (GitHub sends seconds; an HTTP date is not used by its API).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header(headers, "retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Time until `x-ratelimit-reset` when `x-ratelimit-remaining` is 0.
fn primary_limit_wait(headers: &HeaderMap, now_unix: u64) -> Option<Duration> {
    if header(headers, "x-ratelimit-remaining")? != "0" {
        return None;
    }
    let reset = header(headers, "x-ratelimit-reset")?.parse::<u64>().ok()?;
    // One second more: GitHub's reset is a whole second and clocks differ a little.
    Some(Duration::from_secs(reset.saturating_sub(now_unix) + 1))
}

/// Classifies an answer. Pure: the clock is passed in.
pub fn classify(status: StatusCode, headers: &HeaderMap, now_unix: u64, policy: &RetryPolicy) -> Verdict {
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Verdict::Success;
    }
    // A redirect reaches here only from a client told not to follow it (the tarball's 302 to
    // its download): the caller follows it.
    if status.is_redirection() && headers.contains_key(reqwest::header::LOCATION) {
        return Verdict::Success;
    }
    let limited = |wait: Duration, secondary: bool| {
        if wait <= policy.max_rate_limit_wait {
            Verdict::Limited { wait, secondary }
        } else {
            Verdict::RateLimitedFor { wait, secondary }
        }
    };
    match status.as_u16() {
        429 | 403 => {
            if let Some(wait) = retry_after(headers) {
                // Secondary rate limit (403 or 429 with Retry-After).
                limited(wait, true)
            } else if let Some(wait) = primary_limit_wait(headers, now_unix) {
                limited(wait, false)
            } else if status.as_u16() == 429 {
                Verdict::Retry(None)
            } else {
                // A 403 without rate-limit headers is a real refusal.
                Verdict::Permanent
            }
        }
        408 | 500..=599 => Verdict::Retry(retry_after(headers)),
        _ => Verdict::Permanent,
    }
}

/// Backoff before attempt `attempt + 1` (attempt counts from 1): base · 2^(attempt-1), capped,
/// with up to 25 % jitter so that many workers do not retry in step.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy.base_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(policy.max_backoff);
    let mut b = [0u8; 2];
    let jitter = match getrandom::getrandom(&mut b) {
        Ok(()) => u16::from_le_bytes(b) as f64 / u16::MAX as f64 * 0.25,
        Err(_) => 0.0,
    };
    capped.mul_f64(1.0 + jitter)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn request_id(headers: &HeaderMap) -> String {
    header(headers, "x-github-request-id").unwrap_or("none").to_string()
}

/// This process's counts of GitHub requests that went wrong, for `/metrics`: every failed
/// attempt by reason (`server_error`: 5xx or 408; `rate_limited`: 429 or a rate-limited 403;
/// `transport`: a timeout or a dropped or refused connection; `refused`: another permanent
/// answer, a 404 aside, which lookups expect), and every retry the layer made, by the same reasons.
pub mod stats {
    use std::sync::atomic::{AtomicU64, Ordering};

    pub const REASONS: [&str; 4] = ["server_error", "rate_limited", "transport", "refused"];
    static ERRORS: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    static RETRIES: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

    pub(super) fn error(reason: usize) {
        ERRORS[reason].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn retry(reason: usize) {
        RETRIES[reason].fetch_add(1, Ordering::Relaxed);
    }

    /// (reason, failed attempts, retries) for every reason.
    pub fn snapshot() -> Vec<(&'static str, u64, u64)> {
        REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, ERRORS[i].load(Ordering::Relaxed), RETRIES[i].load(Ordering::Relaxed)))
            .collect()
    }
}

/// How long a secondary rate limit answered without `Retry-After` is waited out (GitHub: "wait
/// for at least one minute"), bounded by the policy's `max_rate_limit_wait`.
pub const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

const SERVER_ERROR: usize = 0;
const RATE_LIMITED: usize = 1;
const TRANSPORT: usize = 2;
const REFUSED: usize = 3;

fn reason_of(status: StatusCode) -> usize {
    match status.as_u16() {
        429 | 403 => RATE_LIMITED,
        _ => SERVER_ERROR,
    }
}

/// A transport error as it is logged and kept: its address without the query, which in a
/// download's address (codeload's, for a tarball) carries a short-lived token.
pub(super) fn transport_message(e: reqwest::Error) -> String {
    let address = e.url().map(|u| {
        let mut u = u.clone();
        u.set_query(None);
        u.to_string()
    });
    let e = e.without_url();
    match address {
        Some(address) => format!("{e} ({address})"),
        None => e.to_string(),
    }
}

/// Sends the request `build` makes (once per attempt) under `policy`.
pub async fn send(build: impl Fn() -> RequestBuilder, policy: &RetryPolicy) -> Result<Response, GithubError> {
    let mut last = String::new();
    for attempt in 1..=policy.max_attempts {
        let reason;
        let wait = match build().timeout(policy.request_timeout).send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                match classify(status, &headers, now_unix(), policy) {
                    Verdict::Success => return Ok(response),
                    Verdict::Permanent => {
                        let message = response.text().await.unwrap_or_default();
                        let message: String = message.chars().take(300).collect();
                        if status.as_u16() == 403 && message.to_ascii_lowercase().contains("secondary rate limit") {
                            // A secondary limit without Retry-After (nor a spent primary limit):
                            // GitHub asks for at least a minute's wait, as far as orch waits.
                            reason = RATE_LIMITED;
                            stats::error(reason);
                            last = format!("HTTP 403 secondary rate limit (request id {})", request_id(&headers));
                            let wait = SECONDARY_LIMIT_WAIT.min(policy.max_rate_limit_wait);
                            if attempt == policy.max_attempts {
                                return Err(GithubError::RateLimited {
                                    wait,
                                    secondary: true,
                                    request_id: request_id(&headers),
                                });
                            }
                            wait
                        } else {
                            // A 404 is often the answer a lookup expects (no such branch, no
                            // policy file); the caller decides whether it is a problem.
                            if status.as_u16() == 404 {
                                tracing::debug!(status = 404, request_id = %request_id(&headers), "GitHub: not found");
                            } else {
                                stats::error(REFUSED);
                                tracing::warn!(status = status.as_u16(), request_id = %request_id(&headers), "GitHub refused a request");
                            }
                            return Err(GithubError::Permanent {
                                status: status.as_u16(),
                                message,
                                request_id: request_id(&headers),
                            });
                        }
                    }
                    Verdict::RateLimitedFor { wait, secondary } => {
                        stats::error(RATE_LIMITED);
                        tracing::info!(?wait, secondary, request_id = %request_id(&headers), "GitHub rate limit beyond the in-process wait: the job waits");
                        return Err(GithubError::RateLimited {
                            wait,
                            secondary,
                            request_id: request_id(&headers),
                        });
                    }
                    Verdict::Limited { wait, secondary } => {
                        reason = RATE_LIMITED;
                        stats::error(reason);
                        last = format!("HTTP {} rate limited (request id {})", status.as_u16(), request_id(&headers));
                        // The last attempt (a write's only one) hands the wait to its caller,
                        // which records it for every replica and defers the job: no request
                        // of the installation leaves sooner.
                        if attempt == policy.max_attempts {
                            return Err(GithubError::RateLimited {
                                wait,
                                secondary,
                                request_id: request_id(&headers),
                            });
                        }
                        wait
                    }
                    // A 429 that says nothing of how long: still a rate limit, never a failure.
                    Verdict::Retry(None) if status.as_u16() == 429 && attempt == policy.max_attempts => {
                        stats::error(RATE_LIMITED);
                        return Err(GithubError::RateLimited {
                            wait: backoff(policy, attempt).max(Duration::from_secs(1)),
                            secondary: true,
                            request_id: request_id(&headers),
                        });
                    }
                    Verdict::Retry(wait) => {
                        reason = reason_of(status);
                        stats::error(reason);
                        last = format!("HTTP {} (request id {})", status.as_u16(), request_id(&headers));
                        match wait {
                            // GitHub said how long to wait. On the last attempt too: the caller's
                            // next request (a write's check and retry) must not come sooner.
                            Some(wait) if attempt == policy.max_attempts => {
                                tracing::info!(?wait, reason = %last, "waiting as GitHub asked before giving the request up");
                                tokio::time::sleep(wait).await;
                                wait
                            }
                            Some(wait) => wait,
                            None => backoff(policy, attempt),
                        }
                    }
                }
            }
            Err(e) => {
                // Timeouts, refused and dropped connections are transient; a request that
                // cannot even be built is not.
                if e.is_builder() {
                    return Err(GithubError::Exhausted {
                        attempts: attempt,
                        last: transport_message(e),
                    });
                }
                reason = TRANSPORT;
                stats::error(reason);
                last = format!("transport: {}", transport_message(e));
                backoff(policy, attempt)
            }
        };
        if attempt < policy.max_attempts {
            stats::retry(reason);
            tracing::info!(attempt, ?wait, reason = %last, "retrying a GitHub request");
            tokio::time::sleep(wait).await;
        }
    }
    tracing::warn!(attempts = policy.max_attempts, reason = %last, "GitHub request failed");
    Err(GithubError::Exhausted {
        attempts: policy.max_attempts,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn answers_are_classified_like_github_documents_them() {
        let p = RetryPolicy::default();
        let c = |status: u16, h: &[(&str, &str)]| classify(StatusCode::from_u16(status).unwrap(), &headers(h), 1_000, &p);
        assert_eq!(c(200, &[]), Verdict::Success);
        assert_eq!(c(304, &[]), Verdict::Success);
        assert_eq!(c(302, &[("location", "https://codeload.github.com/a/b")]), Verdict::Success);
        assert_eq!(c(302, &[]), Verdict::Permanent);
        assert_eq!(c(502, &[]), Verdict::Retry(None));
        assert_eq!(c(503, &[("retry-after", "2")]), Verdict::Retry(Some(Duration::from_secs(2))));
        let secs = Duration::from_secs;
        assert_eq!(
            c(429, &[("retry-after", "1")]),
            Verdict::Limited {
                wait: secs(1),
                secondary: true
            }
        );
        // Secondary limit: 403 with Retry-After; within the in-process bound (5 s) or beyond it.
        assert_eq!(
            c(403, &[("retry-after", "3")]),
            Verdict::Limited {
                wait: secs(3),
                secondary: true
            }
        );
        assert_eq!(
            c(403, &[("retry-after", "30")]),
            Verdict::RateLimitedFor {
                wait: secs(30),
                secondary: true
            }
        );
        // Primary limit: wait until the reset (+1 s); beyond the bound the job waits instead.
        assert_eq!(
            c(403, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1003")]),
            Verdict::Limited {
                wait: secs(4),
                secondary: false
            }
        );
        assert_eq!(
            c(403, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5000")]),
            Verdict::RateLimitedFor {
                wait: secs(4001),
                secondary: false
            }
        );
        // Whatever the reset, a rate limit is never a refusal.
        assert_eq!(
            c(429, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "999999")]),
            Verdict::RateLimitedFor {
                wait: secs(999_000),
                secondary: false
            }
        );
        assert_eq!(c(403, &[("x-ratelimit-remaining", "12")]), Verdict::Permanent);
        for permanent in [400, 401, 404, 410, 422] {
            assert_eq!(c(permanent, &[]), Verdict::Permanent, "{permanent}");
        }
    }

    #[tokio::test]
    async fn a_transport_error_keeps_its_address_but_not_its_query() {
        // Nothing listens on port 1.
        let e = reqwest::get("http://127.0.0.1:1/acme/widgets/legacy.tar.gz/main?token=short-lived")
            .await
            .unwrap_err();
        let shown = super::transport_message(e);
        assert!(shown.contains("http://127.0.0.1:1/acme/widgets/legacy.tar.gz/main"), "{shown}");
        assert!(!shown.contains("short-lived"), "{shown}");
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let p = RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..RetryPolicy::default()
        };
        let within = |d: Duration, lo: u64| d >= Duration::from_millis(lo) && d <= Duration::from_millis(lo * 5 / 4 + 1);
        assert!(within(backoff(&p, 1), 100));
        assert!(within(backoff(&p, 2), 200));
        assert!(within(backoff(&p, 3), 350));
        assert!(within(backoff(&p, 30), 350));
    }
}
