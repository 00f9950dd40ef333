//! Checks request bodies against GitHub's REST description in the shared reference folder
//! (`../shared/reference/github-rest-subset.json`, not part of this repository). Supports the
//! JSON-schema keywords that description uses for request bodies.

use serde_json::Value;
use std::path::PathBuf;

fn description() -> Option<Value> {
    let path = std::env::var("ORCH_REFERENCE_REST")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/github-rest-subset.json"));
    match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).expect("the reference description is JSON")),
        Err(e) => {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                "GitHub's REST description not found at {} in CI: {e}",
                path.display()
            );
            eprintln!("SKIPPED: no REST description at {}", path.display());
            None
        }
    }
}

/// Whether `path` (no query) matches a template like `/repos/{owner}/{repo}/check-runs`.
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
}

fn check(schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    if value.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let fits = options.iter().filter(|o| {
                let mut p = Vec::new();
                check(o, value, at, &mut p);
                p.is_empty()
            });
            let n = fits.count();
            if (key == "anyOf" && n == 0) || (key == "oneOf" && n != 1) {
                problems.push(format!("{at}: fits {n} of the {key} options"));
            }
        }
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            problems.push(format!("{at}: expected {t}, got {value}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            problems.push(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    if let (Some(max), Some(s)) = (schema.get("maxLength").and_then(Value::as_u64), value.as_str()) {
        if s.chars().count() as u64 > max {
            problems.push(format!("{at}: longer than {max} characters"));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if items.len() as u64 > max {
                problems.push(format!("{at}: more than {max} items"));
            }
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                problems.push(format!("{at}: fewer than {min} items"));
            }
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{at}[{i}]"), problems);
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = required.as_str() {
                if !object.contains_key(name) {
                    problems.push(format!("{at}: missing required `{name}`"));
                }
            }
        }
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => check(s, v, &format!("{at}.{name}"), problems),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(true)) => {}
                    Some(Value::Bool(false)) => problems.push(format!("{at}: unknown property `{name}`")),
                    Some(s @ Value::Object(_)) => check(s, v, &format!("{at}.{name}"), problems),
                    // GitHub's description leaves most objects open; a property it does not
                    // describe there is still one GitHub would ignore or refuse, so name it.
                    _ if properties.is_some() => problems.push(format!("{at}: property `{name}` is not in GitHub's description")),
                    _ => {}
                },
            }
        }
    }
}

/// Asserts that every (method, path, body) is a valid request body of the operation it was sent to.
pub fn assert_bodies_valid(bodies: &[(String, String, Value)]) {
    let Some(description) = description() else { return };
    let operations = description["operations"].as_object().expect("operations");
    for (method, path, body) in bodies {
        let path = path.split('?').next().unwrap_or(path);
        let op = operations
            .iter()
            .find(|(_, op)| op["method"].as_str() == Some(method.as_str()) && matches(op["path"].as_str().unwrap_or(""), path))
            .unwrap_or_else(|| panic!("{method} {path} is not an operation of GitHub's description"));
        let schema = &op.1["requestBody"]["content"]["application/json"]["schema"];
        assert!(!schema.is_null(), "{} ({method} {path}) takes no JSON body", op.0);
        let mut problems = Vec::new();
        check(schema, body, "body", &mut problems);
        assert!(problems.is_empty(), "{} ({method} {path}): {problems:?}", op.0);
    }
}
