//! GitHub App authentication: an App JWT (RS256, `iat` 60 s in the past, `exp` 9 minutes ahead,
//! `iss` the App id) buys installation tokens, which are cached per installation and scope (one
//! repository, the permissions a request needs) until shortly before they expire and refreshed
//! once when GitHub answers 401.

use super::retry::{self, GithubError, RetryPolicy};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A token is renewed when it has less than this left: a request never starts with a token
/// that could expire on its way.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{var}: {problem}")]
    Key { var: &'static str, problem: String },
    #[error("ORCH_GITHUB_APP_ID is required to act as a GitHub App")]
    MissingAppId,
    #[error("installation token: {0}")]
    Github(#[from] GithubError),
    #[error("installation token: unexpected answer: {0}")]
    Answer(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AppClaims {
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
}

/// The App's identity: its id and private key.
pub struct AppCredentials {
    app_id: u64,
    key: EncodingKey,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppCredentials(app {})", self.app_id)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh 2048-bit RSA App key as PEM text: (PKCS#8 private key, SubjectPublicKeyInfo public key).
/// For throwaway Apps (the demo, benchmarks, tests) whose fake GitHub checks real signatures; made
/// with aws-lc-rs, the same backend that signs the JWTs.
pub fn generate_app_key() -> anyhow::Result<(String, String)> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let key =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("generating an RSA key failed"))?;
    let private = key.as_der().map_err(|_| anyhow::anyhow!("encoding the RSA private key failed"))?;
    let public = key
        .public_key()
        .as_der()
        .map_err(|_| anyhow::anyhow!("encoding the RSA public key failed"))?;
    Ok((pem("PRIVATE KEY", private.as_ref()), pem("PUBLIC KEY", public.as_ref())))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl AppCredentials {
    /// From the PEM text of the private key; `var` names where it came from, for errors.
    pub fn from_pem(app_id: u64, pem: &[u8], var: &'static str) -> Result<Self, AuthError> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| AuthError::Key {
            var,
            problem: format!("not an RSA private key in PEM form ({e})"),
        })?;
        Ok(Self { app_id, key })
    }

    /// From the configuration: `ORCH_GITHUB_PRIVATE_KEY_PATH` or `ORCH_GITHUB_PRIVATE_KEY`.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, AuthError> {
        let app_id = config.github_app_id.ok_or(AuthError::MissingAppId)?;
        if let Some(path) = &config.github_private_key_path {
            let pem = std::fs::read(path).map_err(|e| AuthError::Key {
                var: "ORCH_GITHUB_PRIVATE_KEY_PATH",
                problem: format!("cannot read {}: {e}", path.display()),
            })?;
            return Self::from_pem(app_id, &pem, "ORCH_GITHUB_PRIVATE_KEY_PATH");
        }
        match &config.github_private_key {
            Some(pem) => Self::from_pem(
                app_id,
                pem.expose_secret().replace("\\n", "\n").as_bytes(),
                "ORCH_GITHUB_PRIVATE_KEY",
            ),
            None => Err(AuthError::Key {
                var: "ORCH_GITHUB_PRIVATE_KEY_PATH",
                problem: "no private key: set ORCH_GITHUB_PRIVATE_KEY_PATH or ORCH_GITHUB_PRIVATE_KEY".into(),
            }),
        }
    }

    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// The claims of a JWT issued at `now` (unix seconds).
    pub fn claims(&self, now: u64) -> AppClaims {
        AppClaims {
            // 60 s in the past and 9 minutes ahead, as GitHub advises against clock drift.
            iat: now.saturating_sub(60),
            exp: now + 9 * 60,
            iss: self.app_id.to_string(),
        }
    }

    /// A signed App JWT for requests made as the App itself.
    pub fn jwt(&self) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &self.claims(unix_now()), &self.key).expect("RS256 signing with a parsed key")
    }
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    expires_at: String,
}

struct Cached {
    token: SecretString,
    expires_at: u64,
}

/// What an installation token may reach (SPEC §12): one repository of the installation (by name,
/// without the owner; None: every repository it grants) and only these permissions
/// (`(name, "read" | "write")`, sorted; empty: all the App has).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenScope {
    pub repository: Option<String>,
    pub permissions: Vec<(&'static str, &'static str)>,
}

impl TokenScope {
    /// One repository (or none) and one permission.
    pub fn new(repository: Option<String>, permission: &'static str, level: &'static str) -> Self {
        Self {
            repository,
            permissions: vec![(permission, level)],
        }
    }

    /// The body of `POST /app/installations/{id}/access_tokens` that asks for this scope.
    fn request_body(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        if let Some(r) = &self.repository {
            body.insert("repositories".into(), serde_json::json!([r]));
        }
        if !self.permissions.is_empty() {
            let permissions: serde_json::Map<String, serde_json::Value> = self
                .permissions
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect();
            body.insert("permissions".into(), serde_json::Value::Object(permissions));
        }
        serde_json::Value::Object(body)
    }
}

/// Installation tokens, cached per installation and scope (None: the installation-wide token).
pub struct TokenCache {
    credentials: AppCredentials,
    api_url: String,
    client: reqwest::Client,
    policy: RetryPolicy,
    tokens: Mutex<HashMap<(i64, Option<TokenScope>), Cached>>,
}

impl TokenCache {
    pub fn new(credentials: AppCredentials, api_url: &str, client: reqwest::Client, policy: RetryPolicy) -> Self {
        Self {
            credentials,
            api_url: api_url.trim_end_matches('/').to_string(),
            client,
            policy,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// An installation-wide token for `installation` (every repository and permission it grants),
    /// from the cache while it has more than [`REFRESH_MARGIN`] left. Requests use
    /// [`TokenCache::scoped_token`].
    pub async fn token(&self, installation: i64) -> Result<SecretString, AuthError> {
        self.fetch(installation, None).await
    }

    /// A token of `installation` that reaches only `scope`, cached like [`TokenCache::token`].
    pub async fn scoped_token(&self, installation: i64, scope: &TokenScope) -> Result<SecretString, AuthError> {
        self.fetch(installation, Some(scope)).await
    }

    async fn fetch(&self, installation: i64, scope: Option<&TokenScope>) -> Result<SecretString, AuthError> {
        let key = (installation, scope.cloned());
        let now = unix_now();
        if let Some(c) = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            if c.expires_at > now + REFRESH_MARGIN.as_secs() {
                return Ok(c.token.clone());
            }
        }
        let url = format!("{}/app/installations/{installation}/access_tokens", self.api_url);
        let jwt = self.credentials.jwt();
        let body = scope.map(TokenScope::request_body);
        let response = retry::send(
            || {
                let r = self
                    .client
                    .post(&url)
                    .bearer_auth(&jwt)
                    .header("accept", "application/vnd.github+json")
                    .header("x-github-api-version", "2022-11-28")
                    .header("user-agent", "orch");
                match &body {
                    Some(b) => r.json(b),
                    None => r,
                }
            },
            &self.policy,
        )
        .await?;
        let answer: AccessToken = response.json().await.map_err(|e| AuthError::Answer(e.to_string()))?;
        let expires_at =
            parse_timestamp(&answer.expires_at).ok_or_else(|| AuthError::Answer(format!("expires_at {:?}", answer.expires_at)))?;
        let token = SecretString::from(answer.token);
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key,
            Cached {
                token: token.clone(),
                expires_at,
            },
        );
        Ok(token)
    }

    /// A fresh App JWT, for the requests GitHub accepts only from the App itself (`/app/...`).
    pub fn app_jwt(&self) -> String {
        self.credentials.jwt()
    }

    /// Forgets the installation's cached tokens (GitHub answered 401 with one: they are revoked
    /// together); the next call fetches a new one.
    pub fn invalidate(&self, installation: i64) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _), _| *i != installation);
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (GitHub's timestamps) as unix seconds.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_timestamps_parse() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_timestamp("2016-07-11T22:14:10Z"), Some(1_468_275_250));
        assert_eq!(parse_timestamp("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        for bad in ["2016-07-11 22:14:10Z", "2016-13-11T22:14:10Z", "2016-07-11T22:14:10", "soon"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bad_key_is_a_clear_error_naming_its_variable() {
        let err = AppCredentials::from_pem(
            1,
            b"-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n",
            "ORCH_GITHUB_PRIVATE_KEY",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("ORCH_GITHUB_PRIVATE_KEY:"), "{err}");
    }
}
