//! A proxy in front of the fake GitHub that answers chosen requests itself, with any status,
//! headers and body (GitHub's exact secondary-rate-limit answer, say), and forwards the rest.
//! It times every request it sees.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A canned answer for `times` requests whose method matches and whose path contains `path`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Method,
    pub path: String,
    pub times: u32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Default)]
struct Shared {
    target: Mutex<String>,
    rules: Mutex<Vec<Rule>>,
    /// (method, path, answered by a rule, when).
    seen: Mutex<Vec<(String, String, bool, Instant)>>,
    http: reqwest::Client,
}

pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
}

/// Request headers passed on to GitHub, and answer headers passed back.
const REQUEST_HEADERS: [&str; 6] = [
    "authorization",
    "accept",
    "content-type",
    "if-none-match",
    "x-github-api-version",
    "user-agent",
];
const ANSWER_HEADERS: [&str; 6] = [
    "content-type",
    "etag",
    "retry-after",
    "x-ratelimit-remaining",
    "x-ratelimit-limit",
    "x-ratelimit-reset",
];

async fn handle(State(shared): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let rule = {
        let mut rules = shared.rules.lock().unwrap();
        match rules
            .iter()
            .position(|r| r.method == method && path.contains(&r.path) && r.times > 0)
        {
            Some(i) => {
                rules[i].times -= 1;
                Some(rules[i].clone())
            }
            None => None,
        }
    };
    shared
        .seen
        .lock()
        .unwrap()
        .push((method.to_string(), path.clone(), rule.is_some(), Instant::now()));
    if let Some(rule) = rule {
        let mut out = HeaderMap::new();
        for (k, v) in &rule.headers {
            out.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        return (StatusCode::from_u16(rule.status).unwrap(), out, rule.body).into_response();
    }
    let target = shared.target.lock().unwrap().clone();
    let url = match uri.query() {
        Some(q) => format!("{target}{path}?{q}"),
        None => format!("{target}{path}"),
    };
    let mut request = shared.http.request(method, url).body(body);
    for name in REQUEST_HEADERS {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v.clone());
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let mut out = HeaderMap::new();
            for name in ANSWER_HEADERS {
                if let Some(v) = answer.headers().get(name) {
                    out.insert(name, v.clone());
                }
            }
            let body = answer.bytes().await.unwrap_or_default();
            (status, out, body).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("fault proxy: {e}")).into_response(),
    }
}

impl FaultProxy {
    /// A proxy with no target yet (see [`FaultProxy::set_target`]).
    pub async fn start() -> FaultProxy {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FaultProxy {
            url: format!("http://{addr}"),
            shared,
        }
    }

    /// Where requests that no rule answers go (`http://127.0.0.1:<port>`).
    pub fn set_target(&self, url: &str) {
        *self.shared.target.lock().unwrap() = url.trim_end_matches('/').to_string();
    }

    pub fn add(&self, rule: Rule) {
        self.shared.rules.lock().unwrap().push(rule);
    }

    /// When each `method path` request arrived, and whether a rule answered it, in order.
    pub fn times(&self, method: &str, path: &str) -> Vec<(Instant, bool)> {
        self.shared
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, _, _)| m == method && p == path)
            .map(|(_, _, ruled, t)| (*t, *ruled))
            .collect()
    }
}
