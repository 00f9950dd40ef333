//! GitHub's budget (issue 14, SPEC §11): rate limits defer work, never fail it. A burst of
//! triage workflows meets the primary limit running out mid-burst, and a storm of secondary-limit
//! 403s; every proposal is posted once, no workflow fails, and the waiting shows in `/orch
//! status`, the dashboard and `/metrics` while it lasts. One busy repository does not starve
//! another of the same installation. The real router, signed webhooks, the fake GitHub over HTTP.

mod common;
#[path = "common/e2e.rs"]
mod e2e;

use axum::http::Method;
use common::Backend;
use e2e::{metric, payloads, IssueSpec, Orch, INSTALLATION, REPO};
use orch::github::fake::{Fault, FaultKind};
use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;

const TOKEN: &str = "rate-limit-admin-token";
/// The longest orch waits in-process for a rate limit in these tests; the limits below last
/// longer, so orch must defer its jobs instead.
const IN_PROCESS_WAIT_MS: &str = "200";
/// How long the harness waits for a whole burst to get through its limit.
const BURST: Duration = Duration::from_secs(90);

async fn start(backend: Backend, extra: &[(&str, &str)]) -> Option<Orch> {
    let mut env = vec![
        ("ORCH_ADMIN_TOKEN", TOKEN),
        ("ORCH_GITHUB_MAX_RATE_LIMIT_WAIT_MS", IN_PROCESS_WAIT_MS),
        ("ORCH_GITHUB_RETRY_BACKOFF_MS", "50"),
    ];
    env.extend_from_slice(extra);
    let o = Orch::with_env(backend, "phase: 4\n", &env).await?;
    o.user("mara", "maintain");
    Some(o)
}

async fn metrics(o: &Orch) -> HashMap<String, f64> {
    o.metrics(TOKEN).await
}

fn now_secs() -> f64 {
    orch::store::now_ms() as f64 / 1000.0
}

/// A workflow whose job waits for GitHub's budget now, as (workflow id, issue number).
async fn waiting_workflow(o: &Orch) -> Option<(i64, i64)> {
    sqlx::query(
        "SELECT j.workflow_id, w.number FROM jobs j JOIN workflows w ON w.id = j.workflow_id \
         WHERE j.status = 'queued' AND j.github_wait_until > $1 ORDER BY j.github_wait_until DESC LIMIT 1",
    )
    .bind(orch::store::now_ms())
    .fetch_optional(o.store.pool())
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

/// The dashboard's page of workflow `id`, logged in with the admin token.
async fn dashboard_page(o: &Orch, id: i64) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(format!("{}/ui/login", o.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    http.get(format!("{}/ui/workflows/{id}", o.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Every issue got exactly one triage proposal, every workflow waits for approval (none failed
/// or was handed to a human), and no job or delivery failed.
async fn every_proposal_posted_once(o: &Orch, issues: &[IssueSpec]) {
    o.eventually("every workflow waits for approval", BURST, || async {
        let states = o.workflow_states().await;
        (states.len() == issues.len() && states.iter().all(|(_, _, s)| s == "WAITING_USER_APPROVAL")).then_some(())
    })
    .await;
    for issue in issues {
        let proposals: Vec<String> = o
            .bot_comments(issue.number)
            .into_iter()
            .filter(|c| c.contains("triage proposal"))
            .collect();
        assert_eq!(proposals.len(), 1, "#{}: {proposals:?}", issue.number);
    }
    for (id, _, _) in o.workflow_states().await {
        let ended: Vec<String> = o
            .transitions(id)
            .await
            .into_iter()
            .map(|(_, to, _)| to)
            .filter(|to| to == "FAILED" || to == "NEEDS_HUMAN")
            .collect();
        assert!(ended.is_empty(), "workflow {id}: {ended:?}");
    }
    let failed: i64 = sqlx::query("SELECT COUNT(*) FROM jobs WHERE status = 'failed'")
        .fetch_one(o.store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "{}", o.diagnostics().await);
    let failed: i64 = sqlx::query("SELECT COUNT(*) FROM deliveries WHERE status = 'failed'")
        .fetch_one(o.store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0);
}

/// (a) The primary limit runs out mid-burst and resets only after far longer than orch waits
/// in-process: the jobs wait in the queue (visible in `/metrics` and on the dashboard while the
/// limit lasts), and once it resets every proposal is posted exactly once.
async fn the_primary_limit_runs_out_mid_burst(backend: Backend) {
    let Some(o) = start(backend, &[]).await else { return };
    let mut issues: Vec<IssueSpec> = (1..=6)
        .map(|i| o.open_issue(&format!("Crash {i}"), "It crashes on start.", "dev-kim"))
        .collect();
    for issue in &mut issues[..3] {
        o.label_issue(issue, "orch:triage", "mara").await;
    }
    o.wait_state(1, "WAITING_USER_APPROVAL").await;
    // Spent for 6 s: far beyond the 200 ms orch waits in-process.
    o.fake.state.exhaust_rate_limit(Duration::from_secs(6));
    for issue in &mut issues[3..] {
        o.label_issue(issue, "orch:triage", "mara").await;
    }
    // While it lasts: jobs wait for GitHub, the installation is blocked until the reset, and a
    // waiting proposal's reaction poll waits too (the dashboard says so, and until when).
    let seen = o
        .eventually("the wait in /metrics", BURST, || async {
            let m = metrics(&o).await;
            let blocked = metric(&m, &format!("orch_github_blocked_until_seconds{{installation=\"{INSTALLATION}\"}}"));
            (metric(&m, "orch_jobs_waiting_for_github") >= 1.0 && blocked > now_secs()).then_some(m)
        })
        .await;
    assert!(
        metric(&seen, "orch_github_request_errors_total{reason=\"rate_limited\"}") >= 1.0,
        "{seen:?}"
    );
    let (id, _) = o.eventually("a workflow waiting for GitHub", BURST, || waiting_workflow(&o)).await;
    let page = dashboard_page(&o, id).await;
    assert!(page.contains("id=\"github-wait\""), "{page}");
    assert!(page.contains("rate limit until 20") && page.contains(" UTC"), "{page}");
    every_proposal_posted_once(&o, &issues).await;
    // And afterwards nothing waits any more.
    o.eventually("no job waiting for GitHub", BURST, || async {
        (metric(&metrics(&o).await, "orch_jobs_waiting_for_github") == 0.0).then_some(())
    })
    .await;
    let mut o = o;
    o.stop().await;
}

/// (b) A storm of secondary-limit 403s with `Retry-After` on content-creating requests: the
/// installation's writes wait (reads go on), `/orch status` says the workflow waits for GitHub's
/// rate limit and until when, and every proposal is posted once when the storm ends.
async fn a_secondary_limit_storm(backend: Backend) {
    let Some(o) = start(backend, &[]).await else { return };
    let mut issues: Vec<IssueSpec> = (1..=4)
        .map(|i| o.open_issue(&format!("Crash {i}"), "It crashes on start.", "dev-kim"))
        .collect();
    // Eight refusals, each holding the installation's writes for 2 s.
    o.fake.state.inject(Fault::new(
        Method::POST,
        "/comments",
        8,
        FaultKind::Status {
            code: 403,
            retry_after: Some(2),
        },
    ));
    for issue in &mut issues {
        o.label_issue(issue, "orch:triage", "mara").await;
    }
    o.eventually("the writes' block in /metrics", BURST, || async {
        let m = metrics(&o).await;
        let blocked = metric(
            &m,
            &format!("orch_github_writes_blocked_until_seconds{{installation=\"{INSTALLATION}\"}}"),
        );
        (blocked > now_secs()).then_some(())
    })
    .await;
    let (id, number) = o.eventually("a workflow waiting for GitHub", BURST, || waiting_workflow(&o)).await;
    let issue = issues.iter().find(|i| i.number == number).unwrap().clone();
    o.comment(&issue, "mara", "/orch status").await;
    let status = o
        .eventually("the status reply", BURST, || async {
            o.bot_comments(number).into_iter().find(|c| c.contains("### orch · status"))
        })
        .await;
    let line = status.lines().find(|l| l.contains(&format!("workflow {id} "))).unwrap_or_default();
    assert!(line.contains("waits for GitHub's rate limit until 20"), "{status}");
    assert!(line.contains(" UTC; it goes on by itself then"), "{status}");
    every_proposal_posted_once(&o, &issues).await;
    let m = metrics(&o).await;
    assert!(metric(&m, "orch_github_request_errors_total{reason=\"rate_limited\"}") >= 1.0);
    assert_eq!(
        metric(&m, "orch_github_request_errors_total{reason=\"refused\"}"),
        0.0,
        "not taken for refusals"
    );
    let mut o = o;
    o.stop().await;
}

/// (d) Fairness: a busy repository's deferred jobs do not all go before a quiet repository's of
/// the same installation once the limit lifts: deferrals are spaced per repository, so the
/// quiet one's proposal is among the first posted.
async fn a_busy_repository_does_not_starve_another(backend: Backend) {
    // One write a second (no headroom): a repository's deferred jobs are put a second apart.
    // The quiet repository's proposal takes two jobs after the limit lifts (its delivery, which
    // asks GitHub for the labeller's permission, then its workflow): the spacing has to leave
    // room for the first on a loaded machine (at 500 ms the whole suite's load made it 4th).
    let Some(mut o) = start(
        backend,
        &[("ORCH_GITHUB_WRITE_LIMITS", "1/1s"), ("ORCH_GITHUB_WRITE_HEADROOM", "0")],
    )
    .await
    else {
        return;
    };
    const QUIET: &str = "acme/gadgets";
    o.fake.state.add_repo(QUIET, INSTALLATION, "main");
    o.fake
        .state
        .init_repo(QUIET, "main", &[(".github/orch.yml", "phase: 4\n"), ("README.md", "# gadgets\n")]);
    o.fake.state.set_permission(QUIET, "mara", "maintain");
    let mut busy: Vec<IssueSpec> = (1..=10)
        .map(|i| o.open_issue(&format!("Crash {i}"), "It crashes on start.", "dev-kim"))
        .collect();
    let quiet_number = o.fake.state.open_issue(QUIET, "Gadget crash", "It crashes too.", "dev-kim");
    let mut quiet = IssueSpec::new(quiet_number, "Gadget crash").body("It crashes too.").by("dev-kim");
    // The limit is spent before the burst arrives: every job of both repositories waits.
    o.fake.state.exhaust_rate_limit(Duration::from_secs(4));
    for issue in &mut busy {
        o.label_issue(issue, "orch:triage", "mara").await;
    }
    quiet.labels.push("orch:triage".into());
    o.fake.state.set_labels(QUIET, quiet_number, &["orch:triage"]);
    let gadgets = payloads::RepoSpec::new(QUIET, INSTALLATION);
    o.deliver("issues", &payloads::issue_labeled(&gadgets, &quiet, "orch:triage", "mara"))
        .await;
    o.eventually("every workflow waits for approval", BURST, || async {
        let states = o.workflow_states().await;
        (states.len() == 11 && states.iter().all(|(_, _, s)| s == "WAITING_USER_APPROVAL")).then_some(())
    })
    .await;
    // The order in which proposals were posted, by repository.
    let posted: Vec<String> = o
        .fake
        .state
        .log()
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/comments") && p.contains("/issues/"))
        .map(|(_, p)| p)
        .collect();
    let quiet_at = posted
        .iter()
        .position(|p| p.starts_with(&format!("/repos/{QUIET}/")))
        .expect("the quiet repository's proposal");
    assert!(
        quiet_at < 3,
        "the quiet repository's proposal came {}th of {}: {posted:?}",
        quiet_at + 1,
        posted.len()
    );
    assert_eq!(
        posted.iter().filter(|p| p.starts_with(&format!("/repos/{REPO}/"))).count(),
        10,
        "{posted:?}"
    );
    o.stop().await;
}

/// An operator's vote while GitHub's limit holds: recorded and answered 202 with until when
/// (not a 500, not a failed workflow); the workflow settles by itself once the limit lifts.
async fn an_operator_vote_waits_for_the_limit(backend: Backend) {
    let Some(o) = start(backend, &[]).await else { return };
    let mut issue = o.open_issue("Crash", "It crashes on start.", "dev-kim");
    o.label_issue(&mut issue, "orch:triage", "mara").await;
    o.wait_state(1, "WAITING_USER_APPROVAL").await;
    o.fake.state.exhaust_rate_limit(Duration::from_secs(4));
    let r = o
        .http
        .post(format!("{}/approve/1", o.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert!(
        body.contains("the vote was recorded; settling workflow 1 waits for GitHub's rate limit until 20"),
        "{body}"
    );
    assert_eq!(o.state_of(1).await, "WAITING_USER_APPROVAL");
    o.eventually("the approved triage done", BURST, || async {
        (o.state_of(1).await == "DONE").then_some(())
    })
    .await;
    let ended: Vec<String> = o.transitions(1).await.into_iter().map(|(_, to, _)| to).collect();
    assert!(!ended.iter().any(|s| s == "FAILED" || s == "NEEDS_HUMAN"), "{ended:?}");
    let mut o = o;
    o.stop().await;
}

/// The budget is shared through the store: two replicas' stores (two pools on one database)
/// count their writes in the same windows, see each other's blocks, and a secondary limit's
/// block holds writes while reads go on.
async fn replicas_share_the_budget(backend: Backend) {
    use orch::store::github_budget::{self, parse_write_limits, WriteLimits};
    let Some(db) = common::TestDb::new(backend).await else { return };
    let (a, b) = (db.store().await, db.store().await);
    let limits = WriteLimits {
        limits: parse_write_limits("3/60s,4/1h").unwrap(),
        headroom: 0.0,
    };
    let t = 1_000_000_000;
    // Three writes a minute between them, whichever replica sends.
    assert_eq!(github_budget::reserve_write(&a, 7, &limits, t).await.unwrap(), Ok(()));
    assert_eq!(github_budget::reserve_write(&b, 7, &limits, t + 10).await.unwrap(), Ok(()));
    assert_eq!(github_budget::reserve_write(&a, 7, &limits, t + 20).await.unwrap(), Ok(()));
    assert_eq!(github_budget::reserve_write(&b, 7, &limits, t + 30).await.unwrap(), Err(t + 60_000));
    // Another installation has budgets of its own.
    assert_eq!(github_budget::reserve_write(&b, 8, &limits, t + 30).await.unwrap(), Ok(()));
    // The minute's first write left the window: one more fits, then the hour is full.
    assert_eq!(github_budget::reserve_write(&b, 7, &limits, t + 60_000).await.unwrap(), Ok(()));
    assert_eq!(
        github_budget::reserve_write(&a, 7, &limits, t + 120_000).await.unwrap(),
        Err(t + 3_600_000)
    );
    // A primary block recorded by one replica holds the other's reads and writes.
    github_budget::record_block(&a, 8, t + 5_000, false, t).await.unwrap();
    assert_eq!(
        github_budget::blocked_until(b.pool(), 8, false, t + 1).await.unwrap(),
        Some(t + 5_000)
    );
    assert_eq!(github_budget::reserve_write(&b, 8, &limits, t + 1).await.unwrap(), Err(t + 5_000));
    assert_eq!(
        github_budget::blocked_until(b.pool(), 8, false, t + 5_000).await.unwrap(),
        None,
        "lifted"
    );
    // An earlier block recorded later does not shorten it.
    github_budget::record_block(&b, 8, t + 2_000, false, t).await.unwrap();
    assert_eq!(
        github_budget::blocked_until(a.pool(), 8, false, t + 3_000).await.unwrap(),
        Some(t + 5_000)
    );
    // A secondary limit met by a write holds writes only.
    github_budget::record_block(&a, 9, t + 8_000, true, t).await.unwrap();
    assert_eq!(github_budget::blocked_until(b.pool(), 9, false, t + 1).await.unwrap(), None);
    assert_eq!(
        github_budget::blocked_until(b.pool(), 9, true, t + 1).await.unwrap(),
        Some(t + 8_000)
    );
    assert_eq!(github_budget::reserve_write(&b, 9, &limits, t + 1).await.unwrap(), Err(t + 8_000));
    // Headroom as recorded shows per installation.
    github_budget::record_remaining(&a, 9, 12, 5000, t + 3_600_000, t).await.unwrap();
    let all = github_budget::all(b.pool()).await.unwrap();
    let nine = all.iter().find(|x| x.installation_id == 9).unwrap();
    assert_eq!(
        (nine.remaining, nine.limit_total, nine.writes_blocked_until),
        (Some(12), Some(5000), t + 8_000)
    );
    a.close().await;
    b.close().await;
}

both_backends!(
    replicas_share_the_budget,
    an_operator_vote_waits_for_the_limit,
    the_primary_limit_runs_out_mid_burst,
    a_secondary_limit_storm,
    a_busy_repository_does_not_starve_another
);
