//! `X-Hub-Signature-256` verification: HMAC-SHA256 over the raw body, compared in constant time,
//! against every secret currently accepted (so a secret can be rotated without dropping events).

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header (expected sha256=<64 hex digits>)")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

/// Keys prepared once at start-up: HMAC key setup is not repeated per request.
#[derive(Clone)]
pub struct SignatureVerifier {
    keys: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignatureVerifier({} secrets)", self.keys.len())
    }
}

impl SignatureVerifier {
    pub fn new(secrets: &[SecretString]) -> Self {
        let keys = secrets
            .iter()
            .map(|s| Hmac::<Sha256>::new_from_slice(s.expose_secret().as_bytes()).expect("HMAC accepts any key length"))
            .collect();
        Self { keys }
    }

    /// Checks `header` (the value of `X-Hub-Signature-256`, if any) against `body`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let hex_part = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
        let mut expected = [0u8; 32];
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut expected).is_err() {
            return Err(SignatureError::Malformed);
        }
        // Every key is tried, whatever matched, so timing reveals nothing about which one it was.
        let mut ok = false;
        for key in &self.keys {
            let mut mac = key.clone();
            mac.update(body);
            ok |= mac.verify_slice(&expected).is_ok();
        }
        if ok {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Signs `body` the way GitHub does; used by `orch demo`, tests and benchmarks.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secrets: &[&str]) -> SignatureVerifier {
        let s: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(s.to_string())).collect();
        SignatureVerifier::new(&s)
    }

    // GitHub's documented test vector (docs: "Validating webhook deliveries").
    const DOC_SECRET: &str = "It's a Secret to Everybody";
    const DOC_PAYLOAD: &[u8] = b"Hello, World!";
    const DOC_SIGNATURE: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_documented_test_vector() {
        assert_eq!(sign(DOC_SECRET, DOC_PAYLOAD), DOC_SIGNATURE);
        assert_eq!(verifier(&[DOC_SECRET]).verify(Some(DOC_SIGNATURE.as_bytes()), DOC_PAYLOAD), Ok(()));
    }

    #[test]
    fn wrong_secret_and_tampered_body_mismatch() {
        let v = verifier(&["another secret"]);
        assert_eq!(v.verify(Some(DOC_SIGNATURE.as_bytes()), DOC_PAYLOAD), Err(SignatureError::Mismatch));
        let v = verifier(&[DOC_SECRET]);
        assert_eq!(
            v.verify(Some(DOC_SIGNATURE.as_bytes()), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        let upper = DOC_SIGNATURE.replace("757107ea", "757107EA");
        // Upper-case hex still names the same bytes.
        assert_eq!(v.verify(Some(upper.as_bytes()), DOC_PAYLOAD), Ok(()));
    }

    #[test]
    fn missing_and_malformed_headers() {
        let v = verifier(&[DOC_SECRET]);
        assert_eq!(v.verify(None, DOC_PAYLOAD), Err(SignatureError::Missing));
        let sha1 = "sha1=757107ea0eb2509fc211221cce984b8a37570b6d";
        let bad_hex = DOC_SIGNATURE.replace('7', "z");
        let short = &DOC_SIGNATURE[..DOC_SIGNATURE.len() - 2];
        let long = format!("{DOC_SIGNATURE}00");
        for bad in [
            sha1,
            bad_hex.as_str(),
            short,
            long.as_str(),
            "",
            "sha256=",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert_eq!(
                v.verify(Some(bad.as_bytes()), DOC_PAYLOAD),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rotated_secrets_are_all_accepted() {
        let v = verifier(&["old secret", DOC_SECRET]);
        assert_eq!(v.verify(Some(DOC_SIGNATURE.as_bytes()), DOC_PAYLOAD), Ok(()));
        let old = sign("old secret", DOC_PAYLOAD);
        assert_eq!(v.verify(Some(old.as_bytes()), DOC_PAYLOAD), Ok(()));
        assert_eq!(
            verifier(&[]).verify(Some(old.as_bytes()), DOC_PAYLOAD),
            Err(SignatureError::Mismatch)
        );
    }
}
