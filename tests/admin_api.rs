//! The operator API (SPEC §14): bearer auth on every admin route, the OpenAPI document built
//! from the same route table, approvals and dispatch through the approval ledger and the engine,
//! the audit log over HTTP, the breaker reset, and `orch audit verify|export`.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::{Backend, TestDb};
use e2e::{Orch, INSTALLATION, REPO};
use orch::api::admin::ROUTES;
use orch::api::openapi::Auth;
use serde_json::{json, Value};
use sqlx::Row;

const POLICY: &str = "phase: 4\n";
/// `ORCH_ADMIN_TOKEN`: the operator `admin`.
const TOKEN: &str = "operator-token-for-tests";
/// Two more operators, from the `ORCH_ADMIN_TOKENS` file.
const ANA_TOKEN: &str = "ana-operator-token";
const BOB_TOKEN: &str = "bob-operator-token";

/// An `ORCH_ADMIN_TOKENS` file naming `ana` and `bob` by their tokens' SHA-256.
fn tokens_file() -> String {
    use sha2::{Digest, Sha256};
    let sha = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let text = format!("# name sha256-of-token\n\nana {}\nbob {}\n", sha(ANA_TOKEN), sha(BOB_TOKEN));
    let file = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(file.path(), text).unwrap();
    // Kept: a restarted orch reads it again.
    file.into_temp_path().keep().unwrap().display().to_string()
}

async fn orch_with(backend: Backend, policy: &str) -> Option<Orch> {
    let tokens = tokens_file();
    let o = Orch::with_env(backend, policy, &[("ORCH_ADMIN_TOKEN", TOKEN), ("ORCH_ADMIN_TOKENS", &tokens)]).await?;
    o.user("mara", "maintain");
    o.user("lee", "write");
    Some(o)
}

async fn orch(backend: Backend) -> Option<Orch> {
    orch_with(backend, POLICY).await
}

/// A request with an optional bearer token and JSON body; returns (status, headers, JSON body).
async fn call(o: &Orch, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, reqwest::header::HeaderMap, Value) {
    let url = format!("{}{path}", o.base);
    let mut req = match method {
        "get" | "GET" => o.http.get(url),
        _ => o.http.post(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("orch answers");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap_or_default();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn admin(o: &Orch, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    as_operator(o, TOKEN, method, path, body).await
}

async fn as_operator(o: &Orch, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (s, _, v) = call(o, method, path, Some(token), body).await;
    (s, v)
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "1")
}

async fn every_admin_route_refuses_a_missing_or_wrong_token(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let admin_routes: Vec<_> = ROUTES.iter().filter(|r| r.auth == Auth::Admin).collect();
    assert!(admin_routes.len() >= 8, "the admin routes are in the table");
    for r in &admin_routes {
        let path = concrete(r.path);
        for token in [None, Some("wrong-token"), Some("")] {
            let (status, headers, body) = call(&o, r.method.as_str(), &path, token, Some(json!({}))).await;
            assert_eq!(status, 401, "{} {path} with {token:?}: {body}", r.method.as_str());
            assert_eq!(headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
            assert!(body["error"].is_string(), "{body}");
        }
    }
    // Public routes stay public.
    assert_eq!(call(&o, "get", "/health", None, None).await.0, 200);
    assert_eq!(call(&o, "get", "/openapi.json", None, None).await.0, 200);
}

async fn without_a_configured_token_the_admin_api_is_disabled(backend: Backend) {
    let Some(o) = Orch::with_env(backend, POLICY, &[("ORCH_ADMIN_TOKEN", "")]).await else {
        return;
    };
    for r in ROUTES.iter().filter(|r| r.auth == Auth::Admin) {
        let path = concrete(r.path);
        for token in [None, Some(TOKEN)] {
            let (status, _, body) = call(&o, r.method.as_str(), &path, token, Some(json!({}))).await;
            assert_eq!(status, 503, "{} {path}: {body}", r.method.as_str());
            assert_eq!(body["error"], "admin API disabled: set ORCH_ADMIN_TOKEN");
        }
    }
    assert_eq!(call(&o, "get", "/health", None, None).await.0, 200);
}

async fn the_openapi_document_lists_every_route(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let (status, _, doc) = call(&o, "get", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["components"]["securitySchemes"]["adminToken"]["scheme"], "bearer");
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method.as_str()];
        assert!(op.is_object(), "{} {} is not documented", r.method.as_str(), r.path);
        assert_eq!(op["operationId"], r.operation_id);
        assert!(!op["responses"][r.ok.0.to_string()].is_null(), "{}", r.path);
        if r.auth == Auth::Admin {
            assert_eq!(op["security"], json!([{ "adminToken": [] }]), "{}", r.path);
            assert!(!op["responses"]["401"].is_null() && !op["responses"]["503"].is_null());
        }
        if r.path.contains("{id}") {
            assert_eq!(op["parameters"][0]["name"], "id");
            assert_eq!(op["parameters"][0]["in"], "path");
        }
    }
    // Every documented path is answered (none only on paper): not a 404 "no such endpoint".
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths.len(),
        ROUTES.iter().map(|r| r.path).collect::<std::collections::HashSet<_>>().len()
    );
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let (status, _, body) = call(&o, method, &concrete(path), None, None).await;
            assert_ne!(status, 404, "{method} {path}: {body}");
        }
    }
    assert_eq!(doc["paths"]["/audit"]["get"]["parameters"].as_array().unwrap().len(), 5);
}

/// A triage labelled by `mara` and waiting for approval; returns (workflow id, issue number).
async fn waiting_triage(o: &Orch) -> (i64, i64) {
    let mut issue = o.open_issue("Crash on start", "It crashes when the config is empty.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    (id, issue.number)
}

async fn pending_then_approve_applies_the_labels(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let (id, number) = waiting_triage(&o).await;
    let (status, pending) = admin(&o, "get", "/pending", None).await;
    assert_eq!(status, 200, "{pending}");
    let list = pending["workflows"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{pending}");
    let w = &list[0];
    assert_eq!(
        (w["id"].as_i64(), w["kind"].as_str(), w["repository"].as_str()),
        (Some(id), Some("triage"), Some(REPO))
    );
    assert_eq!((w["number"].as_i64(), w["requested_by"].as_str()), (Some(number), Some("mara")));
    assert_eq!(w["requested_by_id"].as_i64(), Some(e2e::payloads::stable_id("user", "mara")));
    assert_eq!(w["proposal_hash"].as_str().map(str::len), Some(64));
    assert_eq!(w["approvals"]["decided"], "pending");
    assert_eq!(
        w["approvals"]["summary"],
        "0 of 1 approval; still needed: 1 more approval from someone other than @mara"
    );

    let (status, answer) = as_operator(&o, ANA_TOKEN, "post", &format!("/approve/{id}"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["approvals"]["decided"], "approved", "{answer}");
    assert_eq!(answer["approvals"]["approvers"], json!(["operator:ana"]));
    assert!(
        matches!(answer["state"].as_str(), Some("APPROVED" | "APPLYING_CHANGES" | "DONE")),
        "{answer}"
    );
    o.wait_state(id, "DONE").await;
    assert_eq!(
        o.fake.state.labels(REPO, number),
        vec!["orch:triage".to_string(), "bug".into(), "priority:p1".into()]
    );
    // One vote in the ledger, from the API, by the operator; the operator action is audited.
    let votes = sqlx::query("SELECT voter, decision, source FROM approvals WHERE workflow_id = $1")
        .bind(id)
        .fetch_all(o.store.pool())
        .await
        .unwrap();
    let votes: Vec<(String, String, String)> = votes.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(votes, vec![("operator:ana".to_string(), "approve".to_string(), "api".to_string())]);
    let (_, audit) = admin(&o, "get", "/audit?kind=operator&actor=operator:ana", None).await;
    let records = audit["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{audit}");
    assert_eq!(records[0]["subject"], format!("workflow:{id}"));
    assert_eq!(records[0]["details"]["action"], "approve");

    // No longer waiting: 409; unknown: 404; not a number: 400.
    let (status, body) = admin(&o, "post", &format!("/approve/{id}"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("DONE"), "{body}");
    assert_eq!(admin(&o, "post", "/approve/999999", None).await.0, 404);
    assert_eq!(admin(&o, "post", "/reject/abc", None).await.0, 400);
    assert_eq!(admin(&o, "get", "/pending", None).await.1["workflows"], json!([]));
}

/// An approval given through the API passes the same Gate 3 as any other: a patch approved by an
/// operator after the maintainers forbade its paths is blocked, and nothing reaches the repository.
async fn an_api_approval_is_refused_at_gate_three_when_the_policy_tightened(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let issue = o.open_issue("Off by one", "answer() should be 42", "dev-kim");
    o.comment(&issue, "mara", "/orch propose fix `src/lib.rs` to return 42").await;
    let id = o.only_workflow().await;
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    o.set_policy("phase: 4\npaths: {forbidden: [\"src/**\"]}\n");

    let (status, answer) = as_operator(&o, ANA_TOKEN, "post", &format!("/approve/{id}"), Some(json!({}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["approvals"]["approvers"], json!(["operator:ana"]), "{answer}");
    o.wait_state(id, "BLOCKED_POLICY").await;
    let path: Vec<String> = o.transitions(id).await.into_iter().map(|(_, to, _)| to).collect();
    assert_eq!(path[path.len() - 2..], ["APPROVED", "BLOCKED_POLICY"], "{path:?}");
    let said = o.bot_comments(issue.number).last().cloned().unwrap();
    assert!(said.contains("paths.forbidden") && said.contains("src/lib.rs"), "{said}");
    assert!(o.fake.state.pulls(REPO).is_empty(), "no pull request");
    assert_eq!(o.fake.state.branches(REPO), vec!["main".to_string()], "no branch");
    // Nothing is pending any more, and the refusal is in the workflow's record.
    let (_, pending) = admin(&o, "get", "/pending", None).await;
    assert_eq!(pending["workflows"], json!([]), "{pending}");
}

async fn reject_fails_the_workflow(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let (id, number) = waiting_triage(&o).await;
    let (status, answer) = admin(&o, "post", &format!("/reject/{id}"), Some(json!({ "reason": "wrong labels" }))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "FAILED", "{answer}");
    assert_eq!(answer["approvals"]["decided"], "rejected");
    assert_eq!(o.state_of(id).await, "FAILED");
    assert_eq!(
        o.fake.state.labels(REPO, number),
        vec!["orch:triage".to_string()],
        "nothing applied"
    );
    let row = sqlx::query("SELECT voter, decision, source, reason FROM approvals WHERE workflow_id = $1")
        .bind(id)
        .fetch_one(o.store.pool())
        .await
        .unwrap();
    let vote: (String, String, String, Option<String>) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        vote,
        ("operator:admin".into(), "reject".into(), "api".into(), Some("wrong labels".into()))
    );
    assert_eq!(admin(&o, "post", &format!("/reject/{id}"), None).await.0, 409);
}

async fn dispatch_triage_starts_a_workflow(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    let issue = o.open_issue("Slow search", "Search takes ten seconds.", "dev-kim");
    // A body may not say who acts: refused, and nothing starts.
    let claimed = json!({ "repository": REPO, "number": issue.number, "installation_id": INSTALLATION, "operator": "bob" });
    let (status, answer) = as_operator(&o, ANA_TOKEN, "post", "/dispatch/triage", Some(claimed)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("operator"), "{answer}");
    assert!(o.workflow_states().await.is_empty());
    let body = json!({ "repository": REPO, "number": issue.number, "installation_id": INSTALLATION });
    let (status, answer) = as_operator(&o, ANA_TOKEN, "post", "/dispatch/triage", Some(body.clone())).await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_i64().unwrap();
    o.wait_state(id, "WAITING_USER_APPROVAL").await;
    let transitions = o.transitions(id).await;
    assert_eq!(transitions[0].2, "operator:ana", "{transitions:?}");
    // Already active: 409, naming the workflow.
    let (status, answer) = admin(&o, "post", "/dispatch/triage", Some(body)).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains(&format!("workflow {id}")), "{answer}");
    // Without installation_id the repositories table decides; unknown there: 422.
    let spec_form = json!({ "repo": REPO, "issueNumber": issue.number });
    assert_eq!(admin(&o, "post", "/dispatch/triage", Some(spec_form.clone())).await.0, 422);
    let name = orch::webhook::event::RepoName {
        id: 7001,
        full_name: REPO.to_string(),
    };
    orch::store::installations::set_repository(o.store.pool(), INSTALLATION, &name, false, orch::store::now_ms())
        .await
        .unwrap();
    assert_eq!(admin(&o, "post", "/dispatch/triage", Some(spec_form)).await.0, 409);
    assert_eq!(
        admin(&o, "post", "/dispatch/triage", Some(json!({ "repository": "nope" }))).await.0,
        400
    );
    let (_, audit) = admin(&o, "get", "/audit?kind=operator", None).await;
    let records = audit["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{audit}");
    assert_eq!(records[0]["details"]["workflow"].as_i64(), Some(id));
    // A QA plan on a pull request, in the SPEC's body form; on an issue it is refused.
    let pr = o.open_pull(
        "Faster search",
        "fast-search",
        &[("src/lib.rs", Some("pub fn answer() -> u32 { 42 }\n"))],
        "dev-kim",
    );
    let (status, answer) = admin(
        &o,
        "post",
        "/dispatch/qa-plan",
        Some(json!({ "repo": REPO, "prNumber": pr.number, "linkedIssue": issue.number })),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let qa = answer["id"].as_i64().unwrap();
    let head: Option<String> = sqlx::query_scalar("SELECT head_sha FROM workflows WHERE id = $1")
        .bind(qa)
        .fetch_one(o.store.pool())
        .await
        .unwrap();
    assert_eq!(head.as_deref(), Some(pr.head_sha.as_str()));
    o.eventually("the QA plan is proposed", e2e::WAIT, || async {
        matches!(o.state_of(qa).await.as_str(), "WAITING_USER_APPROVAL" | "DONE").then_some(())
    })
    .await;
    let (status, answer) = admin(
        &o,
        "post",
        "/dispatch/qa-plan",
        Some(json!({ "repo": REPO, "prNumber": issue.number })),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    // The dispatched proposal is approved like any other.
    let (status, answer) = admin(&o, "post", &format!("/approve/{id}"), None).await;
    assert_eq!(status, 200, "{answer}");
    o.wait_state(id, "DONE").await;
}

async fn audit_pages_filters_and_verifies(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    for token in [ANA_TOKEN, BOB_TOKEN, ANA_TOKEN] {
        let (status, b) = as_operator(&o, token, "post", "/circuit/reset", None).await;
        assert_eq!(status, 200, "{b}");
    }
    // Claiming a name in the body is refused and audits nothing.
    let (status, b) = as_operator(&o, ANA_TOKEN, "post", "/circuit/reset", Some(json!({ "operator": "bob" }))).await;
    assert_eq!(status, 400, "{b}");
    let (status, first) = admin(&o, "get", "/audit?limit=2", None).await;
    assert_eq!(status, 200, "{first}");
    let records = first["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!((records[0]["seq"].as_i64(), records[1]["seq"].as_i64()), (Some(1), Some(2)));
    assert_eq!(first["next"].as_i64(), Some(2));
    let (_, second) = admin(&o, "get", "/audit?after=2&limit=2", None).await;
    assert_eq!(second["records"][0]["seq"].as_i64(), Some(3), "{second}");
    assert_eq!(second["records"][0]["prev_hash"], records[1]["hash"]);
    let (_, last) = admin(&o, "get", "/audit?after=3&limit=1000", None).await;
    assert!(last["next"].is_null(), "{last}");
    let (_, ana) = admin(&o, "get", "/audit?kind=operator&actor=operator:ana", None).await;
    let ana = ana["records"].as_array().unwrap();
    assert_eq!(ana.len(), 2);
    assert!(ana
        .iter()
        .all(|r| r["actor"] == "operator:ana" && r["subject"] == "circuit_breaker"));
    let (_, by_subject) = admin(&o, "get", "/audit?subject=circuit_breaker", None).await;
    assert_eq!(by_subject["records"].as_array().unwrap().len(), 3);
    assert_eq!(admin(&o, "get", "/audit?after=-1", None).await.0, 400);
    assert_eq!(admin(&o, "get", "/audit?colour=red", None).await.0, 400);
    let (status, verdict) = admin(&o, "get", "/audit/verify", None).await;
    assert_eq!(status, 200);
    assert_eq!(verdict["intact"], true, "{verdict}");
    assert_eq!(verdict["rows"].as_i64(), Some(3));
}

async fn circuit_reset_closes_an_open_breaker(backend: Backend) {
    let Some(o) = orch(backend).await else { return };
    sqlx::query("UPDATE circuit_breaker SET is_open = 1, total_tasks = 5, failed_tasks = 4, opened_at = 1 WHERE id = 1")
        .execute(o.store.pool())
        .await
        .unwrap();
    let (_, _, health) = call(&o, "get", "/health", None, None).await;
    assert_eq!(health["circuitBreaker"]["isOpen"], true);
    let (status, breaker) = admin(&o, "post", "/circuit/reset", None).await;
    assert_eq!(status, 200, "{breaker}");
    assert_eq!(breaker["isOpen"], false);
    assert_eq!(
        (breaker["totalTasks"].as_i64(), breaker["failedTasks"].as_i64()),
        (Some(0), Some(0))
    );
    let (_, _, health) = call(&o, "get", "/health", None, None).await;
    assert_eq!(health["circuitBreaker"]["isOpen"], false);
    let (_, audit) = admin(&o, "get", "/audit?kind=operator", None).await;
    let r = &audit["records"][0];
    assert_eq!(
        (r["actor"].as_str(), r["details"]["was_open"].as_bool()),
        (Some("operator:admin"), Some(true))
    );
}

fn orch_cli(args: &[&str], url: &str) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORCH_DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn audit_verify_and_export_from_the_command_line(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    for i in 1..=4 {
        let entry = orch::audit::Entry::new("operator", "operator:cli-test", "circuit_breaker", json!({ "n": i }));
        orch::audit::append_now(&store, &entry).await.unwrap();
    }
    let url = db.url.clone();
    let run = |args: &'static [&'static str]| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || orch_cli(args, &url))
    };
    let (code, out, err) = run(&["audit", "verify"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact: 4 rows"), "{out}{err}");

    let file = db.dir.path().join("audit.jsonl");
    let file_arg: &'static str = Box::leak(file.display().to_string().into_boxed_str());
    let args: &'static [&'static str] = Box::leak(vec!["audit", "export", "--out", file_arg].into_boxed_slice());
    let (code, out, err) = run(args).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["seq"].as_i64(), Some(4));
    assert_eq!(lines[1]["details"]["n"].as_i64(), Some(2));
    let (code, stdout, _) = run(&["audit", "export"]).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 4);

    // Tamper with row 2 behind the database's back.
    match backend {
        Backend::Sqlite => {
            sqlx::query("DROP TRIGGER audit_log_no_update").execute(store.pool()).await.unwrap();
        }
        Backend::Postgres => {
            sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER ALL")
                .execute(store.pool())
                .await
                .unwrap();
        }
    }
    sqlx::query("UPDATE audit_log SET details = $1 WHERE seq = 2")
        .bind(r#"{"n":20}"#)
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
    let (code, out, err) = run(&["audit", "verify"]).await.unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("broken at seq 2"), "{out}{err}");
    assert!(err.contains("seq 2"), "{err}");
}

mod sqlite_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_admin_route_refuses_a_missing_or_wrong_token() {
        super::every_admin_route_refuses_a_missing_or_wrong_token(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_configured_token_the_admin_api_is_disabled() {
        super::without_a_configured_token_the_admin_api_is_disabled(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_openapi_document_lists_every_route() {
        super::the_openapi_document_lists_every_route(Backend::Sqlite).await
    }
}

/// The attack: one admin token voting twice under two claimed names met a quorum of 2. A
/// credential is one voter whatever it claims; two credentials are two voters; an unknown token
/// changes nothing.
async fn one_token_is_one_voter_whatever_it_claims(backend: Backend) {
    let Some(o) = orch_with(backend, "phase: 4\napprovals:\n  required: 2\n").await else {
        return;
    };
    let (id, number) = waiting_triage(&o).await;
    let approve = format!("/approve/{id}");
    let mut answers = Vec::new();
    for name in ["alice", "bob"] {
        answers.push(admin(&o, "post", &approve, Some(json!({ "operator": name }))).await);
    }
    // What the attack was after: a quorum of two from one token. It is not met...
    assert_ne!(answers[1].1["approvals"]["decided"], "approved", "{answers:?}");
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL", "{answers:?}");
    assert_eq!(
        o.fake.state.labels(REPO, number),
        vec!["orch:triage".to_string()],
        "nothing applied"
    );
    // ...and the claimed names are refused, saying why.
    for (status, answer) in &answers {
        assert_eq!(*status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("credential"), "{answer}");
    }
    // The same token twice: one voter, its latest vote.
    for _ in 0..2 {
        let (status, answer) = admin(&o, "post", &approve, None).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["approvals"]["decided"], "pending", "{answer}");
        assert_eq!(answer["approvals"]["approvers"], json!(["operator:admin"]), "{answer}");
        assert_eq!(answer["state"], "WAITING_USER_APPROVAL", "{answer}");
    }
    // An unknown token: 401, and the ledger is as it was.
    let ledger = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM approvals WHERE workflow_id = $1")
            .bind(id)
            .fetch_one(o.store.pool())
            .await
            .unwrap()
    };
    let before = ledger().await;
    let (status, answer) = as_operator(&o, "not-a-credential", "post", &approve, None).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(ledger().await, before);
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    assert_eq!(
        o.fake.state.labels(REPO, number),
        vec!["orch:triage".to_string()],
        "nothing applied"
    );
    // A second credential is a second voter: the quorum is met.
    let (status, answer) = as_operator(&o, ANA_TOKEN, "post", &approve, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["approvals"]["decided"], "approved", "{answer}");
    assert_eq!(
        answer["approvals"]["approvers"],
        json!(["operator:admin", "operator:ana"]),
        "{answer}"
    );
    o.wait_state(id, "DONE").await;
}

/// Log in to the dashboard with `token`; returns the session cookie header.
async fn dashboard_login(o: &Orch, http: &reqwest::Client, token: &str) -> Result<String, u16> {
    let res = http
        .post(format!("{}/ui/login", o.base))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    if res.status().as_u16() != 303 {
        return Err(res.status().as_u16());
    }
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    Ok(cookie.split(';').next().unwrap().to_string())
}

/// The dashboard votes as the operator who logged in, says who that is, and that operator is one
/// voter whether it votes there or through the API.
async fn the_dashboard_votes_as_the_logged_in_operator(backend: Backend) {
    let Some(o) = orch_with(backend, "phase: 4\napprovals:\n  required: 2\n").await else {
        return;
    };
    let (id, _) = waiting_triage(&o).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(dashboard_login(&o, &http, "not-a-credential").await, Err(403));
    let cookie = dashboard_login(&o, &http, ANA_TOKEN).await.expect("ana logs in");
    let page = http
        .get(format!("{}/ui/workflows/{id}", o.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Logged in as operator:ana"), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_string();
    let res = http
        .post(format!("{}/ui/workflows/{id}/approve", o.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 303);
    // ana again, now through the API: still one voter.
    let (status, answer) = as_operator(&o, ANA_TOKEN, "post", &format!("/approve/{id}"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["approvals"]["approvers"], json!(["operator:ana"]), "{answer}");
    assert_eq!(o.state_of(id).await, "WAITING_USER_APPROVAL");
    let voters: Vec<String> = sqlx::query_scalar("SELECT voter FROM approvals WHERE workflow_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(o.store.pool())
        .await
        .unwrap();
    assert_eq!(voters, ["operator:ana", "operator:ana"]);
    let (_, audit) = admin(&o, "get", "/audit?kind=operator&actor=operator:ana", None).await;
    let via: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["details"]["via"].as_str().unwrap())
        .collect();
    assert_eq!(via, ["dashboard", "api"], "{audit}");
    // bob is the second voter.
    let (status, answer) = as_operator(&o, BOB_TOKEN, "post", &format!("/approve/{id}"), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["approvals"]["decided"], "approved", "{answer}");
    o.wait_state(id, "DONE").await;
}

both_backends!(
    one_token_is_one_voter_whatever_it_claims,
    the_dashboard_votes_as_the_logged_in_operator,
    pending_then_approve_applies_the_labels,
    an_api_approval_is_refused_at_gate_three_when_the_policy_tightened,
    reject_fails_the_workflow,
    dispatch_triage_starts_a_workflow,
    audit_pages_filters_and_verifies,
    circuit_reset_closes_an_open_breaker,
    audit_verify_and_export_from_the_command_line,
);
