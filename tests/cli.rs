//! The `orch` binary as an operator meets it: configuration errors name the variable and exit
//! non-zero, `orch migrate` prepares a fresh database, `orch demo --once` plays its scenario.

use std::process::Command;

fn orch(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn serve_refuses_to_start_without_a_webhook_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("o.db").display());
    let (ok, _, err) = orch(&["serve"], &[("ORCH_DATABASE_URL", &db), ("ORCH_BIND", "127.0.0.1:0")]);
    assert!(!ok);
    assert!(err.contains("ORCH_WEBHOOK_SECRET"), "{err}");
}

#[test]
fn malformed_settings_name_their_variable() {
    for (var, value) in [
        ("ORCH_BIND", "nowhere"),
        ("ORCH_DURABILITY", "maybe"),
        ("ORCH_DATABASE_URL", "mysql://x"),
    ] {
        let (ok, _, err) = orch(&["serve"], &[("ORCH_WEBHOOK_SECRET", "s3cret-value"), (var, value)]);
        assert!(!ok, "{var}");
        assert!(err.contains(var), "{var}: {err}");
        assert!(!err.contains("s3cret-value"), "a secret was printed: {err}");
    }
}

#[test]
fn a_bad_app_key_stops_serve_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let db = format!("sqlite://{}", dir.path().join("o.db").display());
    let common: [(&str, &str); 3] = [
        ("ORCH_WEBHOOK_SECRET", "x"),
        ("ORCH_DATABASE_URL", &db),
        ("ORCH_BIND", "127.0.0.1:0"),
    ];
    let bad_path = bad.display().to_string();
    for (extra, var) in [
        (
            vec![("ORCH_GITHUB_APP_ID", "12"), ("ORCH_GITHUB_PRIVATE_KEY_PATH", bad_path.as_str())],
            "ORCH_GITHUB_PRIVATE_KEY_PATH",
        ),
        (
            vec![
                ("ORCH_GITHUB_APP_ID", "12"),
                ("ORCH_GITHUB_PRIVATE_KEY_PATH", "/nonexistent/key.pem"),
            ],
            "ORCH_GITHUB_PRIVATE_KEY_PATH",
        ),
        (
            vec![("ORCH_GITHUB_APP_ID", "12"), ("ORCH_GITHUB_PRIVATE_KEY", "garbage")],
            "ORCH_GITHUB_PRIVATE_KEY",
        ),
        (vec![("ORCH_GITHUB_PRIVATE_KEY_PATH", bad_path.as_str())], "ORCH_GITHUB_APP_ID"),
    ] {
        let env: Vec<(&str, &str)> = common.iter().copied().chain(extra).collect();
        let (ok, _, err) = orch(&["serve"], &env);
        assert!(!ok, "{var}");
        assert!(err.contains(var), "{var}: {err}");
    }
}

#[test]
fn migrate_prepares_a_fresh_sqlite_database_and_is_repeatable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let db = format!("sqlite://{}", path.display());
    for _ in 0..2 {
        let (ok, out, err) = orch(&["migrate"], &[("ORCH_DATABASE_URL", &db)]);
        assert!(ok, "{err}");
        assert!(out.contains("migrations applied"), "{out}");
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    for table in [
        "deliveries",
        "delivery_bodies",
        "jobs",
        "installations",
        "repositories",
        "circuit_breaker",
    ] {
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "{table}");
    }
}

#[test]
fn demo_plays_the_bundled_scenario() {
    let (ok, out, err) = orch(&["demo", "--once"], &[]);
    assert!(ok, "{err}");
    // Every bundled delivery is answered, the redelivery is a duplicate, the forgery refused,
    // and the workers processed what needed processing.
    assert_eq!(out.matches(" 202 queued ").count(), 6, "{out}");
    assert!(out.contains("200 pong"), "{out}");
    assert!(out.contains("200 ignored"), "{out}");
    assert!(out.contains("200 duplicate"), "{out}");
    assert!(out.contains("401 refused"), "{out}");
    assert_eq!(out.matches("processed 1x").count(), 6, "{out}");
    assert!(
        out.contains("Installation 77 (acme) recorded with repositories: acme/widgets"),
        "{out}"
    );
    // Part two: the product's paths against the fake GitHub, end to end.
    assert!(out.contains("orch comments: ### orch · triage proposal (workflow 1)"), "{out}");
    assert!(out.contains("labels on #1 now: orch:triage, bug, priority:p1"), "{out}");
    assert!(out.contains("with buttons Approve / Reject"), "{out}");
    assert!(out.contains("orch opens pull request #3"), "{out}");
    assert!(out.contains("workflow 2: INGESTED → CONTEXT_LOADED → PATCHES_PROPOSED → WAITING_USER_APPROVAL → APPROVED → APPLYING_CHANGES → PR_CREATED → DONE"), "{out}");
    assert!(out.contains("chain intact"), "{out}");
}

#[test]
fn the_circuit_breaker_is_reset_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orch.db").display());
    let env = [("ORCH_DATABASE_URL", url.as_str())];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = orch::store::Store::connect(&url, orch::store::SyncMode::Full).await.unwrap();
        store.migrate().await.unwrap();
        for _ in 0..4 {
            let mut tx = store.begin().await.unwrap();
            orch::workflow::guard::record_task(&mut tx, true, 0.0, 0.5, 1).await.unwrap();
            tx.commit().await.unwrap();
        }
        store.close().await;
    });
    let (ok, out, err) = orch(&["circuit", "status"], &env);
    assert!(ok && out.contains("circuit breaker OPEN: 4 failed of 4"), "{out}{err}");
    let (ok, out, err) = orch(&["circuit", "reset"], &env);
    assert!(
        ok && out.contains("circuit breaker closed") && out.contains("closed: 0 failed of 0"),
        "{out}{err}"
    );
    let verdict = rt.block_on(async {
        let store = orch::store::Store::connect(&url, orch::store::SyncMode::Full).await.unwrap();
        let rows = orch::audit::page(store.pool(), 0, 10, &orch::audit::Filter::default())
            .await
            .unwrap();
        rows.iter().any(|r| r.kind == "operator" && r.actor == "operator:cli")
    });
    assert!(verdict, "the reset is audited");
}

/// `orch audit anchor` prints the head; `verify --anchor` then catches a cut-off tail, which a
/// plain `verify` cannot see.
#[test]
fn audit_anchor_then_verify_catches_a_cut_off_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let url = format!("sqlite://{}", path.display());
    let key = "cli-audit-key-0123456789abcdefghij";
    let env = [("ORCH_DATABASE_URL", url.as_str()), ("ORCH_AUDIT_KEY", key)];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let append = |n: i64| {
        rt.block_on(async {
            let store = orch::app::open_store(
                &orch::config::Config::from_map(&env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap(),
            )
            .await
            .unwrap();
            for i in 0..n {
                let e = orch::audit::Entry::new("operator", "operator:cli", "test", serde_json::json!({ "i": i }));
                orch::audit::append_now(&store, &e).await.unwrap();
            }
            store.close().await;
        })
    };
    append(4);
    let (ok, anchor, err) = orch(&["audit", "anchor"], &env);
    assert!(ok, "{err}");
    let anchor = anchor.trim().to_string();
    let (seq, hash) = anchor.split_once(':').expect("SEQ:HASH");
    assert_eq!(seq, "4");
    assert_eq!(hash.len(), 64);
    append(2);
    let (ok, out, err) = orch(&["audit", "verify", "--anchor", &anchor], &env);
    assert!(ok && out.contains("intact: 6 rows") && out.contains("matches"), "{out}{err}");

    // Someone with the file drops the triggers and cuts the log back to 2 rows.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE seq > 2;")
        .unwrap();
    drop(conn);
    let (ok, out, _) = orch(&["audit", "verify"], &env);
    assert!(
        ok && out.contains("intact: 2 rows"),
        "without the anchor the cut is invisible: {out}"
    );
    let (ok, out, err) = orch(&["audit", "verify", "--anchor", &anchor], &env);
    assert!(!ok, "{out}");
    assert!(
        out.contains("broken at seq 3") && out.contains("rows 3 to 4 are missing"),
        "{out}{err}"
    );

    // Verifying a keyed log without the key fails, naming the likely reason.
    let (ok, out, _) = orch(&["audit", "verify"], &env[..1]);
    assert!(!ok && out.contains("ORCH_AUDIT_KEY"), "{out}");
    // A malformed anchor is a usage error.
    let (ok, _, err) = orch(&["audit", "verify", "--anchor", "4"], &env);
    assert!(!ok && err.contains("SEQ:HASH"), "{err}");
}
