//! A fake model server over real HTTP: it records every request (path, headers, JSON body, time)
//! and answers from a script, in the shapes of the Anthropic Messages API and the OpenAI Chat
//! Completions API (success with a tool call, errors with their JSON error bodies and headers).
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long the server waits before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    /// A Messages API answer whose content is a text block and a `tool_use` block.
    pub fn anthropic_tool(tool: &str, input: Value, tokens_in: u32, tokens_out: u32) -> Reply {
        Reply::new(
            200,
            json!({
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [
                    { "type": "text", "text": "Here is my answer." },
                    { "type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": tool, "input": input }
                ],
                "stop_reason": "tool_use",
                "stop_sequence": null,
                "usage": { "input_tokens": tokens_in, "output_tokens": tokens_out }
            })
            .to_string(),
        )
        .header("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy")
    }

    /// An Anthropic error answer (`{"type": "error", "error": {...}}`).
    pub fn anthropic_error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::new(
            status,
            json!({ "type": "error", "error": { "type": kind, "message": message } }).to_string(),
        )
        .header("request-id", "req_error_1")
    }

    /// A Chat Completions answer with one tool call whose arguments are a JSON string.
    pub fn openai_tool(tool: &str, arguments: &str, tokens_in: u32, tokens_out: u32) -> Reply {
        Reply::new(
            200,
            json!({
                "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                "object": "chat.completion",
                "created": 1741570283,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{ "id": "call_abc123", "type": "function", "function": { "name": tool, "arguments": arguments } }],
                        "refusal": null
                    },
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": { "prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out }
            })
            .to_string(),
        )
        .header("x-request-id", "req_oa_1")
    }

    /// An OpenAI error answer (`{"error": {...}}`).
    pub fn openai_error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::new(
            status,
            json!({ "error": { "message": message, "type": kind, "param": null, "code": null } }).to_string(),
        )
        .header("x-request-id", "req_oa_err")
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
}

pub struct FakeLlm {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
}

async fn answer(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    shared.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    });
    let reply = shared
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::new(500, r#"{"error":{"message":"the fake's script is exhausted"}}"#));
    tokio::time::sleep(reply.delay).await;
    let mut out = HeaderMap::new();
    for (k, v) in &reply.headers {
        out.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    (StatusCode::from_u16(reply.status).unwrap(), out, reply.body)
}

impl FakeLlm {
    pub async fn start(replies: Vec<Reply>) -> FakeLlm {
        let shared = Arc::new(Shared {
            replies: Mutex::new(replies.into()),
            seen: Mutex::default(),
        });
        let app = axum::Router::new().fallback(answer).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeLlm {
            url: format!("http://{addr}"),
            shared,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Time between consecutive requests.
    pub fn gaps(&self) -> Vec<Duration> {
        self.requests().windows(2).map(|w| w[1].at - w[0].at).collect()
    }
}
