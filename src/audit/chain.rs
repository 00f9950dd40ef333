//! The hash chain's arithmetic, pure: the canonical line of a row and the hash over it.
//!
//! The encoding is fixed here, independent of serde_json's map ordering or formatting options,
//! so that a chain written today verifies with any later build (and with a few lines of Python):
//!
//! * A row's **canonical line** is the compact JSON array `[seq,at,kind,actor,subject,details]`:
//!   `seq` and `at` as decimal integers, the three texts as JSON strings, `details` as canonical
//!   JSON. Example: `[1,1700000000000,"delivery","github","acme/widgets#12",{"event":"issues"}]`.
//! * **Canonical JSON** has no whitespace; object keys are sorted by their UTF-8 bytes (duplicates
//!   cannot occur: a parsed object has none); numbers are written as serde_json writes them
//!   (integers in decimal, floats in shortest round-trip form); strings escape `"` and `\` with a
//!   backslash, U+0008, U+0009, U+000A, U+000C and U+000D as `\b \t \n \f \r`, the other
//!   characters below U+0020 as `\u00xx` (lowercase hex), and nothing else (non-ASCII is written
//!   as UTF-8). For integer-only details this is `json.dumps(v, separators=(",", ":"),
//!   sort_keys=True, ensure_ascii=False)` in Python.
//! * `hash = lowercase_hex(sha256(prev_hash ‖ "\n" ‖ canonical_line))`, with `prev_hash` the
//!   previous row's `hash` as 64 lowercase hex digits, and [`GENESIS`] (64 zeros) for row 1.
//! * With `ORCH_AUDIT_KEY` set: `hash = lowercase_hex(HMAC-SHA256(key, prev_hash ‖ "\n" ‖
//!   canonical_line))`, the key being the variable's UTF-8 bytes. Someone who can write the
//!   database but does not hold the key cannot produce a keyed hash, so cannot rewrite a row and
//!   recompute the chain after it.
//!
//! The `details` column stores the canonical text itself, and verification hashes the stored text
//! as it is, so any change to a stored byte changes the hash.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first row: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `details` as canonical JSON (see the module docs).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

/// The canonical line of a row, with `details` already in canonical text (the stored column).
pub fn canonical_line(seq: i64, at: i64, kind: &str, actor: &str, subject: &str, details: &str) -> String {
    let mut out = String::with_capacity(48 + kind.len() + actor.len() + subject.len() + details.len());
    out.push('[');
    out.push_str(&seq.to_string());
    out.push(',');
    out.push_str(&at.to_string());
    for text in [kind, actor, subject] {
        out.push(',');
        write_string(text, &mut out);
    }
    out.push(',');
    out.push_str(details);
    out.push(']');
    out
}

/// `lowercase_hex(sha256(prev_hash ‖ "\n" ‖ line))`.
pub fn link_hash(prev_hash: &str, line: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(line.as_bytes());
    hex::encode(h.finalize())
}

/// `lowercase_hex(HMAC-SHA256(key, prev_hash ‖ "\n" ‖ line))`.
pub fn keyed_link_hash(key: &[u8], prev_hash: &str, line: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(prev_hash.as_bytes());
    mac.update(b"\n");
    mac.update(line.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The hash of a link: keyed when `key` is given, plain sha256 otherwise.
pub fn hash_for(key: Option<&[u8]>, prev_hash: &str, line: &str) -> String {
    match key {
        Some(key) => keyed_link_hash(key, prev_hash, line),
        None => link_hash(prev_hash, line),
    }
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_everywhere_and_has_no_whitespace() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": null, "x": true}], "m": "t"}, "A": -2.5, "é": false, "": 0});
        assert_eq!(
            canonical_json(&v),
            r#"{"":0,"A":-2.5,"a":{"m":"t","z":[3,{"x":true,"y":null}]},"b":1,"é":false}"#
        );
        assert_eq!(canonical_json(&json!(null)), "null");
        assert_eq!(canonical_json(&json!([])), "[]");
        assert_eq!(canonical_json(&json!({})), "{}");
        assert_eq!(canonical_json(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(canonical_json(&json!(i64::MIN)), "-9223372036854775808");
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_control_characters_only() {
        let s = "q\"b\\s/\u{08}\t\n\u{0c}\r\u{00}\u{1f}\u{7f}é☃🦀";
        assert_eq!(canonical_json(&json!(s)), "\"q\\\"b\\\\s/\\b\\t\\n\\f\\r\\u0000\\u001f\u{7f}é☃🦀\"");
        // The same text serde_json writes, and it reads back as the original.
        assert_eq!(canonical_json(&json!(s)), serde_json::to_string(s).unwrap());
        assert_eq!(serde_json::from_str::<String>(&canonical_json(&json!(s))).unwrap(), s);
    }

    #[test]
    fn canonical_json_is_stable_through_a_parse() {
        let v = json!({"z": {"b": [1, 2.25, "x\ny"], "a": null}, "prompt_sha256": "ab", "tokens": 12});
        let text = canonical_json(&v);
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
        assert_eq!(canonical_json(&back), text);
    }

    #[test]
    fn the_line_and_the_hash_follow_the_documented_encoding() {
        let line = canonical_line(
            1,
            1_700_000_000_000,
            "delivery",
            "github",
            "acme/widgets#12",
            &canonical_json(&json!({"event": "issues", "action": "labeled"})),
        );
        assert_eq!(
            line,
            r#"[1,1700000000000,"delivery","github","acme/widgets#12",{"action":"labeled","event":"issues"}]"#
        );
        // Computed independently, by `printf '%s\n%s' "$GENESIS" "$line" | sha256sum` and by Python.
        assert_eq!(
            link_hash(GENESIS, &line),
            "cc24a24c8863cb086f3a5e74cdbba8b21394564ee74ee480463535a8abcc09a5"
        );
        assert_eq!(GENESIS.len(), 64);
        assert!(GENESIS.bytes().all(|b| b == b'0'));
        assert_eq!(canonical_line(2, -1, "a\"", "", "s", "null"), r#"[2,-1,"a\"","","s",null]"#);
    }

    #[test]
    fn the_keyed_hash_is_hmac_sha256_over_the_same_bytes() {
        let line = r#"[1,1700000000000,"delivery","github","acme/widgets#12",{"action":"labeled","event":"issues"}]"#;
        // Computed independently: `printf '%s\n%s' "$GENESIS" "$line" | openssl dgst -sha256 -hmac k`.
        assert_eq!(
            keyed_link_hash(b"k", GENESIS, line),
            "4a67154bc0a7763ef603541309a244d0d8d120e6a3b2a84459363b97e9634e4c"
        );
        assert_ne!(keyed_link_hash(b"k", GENESIS, line), link_hash(GENESIS, line));
        assert_eq!(hash_for(None, GENESIS, line), link_hash(GENESIS, line));
        assert_eq!(hash_for(Some(b"k"), GENESIS, line), keyed_link_hash(b"k", GENESIS, line));
    }
}
