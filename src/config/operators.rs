//! Operator credentials (SPEC §6 "Operators"): each bearer token is one named operator.
//!
//! `ORCH_ADMIN_TOKENS` names a file of `name sha256-of-token` lines — the lowercase or uppercase
//! hex SHA-256 of the token, so the file holds no token itself — with `#` comments and blank
//! lines allowed. `ORCH_ADMIN_TOKEN` is one more operator, called `admin`. The name an operator
//! acts under comes from the credential that matched, never from a request.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::path::Path;

/// A line of the tokens file that is not `name sha256-hex`.
#[derive(Debug, thiserror::Error)]
pub enum OperatorsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {problem}")]
    Line { path: String, line: usize, problem: String },
}

/// The configured operator credentials; empty when neither variable is set (the admin API and
/// the dashboard are closed then).
#[derive(Debug, Clone, Default)]
pub struct Operators {
    /// (name, SHA-256 of the token).
    entries: Vec<(String, [u8; 32])>,
}

/// Operator names are short and plain, so that `operator:<name>` reads well in the audit log.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

impl Operators {
    /// From `ORCH_ADMIN_TOKEN` (operator `admin`) and the file named by `ORCH_ADMIN_TOKENS`.
    pub fn load(admin_token: Option<&SecretString>, tokens_file: Option<&Path>) -> Result<Self, OperatorsError> {
        let mut ops = Operators::default();
        if let Some(token) = admin_token {
            ops.entries
                .push(("admin".to_string(), Sha256::digest(token.expose_secret().as_bytes()).into()));
        }
        if let Some(path) = tokens_file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| OperatorsError::Read {
                path: shown.clone(),
                source,
            })?;
            ops.parse(&shown, &text)?;
        }
        Ok(ops)
    }

    fn parse(&mut self, path: &str, text: &str) -> Result<(), OperatorsError> {
        for (i, raw) in text.lines().enumerate() {
            let bad = |problem: String| OperatorsError::Line {
                path: path.to_string(),
                line: i + 1,
                problem,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, digest] = fields.as_slice() else {
                return Err(bad("expected `name sha256-of-token`".into()));
            };
            if !valid_name(name) {
                return Err(bad(format!(
                    "operator name {name:?}: at most 64 characters of letters, digits, '-', '_', '.', '@'"
                )));
            }
            let hash: [u8; 32] = hex::decode(digest)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("the token's SHA-256 must be 64 hex digits".into()))?;
            if self.entries.iter().any(|(n, _)| n == name) {
                return Err(bad(format!("operator {name:?} is named twice")));
            }
            if self.entries.iter().any(|(_, h)| *h == hash) {
                return Err(bad("this token already belongs to another operator".into()));
            }
            self.entries.push((name.to_string(), hash));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The operator whose token `given` is. Every entry is compared, each in constant time, so
    /// the time taken says nothing about which entry (or which byte) matched.
    pub fn identify(&self, given: &str) -> Option<&str> {
        let digest = Sha256::digest(given.as_bytes());
        let mut found = None;
        for (name, hash) in &self.entries {
            let diff = digest.iter().zip(hash.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
            if diff == 0 && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn names_come_from_the_credential() {
        let mut ops = Operators::load(Some(&SecretString::from("root-token")), None).unwrap();
        let file = format!(
            "# operators\n\nalice {}\n  bob\t{}  \n",
            sha("a-token"),
            sha("b-token").to_uppercase()
        );
        ops.parse("tokens", &file).unwrap();
        assert_eq!(ops.identify("root-token"), Some("admin"));
        assert_eq!(ops.identify("a-token"), Some("alice"));
        assert_eq!(ops.identify("b-token"), Some("bob"));
        assert_eq!(ops.identify("nope"), None);
        assert_eq!(ops.identify(""), None);
        assert!(Operators::default().is_empty());
    }

    #[test]
    fn a_malformed_line_names_the_file_and_line() {
        let cases = [
            format!("alice {}\nbob\n", sha("x")),
            "alice nothex\n".to_string(),
            format!("al ice {}\n", sha("x")),
            format!("alice {}\nalice {}\n", sha("x"), sha("y")),
            format!("alice {}\nbob {}\n", sha("x"), sha("x")),
        ];
        for (text, line) in cases.iter().zip([2, 1, 1, 2, 2]) {
            let err = Operators::default().parse("/etc/orch/tokens", text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("/etc/orch/tokens:{line}: ")), "{err}");
        }
    }
}
