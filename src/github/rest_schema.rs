//! GitHub's REST description (the OpenAPI subset of the operations orch uses), loaded so the
//! fake GitHub can refuse request bodies GitHub would refuse. Supports the JSON-schema keywords
//! that description uses for request bodies. The description is third-party data kept for the
//! tests in `fixtures/github/github-rest-subset.json` (MIT, see `fixtures/github/NOTICE.md`).

use anyhow::Context;
use serde_json::Value;
use std::path::Path;

/// One operation: its method, its path template (`/repos/{owner}/{repo}/check-runs`) and the
/// schema of its JSON request body, if it takes one.
#[derive(Debug, Clone)]
struct Operation {
    id: String,
    method: String,
    path: String,
    body: Option<Value>,
}

/// The operations of a REST description, for checking request bodies.
#[derive(Debug, Clone)]
pub struct RestDescription {
    operations: Vec<Operation>,
}

impl RestDescription {
    pub fn load(path: &Path) -> anyhow::Result<RestDescription> {
        let bytes = std::fs::read(path).with_context(|| format!("reading GitHub's REST description {}", path.display()))?;
        let doc: Value = serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?;
        RestDescription::from_json(&doc).with_context(|| format!("reading the operations of {}", path.display()))
    }

    /// From the description's JSON: `{"operations": {"<id>": {"method", "path", "requestBody"}}}`.
    pub fn from_json(doc: &Value) -> anyhow::Result<RestDescription> {
        let operations = doc["operations"].as_object().context("no `operations` object")?;
        let operations = operations
            .iter()
            .map(|(id, op)| {
                let text = |k: &str| {
                    op[k]
                        .as_str()
                        .map(str::to_string)
                        .with_context(|| format!("operation {id} has no `{k}`"))
                };
                let body = &op["requestBody"]["content"]["application/json"]["schema"];
                Ok(Operation {
                    id: id.clone(),
                    method: text("method")?.to_ascii_uppercase(),
                    path: text("path")?,
                    body: (!body.is_null()).then(|| body.clone()),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RestDescription { operations })
    }

    /// The problems GitHub's description finds with `body` sent as `method path` (query ignored):
    /// an operation the description does not have, one that takes no JSON body, or a body that
    /// does not fit its schema. Empty when the body is valid.
    pub fn problems(&self, method: &str, path: &str, body: &Value) -> Vec<String> {
        let path = path.split('?').next().unwrap_or(path);
        let Some(op) = self
            .operations
            .iter()
            .find(|op| op.method.eq_ignore_ascii_case(method) && matches(&op.path, path))
        else {
            return vec![format!("{method} {path} is not an operation of GitHub's description")];
        };
        let Some(schema) = &op.body else {
            return vec![format!("{} ({method} {path}) takes no JSON body", op.id)];
        };
        let mut problems = Vec::new();
        check(schema, body, "body", &mut problems);
        problems.into_iter().map(|p| format!("{} ({method} {path}): {p}", op.id)).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn description() -> RestDescription {
        RestDescription::from_json(&json!({ "operations": {
            "issues/create-comment": { "method": "post", "path": "/repos/{owner}/{repo}/issues/{issue_number}/comments",
                "requestBody": { "content": { "application/json": { "schema": {
                    "type": "object", "required": ["body"], "properties": { "body": { "type": "string" } } } } } } },
            "checks/create": { "method": "post", "path": "/repos/{owner}/{repo}/check-runs",
                "requestBody": { "content": { "application/json": { "schema": {
                    "type": "object", "required": ["name", "head_sha"], "properties": {
                        "name": { "type": "string" }, "head_sha": { "type": "string" },
                        "status": { "enum": ["queued", "in_progress", "completed"] },
                        "actions": { "type": "array", "maxItems": 3, "items": { "type": "object" } } } } } } } },
            "issues/get": { "method": "get", "path": "/repos/{owner}/{repo}/issues/{issue_number}" }
        }}))
        .unwrap()
    }

    #[test]
    fn bodies_github_would_refuse_are_named() {
        let d = description();
        let comments = "/repos/o/r/issues/1/comments";
        assert!(d.problems("POST", comments, &json!({"body": "fine"})).is_empty());
        assert!(d.problems("POST", &format!("{comments}?x=1"), &json!({"body": "fine"})).is_empty());
        let cases = [
            ("POST", comments, json!({}), "missing required `body`"),
            ("POST", comments, json!({"body": 5}), "expected string"),
            (
                "POST",
                comments,
                json!({"body": "x", "bogus": 1}),
                "property `bogus` is not in GitHub's description",
            ),
            (
                "POST",
                "/repos/o/r/check-runs",
                json!({"name": "n", "head_sha": "s", "status": "done"}),
                "is not one of",
            ),
            (
                "POST",
                "/repos/o/r/check-runs",
                json!({"name": "n", "head_sha": "s", "actions": [{}, {}, {}, {}]}),
                "more than 3 items",
            ),
            ("POST", "/repos/o/r/nowhere", json!({"body": "x"}), "is not an operation"),
            ("GET", "/repos/o/r/issues/1", json!({"body": "x"}), "takes no JSON body"),
        ];
        for (method, path, body, expected) in cases {
            let problems = d.problems(method, path, &body);
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{method} {path} {body}: {problems:?}"
            );
        }
    }
}
