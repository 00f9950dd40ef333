//! Dashboard sessions: an operator's token, posted once to `/ui/login`, buys a session cookie
//! (`HttpOnly; Secure; SameSite=Strict; Path=/ui`) whose value is a random id kept in this
//! process's memory. Each session has its own random CSRF token, which every form carries in a
//! hidden field and every POST must repeat. Sessions end after [`SESSION_TTL_MS`], at logout,
//! or when the process restarts. A session remembers the operator whose credential opened it:
//! the dashboard shows that name and votes as that operator.

use std::collections::HashMap;
use std::sync::Mutex;

pub const COOKIE: &str = "orch_session";
/// Twelve hours.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// Live sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 1024;

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).expect("system randomness");
    hex::encode(b)
}

#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    /// The name of the operator credential that logged in.
    pub operator: String,
    pub expires_at: i64,
}

#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session of `operator`: (cookie value, CSRF token).
    pub fn open(&self, now: i64, operator: &str) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, s| s.expires_at > now);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| k.clone()) {
                live.remove(&oldest);
            }
        }
        live.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                operator: operator.to_string(),
                expires_at: now + SESSION_TTL_MS,
            },
        );
        (id, csrf)
    }

    /// The live session with this cookie value.
    pub fn get(&self, id: &str, now: i64) -> Option<Session> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(id).filter(|s| s.expires_at > now).cloned()
    }

    pub fn close(&self, id: &str) {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Whether a posted CSRF token is the session's.
pub fn csrf_matches(session: &Session, given: Option<&str>) -> bool {
    given.is_some_and(|g| equal(g.as_bytes(), session.csrf.as_bytes()))
}

/// The session cookie's value from a `Cookie` header.
pub fn cookie_value(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/ui; Max-Age={}",
        SESSION_TTL_MS / 1000
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/ui; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_csrf() {
        let s = Sessions::default();
        let (id, csrf) = s.open(1000, "ana");
        let session = s.get(&id, 2000).expect("live");
        assert_eq!(session.operator, "ana");
        assert!(csrf_matches(&session, Some(&csrf)));
        assert!(!csrf_matches(&session, Some("nope")));
        assert!(!csrf_matches(&session, None));
        assert!(s.get(&id, 1000 + SESSION_TTL_MS).is_none(), "expired");
        s.close(&id);
        assert!(s.get(&id, 2000).is_none());
    }

    #[test]
    fn reads_the_cookie() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(axum::http::header::COOKIE, "a=1; orch_session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie_value(&h).as_deref(), Some("xyz"));
    }
}
