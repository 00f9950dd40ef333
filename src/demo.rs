//! `orch demo`: a first look without any setup. Part one starts orch on a fresh embedded SQLite
//! database with a generated webhook secret and no GitHub App, sends the bundled fixture
//! deliveries to itself, signed, over real HTTP, and prints what was stored. Part two plays the
//! product's main paths against an in-process fake GitHub (nothing leaves the machine): a triage
//! approved by a comment, and a patch approved with its check run's button that becomes a pull
//! request — then prints each workflow's transitions and checks the audit chain.

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
    println!("  GitHub       none yet: deliveries are stored and acknowledged, nothing acts on them");
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
    server.shutdown().await?;
    workflows(&dir, once).await
}

/// Part two: orch with a GitHub App against the fake GitHub.
async fn workflows(dir: &std::path::Path, once: bool) -> anyhow::Result<()> {
    use crate::github::fake::{FakeGithub, FakeState};
    const REPO: &str = "acme/widgets";
    const INSTALLATION: i64 = 77;
    println!();
    println!("Part two: workflows against an in-process fake GitHub");
    // A throwaway App key for this run, so that the fake checks real signatures.
    let (private, public) = crate::github::auth::generate_app_key().context("generating the demo App key")?;
    let pem_path = dir.join("demo-app.pem");
    std::fs::write(&pem_path, private.as_bytes())?;
    let fake = FakeGithub::start(1, public.as_bytes(), Duration::from_secs(3600)).await?;
    let gh: &FakeState = &fake.state;
    gh.add_repo(REPO, INSTALLATION, "main");
    gh.init_repo(
        REPO,
        "main",
        &[
            (".github/orch.yml", "phase: 4\napprovals: {required: 1}\n"),
            ("src/lib.rs", "pub fn answer() -> u32 {\n    41\n}\n"),
            ("README.md", "# widgets\n"),
        ],
    );
    gh.set_permission(REPO, "mara", "maintain");
    gh.set_permission(REPO, "lee", "write");

    let secret = random_hex(32);
    // The dashboard's login token for this run, kept in a file rather than printed.
    let admin_token = random_hex(16);
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, &admin_token)?;
    let bind = std::env::var("ORCH_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
    let env: HashMap<String, String> = [
        ("ORCH_BIND", bind),
        ("ORCH_DATABASE_URL", format!("sqlite://{}", dir.join("orch-workflows.db").display())),
        ("ORCH_WEBHOOK_SECRET", secret.clone()),
        ("ORCH_GITHUB_APP_ID", "1".into()),
        ("ORCH_GITHUB_PRIVATE_KEY_PATH", pem_path.display().to_string()),
        ("ORCH_GITHUB_API_URL", fake.url()),
        ("ORCH_GITHUB_WRITE_PACE_MS", "0".into()),
        ("ORCH_REACTION_POLL_MS", "500".into()),
        ("ORCH_LLM_PROVIDER", "fake".into()),
        ("ORCH_ADMIN_TOKEN", admin_token.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let server = Server::start(&Config::from_map(&env)?).await?;
    let base = format!("http://{}", server.addr);
    println!("  orch         {base} (database {})", dir.join("orch-workflows.db").display());
    println!("  GitHub       fake, at {} — repository {REPO}, policy phase 4", fake.url());
    println!();

    let client = reqwest::Client::new();
    let mut n = 0;
    let mut deliver = |event: &'static str, payload: serde_json::Value| {
        n += 1;
        let (client, url, secret) = (client.clone(), format!("{base}/webhook"), secret.clone());
        let guid = format!("demo-wf-{}-{n}", random_hex(4));
        async move {
            let body = serde_json::to_vec(&payload)?;
            let r = client
                .post(url)
                .header("x-github-event", event)
                .header("x-github-delivery", guid)
                .header("x-hub-signature-256", sign(&secret, &body))
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "orch answered {}", r.status());
            anyhow::Ok(())
        }
    };
    let user = |login: &str| serde_json::json!({ "login": login, "id": crate::github::fake::user_id(login), "type": "User" });
    let repo = serde_json::json!({ "id": 4242, "full_name": REPO, "name": "widgets", "owner": { "login": "acme" }, "default_branch": "main", "private": false });
    let issue_json = |number: i64, title: &str, labels: &[&str]| {
        serde_json::json!({ "number": number, "title": title, "body": "", "state": "open", "user": user("dev-kim"),
                            "labels": labels.iter().map(|l| serde_json::json!({ "name": l })).collect::<Vec<_>>() })
    };
    let store = server.store.clone();
    let wait = |id: i64, state: &'static str| {
        let store = store.clone();
        async move {
            let started = Instant::now();
            loop {
                let wf = crate::store::workflows::get(store.pool(), id).await?;
                if let Some(wf) = wf.as_ref().filter(|wf| wf.state.as_str() == state) {
                    return anyhow::Ok(wf.clone());
                }
                let now = wf.map(|wf| wf.state.as_str()).unwrap_or("not started");
                anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "workflow {id} stayed in {now}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    let first_line = |text: &str| text.lines().next().unwrap_or_default().to_string();

    // 1. Triage: a label, a proposal, an approval by comment.
    let title = "Crash when the config file is empty";
    let issue = gh.open_issue(REPO, title, "orch panics at start with an empty config.", "dev-kim");
    gh.set_labels(REPO, issue, &["orch:triage"]);
    println!("1. @mara labels #{issue} \"{title}\" with orch:triage");
    deliver(
        "issues",
        serde_json::json!({ "action": "labeled", "issue": issue_json(issue, title, &["orch:triage"]), "label": { "name": "orch:triage" },
                                           "repository": repo, "sender": user("mara"), "installation": { "id": INSTALLATION } }),
    )
    .await?;
    let wf = wait(1, "WAITING_USER_APPROVAL").await?;
    let proposal = gh.bot_comments(REPO, issue).into_iter().next().context("the proposal comment")?;
    println!("   orch comments: {}", first_line(&proposal.body));
    for line in proposal.body.lines().skip(2).take(2) {
        println!("                  {line}");
    }
    let comment = gh.user_comment(REPO, issue, "lee", "User", "/orch approve");
    println!("2. @lee comments `/orch approve`");
    deliver("issue_comment", serde_json::json!({ "action": "created", "issue": issue_json(issue, title, &["orch:triage"]),
        "comment": { "id": comment, "body": "/orch approve", "user": user("lee") }, "repository": repo, "sender": user("lee"), "installation": { "id": INSTALLATION } }))
    .await?;
    wait(wf.id, "DONE").await?;
    let reactions: Vec<String> = gh
        .reactions(comment)
        .into_iter()
        .map(|(c, _)| if c == "eyes" { "👀".into() } else { c })
        .collect();
    println!(
        "   orch reacts {} and comments: {}",
        reactions.join(", "),
        first_line(&gh.bot_comments(REPO, issue).last().context("a comment")?.body)
    );
    println!("   labels on #{issue} now: {}", gh.labels(REPO, issue).join(", "));

    // 2. Patch: a command, a check run with buttons, the Approve button, a pull request.
    let title = "The answer is off by one";
    let issue = gh.open_issue(REPO, title, "answer() should return 42.", "dev-kim");
    let instruction = "/orch propose make `src/lib.rs` return 42";
    let comment = gh.user_comment(REPO, issue, "mara", "User", instruction);
    println!("3. @mara comments `{instruction}` on #{issue}");
    deliver("issue_comment", serde_json::json!({ "action": "created", "issue": issue_json(issue, title, &[]),
        "comment": { "id": comment, "body": instruction, "user": user("mara") }, "repository": repo, "sender": user("mara"), "installation": { "id": INSTALLATION } }))
    .await?;
    let wf = wait(2, "WAITING_USER_APPROVAL").await?;
    let run = gh.check_runs(REPO).into_iter().last().context("the patch check run")?;
    let buttons: Vec<String> = run.actions.iter().filter_map(|a| a["label"].as_str().map(str::to_string)).collect();
    println!(
        "   orch shows check run `{}` ({}) with buttons {}",
        run.name,
        run.conclusion.clone().unwrap_or_default(),
        buttons.join(" / ")
    );
    println!("4. @lee presses Approve");
    deliver("check_run", serde_json::json!({ "action": "requested_action",
        "check_run": { "id": run.id, "name": run.name, "head_sha": run.head_sha, "external_id": format!("workflow:{}", wf.id) },
        "requested_action": { "identifier": "approve" }, "repository": repo, "sender": user("lee"), "installation": { "id": INSTALLATION } }))
    .await?;
    wait(wf.id, "DONE").await?;
    let pull = gh.pulls(REPO).into_iter().last().context("the pull request")?;
    println!(
        "   orch opens pull request #{} \"{}\" from {} into {}",
        pull.number, pull.title, pull.head, pull.base
    );
    let files = gh.files_at(REPO, &pull.head).unwrap_or_default();
    let lib = files.get("src/lib.rs").map(String::as_str).unwrap_or_default();
    println!("   src/lib.rs on {}:", pull.head);
    for line in lib.lines() {
        println!("     {line}");
    }
    // The fake model made the change it was asked for, as an `edit` of one line.
    anyhow::ensure!(
        lib == "pub fn answer() -> u32 {\n    42\n}\n",
        "the demo's pull request does not make answer() return 42:\n{lib}"
    );

    println!();
    println!("Transitions (one append-only row each):");
    for id in [1, 2] {
        let path: Vec<String> = crate::store::workflows::transitions(store.pool(), id)
            .await?
            .into_iter()
            .map(|t| t.to.as_str().to_string())
            .collect();
        println!("  workflow {id}: {}", path.join(" → "));
    }
    println!();
    match crate::audit::verify(store.pool()).await? {
        crate::audit::Verdict::Intact { rows, head } => println!("Audit log: {rows} entries, chain intact (head {})", &head[..16]),
        broken => println!("Audit log: {broken}"),
    }
    if once {
        return server.shutdown().await;
    }
    println!();
    println!("Dashboard: {base}/ui/ — log in with the token in {}", token_file.display());
    println!("Serving on {base} (try {base}/health); the fake GitHub stays up too. Ctrl-C to stop.");
    crate::app::shutdown_signal().await;
    server.shutdown().await
}
