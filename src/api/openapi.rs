//! Route descriptors and the OpenAPI 3.0 document built from them.
//!
//! Every route of the operator API is one [`Route`] in [`crate::api::admin::ROUTES`]. The same
//! table mounts the axum routes ([`router`]), puts the admin ones behind the bearer check, and
//! renders `GET /openapi.json` ([`document`]): a route cannot be mounted without its description,
//! and its documented auth is the auth it gets. Routes mounted elsewhere in [`crate::api::router`]
//! (`/webhook`, `/health`, `/metrics`, `/ui/`) are described with `handler: None`.

use super::{admin, AppState};
use axum::extract::State;
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }

    pub fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    Public,
    /// `Authorization: Bearer <token>` of an operator credential (`ORCH_ADMIN_TOKENS`, or
    /// `ORCH_ADMIN_TOKEN` as `admin`); 401 without a known one, 503 when none is configured.
    Admin,
    /// A GitHub webhook signature (`X-Hub-Signature-256`).
    WebhookSignature,
    /// The admin bearer token, checked by the handler itself (its own errors are listed).
    BearerInHandler,
    /// The dashboard's session cookie (its login page takes the admin token).
    Session,
}

/// A small typed description of a JSON value, rendered as an OpenAPI schema.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Int,
    Num,
    Bool,
    /// Any JSON value.
    Any,
    Obj(&'static [Field]),
    Arr(&'static Ty),
    /// The value or `null`.
    Nullable(&'static Ty),
    /// A `text/plain` body (e.g. the Prometheus exposition format); only as a whole response.
    Text,
    /// A `text/html` page; only as a whole response.
    Html,
}

impl Ty {
    fn content_type(&self) -> &'static str {
        match self {
            Ty::Text => "text/plain",
            Ty::Html => "text/html",
            _ => "application/json",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    pub doc: &'static str,
}

/// `Field` shorthands for the tables.
pub const fn req(name: &'static str, ty: Ty, doc: &'static str) -> Field {
    Field {
        name,
        ty,
        required: true,
        doc,
    }
}

pub const fn opt(name: &'static str, ty: Ty, doc: &'static str) -> Field {
    Field {
        name,
        ty,
        required: false,
        doc,
    }
}

/// Builds the route's method router for the given method (e.g. `|m| on(m, handler)`).
pub type Mount = fn(MethodFilter) -> MethodRouter<AppState>;

/// One HTTP route: what mounts it and what documents it.
pub struct Route {
    pub method: Method,
    /// The axum path, which is also the OpenAPI path (`/approve/{id}`).
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    /// Path parameters are found in `path`; these are the query parameters (all strings on the wire).
    pub query: &'static [Field],
    /// The JSON request body, if any, and whether it may be omitted.
    pub body: Option<(Ty, bool)>,
    /// The success status, its description and schema.
    pub ok: (u16, &'static str, Ty),
    /// Other answers, each with an `{"error": ...}` body (401/503 of admin routes are added).
    pub errors: &'static [(u16, &'static str)],
    /// None: mounted in [`crate::api::router`] itself.
    pub handler: Option<Mount>,
}

/// The axum routes of every descriptor with a handler; admin routes behind the bearer check.
pub fn router(state: &AppState) -> Router<AppState> {
    let mut router = Router::new();
    for route in admin::ROUTES {
        let Some(mount) = route.handler else { continue };
        let mut method_router = mount(route.method.filter());
        if route.auth == Auth::Admin {
            method_router = method_router.route_layer(axum::middleware::from_fn_with_state(state.clone(), admin::require_admin));
        }
        router = router.route(route.path, method_router);
    }
    router
}

/// `GET /openapi.json`.
pub async fn serve(State(state): State<AppState>) -> Json<Value> {
    Json(document(state.info.version))
}

fn schema(ty: &Ty) -> Value {
    match ty {
        Ty::Str | Ty::Text | Ty::Html => json!({ "type": "string" }),
        Ty::Int => json!({ "type": "integer", "format": "int64" }),
        Ty::Num => json!({ "type": "number" }),
        Ty::Bool => json!({ "type": "boolean" }),
        Ty::Any => json!({}),
        Ty::Arr(item) => json!({ "type": "array", "items": schema(item) }),
        Ty::Nullable(inner) => {
            let mut s = schema(inner);
            if let Some(map) = s.as_object_mut() {
                map.insert("nullable".into(), Value::Bool(true));
            }
            s
        }
        Ty::Obj(fields) => {
            let mut properties = Map::new();
            for f in *fields {
                let mut s = schema(&f.ty);
                if let (Some(map), false) = (s.as_object_mut(), f.doc.is_empty()) {
                    map.insert("description".into(), Value::String(f.doc.into()));
                }
                properties.insert(f.name.into(), s);
            }
            let required: Vec<&str> = fields.iter().filter(|f| f.required).map(|f| f.name).collect();
            let mut s = json!({ "type": "object", "properties": properties });
            if !required.is_empty() {
                s["required"] = json!(required);
            }
            s
        }
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

/// The path parameters of an axum path: the names in `{…}`.
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn operation(route: &Route) -> Value {
    let mut parameters: Vec<Value> = path_params(route.path)
        .into_iter()
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "integer", "format": "int64" } }))
        .collect();
    for f in route.query {
        parameters.push(json!({ "name": f.name, "in": "query", "required": f.required, "description": f.doc, "schema": schema(&f.ty) }));
    }
    let mut responses = Map::new();
    let (status, description, ty) = &route.ok;
    responses.insert(
        status.to_string(),
        json!({ "description": description, "content": { ty.content_type(): { "schema": schema(ty) } } }),
    );
    for (status, description) in route.errors {
        responses.insert(status.to_string(), error_response(description));
    }
    let mut op = json!({
        "operationId": route.operation_id,
        "summary": route.summary,
        "responses": responses,
    });
    match route.auth {
        Auth::Admin => {
            op["security"] = json!([{ "adminToken": [] }]);
            op["responses"]["401"] = error_response("missing or wrong bearer token (answered with `WWW-Authenticate: Bearer`)");
            op["responses"]["503"] = error_response("admin API disabled: ORCH_ADMIN_TOKEN is not set");
        }
        Auth::WebhookSignature => op["security"] = json!([{ "webhookSignature": [] }]),
        Auth::BearerInHandler => op["security"] = json!([{ "adminToken": [] }]),
        Auth::Session => op["security"] = json!([{ "dashboardSession": [] }]),
        Auth::Public => op["security"] = json!([]),
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if let Some((ty, optional)) = &route.body {
        op["requestBody"] = json!({ "required": !optional, "content": { "application/json": { "schema": schema(ty) } } });
    }
    op
}

/// The OpenAPI 3.0 document of every route in [`admin::ROUTES`].
pub fn document(version: &str) -> Value {
    const ERROR: Ty = Ty::Obj(&[req("error", Ty::Str, "what went wrong")]);
    let mut paths = Map::new();
    for route in admin::ROUTES {
        let item = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        item[route.method.as_str()] = operation(route);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "orch",
            "version": version,
            "description": "orch's HTTP API: the GitHub webhook, public health, and the operator API (bearer token).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": { "type": "http", "scheme": "bearer", "description": "an operator credential: a token listed (by its SHA-256) in ORCH_ADMIN_TOKENS, or ORCH_ADMIN_TOKEN (operator `admin`). The acting operator is the credential's name; request bodies may not name one (400), and one credential is one voter" },
                "webhookSignature": { "type": "apiKey", "in": "header", "name": "X-Hub-Signature-256" },
                "dashboardSession": { "type": "apiKey", "in": "cookie", "name": "orch_session", "description": "set by POST /ui/login" },
            },
            "schemas": {
                "Error": schema(&ERROR),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_are_found() {
        assert_eq!(path_params("/approve/{id}"), vec!["id"]);
        assert!(path_params("/pending").is_empty());
    }

    #[test]
    fn every_route_is_documented_once() {
        let doc = document("test");
        let mut seen = std::collections::HashSet::new();
        for r in admin::ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {} twice", r.method.as_str(), r.path);
            let op = &doc["paths"][r.path][r.method.as_str()];
            assert_eq!(op["operationId"], r.operation_id);
        }
    }
}
