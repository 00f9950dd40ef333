//! Crash durability: `orch serve` runs as a real process under concurrent signed load and is
//! killed with SIGKILL at a random moment, several times. Every delivery that was answered 2xx
//! must be in the store after restart and be processed exactly once; redeliveries of them are
//! duplicates. Finally SIGTERM must stop the process gracefully with exit code 0.

mod common;

use common::{comment_body, Backend, TestDb};
use orch::store::{deliveries, jobs, Store, SyncMode};
use orch::webhook::signature::sign;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

// The child is handed to the caller, which kills and waits for it; the lint cannot see that far.
#[allow(clippy::zombie_processes)]
async fn start(db: &TestDb, port: u16) -> Child {
    let mut env = db.env();
    env.insert("ORCH_BIND".into(), format!("127.0.0.1:{port}"));
    env.insert("RUST_LOG".into(), "warn".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_orch"))
        .arg("serve")
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/health")).send().await {
            if r.status().is_success() {
                return child;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("orch did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Posts unique deliveries from `senders` concurrent tasks until the server stops answering;
/// returns the GUIDs answered 2xx.
async fn load(port: u16, round: usize, senders: u64) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..senders)
            .map(|s| {
                tokio::spawn(async move {
                    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                    common::post_until_refused(&client, &format!("http://127.0.0.1:{port}"), &format!("r{round}-s{s}")).await
                })
            })
            .collect();
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        acked
    })
}

async fn kill_under_load_loses_nothing(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let port = free_port();
    let mut acked = Vec::new();
    for round in 0..3 {
        let mut child = start(&db, port).await;
        let senders = load(port, round, 16).await;
        tokio::time::sleep(Duration::from_millis(150 + random_below(600))).await;
        child.kill().unwrap(); // SIGKILL: no chance to flush anything
        child.wait().unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), senders)
            .await
            .expect("senders stop")
            .unwrap();
        assert!(!got.is_empty(), "round {round}: nothing was acknowledged before the kill");
        acked.extend(got);
    }

    let mut child = start(&db, port).await;
    let store = Store::connect(&db.url, SyncMode::Full).await.unwrap();
    // Jobs leased by a killed process are taken over when their lease (2 s here) runs out.
    common::drain(&store, 60).await;
    for guid in &acked {
        let d = deliveries::get(store.pool(), guid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{guid} was acknowledged but is not stored"));
        assert_eq!((d.status.as_str(), d.process_count), ("processed", 1), "{guid}");
        let js = jobs::for_delivery(store.pool(), guid).await.unwrap();
        assert_eq!(js.len(), 1, "{guid}: {js:?}");
        assert_eq!(js[0].0, "done", "{guid}: {js:?}");
    }
    // Nothing stored was processed twice, acknowledged or not.
    for d in deliveries::list(store.pool(), 1_000_000).await.unwrap() {
        assert!(d.process_count <= 1, "{} processed {} times", d.guid, d.process_count);
    }
    // GitHub redelivering acknowledged deliveries after the crash gets duplicates.
    let client = reqwest::Client::new();
    for guid in acked.iter().step_by(97) {
        let body = comment_body(0, "/orch status");
        let r = client
            .post(format!("http://127.0.0.1:{port}/webhook"))
            .header("x-github-event", "issue_comment")
            .header("x-github-delivery", guid)
            .header("x-hub-signature-256", sign(common::SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{guid}");
    }
    // SIGTERM: graceful stop, exit code 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "orch did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    eprintln!("{:?}: {} acknowledged deliveries survived 3 kills", backend, acked.len());
}

both_backends!(kill_under_load_loses_nothing);
