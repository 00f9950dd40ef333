//! Load limits in front of `POST /webhook`, which anyone can reach before a signature is checked:
//! at most `max_in_flight` webhook requests at once (more are answered 503 with `Retry-After`
//! at once, not queued), and the body must arrive within `body_timeout` (408 otherwise, nothing
//! stored). A sender that opens connections and trickles bytes therefore holds at most
//! `max_in_flight` slots, each for at most `body_timeout`, and at most 25 MiB each.
//!
//! Written here rather than with tower's `ConcurrencyLimit`, which waits for a slot (an
//! unbounded queue of held connections is what this must prevent), and tower-http's timeout
//! layers, which the build does not enable (only `follow-redirect`, through reqwest).

use super::handler::MAX_BODY_BYTES;
use crate::api::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The limits, shared by every connection of one server.
#[derive(Debug)]
pub struct WebhookEdge {
    slots: Arc<Semaphore>,
    body_timeout: Duration,
}

impl WebhookEdge {
    pub fn new(max_in_flight: usize, body_timeout: Duration) -> Self {
        WebhookEdge {
            slots: Arc::new(Semaphore::new(max_in_flight.max(1))),
            body_timeout,
        }
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`): other paths pass through untouched.
pub async fn guard(State(edge): State<Arc<WebhookEdge>>, req: Request, next: Next) -> Response {
    if req.uri().path() != "/webhook" {
        return next.run(req).await;
    }
    // Held until the answer is produced, storing included: the slot bounds the work and memory
    // of unauthenticated requests, not only the reading.
    let Ok(_slot) = edge.slots.clone().try_acquire_owned() else {
        tracing::warn!("webhook request refused: too many in flight");
        let mut response =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many webhook requests in flight; retry later").into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload exceeds 25 MiB").into_response();
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(edge.body_timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload exceeds 25 MiB").into_response();
        }
        Ok(Err(_)) => return ApiError::new(StatusCode::BAD_REQUEST, "could not read the request body").into_response(),
        Err(_) => {
            tracing::warn!(
                timeout_ms = edge.body_timeout.as_millis() as u64,
                "webhook body not received in time; cut off"
            );
            let mut response = ApiError::new(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time").into_response();
            // The rest of the body is never read: the connection cannot be reused.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
