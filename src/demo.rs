//! `orch demo`: a first look without any setup. Starts orch on a fresh embedded SQLite database
//! with a generated webhook secret and GitHub in dry-run, sends the bundled fixture deliveries to
//! itself, signed, over real HTTP, and prints what was stored and decided.

use crate::app::Server;
use crate::config::Config;
use crate::store::{deliveries, installations, jobs};
use crate::webhook::signature::sign;
use anyhow::Context;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The bundled deliveries: (file name, GitHub event, body). Written for orch, see `fixtures/`.
pub const FIXTURES: &[(&str, &str, &str)] = &[
    ("01-ping.json", "ping", include_str!("../fixtures/deliveries/01-ping.json")),
    (
        "02-installation.created.json",
        "installation",
        include_str!("../fixtures/deliveries/02-installation.created.json"),
    ),
    (
        "03-issues.labeled.json",
        "issues",
        include_str!("../fixtures/deliveries/03-issues.labeled.json"),
    ),
    (
        "04-issue_comment.created.json",
        "issue_comment",
        include_str!("../fixtures/deliveries/04-issue_comment.created.json"),
    ),
    (
        "05-pull_request.opened.json",
        "pull_request",
        include_str!("../fixtures/deliveries/05-pull_request.opened.json"),
    ),
    (
        "06-check_run.requested_action.json",
        "check_run",
        include_str!("../fixtures/deliveries/06-check_run.requested_action.json"),
    ),
    (
        "07-issue_comment.edited.json",
        "issue_comment",
        include_str!("../fixtures/deliveries/07-issue_comment.edited.json"),
    ),
    (
        "08-star.created.json",
        "star",
        include_str!("../fixtures/deliveries/08-star.created.json"),
    ),
];

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("system randomness");
    hex::encode(buf)
}

pub async fn run(once: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("orch-demo-{}", random_hex(4)));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let db = dir.join("orch.db");
    let secret = random_hex(32);
    let bind = std::env::var("ORCH_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
    let env: HashMap<String, String> = [
        ("ORCH_BIND", bind.as_str()),
        ("ORCH_DATABASE_URL", &format!("sqlite://{}", db.display())),
        ("ORCH_WEBHOOK_SECRET", secret.as_str()),
        ("ORCH_GITHUB_DRY_RUN", "true"),
        ("ORCH_LLM_PROVIDER", "fake"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_map(&env)?;
    let server = Server::start(&config).await?;
    let base = format!("http://{}", server.addr);
    println!("orch demo");
    println!("  database     {}", db.display());
    println!("  webhook      POST {base}/webhook (secret generated for this run, never printed)");
    println!("  GitHub       dry-run; model: fake");
    println!();
    println!("Sending the bundled deliveries, signed:");

    let client = reqwest::Client::new();
    let send = |event: &'static str, guid: String, body: &'static str, signature: String| {
        let client = client.clone();
        let url = format!("{base}/webhook");
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-github-event", event)
                .header("x-github-delivery", guid)
                .header("x-hub-signature-256", signature)
                .body(body)
                .send()
                .await?;
            let status = r.status().as_u16();
            let json: serde_json::Value = r.json().await.unwrap_or_default();
            anyhow::Ok((status, json))
        }
    };
    let run_id = random_hex(4);
    for (i, (name, event, body)) in FIXTURES.iter().enumerate() {
        let guid = format!("demo-{run_id}-{i:02}");
        let (status, json) = send(event, guid, body, sign(&secret, body.as_bytes())).await?;
        let answer = json
            .get("status")
            .or_else(|| json.get("error"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        println!("  {status} {answer:<9} {event:<14} {name}");
    }
    let (_, event, body) = FIXTURES[3];
    let (status, json) = send(event, format!("demo-{run_id}-03"), body, sign(&secret, body.as_bytes())).await?;
    println!(
        "  {status} {:<9} {event:<14} the same delivery again (GitHub redelivery): not processed twice",
        json["status"].as_str().unwrap_or("")
    );
    let (status, json) = send(
        event,
        format!("demo-{run_id}-forged"),
        body,
        sign("not-the-secret", body.as_bytes()),
    )
    .await?;
    println!(
        "  {status} {:<9} {event:<14} signed with a wrong secret: {}",
        "refused",
        json["error"].as_str().unwrap_or("")
    );

    let started = Instant::now();
    while jobs::depth(server.store.pool()).await? > 0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!();
    println!("Stored deliveries and what the workers decided:");
    for d in deliveries::list(server.store.pool(), 100).await? {
        let event: crate::webhook::Event = serde_json::from_str(&d.event_data)?;
        println!(
            "  {:<16} {:<34} {:<10} processed {}x  {}",
            d.guid,
            format!("{}{}", d.event, d.action.as_deref().map(|a| format!(".{a}")).unwrap_or_default()),
            d.status,
            d.process_count,
            event.kind(),
        );
    }
    if let Some(inst) = installations::get_installation(server.store.pool(), 77).await? {
        let repos = installations::active_repositories(server.store.pool(), 77).await?;
        println!();
        println!(
            "Installation {} ({}) recorded with repositories: {}",
            inst.id,
            inst.account.unwrap_or_default(),
            repos.join(", ")
        );
    }
    if once {
        return server.shutdown().await;
    }
    println!();
    println!("Serving on {base} (try {base}/health); Ctrl-C to stop.");
    crate::app::shutdown_signal().await;
    server.shutdown().await
}
