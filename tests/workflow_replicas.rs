//! Two replicas on one database (SPEC §11: "PostgreSQL for production and for several replicas
//! behind a load balancer"): two orch servers built from the same environment share a fresh
//! Postgres database and the fake GitHub. 200 triage label events and then 200 approvals are
//! spread over both servers' `/webhook`; every workflow must be processed exactly once — one
//! proposal and one applied comment per issue, each transition once, the labels added once and
//! every delivery processed once. Postgres only: skipped when it is unreachable outside CI.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use common::{Backend, Hook};
use e2e::{payloads, IssueSpec, Orch, REPO};
use orch::app::Server;
use orch::config::Config;
use orch::github::fake::APP_LOGIN;
use orch::store::deliveries;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const POLICY: &str = "phase: 4\n";
const ISSUES: usize = 200;
const TRIAGE_PATH: [&str; 7] = [
    "INGESTED",
    "CONTEXT_LOADED",
    "PATCHES_PROPOSED",
    "WAITING_USER_APPROVAL",
    "APPROVED",
    "APPLYING_CHANGES",
    "DONE",
];

/// Sends a signed delivery to the server at `base`; it must be queued.
async fn deliver(o: &Orch, base: &str, event: &str, payload: &serde_json::Value) -> String {
    let guid = o.next_guid();
    let body = serde_json::to_vec(payload).unwrap();
    let (status, answer) = Hook::signed(event, &guid, &body).send(&o.http, base).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("queued")),
        "{event} to {base}: {answer}"
    );
    guid
}

async fn count_in_state(o: &Orch, state: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM workflows WHERE state = $1")
        .bind(state.to_string())
        .fetch_one(o.store.pool())
        .await
        .unwrap()
        .get(0)
}

async fn wait_count(o: &Orch, state: &str, n: i64, timeout: Duration) {
    o.eventually(&format!("{n} workflows in {state}"), timeout, || async {
        (count_in_state(o, state).await >= n).then_some(())
    })
    .await
}

fn markers(body: &str) -> Vec<i64> {
    body.match_indices("<!-- orch:action:")
        .filter_map(|(i, m)| body[i + m.len()..].split([':', ' ']).next().and_then(|n| n.parse().ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_process_every_workflow_once() {
    let started = Instant::now();
    // Reactions are polled every 2 s: 200 waiting proposals polled every 200 ms would be most of
    // the load, and this test is about the queue, not about polling.
    let extra = [("ORCH_REACTION_POLL_MS", "2000"), ("ORCH_WORKERS", "4")];
    let Some(mut o) = Orch::with_env(Backend::Postgres, POLICY, &extra).await else {
        return;
    };
    o.user("mara", "maintain");
    o.user("lee", "write");
    let second = Server::start(&Config::from_map(o.env()).unwrap()).await.unwrap();
    let bases = [o.base.clone(), format!("http://{}", second.addr)];
    assert_ne!(bases[0], bases[1]);

    // 200 issues labelled for triage, the deliveries alternating between the replicas.
    let mut issues: Vec<IssueSpec> = Vec::with_capacity(ISSUES);
    for i in 0..ISSUES {
        let mut issue = o.open_issue(&format!("Crash #{i} on start"), "It crashes when the config is empty.", "dev-kim");
        o.fake.state.set_labels(REPO, issue.number, &["orch:triage"]);
        issue.labels = vec!["orch:triage".into()];
        issues.push(issue);
    }
    let t_labels = Instant::now();
    for (i, issue) in issues.iter().enumerate() {
        deliver(
            &o,
            &bases[i % 2],
            "issues",
            &payloads::issue_labeled(&o.repo, issue, "orch:triage", "mara"),
        )
        .await;
    }
    wait_count(&o, "WAITING_USER_APPROVAL", ISSUES as i64, Duration::from_secs(60)).await;
    let proposals_secs = t_labels.elapsed().as_secs_f64();

    // 200 approvals, alternating the other way round.
    let t_approvals = Instant::now();
    let mut approvals = Vec::with_capacity(ISSUES);
    for (i, issue) in issues.iter().enumerate() {
        let body = "/orch approve";
        let id = o.fake.state.user_comment(REPO, issue.number, "lee", "User", body);
        deliver(
            &o,
            &bases[(i + 1) % 2],
            "issue_comment",
            &payloads::issue_comment_created(&o.repo, issue, id, body, "lee", "User"),
        )
        .await;
        approvals.push(id);
    }
    wait_count(&o, "DONE", ISSUES as i64, Duration::from_secs(60)).await;
    let done_secs = t_approvals.elapsed().as_secs_f64();
    o.wait_idle(30).await;
    second.shutdown().await.unwrap();
    o.stop().await;

    // Every workflow once, through each state once.
    let pool = o.store.pool();
    let wfs: Vec<(i64, i64, String, String)> = sqlx::query("SELECT id, number, kind, state FROM workflows ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(wfs.len(), ISSUES, "one workflow per issue");
    let mut per_issue: HashMap<i64, usize> = HashMap::new();
    // (what went wrong, where and how)
    let mut problems: Vec<(&str, String)> = Vec::new();
    for (id, number, kind, state) in &wfs {
        *per_issue.entry(*number).or_default() += 1;
        if (kind.as_str(), state.as_str()) != ("triage", "DONE") {
            problems.push((
                "a workflow did not end in DONE",
                format!("workflow {id} (#{number}) is a {kind} workflow in {state}"),
            ));
        }
        let path: Vec<String> = o.transitions(*id).await.into_iter().map(|(_, to, _)| to).collect();
        if path != TRIAGE_PATH {
            problems.push((
                "a history that is not the triage path once",
                format!("workflow {id} (#{number}): {path:?}"),
            ));
        }
    }
    assert!(per_issue.values().all(|n| *n == 1), "{per_issue:?}");

    // What GitHub shows: one proposal and one applied comment per issue, the labels added once.
    let log = o.fake.state.log();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for (issue, approval) in issues.iter().zip(&approvals) {
        let n = issue.number;
        let bot: Vec<String> = o.fake.state.bot_comments(REPO, n).into_iter().map(|c| c.body).collect();
        let proposals = bot.iter().filter(|b| b.contains("### orch · triage proposal")).count();
        let applied = bot.iter().filter(|b| b.starts_with("Applied labels `bug`, `priority:p1`")).count();
        if (proposals, applied) != (1, 1) {
            problems.push((
                "the proposal or the applied comment posted twice",
                format!("#{n}: {proposals} proposals, {applied} applied comments: {bot:?}"),
            ));
        }
        for extra in bot
            .iter()
            .filter(|b| !b.contains("### orch · triage proposal") && !b.starts_with("Applied labels"))
        {
            problems.push(("an extra reply (one delivery acted on twice)", format!("#{n}: {extra:?}")));
        }
        for b in &bot {
            for m in markers(b) {
                *seen.entry(m).or_default() += 1;
            }
        }
        let labels = o.fake.state.labels(REPO, n);
        if labels != ["orch:triage", "bug", "priority:p1"] {
            problems.push(("wrong labels", format!("#{n}: {labels:?}")));
        }
        let label_posts = log
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with(&format!("/issues/{n}/labels")))
            .count();
        let comment_posts = log
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with(&format!("/issues/{n}/comments")))
            .count();
        if label_posts != 1 {
            problems.push(("labels added more than once", format!("#{n}: {label_posts} label requests")));
        }
        if comment_posts != 2 {
            problems.push((
                "not exactly two comment requests",
                format!("#{n}: {comment_posts} comment requests"),
            ));
        }
        let eyes = o
            .fake
            .state
            .reactions(*approval)
            .iter()
            .filter(|(c, who)| c == "eyes" && who == APP_LOGIN)
            .count();
        let eyes_posts = log
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with(&format!("/issues/comments/{approval}/reactions")))
            .count();
        if (eyes, eyes_posts) != (1, 1) {
            problems.push((
                "👀 requested more than once (the approval's delivery ran twice)",
                format!("#{n}: {eyes} 👀 from {eyes_posts} requests"),
            ));
        }
    }
    let twice: BTreeMap<i64, usize> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    if !twice.is_empty() {
        problems.push(("a marker on GitHub more than once", format!("action ids and counts {twice:?}")));
    }

    // What the store holds: every delivery processed once by one job; one vote per workflow;
    // every write recorded once and done.
    let all = deliveries::list(pool, 10_000).await.unwrap();
    assert_eq!(all.len(), 2 * ISSUES, "deliveries stored");
    for d in &all {
        if (d.status.as_str(), d.process_count) != ("processed", 1) {
            problems.push((
                "a delivery not processed exactly once",
                format!("{} ({}): {} with process_count {}", d.guid, d.event, d.status, d.process_count),
            ));
        }
    }
    let jobs: BTreeMap<String, i64> = sqlx::query("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if jobs.keys().any(|s| s != "done") {
        problems.push(("jobs not done", format!("{jobs:?}")));
    }
    let dup_jobs: i64 = sqlx::query(
        "SELECT COUNT(*) FROM (SELECT delivery_guid FROM jobs WHERE delivery_guid IS NOT NULL GROUP BY delivery_guid HAVING COUNT(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap()
    .get(0);
    if dup_jobs > 0 {
        problems.push(("deliveries with more than one job", dup_jobs.to_string()));
    }
    let votes: i64 = sqlx::query("SELECT COUNT(*) FROM approvals").fetch_one(pool).await.unwrap().get(0);
    if votes != ISSUES as i64 {
        problems.push(("not one vote per approval", format!("{votes} votes for {ISSUES} approvals")));
    }
    let actions: BTreeMap<(String, String), i64> = sqlx::query("SELECT kind, status, COUNT(*) FROM actions GROUP BY kind, status")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let expected: BTreeMap<(String, String), i64> = [
        (("comment".to_string(), "done".to_string()), 2 * ISSUES as i64),
        (("labels".to_string(), "done".to_string()), ISSUES as i64),
        (("reaction".to_string(), "done".to_string()), ISSUES as i64),
    ]
    .into_iter()
    .collect();
    if actions != expected {
        problems.push(("unexpected action rows", format!("by kind and status: {actions:?}")));
    }
    let workflow_jobs: BTreeMap<i64, i64> = sqlx::query("SELECT attempts, COUNT(*) FROM jobs WHERE kind = 'workflow' GROUP BY attempts")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let total = started.elapsed().as_secs_f64();
    eprintln!(
        "two replicas: {ISSUES} proposals in {proposals_secs:.1}s, {ISSUES} approvals to DONE in {done_secs:.1}s, {total:.1}s in all; \
         {} GitHub requests; workflow jobs by attempts {workflow_jobs:?}",
        log.len()
    );
    let mut groups: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for (what, detail) in &problems {
        groups.entry(what).or_default().push(detail);
    }
    let mut report = String::new();
    for (what, list) in &groups {
        report.push_str(&format!("\n{} × {what}, e.g.\n", list.len()));
        for p in list.iter().take(3) {
            report.push_str(&format!("    {}\n", p.chars().take(700).collect::<String>()));
        }
    }
    let reclaimed: i64 = sqlx::query("SELECT COUNT(*) FROM jobs WHERE attempts > 1")
        .fetch_one(pool)
        .await
        .unwrap()
        .get(0);
    assert!(
        problems.is_empty(),
        "{} problem(s); {reclaimed} jobs were claimed more than once:{report}",
        problems.len()
    );
}
