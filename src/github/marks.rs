//! orch's hidden markers, `<!-- orch:action:<id>:<tag> -->`, and what makes a comment or check run
//! orch's own (SPEC §6, "What orch said").
//!
//! The tag is HMAC-SHA256 of `orch:action:<id>` under a server key, cut to 16 bytes (32 hex
//! digits). 128 bits is far beyond what anyone can guess online (each guess is a comment GitHub
//! rate-limits), and a tag seen on one of orch's comments says nothing about another id's tag.
//! The key is `ORCH_MARKER_KEY`, or generated once and kept in the database so that every
//! replica writes and checks the same tags.
//!
//! A marker alone never makes a comment orch's: the author must also be orch's App (see
//! [`AppIdentity`]). The tag keeps orch's own text from being taken for a marker when orch quotes
//! someone, and keeps a marker of another deployment (or a forged one) from matching.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Bytes of the HMAC kept in a tag.
pub const TAG_BYTES: usize = 16;
/// The opening every marker (orch's or an imitation) starts with.
pub const MARKER_PREFIX: &str = "<!-- orch:action:";

/// The server key that tags markers.
#[derive(Clone)]
pub struct MarkerKey(SecretString);

impl std::fmt::Debug for MarkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkerKey(…)")
    }
}

impl MarkerKey {
    pub fn new(key: SecretString) -> Self {
        Self(key)
    }

    /// A fresh random key (64 hex digits): what the database keeps when `ORCH_MARKER_KEY` is unset.
    pub fn generate_text() -> String {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b).expect("system randomness");
        hex::encode(b)
    }

    /// A key of this process alone (clients built without a configured key, e.g. in tests).
    pub fn random() -> Self {
        Self(SecretString::from(Self::generate_text()))
    }

    /// The tag of action `id`.
    pub fn tag(&self, id: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret().as_bytes()).expect("HMAC accepts any key length");
        mac.update(format!("orch:action:{id}").as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..TAG_BYTES])
    }

    /// The hidden marker of action `id`.
    pub fn marker(&self, id: i64) -> String {
        format!("{MARKER_PREFIX}{id}:{} -->", self.tag(id))
    }

    /// The action ids of the markers in `text` whose tag is right (forged ones are skipped).
    pub fn verified_ids(&self, text: &str) -> Vec<i64> {
        parse_markers(text)
            .into_iter()
            .filter(|(id, tag)| {
                tag.as_deref()
                    .is_some_and(|t| constant_time_eq(t.as_bytes(), self.tag(*id).as_bytes()))
            })
            .map(|(id, _)| id)
            .collect()
    }
}

/// Every marker-shaped `<!-- orch:action:<id>[:<tag>] -->` in `text`, verified or not.
pub fn parse_markers(text: &str) -> Vec<(i64, Option<String>)> {
    text.match_indices(MARKER_PREFIX)
        .filter_map(|(i, m)| {
            let inner = text[i + m.len()..].split(" -->").next()?;
            let (id, tag) = match inner.split_once(':') {
                Some((id, tag)) => (id, Some(tag.to_string())),
                None => (inner, None),
            };
            Some((id.parse().ok()?, tag))
        })
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who orch's App is on GitHub: its id (`GET /app`) and the id of its bot account
/// (`GET /users/<slug>[bot]`). Compared by id: logins can be renamed and imitated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppIdentity {
    pub app_id: i64,
    pub bot_user_id: i64,
}

impl AppIdentity {
    /// Whether a comment or check run with this author and App was written by orch: GitHub's
    /// `performed_via_github_app.id` (check runs: `app.id`) is orch's App, or the author is its bot.
    pub fn wrote(&self, author_id: Option<i64>, app_id: Option<i64>) -> bool {
        app_id == Some(self.app_id) || author_id == Some(self.bot_user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_tag_verifies() {
        let key = MarkerKey::new(SecretString::from("k1".to_string()));
        let other = MarkerKey::new(SecretString::from("k2".to_string()));
        let m = key.marker(7);
        assert!(m.starts_with("<!-- orch:action:7:") && m.ends_with(" -->"));
        assert_eq!(m.len(), "<!-- orch:action:7: -->".len() + 2 * TAG_BYTES);
        assert_eq!(key.verified_ids(&format!("hello\n\n{m}")), vec![7]);
        assert!(other.verified_ids(&m).is_empty(), "another key's marker");
        assert!(key.verified_ids("<!-- orch:action:7 -->").is_empty(), "untagged");
        let wrong = format!("<!-- orch:action:7:{} -->", "0".repeat(2 * TAG_BYTES));
        assert!(key.verified_ids(&wrong).is_empty(), "wrong tag");
        // A tag seen on one id does not make another id's marker.
        let moved = m.replace(":7:", ":8:");
        assert!(key.verified_ids(&moved).is_empty());
        assert_eq!(
            parse_markers("<!-- orch:action:3 --> <!-- orch:action:4:ab -->"),
            vec![(3, None), (4, Some("ab".into()))]
        );
    }

    #[test]
    fn orch_is_known_by_ids() {
        let me = AppIdentity {
            app_id: 10,
            bot_user_id: 20,
        };
        assert!(me.wrote(None, Some(10)));
        assert!(me.wrote(Some(20), None));
        assert!(!me.wrote(Some(21), Some(11)), "another App's bot");
        assert!(!me.wrote(None, None));
    }
}
