//! `POST /webhook`. The [`VerifiedDelivery`] extractor bounds and reads the body, checks the
//! signature and the headers, and parses the event; the handler stores it (group commit) and
//! answers. Ingest never calls GitHub or the model.

use super::event::{parse, Event, ParseError, Parsed};
use super::signature::SignatureError;
use crate::api::{ApiError, AppState};
use crate::store::deliveries::NewDelivery;
use crate::store::ingest::IngestOutcome;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

/// GitHub caps payloads at 25 MB; anything larger is refused before it is buffered.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// A delivery whose signature, headers and JSON have been checked.
#[derive(Debug)]
pub struct VerifiedDelivery {
    pub guid: String,
    pub event_name: String,
    pub parsed: Parsed,
    pub body: Bytes,
}

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn valid_guid(s: &str) -> bool {
    s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn valid_event(s: &str) -> bool {
    s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

impl FromRequest<AppState> for VerifiedDelivery {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let guid = header_str(&req, "x-github-delivery").map(str::to_string);
        let event_name = header_str(&req, "x-github-event").map(str::to_string);
        let signature = req.headers().get("x-hub-signature-256").map(|v| v.as_bytes().to_vec());

        let body: Body = req.into_body();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "could not read the request body")),
        };

        // The signature comes first: an unauthenticated caller learns nothing else.
        state.verifier.verify(signature.as_deref(), &body).map_err(|e| {
            let message = match e {
                SignatureError::Missing => "missing X-Hub-Signature-256 header",
                SignatureError::Malformed => "malformed X-Hub-Signature-256 header; expected sha256=<64 hex digits>",
                SignatureError::Mismatch => "signature does not match",
            };
            ApiError::new(StatusCode::UNAUTHORIZED, message)
        })?;

        let event_name = event_name.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing X-GitHub-Event header"))?;
        if !valid_event(&event_name) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed X-GitHub-Event header"));
        }
        let guid = guid.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing X-GitHub-Delivery header"))?;
        if !valid_guid(&guid) {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed X-GitHub-Delivery header"));
        }
        let parsed = parse(&event_name, &body).map_err(|e| match e {
            ParseError::NotJson(_) => ApiError::new(StatusCode::BAD_REQUEST, "body is not valid JSON"),
            ParseError::Shape { .. } => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        })?;
        Ok(VerifiedDelivery {
            guid,
            event_name,
            parsed,
            body,
        })
    }
}

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload exceeds 25 MiB")
}

pub async fn receive(State(state): State<AppState>, delivery: VerifiedDelivery) -> Response {
    let VerifiedDelivery {
        guid,
        event_name,
        parsed,
        body,
    } = delivery;
    let needs_processing = parsed.event.needs_processing();
    let answer = match &parsed.event {
        Event::Ping { .. } => "pong",
        Event::Ignored { .. } => "ignored",
        _ => "queued",
    };
    let row = NewDelivery {
        guid: guid.clone(),
        event: event_name.clone(),
        action: parsed.meta.action.clone(),
        installation_id: parsed.meta.installation_id,
        repository: parsed.meta.repository.clone(),
        received_at: crate::store::now_ms(),
        status: if needs_processing { "queued" } else { "ignored" },
        event_data: serde_json::to_string(&parsed.event).expect("events serialize"),
        payload_crc32: crate::store::archive::checksum(&body),
    };
    match state.ingest.submit(row, body).await {
        Ok(IngestOutcome::Stored) => {
            state.metrics.count_delivery(&event_name, answer);
            tracing::debug!(%guid, event = %event_name, kind = parsed.event.kind(), "delivery stored");
            let status = if needs_processing { StatusCode::ACCEPTED } else { StatusCode::OK };
            (status, Json(json!({ "status": answer, "delivery": guid }))).into_response()
        }
        Ok(IngestOutcome::Duplicate) => {
            state.metrics.count_delivery(&event_name, "duplicate");
            tracing::info!(%guid, event = %event_name, "duplicate delivery acknowledged, not processed again");
            (StatusCode::OK, Json(json!({ "status": "duplicate", "delivery": guid }))).into_response()
        }
        Err(e) => {
            state.metrics.count_delivery(&event_name, "error");
            tracing::error!(%guid, error = %e, "delivery not stored");
            // 503 makes GitHub record a failed delivery, which can be redelivered later.
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery could not be stored; it was not accepted",
            )
            .into_response()
        }
    }
}
