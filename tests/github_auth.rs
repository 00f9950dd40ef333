//! App JWT and installation tokens against a local endpoint that checks the JWT the way GitHub
//! does (RS256 signature with the App's public key, `iss`, lifetime at most 10 minutes, not
//! expired) and issues tokens with an expiry.

mod common;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use orch::github::auth::{AppClaims, AppCredentials, TokenCache};
use orch::github::retry::RetryPolicy;
use secrecy::ExposeSecret;
use serde_json::json;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Issuer {
    public: DecodingKey,
    app_id: u64,
    /// Lifetime of the tokens it issues.
    lifetime: Duration,
    issued: Mutex<Vec<(i64, AppClaims)>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn timestamp(unix: u64) -> String {
    // Formats with the system's date(1), independent of the parser under test.
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn access_tokens(
    State(issuer): State<Arc<Issuer>>,
    Path(installation): Path<i64>,
    headers: HeaderMap,
) -> (StatusCode, Json<serde_json::Value>) {
    let Some(jwt) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Requires authentication"})));
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer.app_id.to_string()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<AppClaims>(jwt, &issuer.public, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": format!("A JSON web token could not be decoded: {e}")})),
            )
        }
    };
    if claims.exp - claims.iat > 600 || claims.iat > now() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "'Expiration time' claim ('exp') is too far in the future"})),
        );
    }
    let mut issued = issuer.issued.lock().unwrap();
    issued.push((installation, claims));
    let n = issued.len();
    (
        StatusCode::CREATED,
        Json(json!({"token": format!("ghs_test_{installation}_{n}"), "expires_at": timestamp(now() + issuer.lifetime.as_secs())})),
    )
}

async fn setup(lifetime: Duration) -> (tempfile::TempDir, Arc<Issuer>, TokenCache) {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = common::key_pair(dir.path());
    let issuer = Arc::new(Issuer {
        public: DecodingKey::from_rsa_pem(&public).unwrap(),
        app_id: 4242,
        lifetime,
        issued: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/app/installations/{id}/access_tokens", axum::routing::post(access_tokens))
        .with_state(issuer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let credentials = AppCredentials::from_pem(4242, &private, "ORCH_GITHUB_PRIVATE_KEY").unwrap();
    let cache = TokenCache::new(
        credentials,
        &format!("http://{addr}"),
        reqwest::Client::new(),
        RetryPolicy::default(),
    );
    (dir, issuer, cache)
}

#[tokio::test]
async fn tokens_are_cached_per_installation() {
    let (_dir, issuer, cache) = setup(Duration::from_secs(3600)).await;
    let a = cache.token(1).await.unwrap();
    assert_eq!(a.expose_secret(), "ghs_test_1_1");
    assert_eq!(cache.token(1).await.unwrap().expose_secret(), "ghs_test_1_1");
    assert_eq!(cache.token(2).await.unwrap().expose_secret(), "ghs_test_2_2");
    assert_eq!(cache.token(1).await.unwrap().expose_secret(), "ghs_test_1_1");
    let issued = issuer.issued.lock().unwrap();
    assert_eq!(issued.len(), 2, "one token per installation while valid");
    // The JWT's claims, as the issuer verified them.
    let (_, claims) = &issued[0];
    let t = now();
    assert_eq!(claims.iss, "4242");
    assert!(claims.iat <= t - 59 && claims.iat >= t - 65, "iat {} now {t}", claims.iat);
    assert!(claims.exp - claims.iat <= 600);
}

#[tokio::test]
async fn tokens_close_to_expiry_are_refreshed() {
    // Tokens that live 4 minutes are inside the refresh margin at once: every call renews.
    let (_dir, issuer, cache) = setup(Duration::from_secs(240)).await;
    assert_eq!(cache.token(7).await.unwrap().expose_secret(), "ghs_test_7_1");
    assert_eq!(cache.token(7).await.unwrap().expose_secret(), "ghs_test_7_2");
    assert_eq!(issuer.issued.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_invalidated_token_is_fetched_again() {
    let (_dir, issuer, cache) = setup(Duration::from_secs(3600)).await;
    cache.token(3).await.unwrap();
    cache.invalidate(3);
    assert_eq!(cache.token(3).await.unwrap().expose_secret(), "ghs_test_3_2");
    assert_eq!(issuer.issued.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_jwt_signed_with_another_key_is_refused() {
    let (_dir, issuer, _) = setup(Duration::from_secs(3600)).await;
    let other = tempfile::tempdir().unwrap();
    let (private, _) = common::key_pair(other.path());
    let forged = AppCredentials::from_pem(4242, &private, "ORCH_GITHUB_PRIVATE_KEY").unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&["4242"]);
    assert!(jsonwebtoken::decode::<AppClaims>(&forged.jwt(), &issuer.public, &validation).is_err());
}
