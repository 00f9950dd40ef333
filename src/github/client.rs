//! The GitHub REST client: installation-token authentication (one refresh on 401) over the retry
//! layer. Operations are added here as the pipeline needs them.

use super::auth::{AuthError, TokenCache};
use super::retry::{self, GithubError, RetryPolicy};
use reqwest::{Method, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Github(#[from] GithubError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("GitHub's answer could not be read: {0}")]
    Decode(String),
}

impl ClientError {
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
}

#[derive(Clone)]
pub struct GithubClient {
    http: reqwest::Client,
    api_url: String,
    tokens: Arc<TokenCache>,
    policy: RetryPolicy,
}

impl GithubClient {
    pub fn new(http: reqwest::Client, api_url: &str, tokens: Arc<TokenCache>, policy: RetryPolicy) -> Self {
        Self {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            tokens,
            policy,
        }
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
        let url = format!("{}{path}", self.api_url);
        let policy = if creates {
            self.policy.single_attempt()
        } else {
            self.policy.clone()
        };
        for refreshed in [false, true] {
            let token = self.tokens.token(installation).await?;
            let result = retry::send(
                || {
                    let mut r = self
                        .http
                        .request(method.clone(), &url)
                        .bearer_auth(token.expose_secret())
                        .header("accept", "application/vnd.github+json")
                        .header("x-github-api-version", "2022-11-28")
                        .header("user-agent", "orch");
                    if let Some(b) = body {
                        r = r.json(b);
                    }
                    r
                },
                &policy,
            )
            .await;
            match result {
                // The token was revoked or expired early: fetch a new one, once.
                Err(GithubError::Permanent { status: 401, .. }) if !refreshed => self.tokens.invalidate(installation),
                other => return Ok(other?),
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
}
