//! [`Llm`]: the one entry point of the workflow engine into the model (SPEC §9).

use super::context::{estimate_tokens, pack_for};
use super::fake::{self, Script};
use super::pricing;
use super::prompt::{self, Prompt};
use super::provider::{Answer, CallResult, Failure, Http, Provider, RetrySettings};
use super::{Context, Proposal, Task};
use crate::config::{Config, ConfigError, LlmProvider};
use crate::store::model_calls::{self, Finished, NewModelCall, Outcome};
use crate::store::{now_ms, Store};
use std::time::Instant;

/// The model used when `ORCH_LLM_MODEL` is not set.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini";
pub const DEFAULT_FAKE_MODEL: &str = "fake";

/// The default OpenAI base URL: a key is required there (local servers may go without).
const OPENAI_DEFAULT_BASE: &str = "https://api.openai.com";

/// The model, ready to be asked. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Llm {
    provider: Provider,
    http: Option<Http>,
    model: String,
    retry: RetrySettings,
    client: reqwest::Client,
}

/// A successful call: the raw tool input (it parsed with [`Proposal::parse`]; parse it again to
/// use it) and what the call cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The tool input, exactly as the model gave it.
    pub answer: serde_json::Value,
    /// The `model_calls` row.
    pub call_id: i64,
    /// What the context pack left out, for the proposal to show ("not seen by the model: …").
    pub not_seen: Vec<String>,
    pub cost_usd: f64,
    pub tokens_in: u32,
    pub tokens_out: u32,
    /// False when the model is not in the price table (`cost_usd` is then 0).
    pub price_known: bool,
    pub model: String,
    /// The prompt template with version, e.g. `triage.v1`.
    pub template: &'static str,
    /// HTTP requests made (1 without retries).
    pub attempts: u32,
    pub latency_ms: u64,
}

/// Why a call failed. Each variant but `Store` has its `model_calls` row (with the error).
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Retryable failures (429, 5xx, 529, timeouts, connection errors) outlasted the retries.
    #[error("the model is unavailable: {message}")]
    Transient { call_id: i64, attempts: u32, message: String },
    /// The provider refused the request (400, 401, 403, 404, 422, …); retrying will not help.
    #[error("the model provider refused the request: {message}")]
    Permanent {
        call_id: i64,
        status: Option<u16>,
        message: String,
    },
    /// The answer was unusable: not JSON, no tool call, or not the task's schema. `answer` is the
    /// tool input when there was one (for Gate 2 to list the problem).
    #[error("the model's answer was refused: {problem}")]
    Malformed {
        call_id: i64,
        problem: String,
        answer: Option<serde_json::Value>,
    },
    /// The call could not be recorded.
    #[error("recording the model call failed: {0}")]
    Store(#[from] sqlx::Error),
}

impl LlmError {
    /// The `model_calls` row, when one was written.
    pub fn call_id(&self) -> Option<i64> {
        match self {
            LlmError::Transient { call_id, .. } | LlmError::Permanent { call_id, .. } | LlmError::Malformed { call_id, .. } => {
                Some(*call_id)
            }
            LlmError::Store(_) => None,
        }
    }

    /// Whether asking again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, LlmError::Transient { .. } | LlmError::Store(_))
    }
}

impl Llm {
    /// The model configured by the operator. Fails, naming the variable, when the chosen
    /// provider's key is missing (`OPENAI_API_KEY` is optional only with a non-default
    /// `ORCH_OPENAI_BASE_URL`, for local servers) or the fake's script cannot be read.
    pub fn from_config(config: &Config) -> anyhow::Result<Llm> {
        let (provider, default_model) = match config.llm_provider {
            LlmProvider::Anthropic => {
                let api_key = config.anthropic_api_key.clone().ok_or(ConfigError::Missing {
                    var: "ANTHROPIC_API_KEY",
                    why: "ORCH_LLM_PROVIDER is anthropic",
                })?;
                (
                    Provider::Anthropic {
                        base_url: config.anthropic_base_url.clone(),
                        api_key,
                    },
                    DEFAULT_ANTHROPIC_MODEL,
                )
            }
            LlmProvider::OpenAi => {
                if config.openai_api_key.is_none() && config.openai_base_url.starts_with(OPENAI_DEFAULT_BASE) {
                    return Err(ConfigError::Missing {
                        var: "OPENAI_API_KEY",
                        why: "ORCH_LLM_PROVIDER is openai with OpenAI's own ORCH_OPENAI_BASE_URL (local servers behind another URL may go without)",
                    }
                    .into());
                }
                (
                    Provider::OpenAi {
                        base_url: config.openai_base_url.clone(),
                        api_key: config.openai_api_key.clone(),
                    },
                    DEFAULT_OPENAI_MODEL,
                )
            }
            LlmProvider::Fake => {
                let script = match &config.fake_llm_script {
                    None => None,
                    Some(path) => Some(Script::load(path).map_err(|problem| ConfigError::Invalid {
                        var: "ORCH_FAKE_LLM_SCRIPT",
                        problem,
                    })?),
                };
                (Provider::Fake { script }, DEFAULT_FAKE_MODEL)
            }
        };
        let model = config.llm_model.clone().unwrap_or_else(|| default_model.to_string());
        let retry = RetrySettings {
            request_timeout: config.llm_request_timeout,
            base_backoff: config.llm_retry_backoff,
            ..RetrySettings::default()
        };
        Llm::new(provider, model, retry)
    }

    /// A model with explicit settings (tests: local base URLs, short backoff and timeouts).
    pub fn new(provider: Provider, model: impl Into<String>, retry: RetrySettings) -> anyhow::Result<Llm> {
        let http = Http::of(&provider)?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("orch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(retry.request_timeout.min(std::time::Duration::from_secs(10)))
            .build()?;
        let model = model.into();
        if model.trim().is_empty() {
            anyhow::bail!("ORCH_LLM_MODEL: the model name is empty");
        }
        Ok(Llm {
            provider,
            http,
            model,
            retry,
            client,
        })
    }

    /// The same provider with another model (a repository's `llm.model`).
    pub fn with_model(&self, model: impl Into<String>) -> Llm {
        Llm {
            model: model.into(),
            ..self.clone()
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// The prompt that [`Llm::generate`] would send, and what it leaves out. Deterministic.
    pub fn prompt(task: Task, context: &Context, budget_tokens: u32) -> (Prompt, Vec<String>) {
        let pack = pack_for(task, context, budget_tokens);
        let prompt = prompt::render(prompt::template_for(task), task, context, &pack);
        (prompt, pack.not_seen)
    }

    /// The most this call can cost: the estimated prompt tokens and every output token allowed
    /// (SPEC §10: refuse a call whose projection exceeds the remaining budget).
    pub fn projected_cost_usd(&self, task: Task, context: &Context, budget_tokens: u32, max_output_tokens: u32) -> f64 {
        let (prompt, _) = Llm::prompt(task, context, budget_tokens);
        pricing::estimate_cost_usd(&self.model, estimate_tokens(&prompt.text), max_output_tokens)
    }

    /// Asks the model for `task` on `context` (packed under `budget_tokens`), with at most
    /// `max_output_tokens` of answer. The call is recorded in `model_calls` before the first
    /// request (`pending`) and finished with its outcome, whatever it is. A successful answer
    /// has passed [`Proposal::parse`].
    pub async fn generate(
        &self,
        store: &Store,
        workflow_id: i64,
        task: Task,
        context: &Context,
        budget_tokens: u32,
        max_output_tokens: u32,
    ) -> Result<Generated, LlmError> {
        let (prompt, not_seen) = Llm::prompt(task, context, budget_tokens);
        let sha = prompt.sha256();
        // Each record in a write transaction: it shares its commit with the writers beside it.
        let begin = || async { store.begin().await.map_err(|e| sqlx::Error::Protocol(format!("{e:#}"))) };
        let call_id = {
            let mut tx = begin().await?;
            let id = model_calls::start(
                &mut *tx,
                &NewModelCall {
                    workflow_id,
                    task: task.as_str(),
                    template: prompt.template,
                    prompt: &prompt.text,
                    prompt_sha256: &sha,
                    provider: self.provider.name(),
                    model: &self.model,
                    max_output_tokens,
                    not_seen: &not_seen,
                },
                now_ms(),
            )
            .await?;
            tx.commit().await?;
            id
        };
        let started = Instant::now();
        let CallResult { attempts, result } = match &self.http {
            Some(http) => {
                http.call(&self.client, &self.retry, task, &prompt, &self.model, max_output_tokens)
                    .await
            }
            None => self.fake_call(task, context, &prompt),
        };
        // Rounded up, so that a call that took any time at all shows at least 1 ms.
        let latency_ms = u64::try_from(started.elapsed().as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
        // The answer must fit the task's strict schema.
        let result = result.map(|a| match Proposal::parse(task, &a.input) {
            Ok(_) => Ok(a),
            Err(e) => Err((e.to_string(), a)),
        });
        let (tokens_in, tokens_out) = match &result {
            Ok(Ok(a)) | Ok(Err((_, a))) => (a.tokens_in, a.tokens_out),
            Err(Failure::Malformed { tokens_in, tokens_out, .. }) => (*tokens_in, *tokens_out),
            Err(_) => (0, 0),
        };
        let price_known = pricing::price(&self.model).is_some();
        let cost_usd = pricing::cost_usd(&self.model, tokens_in, tokens_out);
        let (outcome, error, answer) = match &result {
            Ok(Ok(a)) => (Outcome::Ok, None, Some(&a.input)),
            Ok(Err((problem, a))) => (Outcome::Malformed, Some(problem.clone()), Some(&a.input)),
            Err(Failure::Malformed { message, .. }) => (Outcome::Malformed, Some(message.clone()), None),
            Err(Failure::Transient(message)) => (Outcome::Transient, Some(message.clone()), None),
            Err(Failure::Permanent { message, .. }) => (Outcome::Permanent, Some(message.clone()), None),
        };
        let answer_text = answer.map(|a| a.to_string());
        {
            // Relaxed: the start above is durable, so a call whose result a power loss undoes
            // still counts against the budget (with no tokens); the workflow asks again.
            let mut tx = store.begin_relaxed().await.map_err(|e| sqlx::Error::Protocol(format!("{e:#}")))?;
            model_calls::finish(
                &mut *tx,
                call_id,
                &Finished {
                    outcome,
                    error: error.as_deref(),
                    answer: answer_text.as_deref(),
                    tokens_in,
                    tokens_out,
                    cost_usd,
                    price_known,
                    attempts,
                    latency_ms,
                },
                now_ms(),
            )
            .await?;
            tx.commit().await?;
        }
        if !price_known {
            tracing::warn!(model = %self.model, "the model is not in the price table: its calls are recorded at cost 0");
        }
        tracing::info!(
            call_id, workflow_id, provider = self.provider.name(), model = %self.model, template = prompt.template,
            tokens_in, tokens_out, cost_usd, attempts, latency_ms, outcome = outcome.as_str(), "model call"
        );
        match result {
            Ok(Ok(a)) => Ok(Generated {
                answer: a.input,
                call_id,
                not_seen,
                cost_usd,
                tokens_in,
                tokens_out,
                price_known,
                model: self.model.clone(),
                template: prompt.template,
                attempts,
                latency_ms,
            }),
            Ok(Err((problem, a))) => Err(LlmError::Malformed {
                call_id,
                problem,
                answer: Some(a.input),
            }),
            Err(Failure::Malformed { message, .. }) => Err(LlmError::Malformed {
                call_id,
                problem: message,
                answer: None,
            }),
            Err(Failure::Transient(message)) => Err(LlmError::Transient {
                call_id,
                attempts,
                message,
            }),
            Err(Failure::Permanent { status, message }) => Err(LlmError::Permanent { call_id, status, message }),
        }
    }

    /// The fake provider: a scripted entry for the task, else the deterministic answer.
    fn fake_call(&self, task: Task, context: &Context, prompt: &Prompt) -> CallResult {
        let entry = match &self.provider {
            Provider::Fake { script: Some(script) } => script.next(task),
            _ => None,
        };
        let tokens_in = |e: Option<&fake::ScriptEntry>| e.and_then(|e| e.tokens_in).unwrap_or_else(|| estimate_tokens(&prompt.text));
        let result = match entry {
            Some(fake::ScriptEntry {
                error: Some(message),
                status,
                ..
            }) => {
                let status = status.unwrap_or(500);
                let message = format!("fake answered {status}: {message}");
                if super::provider::should_retry(status, &reqwest::header::HeaderMap::new()) {
                    Err(Failure::Transient(message))
                } else {
                    Err(Failure::Permanent {
                        status: Some(status),
                        message,
                    })
                }
            }
            Some(e) => {
                let input = e.answer.clone().unwrap_or_default();
                Ok(Answer {
                    tokens_in: tokens_in(Some(&e)),
                    tokens_out: e.tokens_out.unwrap_or_else(|| estimate_tokens(&input.to_string())),
                    input,
                })
            }
            None => {
                let input = fake::answer(task, context);
                Ok(Answer {
                    tokens_in: tokens_in(None),
                    tokens_out: estimate_tokens(&input.to_string()),
                    input,
                })
            }
        };
        CallResult { attempts: 1, result }
    }
}
