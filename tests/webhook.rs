//! `POST /webhook` and `GET /health` through the real router over real HTTP, on both stores.

mod common;

use common::{comment_body, drain, Backend, Hook, TestDb, OLD_SECRET};
use orch::store::{deliveries, jobs};
use orch::webhook::signature::sign;

async fn setup(backend: Backend) -> Option<(TestDb, orch::app::Server, reqwest::Client, String)> {
    let db = TestDb::new(backend).await?;
    let server = db.server().await;
    let base = format!("http://{}", server.addr);
    Some((db, server, reqwest::Client::new(), base))
}

async fn stored_count(server: &orch::app::Server) -> usize {
    deliveries::list(server.store.pool(), 10_000).await.unwrap().len()
}

async fn signed_delivery_is_stored_then_processed(backend: Backend) {
    let Some((_db, server, client, base)) = setup(backend).await else {
        return;
    };
    let body = comment_body(1, "/orch help");
    let (status, json) = Hook::signed("issue_comment", "guid-1", &body).send(&client, &base).await;
    assert_eq!(status, 202, "{json}");
    assert_eq!(json["status"], "queued");
    // Committed before the answer: readable at once, with every indexed field.
    let d = deliveries::get(server.store.pool(), "guid-1")
        .await
        .unwrap()
        .expect("stored before the answer");
    assert_eq!(d.event, "issue_comment");
    assert_eq!(d.action.as_deref(), Some("created"));
    assert_eq!(d.installation_id, Some(77));
    assert_eq!(d.repository.as_deref(), Some("acme/widgets"));
    assert!(d.received_at > 0);
    drain(&server.store, 10).await;
    let d = deliveries::get(server.store.pool(), "guid-1").await.unwrap().unwrap();
    assert_eq!((d.status.as_str(), d.process_count), ("processed", 1));
    assert_eq!(
        jobs::for_delivery(server.store.pool(), "guid-1").await.unwrap(),
        vec![("done".to_string(), 1)]
    );
    server.shutdown().await.unwrap();
}

async fn duplicate_guid_is_acknowledged_once(backend: Backend) {
    let Some((_db, server, client, base)) = setup(backend).await else {
        return;
    };
    let body = comment_body(2, "/orch status");
    let (status, _) = Hook::signed("issue_comment", "dup-1", &body).send(&client, &base).await;
    assert_eq!(status, 202);
    drain(&server.store, 10).await;
    // GitHub reuses the GUID when it redelivers; the body may differ in nothing that matters.
    let (status, json) = Hook::signed("issue_comment", "dup-1", &body).send(&client, &base).await;
    assert_eq!((status, json["status"].as_str()), (200, Some("duplicate")));
    // Concurrent redeliveries of a new GUID: exactly one is stored.
    let mut answers = Vec::new();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, base, body) = (client.clone(), base.clone(), body.clone());
            tokio::spawn(async move { Hook::signed("issue_comment", "dup-2", &body).send(&client, &base).await.0 })
        })
        .collect();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers.sort();
    assert_eq!(answers, vec![200, 200, 200, 200, 200, 200, 200, 202]);
    drain(&server.store, 10).await;
    for guid in ["dup-1", "dup-2"] {
        let d = deliveries::get(server.store.pool(), guid).await.unwrap().unwrap();
        assert_eq!(d.process_count, 1, "{guid}");
        assert_eq!(jobs::for_delivery(server.store.pool(), guid).await.unwrap().len(), 1, "{guid}");
    }
    server.shutdown().await.unwrap();
}

async fn bad_signatures_are_refused_and_not_stored(backend: Backend) {
    let Some((_db, server, client, base)) = setup(backend).await else {
        return;
    };
    let body = comment_body(3, "/orch approve");
    let good = sign(common::SECRET, &body);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("wrong secret", Some(sign("not-the-secret", &body))),
        ("missing header", None),
        ("sha1 prefix", Some(good.replace("sha256=", "sha1="))),
        ("bad hex", Some(good.replace(&good[7..9], "zz"))),
        ("too short", Some(good[..good.len() - 2].to_string())),
        ("too long", Some(format!("{good}ab"))),
        ("empty", Some(String::new())),
    ];
    for (what, signature) in cases {
        let hook = Hook {
            event: Some("issue_comment"),
            guid: Some(format!("bad-{}", what.replace(' ', "-"))),
            signature,
            body: body.clone(),
        };
        let (status, json) = hook.send(&client, &base).await;
        assert_eq!(status, 401, "{what}: {json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {json}");
    }
    assert_eq!(stored_count(&server).await, 0, "nothing is stored for a 401");
    // The old secret of a rotation is still accepted.
    let hook = Hook {
        signature: Some(sign(OLD_SECRET, &body)),
        ..Hook::signed("issue_comment", "rotated", &body)
    };
    assert_eq!(hook.send(&client, &base).await.0, 202);
    assert_eq!(stored_count(&server).await, 1);
    server.shutdown().await.unwrap();
}

async fn malformed_requests_get_400(backend: Backend) {
    let Some((_db, server, client, base)) = setup(backend).await else {
        return;
    };
    let body = comment_body(4, "hello");
    let no_event = Hook {
        event: None,
        ..Hook::signed("issue_comment", "no-event", &body)
    };
    let (status, json) = no_event.send(&client, &base).await;
    assert_eq!(status, 400);
    assert!(json["error"].as_str().unwrap().contains("X-GitHub-Event"), "{json}");
    let no_guid = Hook {
        guid: None,
        ..Hook::signed("issue_comment", "", &body)
    };
    let (status, json) = no_guid.send(&client, &base).await;
    assert_eq!(status, 400);
    assert!(json["error"].as_str().unwrap().contains("X-GitHub-Delivery"), "{json}");
    let (status, json) = Hook::signed("issue_comment", "not-json", b"this is not json")
        .send(&client, &base)
        .await;
    assert_eq!(status, 400);
    assert!(json["error"].as_str().unwrap().contains("JSON"), "{json}");
    let (status, json) = Hook::signed("issue_comment", "wrong-shape", br#"{"action":"created"}"#)
        .send(&client, &base)
        .await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(stored_count(&server).await, 0);
    server.shutdown().await.unwrap();
}

async fn ping_and_unknown_events_are_answered_200(backend: Backend) {
    let Some((_db, server, client, base)) = setup(backend).await else {
        return;
    };
    let (status, json) = Hook::signed("ping", "ping-1", br#"{"zen":"Design for failure.","hook_id":1}"#)
        .send(&client, &base)
        .await;
    assert_eq!((status, json["status"].as_str()), (200, Some("pong")));
    let (status, json) = Hook::signed("star", "star-1", br#"{"action":"created","repository":{"id":1,"full_name":"o/r"}}"#)
        .send(&client, &base)
        .await;
    assert_eq!((status, json["status"].as_str()), (200, Some("ignored")));
    let body = comment_body(5, "hi");
    // A known event with an action orch does not act on is stored and ignored.
    let edited = String::from_utf8(body).unwrap().replace("\"created\"", "\"pinned\"");
    let (status, json) = Hook::signed("issue_comment", "pinned-1", edited.as_bytes())
        .send(&client, &base)
        .await;
    assert_eq!((status, json["status"].as_str()), (200, Some("ignored")));
    for guid in ["ping-1", "star-1", "pinned-1"] {
        let d = deliveries::get(server.store.pool(), guid).await.unwrap().unwrap();
        assert_eq!(d.status, "ignored");
        assert!(jobs::for_delivery(server.store.pool(), guid).await.unwrap().is_empty());
    }
    server.shutdown().await.unwrap();
}

/// Sends `head` and then `chunks` MiB of chunked body over a raw connection while reading the
/// answer concurrently (the server answers before the body is complete).
async fn raw_exchange(addr: std::net::SocketAddr, head: String, chunks: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&got).to_string()
    });
    let _ = wr.write_all(head.as_bytes()).await;
    let chunk = vec![b' '; 1024 * 1024];
    for _ in 0..chunks {
        // The server may stop reading and close: write errors are expected then.
        if wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || wr.write_all(&chunk).await.is_err()
            || wr.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    tokio::time::timeout(std::time::Duration::from_secs(20), reader)
        .await
        .expect("an answer")
        .unwrap()
}

async fn oversized_bodies_get_413(backend: Backend) {
    let Some((_db, server, client, base)) = setup(backend).await else {
        return;
    };
    let sig = sign(common::SECRET, b"x");
    // A declared length above the limit is refused before a byte of the body is read.
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-github-event: issue_comment\r\n\
         x-github-delivery: big-1\r\nx-hub-signature-256: {sig}\r\ncontent-length: {}\r\n\r\n",
        25 * 1024 * 1024 + 1
    );
    let answer = raw_exchange(server.addr, head, 0).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("25 MiB"), "{answer}");
    // Without a length (chunked), the limit is enforced while reading.
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-github-event: issue_comment\r\n\
         x-github-delivery: big-2\r\nx-hub-signature-256: {sig}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let answer = raw_exchange(server.addr, head, 40).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Exactly at the limit passes the size check (it is not JSON, hence 400).
    let at_limit = vec![b' '; 25 * 1024 * 1024];
    assert_eq!(Hook::signed("issue_comment", "big-3", &at_limit).send(&client, &base).await.0, 400);
    assert_eq!(stored_count(&server).await, 0);
    server.shutdown().await.unwrap();
}

async fn health_reports_store_figures(backend: Backend) {
    let Some((_db, server, client, base)) = setup(backend).await else {
        return;
    };
    let h: serde_json::Value = client.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(h["mode"], "dry-run");
    assert_eq!(h["phase"], "phase4");
    assert_eq!(h["circuitBreaker"]["isOpen"], false);
    assert_eq!(h["circuitBreaker"]["totalTasks"], 0);
    assert_eq!(h["circuitBreaker"]["failedTasks"], 0);
    assert_eq!(h["circuitBreaker"]["totalCostUsd"], "0.0000");
    assert_eq!(h["store"], if backend == Backend::Sqlite { "sqlite" } else { "postgres" });
    for i in 0..3 {
        Hook::signed("issue_comment", &format!("h-{i}"), &comment_body(i, "x"))
            .send(&client, &base)
            .await;
    }
    Hook::signed("ping", "h-ping", b"{}").send(&client, &base).await;
    drain(&server.store, 10).await;
    let h: serde_json::Value = client.get(format!("{base}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(h["deliveries"]["processed"], 3, "{h}");
    assert_eq!(h["received"]["issue_comment"]["queued"], 3, "{h}");
    assert_eq!(h["received"]["ping"]["pong"], 1, "{h}");
    assert_eq!(h["deliveries"]["ignored"], 1, "{h}");
    assert_eq!(h["queueDepth"], 0);
    let r = client.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    server.shutdown().await.unwrap();
}

async fn graceful_shutdown_answers_and_keeps_in_flight_deliveries(backend: Backend) {
    let Some((db, server, client, base)) = setup(backend).await else {
        return;
    };
    // Eight senders post deliveries back to back until the server stops answering.
    let senders: Vec<_> = (0..8u64)
        .map(|s| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move { common::post_until_refused(&client, &base, &format!("gs-{s}")).await })
        })
        .collect();
    // Shut down while requests are in flight, once a good number went through.
    while stored_count(&server).await < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.shutdown().await.unwrap();
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(
            tokio::time::timeout(std::time::Duration::from_secs(10), s)
                .await
                .expect("senders stop")
                .unwrap(),
        );
    }
    assert!(acked.len() >= 40, "{} acknowledged", acked.len());
    let store = orch::store::Store::connect(&db.url, orch::store::SyncMode::Full).await.unwrap();
    for guid in &acked {
        assert!(
            deliveries::get(store.pool(), guid).await.unwrap().is_some(),
            "{guid} was acknowledged but not stored"
        );
    }
}

/// The raw body is committed with the delivery, in the archive or in the database, whichever the
/// operator chose, on both backends.
async fn raw_payload_is_kept_in_either_store(backend: Backend) {
    for mode in ["archive", "database"] {
        let Some(db) = TestDb::new(backend).await else { return };
        let mut env = db.env();
        env.insert("ORCH_PAYLOAD_STORE".into(), mode.into());
        let server = orch::app::Server::start(&orch::config::Config::from_map(&env).unwrap())
            .await
            .unwrap();
        let base = format!("http://{}", server.addr);
        let body = comment_body(7, "/orch plan");
        let (status, _) = Hook::signed("issue_comment", "raw-1", &body)
            .send(&reqwest::Client::new(), &base)
            .await;
        assert_eq!(status, 202);
        let archive = orch::store::archive::PayloadArchive::open(&db.dir.path().join("payloads"), false).unwrap();
        let d = deliveries::get(server.store.pool(), "raw-1").await.unwrap().unwrap();
        assert_eq!(d.payload_ref.is_some(), mode == "archive", "{mode}");
        let raw = deliveries::raw_payload(server.store.pool(), Some(&archive), "raw-1").await.unwrap();
        assert_eq!(raw.as_deref(), Some(&body[..]), "{mode}");
        server.shutdown().await.unwrap();
    }
}

/// A server with the webhook edge limits set (`ORCH_WEBHOOK_BODY_TIMEOUT_MS`, `…_MAX_IN_FLIGHT`).
async fn limited_server(db: &TestDb, body_timeout_ms: u64, max_in_flight: usize) -> orch::app::Server {
    let mut env = db.env();
    env.insert("ORCH_WEBHOOK_BODY_TIMEOUT_MS".into(), body_timeout_ms.to_string());
    env.insert("ORCH_WEBHOOK_MAX_IN_FLIGHT".into(), max_in_flight.to_string());
    orch::app::Server::start(&orch::config::Config::from_map(&env).unwrap())
        .await
        .unwrap()
}

/// Opens a connection and sends the headers of a signed delivery of `body` plus its first
/// `sent` bytes; the rest is never sent unless the caller writes it.
async fn stalled_delivery(addr: std::net::SocketAddr, guid: &str, body: &[u8], sent: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let sig = sign(common::SECRET, body);
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-github-event: issue_comment\r\n\
         x-github-delivery: {guid}\r\nx-hub-signature-256: {sig}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..sent]).await.unwrap();
    stream
}

async fn a_trickling_body_is_cut_off_after_the_timeout(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let server = limited_server(&db, 500, 8).await;
    let body = comment_body(40, "/orch help");
    let mut stream = stalled_delivery(server.addr, "slow-1", &body, 10).await;
    let started = std::time::Instant::now();
    // One byte every 100 ms: the connection is never idle, but the body would take minutes.
    let (mut reader, mut writer) = stream.split();
    let trickle = async {
        for b in &body[10..body.len() - 1] {
            if writer.write_all(std::slice::from_ref(b)).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await
    };
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        tokio::select! {
            _ = trickle => {}
            _ = read => {}
        }
    })
    .await;
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(outcome.is_ok(), "the trickling sender still held the connection after {elapsed:?}");
    assert!(elapsed < std::time::Duration::from_secs(3), "cut off only after {elapsed:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    assert_eq!(stored_count(&server).await, 0);
    // Normal deliveries are unaffected.
    let base = format!("http://{}", server.addr);
    let (status, json) = Hook::signed("issue_comment", "fast-1", &body)
        .send(&reqwest::Client::new(), &base)
        .await;
    assert_eq!(status, 202, "{json}");
    assert_eq!(stored_count(&server).await, 1);
    server.shutdown().await.unwrap();
}

async fn over_the_in_flight_limit_requests_get_503_at_once(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    const LIMIT: usize = 3;
    // A long body timeout: only the concurrency limit can refuse the extra request.
    let server = limited_server(&db, 60_000, LIMIT).await;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let body = comment_body(41, "/orch help");
    let mut stalled = Vec::new();
    for i in 0..LIMIT {
        stalled.push(stalled_delivery(server.addr, &format!("stall-{i}"), &body, 5).await);
    }
    // Until the server has read the stalled requests' headers they hold no slot.
    // (generous on a loaded machine: an extra request let in early would be stored, not refused)
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let started = std::time::Instant::now();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client
            .post(format!("{base}/webhook"))
            .header("x-github-event", "issue_comment")
            .header("x-github-delivery", "extra-1")
            .header("x-hub-signature-256", sign(common::SECRET, &body))
            .body(body.clone())
            .send(),
    )
    .await
    .expect("request over the limit was queued instead of refused")
    .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "refused only after {:?}",
        started.elapsed()
    );
    // Other routes are not limited.
    assert_eq!(client.get(format!("{base}/health")).send().await.unwrap().status().as_u16(), 200);
    // The stalled senders give up: their slots come back and deliveries are accepted again.
    drop(stalled);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, json) = Hook::signed("issue_comment", "after-1", &body).send(&client, &base).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "{json}");
        assert!(std::time::Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Only that one delivery was stored.
    assert_eq!(stored_count(&server).await, 1);
    server.shutdown().await.unwrap();
}

both_backends!(
    raw_payload_is_kept_in_either_store,
    signed_delivery_is_stored_then_processed,
    duplicate_guid_is_acknowledged_once,
    bad_signatures_are_refused_and_not_stored,
    malformed_requests_get_400,
    ping_and_unknown_events_are_answered_200,
    oversized_bodies_get_413,
    health_reports_store_figures,
    graceful_shutdown_answers_and_keeps_in_flight_deliveries,
    a_trickling_body_is_cut_off_after_the_timeout,
    over_the_in_flight_limit_requests_get_503_at_once,
);
