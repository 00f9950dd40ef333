//! The providers (SPEC §9) and the model's retry layer.
//!
//! - `anthropic`: Messages API, `POST {base}/v1/messages` with `x-api-key` and
//!   `anthropic-version: 2023-06-01`; one tool whose `input_schema` is the task's schema,
//!   `tool_choice: {"type": "tool", "name": …}`; the answer is the `input` of the `tool_use`
//!   content block; usage from `usage.input_tokens` / `usage.output_tokens`.
//! - `openai`: Chat Completions, `POST {base}/chat/completions` with `Authorization: Bearer`
//!   (left out when no key is configured, for local servers); one function tool,
//!   `tool_choice: {"type": "function", "function": {"name": …}}`; the answer is
//!   `choices[0].message.tool_calls[0].function.arguments` (a JSON string; an object is accepted
//!   too, as some local servers send one); usage from `usage.prompt_tokens` /
//!   `usage.completion_tokens`. The output limit is sent as `max_tokens`, which OpenAI, Ollama,
//!   vLLM and llama.cpp all accept.
//! - `fake`: offline, see [`super::fake`].
//!
//! **Retries.** At most `max_retries` retries after the first request (default 3: four requests
//! in all). Retried: 408, 409, 429, every 5xx (529 "overloaded" included), timeouts and connection
//! errors. Never retried: any other status (400, 401, 403, 404, 422, …), which fails at once with
//! the provider's error message. `x-should-retry: true|false` overrides the status rule. The wait
//! before retry *n* (1-based) is `retry-after-ms` (milliseconds) or else `retry-after` (seconds)
//! when the provider sends one, otherwise `base_backoff · 2^(n-1)` (1 s, 2 s, 4 s by default) plus
//! a random jitter of up to a quarter of it. A provider asking for a wait longer than
//! `max_retry_after` (60 s) is not waited for: the call fails as transient at once.
//!
//! **Malformed answers** (a 2xx whose body is not JSON, has no tool call, or whose tool input is
//! not JSON) are not retried: the tokens are spent and a model that answered badly once is
//! likely to again; the failure is recorded and surfaced (`/orch retry` asks again).

use super::prompt::Prompt;
use super::Task;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::time::Duration;

/// The `anthropic-version` header value.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Which provider answers, and where.
#[derive(Debug, Clone)]
pub enum Provider {
    Anthropic {
        base_url: String,
        api_key: SecretString,
    },
    /// OpenAI or any server with its Chat Completions API (Ollama, vLLM, llama.cpp).
    OpenAi {
        base_url: String,
        api_key: Option<SecretString>,
    },
    /// Deterministic and offline; scripted when a script is given.
    Fake {
        script: Option<super::fake::Script>,
    },
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Anthropic { .. } => "anthropic",
            Provider::OpenAi { .. } => "openai",
            Provider::Fake { .. } => "fake",
        }
    }
}

/// Retry and timeout settings (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Retries after the first request.
    pub max_retries: u32,
    /// The first backoff; doubled per retry, plus jitter.
    pub base_backoff: Duration,
    /// No backoff is longer (before jitter).
    pub max_backoff: Duration,
    /// Per request (connect, generation and reading the answer).
    pub request_timeout: Duration,
    /// The longest `retry-after` orch waits for.
    pub max_retry_after: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetrySettings {
    /// The wait before retry `n` (1-based) when the provider did not say: exponential with jitter.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
            .min(self.max_backoff);
        let quarter = exp.as_millis() as u64 / 4;
        exp + Duration::from_millis(if quarter == 0 { 0 } else { random_u64() % (quarter + 1) })
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

/// What a provider answered, before the task's schema is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The tool input.
    pub input: Value,
    pub tokens_in: u32,
    pub tokens_out: u32,
}

/// Why a call failed, before it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Transient(String),
    Permanent {
        status: Option<u16>,
        message: String,
    },
    /// The tokens were spent (when the provider reported them) but the answer is unusable.
    Malformed {
        message: String,
        tokens_in: u32,
        tokens_out: u32,
    },
}

/// One logical call's result and how many HTTP requests it took.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    pub attempts: u32,
    pub result: Result<Answer, Failure>,
}

/// An HTTP provider ready to send: the endpoint and its fixed headers (keys marked sensitive).
#[derive(Debug, Clone)]
pub(crate) struct Http {
    kind: Kind,
    url: String,
    headers: HeaderMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anthropic,
    OpenAi,
}

impl Http {
    /// None for the fake. Fails when a key cannot be sent as a header.
    pub(crate) fn of(provider: &Provider) -> anyhow::Result<Option<Http>> {
        let secret = |var: &str, value: String| -> anyhow::Result<HeaderValue> {
            let mut v =
                HeaderValue::from_str(&value).map_err(|_| anyhow::anyhow!("{var}: the key holds characters a header cannot carry"))?;
            v.set_sensitive(true);
            Ok(v)
        };
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        Ok(match provider {
            Provider::Fake { .. } => None,
            Provider::Anthropic { base_url, api_key } => {
                headers.insert("x-api-key", secret("ANTHROPIC_API_KEY", api_key.expose_secret().to_string())?);
                headers.insert("anthropic-version", HeaderValue::from_static(ANTHROPIC_VERSION));
                Some(Http {
                    kind: Kind::Anthropic,
                    url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
                    headers,
                })
            }
            Provider::OpenAi { base_url, api_key } => {
                if let Some(key) = api_key {
                    headers.insert(
                        "authorization",
                        secret("OPENAI_API_KEY", format!("Bearer {}", key.expose_secret()))?,
                    );
                }
                Some(Http {
                    kind: Kind::OpenAi,
                    url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
                    headers,
                })
            }
        })
    }

    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Anthropic => "anthropic",
            Kind::OpenAi => "openai",
        }
    }

    /// The request body for `task`.
    pub(crate) fn body(&self, task: Task, prompt: &Prompt, model: &str, max_output_tokens: u32) -> Value {
        match self.kind {
            Kind::Anthropic => json!({
                "model": model,
                "max_tokens": max_output_tokens,
                "system": prompt.system(),
                "messages": [{ "role": "user", "content": prompt.user() }],
                "tools": [{ "name": task.tool_name(), "description": task.tool_description(), "input_schema": task.schema() }],
                "tool_choice": { "type": "tool", "name": task.tool_name() },
            }),
            Kind::OpenAi => json!({
                "model": model,
                "max_tokens": max_output_tokens,
                "messages": [
                    { "role": "system", "content": prompt.system() },
                    { "role": "user", "content": prompt.user() },
                ],
                "tools": [{
                    "type": "function",
                    "function": { "name": task.tool_name(), "description": task.tool_description(), "parameters": task.schema() },
                }],
                "tool_choice": { "type": "function", "function": { "name": task.tool_name() } },
            }),
        }
    }

    /// One logical call: the request, retried as the module documentation says, then the answer.
    pub(crate) async fn call(
        &self,
        client: &reqwest::Client,
        retry: &RetrySettings,
        task: Task,
        prompt: &Prompt,
        model: &str,
        max_output_tokens: u32,
    ) -> CallResult {
        let body = self.body(task, prompt, model, max_output_tokens);
        let request = || {
            client
                .post(&self.url)
                .headers(self.headers.clone())
                .timeout(retry.request_timeout)
                .json(&body)
        };
        let (attempts, text) = send(self.name(), request, retry).await;
        let result = text.and_then(|text| match self.kind {
            Kind::Anthropic => parse_anthropic(task, &text),
            Kind::OpenAi => parse_openai(task, &text),
        });
        CallResult { attempts, result }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Whether an error answer may be retried: `x-should-retry` first, then the status.
pub fn should_retry(status: u16, headers: &HeaderMap) -> bool {
    match header(headers, "x-should-retry") {
        Some("true") => true,
        Some("false") => false,
        _ => matches!(status, 408 | 409 | 429) || status >= 500,
    }
}

/// The wait the provider asks for: `retry-after-ms`, else `retry-after` in seconds.
pub fn server_wait(headers: &HeaderMap) -> Option<Duration> {
    let parse = |name: &str, scale: f64| {
        header(headers, name)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| Duration::from_secs_f64((v * scale).min(1e9)))
    };
    parse("retry-after-ms", 0.001).or_else(|| parse("retry-after", 1.0))
}

/// The provider's error message from an error answer, with the status and request id.
fn error_message(provider: &str, status: u16, headers: &HeaderMap, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().map(|v| v.get("error").unwrap_or(v));
    let message = error
        .and_then(|e| e.get("message").and_then(Value::as_str).or_else(|| e.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| excerpt(body, 500));
    let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str);
    let request_id = header(headers, "request-id").or_else(|| header(headers, "x-request-id"));
    let mut out = format!("{provider} answered {status}");
    if let Some(kind) = kind {
        out.push_str(&format!(" {kind}"));
    }
    out.push_str(&format!(": {message}"));
    if let Some(id) = request_id {
        out.push_str(&format!(" (request id {id})"));
    }
    out
}

fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Sends with retries; the body of the first 2xx answer, or why there was none.
async fn send(provider: &str, request: impl Fn() -> RequestBuilder, retry: &RetrySettings) -> (u32, Result<String, Failure>) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (last, wait) = match request().send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                if response.status().is_success() {
                    match response.text().await {
                        Ok(text) => return (attempts, Ok(text)),
                        Err(e) => (format!("{provider}: reading the answer failed: {}", describe(&e, retry)), None),
                    }
                } else {
                    let body = response.text().await.unwrap_or_default();
                    let message = error_message(provider, status, &headers, &body);
                    if !should_retry(status, &headers) {
                        return (
                            attempts,
                            Err(Failure::Permanent {
                                status: Some(status),
                                message,
                            }),
                        );
                    }
                    (message, server_wait(&headers))
                }
            }
            Err(e) if e.is_builder() => {
                return (
                    attempts,
                    Err(Failure::Permanent {
                        status: None,
                        message: format!("{provider}: the request cannot be built: {e}"),
                    }),
                )
            }
            Err(e) => (format!("{provider}: {}", describe(&e, retry)), None),
        };
        if attempts > retry.max_retries {
            return (attempts, Err(Failure::Transient(format!("{attempts} attempts; last: {last}"))));
        }
        let wait = match wait {
            Some(w) if w > retry.max_retry_after => {
                return (
                    attempts,
                    Err(Failure::Transient(format!(
                        "{last}; the provider asks to wait {:.1} s, longer than orch waits ({} s)",
                        w.as_secs_f64(),
                        retry.max_retry_after.as_secs()
                    ))),
                )
            }
            Some(w) => w,
            None => retry.backoff(attempts),
        };
        tracing::warn!(provider, attempt = attempts, wait_ms = wait.as_millis() as u64, error = %last, "model request failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

fn describe(e: &reqwest::Error, retry: &RetrySettings) -> String {
    if e.is_timeout() {
        format!("no answer within {:.1} s (timeout)", retry.request_timeout.as_secs_f64())
    } else if e.is_connect() {
        format!("cannot connect: {}", source_chain(e))
    } else {
        source_chain(e)
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn tokens(v: &Value, field: &str) -> u32 {
    v.get(field)
        .and_then(Value::as_u64)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

fn parse_anthropic(task: Task, text: &str) -> Result<Answer, Failure> {
    let v: Value = serde_json::from_str(text).map_err(|e| Failure::Malformed {
        message: format!("anthropic: the answer is not JSON ({e}): {}", excerpt(text, 200)),
        tokens_in: 0,
        tokens_out: 0,
    })?;
    let (tokens_in, tokens_out) = (tokens(&v["usage"], "input_tokens"), tokens(&v["usage"], "output_tokens"));
    let malformed = |message: String| Failure::Malformed {
        message: format!("anthropic: {message}"),
        tokens_in,
        tokens_out,
    };
    let block = v
        .get("content")
        .and_then(Value::as_array)
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_use" && b["name"] == task.tool_name()));
    match block {
        Some(b) if v["stop_reason"] == "max_tokens" => Err(malformed(format!(
            "the answer was cut off at max_tokens; partial tool input: {}",
            excerpt(&b["input"].to_string(), 200)
        ))),
        Some(b) => match b.get("input") {
            Some(input) if input.is_object() => Ok(Answer {
                input: input.clone(),
                tokens_in,
                tokens_out,
            }),
            _ => Err(malformed("the tool_use block has no input object".into())),
        },
        None => Err(malformed(format!(
            "no tool_use block for {} in the answer (stop_reason {})",
            task.tool_name(),
            v["stop_reason"]
        ))),
    }
}

fn parse_openai(task: Task, text: &str) -> Result<Answer, Failure> {
    let v: Value = serde_json::from_str(text).map_err(|e| Failure::Malformed {
        message: format!("openai: the answer is not JSON ({e}): {}", excerpt(text, 200)),
        tokens_in: 0,
        tokens_out: 0,
    })?;
    let (tokens_in, tokens_out) = (tokens(&v["usage"], "prompt_tokens"), tokens(&v["usage"], "completion_tokens"));
    let malformed = |message: String| Failure::Malformed {
        message: format!("openai: {message}"),
        tokens_in,
        tokens_out,
    };
    let choice = &v["choices"][0];
    let function = &choice["message"]["tool_calls"][0]["function"];
    if choice["finish_reason"] == "length" {
        return Err(malformed("the answer was cut off at max_tokens".into()));
    }
    if function.is_null() {
        return Err(malformed(format!(
            "no tool call in choices[0].message (finish_reason {})",
            choice["finish_reason"]
        )));
    }
    if function["name"] != task.tool_name() {
        return Err(malformed(format!(
            "the tool call is {}, not {}",
            function["name"],
            task.tool_name()
        )));
    }
    let input = match &function["arguments"] {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map_err(|e| malformed(format!("the tool arguments are not JSON ({e}): {}", excerpt(s, 200))))?,
        other => other.clone(),
    };
    if !input.is_object() {
        return Err(malformed(format!(
            "the tool arguments are not a JSON object: {}",
            excerpt(&input.to_string(), 200)
        )));
    }
    Ok(Answer {
        input,
        tokens_in,
        tokens_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn statuses_and_overrides() {
        for s in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(should_retry(s, &HeaderMap::new()), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!should_retry(s, &HeaderMap::new()), "{s}");
        }
        assert!(!should_retry(500, &headers(&[("x-should-retry", "false")])));
        assert!(should_retry(400, &headers(&[("x-should-retry", "true")])));
    }

    #[test]
    fn waits_from_headers() {
        assert_eq!(server_wait(&headers(&[("retry-after", "2")])), Some(Duration::from_secs(2)));
        assert_eq!(
            server_wait(&headers(&[("retry-after-ms", "150")])),
            Some(Duration::from_millis(150))
        );
        assert_eq!(
            server_wait(&headers(&[("retry-after", "9"), ("retry-after-ms", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(server_wait(&headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])), None);
        assert_eq!(server_wait(&headers(&[("retry-after", "-1")])), None);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let r = RetrySettings::default();
        for (n, base) in [(1, 1000), (2, 2000), (3, 4000)] {
            for _ in 0..50 {
                let b = r.backoff(n).as_millis() as u64;
                assert!(b >= base && b <= base + base / 4, "retry {n}: {b} ms");
            }
        }
        assert!(r.backoff(30) <= Duration::from_millis(37_500));
    }

    #[test]
    fn cut_off_and_mismatched_answers_are_malformed() {
        let cut = json!({"content": [{"type": "tool_use", "name": "submit_triage", "input": {"labels": []}}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 10, "output_tokens": 256}});
        match parse_anthropic(Task::Triage, &cut.to_string()) {
            Err(Failure::Malformed { message, tokens_out, .. }) => {
                assert!(message.contains("max_tokens") && tokens_out == 256, "{message}")
            }
            other => panic!("{other:?}"),
        }
        let other_tool = json!({"content": [{"type": "tool_use", "name": "submit_patch", "input": {}}], "stop_reason": "tool_use"});
        assert!(matches!(
            parse_anthropic(Task::Triage, &other_tool.to_string()),
            Err(Failure::Malformed { .. })
        ));
        let length = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "submit_triage", "arguments": "{"}}]},
            "finish_reason": "length"}], "usage": {"prompt_tokens": 5, "completion_tokens": 9}});
        assert!(matches!(
            parse_openai(Task::Triage, &length.to_string()),
            Err(Failure::Malformed {
                tokens_in: 5,
                tokens_out: 9,
                ..
            })
        ));
        let wrong = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "other", "arguments": "{}"}}]}}]});
        assert!(
            matches!(parse_openai(Task::Triage, &wrong.to_string()), Err(Failure::Malformed { message, .. }) if message.contains("other"))
        );
        let object = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "submit_triage", "arguments": {"a": 1}}}]}}]});
        assert_eq!(parse_openai(Task::Triage, &object.to_string()).unwrap().input, json!({"a": 1}));
        let array = json!({"choices": [{"message": {"tool_calls": [{"function": {"name": "submit_triage", "arguments": "[1]"}}]}}]});
        assert!(matches!(
            parse_openai(Task::Triage, &array.to_string()),
            Err(Failure::Malformed { .. })
        ));
    }

    #[test]
    fn provider_messages_are_surfaced() {
        let body = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: must be positive"}}"#;
        let m = error_message("anthropic", 400, &headers(&[("request-id", "req_1")]), body);
        assert_eq!(
            m,
            "anthropic answered 400 invalid_request_error: max_tokens: must be positive (request id req_1)"
        );
        let m = error_message("openai", 502, &HeaderMap::new(), "<html>bad gateway</html>");
        assert_eq!(m, "openai answered 502: <html>bad gateway</html>");
    }
}
