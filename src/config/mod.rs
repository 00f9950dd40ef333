//! Configuration: environment variables (SPEC §14), optionally layered over a TOML file named by
//! `ORCH_CONFIG`. The environment wins. Every problem names the variable it came from.

pub mod operators;

use secrecy::SecretString;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration problem, always naming the variable so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {problem}")]
    Invalid { var: &'static str, problem: String },
    #[error("{var} is required: {why}")]
    Missing { var: &'static str, why: &'static str },
    #[error("ORCH_CONFIG: cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("ORCH_CONFIG: {path} is not valid TOML: {message}")]
    FileSyntax { path: String, message: String },
}

/// Which model provider to use (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmProvider {
    Anthropic,
    OpenAi,
    Fake,
}

/// Where raw webhook bodies are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadStore {
    /// Append-only segment files in `ORCH_PAYLOAD_DIR` on this host (the SQLite default).
    Archive,
    /// In the database, readable by every replica (the Postgres default).
    Database,
}

/// How hard the ingest path works to make a delivery survive before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync (fdatasync) the payload archive and the database log before every answer:
    /// survives power loss.
    Fsync,
    /// Written to the operating system before every answer: survives a crash or `kill -9` of
    /// orch, not a power cut.
    Os,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database_url: String,
    /// Every secret currently accepted for webhook signatures (rotation: old and new).
    pub webhook_secrets: Vec<SecretString>,
    /// How long a webhook sender may take to send its body before the request is cut off (408):
    /// an unauthenticated sender cannot hold a connection by trickling bytes.
    pub webhook_body_timeout: Duration,
    /// Webhook requests handled at once; past it new ones get 503 with Retry-After at once
    /// instead of queueing (and holding memory) without bound.
    pub webhook_max_in_flight: usize,
    /// The audit chain's HMAC key (`ORCH_AUDIT_KEY`, SPEC §13); plain sha256 links without it.
    pub audit_key: Option<SecretString>,
    pub github_app_id: Option<u64>,
    pub github_private_key_path: Option<PathBuf>,
    pub github_private_key: Option<SecretString>,
    pub github_api_url: String,
    pub github_dry_run: bool,
    pub admin_token: Option<SecretString>,
    /// The key that tags orch's hidden markers (SPEC §6); None: generated into the database.
    pub marker_key: Option<SecretString>,
    /// `ORCH_ADMIN_TOKENS`: a file of `name sha256-of-token` lines, one operator each.
    pub admin_tokens_file: Option<PathBuf>,
    /// Every operator credential: the file's and `ORCH_ADMIN_TOKEN` as `admin`.
    pub operators: operators::Operators,
    pub llm_provider: LlmProvider,
    pub llm_model: Option<String>,
    pub anthropic_api_key: Option<SecretString>,
    pub anthropic_base_url: String,
    pub openai_api_key: Option<SecretString>,
    pub openai_base_url: String,
    pub fake_llm_script: Option<PathBuf>,
    /// Where raw webhook payloads are archived (append-only segment files).
    pub payload_dir: PathBuf,
    /// None: the backend's default.
    pub payload_store: Option<PayloadStore>,
    pub durability: Durability,
    /// How long a worker holds a job before another worker may take it over.
    pub job_lease: Duration,
    pub workers: usize,
    /// Spacing of content-creating GitHub requests per installation.
    pub github_write_pace: Duration,
    /// GitHub's secondary limits for content-creating requests per installation, and the margin
    /// by which orch stretches their windows (`ORCH_GITHUB_WRITE_LIMITS`, `ORCH_GITHUB_WRITE_HEADROOM`).
    pub github_write_limits: crate::store::github_budget::WriteLimits,
    /// How often open proposals' reactions are polled at first (GitHub sends no reaction
    /// webhook); the interval grows as a proposal ages (see `workflow::engine::poll_interval`).
    pub reaction_poll: Duration,
    /// `ORCH_TARBALL_MAX_BYTES`: the largest repository download a patch's context searches.
    pub tarball_max_bytes: u64,
    /// How long a day of `approvals.expire_days` is (`ORCH_PROPOSAL_DAY_MS`; a real day unless a
    /// test or benchmark scales the clock).
    pub proposal_day: Duration,
    /// How long a collaborator's permission is trusted before GitHub is asked again.
    pub permission_cache: Duration,
    /// orch's own GitHub login (`<app-slug>[bot]`): its comments never run commands or approve.
    pub bot_login: String,
    /// The highest phase any repository may opt into (SPEC §7: the server caps it); the
    /// smaller of `ORCH_MAX_PHASE` and the caps file's `max_phase`.
    pub max_phase: u8,
    /// The server's caps on every repository's policy (`ORCH_POLICY_CAPS`, with `max_phase`).
    pub policy_caps: crate::policy::Caps,
    /// How often the App's recent hook deliveries are checked for missed ones (SPEC §11); zero
    /// turns the check off.
    pub reconcile_every: Duration,
    /// Per-request timeout of GitHub calls.
    pub github_request_timeout: Duration,
    /// First backoff of the GitHub retry layer (doubled per attempt).
    pub github_retry_backoff: Duration,
    /// The longest wait for a GitHub rate limit to lift before a request is given up.
    pub github_max_rate_limit_wait: Duration,
    /// Per-request timeout of model calls.
    pub llm_request_timeout: Duration,
    /// First backoff of the model's retry layer (doubled per retry).
    pub llm_retry_backoff: Duration,
    /// The address people reach orch's dashboard at (`ORCH_PUBLIC_URL`), for links from GitHub
    /// to the dashboard (a patch too large for its check run); None: links name the path only.
    pub public_url: Option<String>,
}

/// Names of every variable orch reads; the TOML file may use the same names (or lower-case
/// without the prefix, e.g. `bind` for `ORCH_BIND`).
pub const VARIABLES: &[&str] = &[
    "ORCH_BIND",
    "ORCH_DATABASE_URL",
    "ORCH_WEBHOOK_SECRET",
    "ORCH_WEBHOOK_BODY_TIMEOUT_MS",
    "ORCH_WEBHOOK_MAX_IN_FLIGHT",
    "ORCH_AUDIT_KEY",
    "ORCH_GITHUB_APP_ID",
    "ORCH_GITHUB_PRIVATE_KEY_PATH",
    "ORCH_GITHUB_PRIVATE_KEY",
    "ORCH_GITHUB_API_URL",
    "ORCH_GITHUB_DRY_RUN",
    "ORCH_ADMIN_TOKEN",
    "ORCH_MARKER_KEY",
    "ORCH_ADMIN_TOKENS",
    "ORCH_LLM_PROVIDER",
    "ORCH_LLM_MODEL",
    "ORCH_LLM_MODELS",
    "ANTHROPIC_API_KEY",
    "ORCH_ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "ORCH_OPENAI_BASE_URL",
    "ORCH_FAKE_LLM_SCRIPT",
    "ORCH_PAYLOAD_DIR",
    "ORCH_PAYLOAD_STORE",
    "ORCH_DURABILITY",
    "ORCH_JOB_LEASE_SECS",
    "ORCH_WORKERS",
    "ORCH_GITHUB_WRITE_PACE_MS",
    "ORCH_GITHUB_WRITE_LIMITS",
    "ORCH_GITHUB_WRITE_HEADROOM",
    "ORCH_REACTION_POLL_MS",
    "ORCH_TARBALL_MAX_BYTES",
    "ORCH_PROPOSAL_DAY_MS",
    "ORCH_BOT_LOGIN",
    "ORCH_PERMISSION_CACHE_SECS",
    "ORCH_MAX_PHASE",
    "ORCH_POLICY_CAPS",
    "ORCH_RECONCILE_SECS",
    "ORCH_GITHUB_TIMEOUT_MS",
    "ORCH_GITHUB_RETRY_BACKOFF_MS",
    "ORCH_GITHUB_MAX_RATE_LIMIT_WAIT_MS",
    "ORCH_LLM_TIMEOUT_MS",
    "ORCH_LLM_RETRY_BACKOFF_MS",
    "ORCH_PUBLIC_URL",
];

/// Raw key/value source: the environment over the file.
struct Source {
    values: HashMap<&'static str, String>,
}

impl Source {
    fn get(&self, var: &'static str) -> Option<&str> {
        self.values.get(var).map(|s| s.as_str()).filter(|s| !s.trim().is_empty())
    }

    fn parse<T: std::str::FromStr>(&self, var: &'static str, expected: &str) -> Result<Option<T>, ConfigError> {
        match self.get(var) {
            None => Ok(None),
            Some(raw) => raw.trim().parse::<T>().map(Some).map_err(|_| ConfigError::Invalid {
                var,
                problem: format!("expected {expected}, got {:?}", redact_if_long(raw)),
            }),
        }
    }

    fn bool(&self, var: &'static str) -> Result<bool, ConfigError> {
        match self.get(var).map(|s| s.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::Invalid {
                    var,
                    problem: format!("expected true or false, got {v:?}"),
                }),
            },
        }
    }

    fn secret(&self, var: &'static str) -> Option<SecretString> {
        self.get(var).map(|s| SecretString::from(s.to_string()))
    }
}

fn redact_if_long(raw: &str) -> String {
    if raw.len() > 64 {
        format!("{}…", &raw[..raw.char_indices().nth(32).map(|(i, _)| i).unwrap_or(raw.len())])
    } else {
        raw.to_string()
    }
}

impl Config {
    /// Reads the process environment (and `ORCH_CONFIG`, if set).
    pub fn from_env() -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::from_map(&env)
    }

    /// Builds the configuration from an explicit environment map; used by tests.
    pub fn from_map(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut values: HashMap<&'static str, String> = HashMap::new();
        if let Some(path) = env.get("ORCH_CONFIG").filter(|p| !p.is_empty()) {
            for (k, v) in read_file(path)? {
                values.insert(k, v);
            }
        }
        for var in VARIABLES {
            if let Some(v) = env.get(*var) {
                values.insert(var, v.clone());
            }
        }
        Self::from_source(&Source { values })
    }

    fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let bind = src
            .parse::<SocketAddr>("ORCH_BIND", "an address like 127.0.0.1:3000")?
            .unwrap_or_else(|| "127.0.0.1:3000".parse().expect("valid default"));
        let database_url = src.get("ORCH_DATABASE_URL").unwrap_or("sqlite://orch.db").to_string();
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid {
                var: "ORCH_DATABASE_URL",
                problem: "expected a sqlite:// or postgres:// URL".into(),
            });
        }
        let webhook_secrets = match src.get("ORCH_WEBHOOK_SECRET") {
            None => Vec::new(),
            Some(raw) => {
                let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
                if parts.iter().any(|p| p.is_empty()) {
                    return Err(ConfigError::Invalid {
                        var: "ORCH_WEBHOOK_SECRET",
                        problem: "an empty secret in the comma-separated list".into(),
                    });
                }
                parts.into_iter().map(|p| SecretString::from(p.to_string())).collect()
            }
        };
        let llm_provider = match src.get("ORCH_LLM_PROVIDER").map(|s| s.trim().to_ascii_lowercase()) {
            None => LlmProvider::Fake,
            Some(p) => match p.as_str() {
                "anthropic" => LlmProvider::Anthropic,
                "openai" => LlmProvider::OpenAi,
                "fake" => LlmProvider::Fake,
                other => {
                    return Err(ConfigError::Invalid {
                        var: "ORCH_LLM_PROVIDER",
                        problem: format!("expected anthropic, openai or fake, got {other:?}"),
                    })
                }
            },
        };
        let durability = match src.get("ORCH_DURABILITY").map(|s| s.trim().to_ascii_lowercase()) {
            None => Durability::Fsync,
            Some(d) => match d.as_str() {
                "fsync" => Durability::Fsync,
                "os" => Durability::Os,
                other => {
                    return Err(ConfigError::Invalid {
                        var: "ORCH_DURABILITY",
                        problem: format!("expected fsync or os, got {other:?}"),
                    })
                }
            },
        };
        let url_var = |var: &'static str, default: &str| -> Result<String, ConfigError> {
            let v = src.get(var).unwrap_or(default).trim().trim_end_matches('/').to_string();
            if v.starts_with("http://") || v.starts_with("https://") {
                Ok(v)
            } else {
                Err(ConfigError::Invalid {
                    var,
                    problem: format!("expected an http(s) URL, got {v:?}"),
                })
            }
        };
        let payload_store = match src.get("ORCH_PAYLOAD_STORE").map(|s| s.trim().to_ascii_lowercase()) {
            None => None,
            Some(p) => match p.as_str() {
                "archive" => Some(PayloadStore::Archive),
                "database" => Some(PayloadStore::Database),
                other => {
                    return Err(ConfigError::Invalid {
                        var: "ORCH_PAYLOAD_STORE",
                        problem: format!("expected archive or database, got {other:?}"),
                    })
                }
            },
        };
        let job_lease_secs = src.parse::<u64>("ORCH_JOB_LEASE_SECS", "a whole number of seconds")?.unwrap_or(60);
        if job_lease_secs == 0 {
            return Err(ConfigError::Invalid {
                var: "ORCH_JOB_LEASE_SECS",
                problem: "must be at least 1".into(),
            });
        }
        let workers = src.parse::<usize>("ORCH_WORKERS", "a whole number")?.unwrap_or(16).min(64);
        let github_write_pace = src
            .parse::<u64>("ORCH_GITHUB_WRITE_PACE_MS", "a whole number of milliseconds")?
            .unwrap_or(1000);
        let github_write_limits = {
            use crate::store::github_budget::{parse_write_limits, WriteLimits, DEFAULT_WRITE_HEADROOM, DEFAULT_WRITE_LIMITS};
            // `off` (not an empty value, which means "unset" like everywhere else) turns the windows off.
            let text = match src.get("ORCH_GITHUB_WRITE_LIMITS").map(str::trim) {
                Some("off") => "",
                Some(text) => text,
                None => DEFAULT_WRITE_LIMITS,
            };
            let limits = parse_write_limits(text).map_err(|problem| ConfigError::Invalid {
                var: "ORCH_GITHUB_WRITE_LIMITS",
                problem: format!("{problem} (expected e.g. 80/60s,500/3600s)"),
            })?;
            let headroom = src
                .parse::<f64>("ORCH_GITHUB_WRITE_HEADROOM", "a fraction from 0 to 0.9")?
                .unwrap_or(DEFAULT_WRITE_HEADROOM);
            if !(0.0..=0.9).contains(&headroom) {
                return Err(ConfigError::Invalid {
                    var: "ORCH_GITHUB_WRITE_HEADROOM",
                    problem: format!("expected a fraction from 0 to 0.9, got {headroom}"),
                });
            }
            WriteLimits { limits, headroom }
        };
        let reaction_poll = src
            .parse::<u64>("ORCH_REACTION_POLL_MS", "a whole number of milliseconds")?
            .unwrap_or(30_000);
        if reaction_poll < 100 {
            return Err(ConfigError::Invalid {
                var: "ORCH_REACTION_POLL_MS",
                problem: "must be at least 100".into(),
            });
        }
        let proposal_day = src
            .parse::<u64>("ORCH_PROPOSAL_DAY_MS", "a whole number of milliseconds")?
            .unwrap_or(86_400_000);
        if proposal_day < 100 {
            return Err(ConfigError::Invalid {
                var: "ORCH_PROPOSAL_DAY_MS",
                problem: "must be at least 100".into(),
            });
        }
        let max_phase = src.parse::<u8>("ORCH_MAX_PHASE", "a phase from 0 to 4")?.unwrap_or(4);
        if max_phase > 4 {
            return Err(ConfigError::Invalid {
                var: "ORCH_MAX_PHASE",
                problem: format!("expected a phase from 0 to 4, got {max_phase}"),
            });
        }
        let mut policy_caps = match src.get("ORCH_POLICY_CAPS").filter(|p| !p.is_empty()) {
            None => crate::policy::Caps::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    var: "ORCH_POLICY_CAPS",
                    problem: format!("cannot read {path}: {e}"),
                })?;
                crate::policy::Caps::parse(&text).map_err(|problem| ConfigError::Invalid {
                    var: "ORCH_POLICY_CAPS",
                    problem: format!("{path}: {problem}"),
                })?
            }
        };
        let max_phase = max_phase.min(policy_caps.max_phase);
        policy_caps.max_phase = max_phase;
        // The models a repository may choose in `llm.model`: each must have a price, so that
        // no repository can run calls the budgets cannot see.
        if let Some(list) = src.get("ORCH_LLM_MODELS").filter(|l| !l.trim().is_empty()) {
            let models: Vec<String> = list.split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
            if let Some(unpriced) = models.iter().find(|m| crate::llm::pricing::price(m).is_none()) {
                return Err(ConfigError::Invalid {
                    var: "ORCH_LLM_MODELS",
                    problem: format!("`{unpriced}` is not in the price table (src/llm/pricing.rs), so its cost could not be bounded"),
                });
            }
            policy_caps.llm_models = models;
        }
        let millis = |var: &'static str, default: u64| -> Result<Duration, ConfigError> {
            let ms = src.parse::<u64>(var, "a whole number of milliseconds")?.unwrap_or(default);
            if ms == 0 {
                return Err(ConfigError::Invalid {
                    var,
                    problem: "must be at least 1".into(),
                });
            }
            Ok(Duration::from_millis(ms))
        };
        let github_request_timeout = millis("ORCH_GITHUB_TIMEOUT_MS", 15_000)?;
        let github_retry_backoff = millis("ORCH_GITHUB_RETRY_BACKOFF_MS", 500)?;
        let github_max_rate_limit_wait = millis("ORCH_GITHUB_MAX_RATE_LIMIT_WAIT_MS", 5_000)?;
        let llm_request_timeout = millis("ORCH_LLM_TIMEOUT_MS", 120_000)?;
        let llm_retry_backoff = millis("ORCH_LLM_RETRY_BACKOFF_MS", 1_000)?;
        let webhook_body_timeout = millis("ORCH_WEBHOOK_BODY_TIMEOUT_MS", 10_000)?;
        let webhook_max_in_flight = src
            .parse::<usize>("ORCH_WEBHOOK_MAX_IN_FLIGHT", "a whole number of requests")?
            .unwrap_or(64);
        if webhook_max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                var: "ORCH_WEBHOOK_MAX_IN_FLIGHT",
                problem: "must be at least 1".into(),
            });
        }
        let audit_key = src.secret("ORCH_AUDIT_KEY");
        // A short key could be guessed offline from any row; 32 bytes is what `openssl rand -hex 16` gives.
        if audit_key
            .as_ref()
            .is_some_and(|k| secrecy::ExposeSecret::expose_secret(k).len() < 32)
        {
            return Err(ConfigError::Invalid {
                var: "ORCH_AUDIT_KEY",
                problem: "must be at least 32 characters (e.g. `openssl rand -hex 32`)".into(),
            });
        }
        let admin_token = src.secret("ORCH_ADMIN_TOKEN");
        let admin_tokens_file = src.get("ORCH_ADMIN_TOKENS").map(PathBuf::from);
        // A malformed tokens file stops the start, naming the file and line.
        let operators =
            operators::Operators::load(admin_token.as_ref(), admin_tokens_file.as_deref()).map_err(|e| ConfigError::Invalid {
                var: "ORCH_ADMIN_TOKENS",
                problem: e.to_string(),
            })?;
        Ok(Config {
            webhook_body_timeout,
            webhook_max_in_flight,
            audit_key,
            admin_tokens_file,
            operators,
            github_request_timeout,
            github_retry_backoff,
            github_max_rate_limit_wait,
            llm_request_timeout,
            llm_retry_backoff,
            public_url: match src.get("ORCH_PUBLIC_URL").map(str::trim).filter(|v| !v.is_empty()) {
                Some(_) => Some(url_var("ORCH_PUBLIC_URL", "")?),
                None => None,
            },
            bind,
            payload_dir: src
                .get("ORCH_PAYLOAD_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| default_payload_dir(&database_url)),
            database_url,
            payload_store,
            webhook_secrets,
            github_app_id: src.parse::<u64>("ORCH_GITHUB_APP_ID", "a numeric GitHub App id")?,
            github_private_key_path: src.get("ORCH_GITHUB_PRIVATE_KEY_PATH").map(PathBuf::from),
            github_private_key: src.secret("ORCH_GITHUB_PRIVATE_KEY"),
            github_api_url: url_var("ORCH_GITHUB_API_URL", "https://api.github.com")?,
            github_dry_run: src.bool("ORCH_GITHUB_DRY_RUN")?,
            admin_token,
            marker_key: src.secret("ORCH_MARKER_KEY"),
            llm_provider,
            llm_model: src.get("ORCH_LLM_MODEL").map(str::to_string),
            anthropic_api_key: src.secret("ANTHROPIC_API_KEY"),
            anthropic_base_url: url_var("ORCH_ANTHROPIC_BASE_URL", "https://api.anthropic.com")?,
            openai_api_key: src.secret("OPENAI_API_KEY"),
            openai_base_url: url_var("ORCH_OPENAI_BASE_URL", "https://api.openai.com/v1")?,
            fake_llm_script: src.get("ORCH_FAKE_LLM_SCRIPT").map(PathBuf::from),
            durability,
            job_lease: Duration::from_secs(job_lease_secs),
            workers,
            github_write_pace: Duration::from_millis(github_write_pace),
            github_write_limits,
            reaction_poll: Duration::from_millis(reaction_poll),
            tarball_max_bytes: src
                .parse::<u64>("ORCH_TARBALL_MAX_BYTES", "a whole number of bytes")?
                .unwrap_or(crate::github::tarball::TarballLimits::default().max_download_bytes),
            proposal_day: Duration::from_millis(proposal_day),
            permission_cache: Duration::from_secs(
                src.parse::<u64>("ORCH_PERMISSION_CACHE_SECS", "a whole number of seconds")?
                    .unwrap_or(60),
            ),
            bot_login: src.get("ORCH_BOT_LOGIN").unwrap_or("orch[bot]").to_string(),
            max_phase,
            policy_caps,
            reconcile_every: Duration::from_secs(
                src.parse::<u64>("ORCH_RECONCILE_SECS", "a whole number of seconds (0 turns it off)")?
                    .unwrap_or(600),
            ),
        })
    }

    /// What `orch serve` cannot run without.
    pub fn require_serve(&self) -> Result<(), ConfigError> {
        if self.webhook_secrets.is_empty() {
            return Err(ConfigError::Missing {
                var: "ORCH_WEBHOOK_SECRET",
                why: "orch refuses to accept unsigned webhooks; set the secret configured on the GitHub App",
            });
        }
        Ok(())
    }

    /// A name for the backend in `/health` and logs; never the URL (it may hold a password).
    pub fn mode(&self) -> &'static str {
        if self.database_url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        }
    }
}

/// Payloads live next to the SQLite file by default, in the working directory for Postgres.
fn default_payload_dir(database_url: &str) -> PathBuf {
    if let Some(rest) = database_url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or(path);
        if !path.is_empty() && path != ":memory:" {
            let p = PathBuf::from(path);
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "orch".into());
            return p.with_file_name(format!("{name}.payloads"));
        }
    }
    PathBuf::from("orch-payloads")
}

fn read_file(path: &str) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        path: path.to_string(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::FileSyntax {
        path: path.to_string(),
        message: e.message().to_string(),
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let var = VARIABLES
            .iter()
            .find(|v| v.eq_ignore_ascii_case(&key) || v.strip_prefix("ORCH_").is_some_and(|s| s.eq_ignore_ascii_case(&key)))
            .ok_or_else(|| ConfigError::FileSyntax {
                path: path.to_string(),
                message: format!("unknown key {key:?}; known keys are {}", VARIABLES.join(", ")),
            })?;
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    toml::Value::String(s) => Ok(s),
                    other => Err(ConfigError::FileSyntax {
                        path: path.to_string(),
                        message: format!("{key}: lists may hold only strings, found a {}", other.type_str()),
                    }),
                })
                .collect::<Result<Vec<_>, ConfigError>>()?
                .join(","),
            other => {
                return Err(ConfigError::FileSyntax {
                    path: path.to_string(),
                    message: format!("{key}: unsupported value of type {}", other.type_str()),
                })
            }
        };
        out.push((*var, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::from_map(&env(&[])).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(c.database_url, "sqlite://orch.db");
        assert_eq!(c.github_api_url, "https://api.github.com");
        assert_eq!(c.llm_provider, LlmProvider::Fake);
        assert!(!c.github_dry_run);
        assert_eq!(c.payload_dir, PathBuf::from("orch.db.payloads"));
        assert!(c.require_serve().is_err());
    }

    #[test]
    fn secrets_are_split_for_rotation_and_never_debug_printed() {
        let c = Config::from_map(&env(&[("ORCH_WEBHOOK_SECRET", "old-one, new-one")])).unwrap();
        assert_eq!(c.webhook_secrets.len(), 2);
        assert_eq!(c.webhook_secrets[1].expose_secret(), "new-one");
        let printed = format!("{c:?}");
        assert!(!printed.contains("old-one") && !printed.contains("new-one"), "{printed}");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (var, value) in [
            ("ORCH_BIND", "not-an-address"),
            ("ORCH_GITHUB_APP_ID", "abc"),
            ("ORCH_GITHUB_DRY_RUN", "maybe"),
            ("ORCH_LLM_PROVIDER", "gpt"),
            ("ORCH_DATABASE_URL", "mysql://x"),
            ("ORCH_WEBHOOK_SECRET", "a,,b"),
            ("ORCH_GITHUB_API_URL", "ftp://example"),
            ("ORCH_JOB_LEASE_SECS", "0"),
            ("ORCH_PAYLOAD_STORE", "s3"),
        ] {
            let err = Config::from_map(&env(&[(var, value)])).unwrap_err().to_string();
            assert!(err.starts_with(var), "{var}: {err}");
        }
        let err = Config::from_map(&env(&[])).unwrap().require_serve().unwrap_err().to_string();
        assert!(err.contains("ORCH_WEBHOOK_SECRET"), "{err}");
    }

    #[test]
    fn toml_file_is_read_and_env_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:4000\"\nORCH_GITHUB_APP_ID = 42\nwebhook_secret = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = Config::from_map(&env(&[("ORCH_CONFIG", p), ("ORCH_GITHUB_APP_ID", "7")])).unwrap();
        assert_eq!(c.bind.port(), 4000);
        assert_eq!(c.github_app_id, Some(7));
        assert_eq!(c.webhook_secrets.len(), 2);

        std::fs::write(&path, "nonsense = 1\n").unwrap();
        let err = Config::from_map(&env(&[("ORCH_CONFIG", p)])).unwrap_err().to_string();
        assert!(err.starts_with("ORCH_CONFIG") && err.contains("nonsense"), "{err}");
        std::fs::write(&path, "bind = \n").unwrap();
        let err = Config::from_map(&env(&[("ORCH_CONFIG", p)])).unwrap_err().to_string();
        assert!(err.starts_with("ORCH_CONFIG"), "{err}");
    }

    #[test]
    fn policy_caps_come_from_their_file_and_name_their_variable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let good = dir.join("caps.yml");
        std::fs::write(&good, "max_phase: 2\nextra_forbidden_paths: [\"infra/**\"]\n").unwrap();
        let c = Config::from_map(&env(&[("ORCH_POLICY_CAPS", good.to_str().unwrap()), ("ORCH_MAX_PHASE", "3")])).unwrap();
        assert_eq!((c.max_phase, c.policy_caps.max_phase), (2, 2), "the smaller phase wins");
        assert_eq!(c.policy_caps.extra_forbidden_paths, ["infra/**"]);
        let c = Config::from_map(&env(&[("ORCH_POLICY_CAPS", good.to_str().unwrap()), ("ORCH_MAX_PHASE", "1")])).unwrap();
        assert_eq!((c.max_phase, c.policy_caps.max_phase), (1, 1));
        let bad = dir.join("bad.yml");
        std::fs::write(&bad, "max_phase: 2\nmax_file: 3\n").unwrap();
        let err = Config::from_map(&env(&[("ORCH_POLICY_CAPS", bad.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ORCH_POLICY_CAPS") && err.contains("max_file"), "{err}");
        let c = Config::from_map(&env(&[("ORCH_LLM_MODELS", "claude-haiku-4-5, gpt-4o-mini")])).unwrap();
        assert_eq!(c.policy_caps.llm_models, ["claude-haiku-4-5", "gpt-4o-mini"]);
        assert!(c.policy_caps.allows_model("gpt-4o-mini-2024-07-18") && !c.policy_caps.allows_model("gpt-4o"));
        let err = Config::from_map(&env(&[("ORCH_LLM_MODELS", "gpt-4o, llama3.1:8b")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ORCH_LLM_MODELS") && err.contains("llama3.1:8b"), "{err}");
        let err = Config::from_map(&env(&[("ORCH_POLICY_CAPS", "/nonexistent/caps.yml")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ORCH_POLICY_CAPS") && err.contains("cannot read"), "{err}");
    }

    #[test]
    fn write_limits_default_to_githubs_and_off_turns_them_off() {
        let default = Config::from_map(&env(&[])).unwrap().github_write_limits;
        assert_eq!(default.limits.len(), 2, "80 a minute and 500 an hour");
        let off = Config::from_map(&env(&[("ORCH_GITHUB_WRITE_LIMITS", "off")]))
            .unwrap()
            .github_write_limits;
        assert!(off.limits.is_empty());
        // An empty value is unset, as for every variable: GitHub's limits hold.
        let empty = Config::from_map(&env(&[("ORCH_GITHUB_WRITE_LIMITS", " ")]))
            .unwrap()
            .github_write_limits;
        assert_eq!(empty.limits.len(), 2);
        assert!(Config::from_map(&env(&[("ORCH_GITHUB_WRITE_LIMITS", "80")])).is_err());
    }
}
