//! The GitHub retry layer against a local HTTP server that answers from a script: transient
//! errors retried, waits honoured (measured), permanent errors not retried.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use orch::github::retry::{send, GithubError, RetryPolicy};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One scripted answer: status, headers, delay before answering.
#[derive(Clone)]
struct Step(u16, Vec<(&'static str, String)>, Duration);

#[derive(Default)]
struct Script {
    steps: Mutex<VecDeque<Step>>,
    hits: Mutex<Vec<Instant>>,
}

async fn scripted(State(script): State<Arc<Script>>) -> impl IntoResponse {
    script.hits.lock().unwrap().push(Instant::now());
    let step = script
        .steps
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Step(200, vec![], Duration::ZERO));
    tokio::time::sleep(step.2).await;
    let mut headers = HeaderMap::new();
    headers.insert("x-github-request-id", HeaderValue::from_static("ABCD:1234"));
    for (k, v) in step.1 {
        headers.insert(k, HeaderValue::from_str(&v).unwrap());
    }
    (StatusCode::from_u16(step.0).unwrap(), headers, r#"{"message":"scripted"}"#)
}

async fn server(steps: Vec<Step>) -> (String, Arc<Script>) {
    let script = Arc::new(Script {
        steps: Mutex::new(steps.into()),
        hits: Mutex::default(),
    });
    let app = axum::Router::new().fallback(scripted).with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/repos/o/r/issues/1/comments"), script)
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        request_timeout: Duration::from_millis(300),
        max_rate_limit_wait: Duration::from_secs(5),
    }
}

fn step(status: u16) -> Step {
    Step(status, vec![], Duration::ZERO)
}

fn hits(script: &Script) -> Vec<Instant> {
    script.hits.lock().unwrap().clone()
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let (url, script) = server(vec![step(502), step(502)]).await;
    let client = reqwest::Client::new();
    let r = send(|| client.post(&url).body("{}"), &fast()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hits(&script).len(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured_for_429_and_secondary_limits() {
    for status in [429, 403] {
        let (url, script) = server(vec![Step(status, vec![("retry-after", "1".into())], Duration::ZERO)]).await;
        let client = reqwest::Client::new();
        send(|| client.get(&url), &fast()).await.unwrap();
        let h = hits(&script);
        assert_eq!(h.len(), 2, "{status}");
        let waited = h[1] - h[0];
        assert!(waited >= Duration::from_millis(990), "{status}: waited {waited:?}");
        assert!(waited < Duration::from_millis(1500), "{status}: waited {waited:?}");
    }
}

#[tokio::test]
async fn primary_limit_waits_for_its_reset_within_the_bound() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exhausted = |reset: u64| {
        Step(
            403,
            vec![("x-ratelimit-remaining", "0".into()), ("x-ratelimit-reset", reset.to_string())],
            Duration::ZERO,
        )
    };
    let (url, script) = server(vec![exhausted(now)]).await;
    let client = reqwest::Client::new();
    send(|| client.get(&url), &fast()).await.unwrap();
    let h = hits(&script);
    assert!(h[1] - h[0] >= Duration::from_millis(900), "waited {:?}", h[1] - h[0]);

    // A reset beyond the bound fails at once with a clear error instead of hanging.
    let (url, script) = server(vec![exhausted(now + 3600)]).await;
    let err = send(|| client.get(&url), &fast()).await.unwrap_err();
    assert!(matches!(err, GithubError::RateLimited { .. }), "{err}");
    assert!(err.to_string().contains("ABCD:1234"), "{err}");
    assert_eq!(hits(&script).len(), 1);
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_name_the_request_id() {
    for status in [404, 422, 403, 401] {
        let (url, script) = server(vec![step(status)]).await;
        let client = reqwest::Client::new();
        let err = send(|| client.post(&url).body("{}"), &fast()).await.unwrap_err();
        match &err {
            GithubError::Permanent {
                status: s,
                request_id,
                message,
            } => {
                assert_eq!(*s, status);
                assert_eq!(request_id, "ABCD:1234");
                assert!(message.contains("scripted"));
            }
            other => panic!("{status}: {other}"),
        }
        assert_eq!(hits(&script).len(), 1, "{status} was retried");
    }
}

#[tokio::test]
async fn slow_answers_time_out_and_are_retried() {
    let (url, script) = server(vec![Step(200, vec![], Duration::from_secs(2))]).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    send(|| client.get(&url), &fast()).await.unwrap();
    assert_eq!(hits(&script).len(), 2);
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

#[tokio::test]
async fn persistent_failure_is_exhausted_after_the_attempt_budget() {
    let (url, script) = server((0..10).map(|_| step(500)).collect()).await;
    let client = reqwest::Client::new();
    let err = send(|| client.get(&url), &fast()).await.unwrap_err();
    assert!(matches!(err, GithubError::Exhausted { attempts: 4, .. }), "{err}");
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(hits(&script).len(), 4);
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0usize));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let n = {
                let mut c = count.lock().unwrap();
                *c += 1;
                *c
            };
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            if n <= 2 {
                drop(sock); // the connection dies without an answer
            } else {
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                    .await;
            }
        }
    });
    let client = reqwest::Client::new();
    let r = send(|| client.get(format!("http://{addr}/")), &fast()).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(*accepted.lock().unwrap(), 3);
}

/// GitHub is reached over https: the client must speak TLS (a build without it fails here with
/// "scheme is not http" instead of a connection error).
#[tokio::test]
async fn https_urls_are_supported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = reqwest::Client::new()
        .get(format!("https://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}
