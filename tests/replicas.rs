//! Three replicas on one PostgreSQL database (issue 8, item 4; SPEC §11): three real
//! `orch serve` processes ([`Rig`] with two more replicas, each on its own port) share a fresh
//! database and the fake GitHub. Deliveries are sent round-robin over the live replicas: a few
//! hundred triage workflows (label → proposal → `/orch approve` → labels applied), and a share of
//! the deliveries sent again with the same GUID to another replica. In the middle of the approvals
//! one replica is killed with SIGKILL while it runs a workflow step (its log shows the step
//! started, not ended); the other two must finish its work.
//!
//! What is asserted: [`invariants::check`] (every delivery stored and processed exactly once —
//! a GUID sent to a second replica is a duplicate —, no GitHub write made twice, every workflow
//! DONE by one legal path without a repeated state, the audit chain intact), the jobs the killed
//! replica held done by the others, and one worker at a time per workflow: each process logs when
//! it starts and ends a job (`job started` / `job ended`, `orch::worker` at debug level), and the
//! execution intervals of one workflow's jobs, across the three processes, never overlap.
//!
//! Postgres only: skipped outside CI when it is unreachable, a failure in CI. `ORCH_REPLICA_ISSUES`
//! sets the number of workflows (default 200).

mod common;
#[path = "common/e2e.rs"]
mod e2e;
#[path = "common/rig.rs"]
mod rig;

use common::Backend;
use e2e::{payloads, IssueSpec, INSTALLATION, REPO};
use rig::invariants::{self, Ledger, Snapshot};
use rig::{try_deliver, Rig};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REPLICAS: usize = 3;
/// The replica killed in the middle of the approvals.
const VICTIM: usize = 2;

/// Unix microseconds of a tracing timestamp (`2026-11-22T05:01:02.123456Z`).
fn parse_timestamp(t: &str) -> Option<i64> {
    let (date, time) = t.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (h.next()?.ok()?, h.next()?.ok()?, h.next()?.ok()?);
    let micros: i64 = format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()?;
    // Days from the civil date (proleptic Gregorian), as in H. Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

/// Strips ANSI colour sequences.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One execution of a job by one process, from its log.
#[derive(Debug, Clone)]
struct Execution {
    /// The process (its start number, [`Rig::log_path`]).
    process: usize,
    job: i64,
    workflow: i64,
    /// The job's attempt number of this execution.
    attempt: i64,
    start: i64,
    /// None: the process was killed while it ran the job.
    end: Option<i64>,
}

/// The job executions a process's log shows.
fn executions(process: usize, log: &str) -> Vec<Execution> {
    let mut open: BTreeMap<i64, Execution> = BTreeMap::new();
    let mut out = Vec::new();
    for line in log.lines().map(plain) {
        let started = line.ends_with("job started") || line.contains(": job started ");
        let ended = line.ends_with("job ended") || line.contains(": job ended ");
        if !started && !ended {
            continue;
        }
        let Some(at) = line.split_whitespace().next().and_then(parse_timestamp) else {
            panic!("process {process}: no timestamp in {line:?}");
        };
        let span = line.split("job{").nth(1).and_then(|s| s.split('}').next()).unwrap_or_default();
        let field = |name: &str| {
            span.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse::<i64>().ok())
        };
        let job = field("id").unwrap_or_else(|| panic!("process {process}: no job id in {line:?}"));
        if started {
            let previous = open.insert(
                job,
                Execution {
                    process,
                    job,
                    workflow: field("workflow").unwrap_or(0),
                    attempt: field("attempt").unwrap_or(0),
                    start: at,
                    end: None,
                },
            );
            assert!(previous.is_none(), "process {process} started job {job} twice at once");
        } else if let Some(mut e) = open.remove(&job) {
            e.end = Some(at);
            out.push(e);
        }
    }
    out.extend(open.into_values());
    out
}

fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// Pairs of executions of one workflow's jobs that ran at the same time. An execution ends when
/// its process logged `job ended`, or — for the one that completed its job — when the job was
/// marked done (`finished_at`, set in the completing transaction, before its commit made the next
/// job of the workflow claimable: the end that another worker's start must follow), or when its
/// process was killed.
fn overlaps(list: &[Execution], finished_at_ms: &BTreeMap<i64, i64>, killed_at: &BTreeMap<usize, i64>) -> Vec<String> {
    let mut by_workflow: BTreeMap<i64, Vec<(i64, i64, &Execution)>> = BTreeMap::new();
    let mut last_of_job: BTreeMap<i64, i64> = BTreeMap::new();
    for e in list {
        let last = last_of_job.entry(e.job).or_insert(e.start);
        *last = (*last).max(e.start);
    }
    for e in list.iter().filter(|e| e.workflow != 0) {
        let mut end = match e.end {
            Some(end) => end,
            None => *killed_at
                .get(&e.process)
                .unwrap_or_else(|| panic!("process {} never ended job {} and was not killed", e.process, e.job)),
        };
        if last_of_job[&e.job] == e.start {
            if let Some(done) = finished_at_ms.get(&e.job) {
                end = end.min(done * 1000);
            }
        }
        by_workflow.entry(e.workflow).or_default().push((e.start, end, e));
    }
    let mut found = Vec::new();
    for (workflow, mut runs) in by_workflow {
        runs.sort_by_key(|(start, _, _)| *start);
        for pair in runs.windows(2) {
            let ((_, a_end, a), (b_start, _, b)) = (&pair[0], &pair[1]);
            if b_start <= a_end {
                found.push(format!(
                    "workflow {workflow}: job {} in process {} until {a_end} and job {} in process {} from {b_start}",
                    a.job, a.process, b.job, b.process
                ));
            }
        }
    }
    found
}

/// Sends deliveries to the live replicas in turn.
struct Balancer {
    bases: Vec<String>,
    live: Mutex<Vec<bool>>,
    turn: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
    ledger: Arc<Mutex<Ledger>>,
}

impl Balancer {
    fn pick(&self, skip: Option<usize>) -> usize {
        let live = self.live.lock().unwrap().clone();
        loop {
            let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.bases.len();
            if live[i] && Some(i) != skip {
                return i;
            }
        }
    }

    /// Sends until a replica acknowledges; returns which one did. A replica that does not answer
    /// (killed) is skipped and the delivery goes to the next one, with the same GUID.
    async fn deliver(&self, event: &str, guid: &str, payload: &serde_json::Value, command: Option<i64>, skip: Option<usize>) -> usize {
        let body = serde_json::to_vec(payload).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let i = self.pick(skip);
            let answer = try_deliver(&self.http, &self.bases[i], event, guid, &body).await;
            let acked = matches!(&answer, Some((status, _)) if (200..300).contains(status));
            if let Some((status, json)) = &answer {
                assert!(acked || *status >= 500, "{event} {guid} refused by replica {i}: {status} {json}");
                if acked {
                    let s = json["status"].as_str().unwrap_or_default();
                    assert!(s == "queued" || s == "duplicate", "{event} {guid} to replica {i}: {json}");
                }
            }
            self.ledger.lock().unwrap().attempt(guid, event, command, acked);
            if acked {
                return i;
            }
            assert!(Instant::now() < deadline, "{event} {guid}: no replica acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn count(rig: &Rig, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(rig.store.pool()).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_process_every_delivery_once_and_each_workflow_by_one_worker_at_a_time() {
    let started = Instant::now();
    let issues: usize = std::env::var("ORCH_REPLICA_ISSUES")
        .ok()
        .map(|v| v.parse().expect("ORCH_REPLICA_ISSUES is a number"))
        .unwrap_or(200);
    let Some(mut rig) = Rig::new(Backend::Postgres).await else {
        return;
    };
    // The start and end of every job in the logs; reactions polled every 2 s (a few hundred
    // waiting proposals polled every 200 ms would be most of the load; this is about the queue).
    rig.env.insert("RUST_LOG".into(), "warn,orch::worker=debug".into());
    rig.env.insert("ORCH_REACTION_POLL_MS".into(), "2000".into());
    for _ in 1..REPLICAS {
        rig.add_replica();
    }
    for i in 0..REPLICAS {
        rig.start_at(i).await;
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let balancer = Arc::new(Balancer {
        bases: (0..REPLICAS).map(|i| rig.base_at(i)).collect(),
        live: Mutex::new(vec![true; REPLICAS]),
        turn: Default::default(),
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(),
        ledger: ledger.clone(),
    });
    let repo = payloads::RepoSpec::new(REPO, INSTALLATION);
    let mut specs: Vec<IssueSpec> = Vec::with_capacity(issues);
    for i in 0..issues {
        let number = rig.fake.state.open_issue(
            REPO,
            &format!("Crash #{i} on start"),
            "It crashes when the config is empty.",
            "dev-kim",
        );
        rig.fake.state.set_labels(REPO, number, &["orch:triage"]);
        let mut issue = IssueSpec::new(number, &format!("Crash #{i} on start"))
            .body("It crashes when the config is empty.")
            .by("dev-kim");
        issue.labels = vec!["orch:triage".into()];
        ledger.lock().unwrap().issues.insert(number);
        specs.push(issue);
    }
    // Every fourth delivery is sent again, same GUID, to another replica.
    let send_all = |items: Vec<(String, String, serde_json::Value, Option<i64>)>| {
        let balancer = balancer.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            let items = Arc::new(Mutex::new(items.into_iter().enumerate().collect::<Vec<_>>()));
            for _ in 0..8 {
                let (balancer, items) = (balancer.clone(), items.clone());
                tasks.spawn(async move {
                    loop {
                        let Some((i, (event, guid, payload, command))) = items.lock().unwrap().pop() else {
                            return;
                        };
                        let first = balancer.deliver(&event, &guid, &payload, command, None).await;
                        if i % 4 == 0 {
                            balancer.deliver(&event, &guid, &payload, command, Some(first)).await;
                        }
                    }
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
        }
    };

    let labels: Vec<_> = specs
        .iter()
        .map(|issue| {
            let payload = payloads::issue_labeled(&repo, issue, "orch:triage", "mara");
            ("issues".to_string(), format!("label-{}", issue.number), payload, None)
        })
        .collect();
    send_all(labels).await;
    rig.wait_for("every proposal", Duration::from_secs(120), || async {
        (count(&rig, "SELECT COUNT(*) FROM workflows WHERE state = 'WAITING_USER_APPROVAL'").await == issues as i64).then_some(())
    })
    .await;
    let proposals_secs = started.elapsed().as_secs_f64();

    // The approvals; the victim is killed once half of them are sent, at a moment it runs jobs.
    let approvals: Vec<_> = specs
        .iter()
        .map(|issue| {
            let body = "/orch approve";
            let id = rig.fake.state.user_comment(REPO, issue.number, "lee", "User", body);
            let payload = payloads::issue_comment_created(&repo, issue, id, body, "lee", "User");
            ("issue_comment".to_string(), format!("comment-{id}"), payload, Some(id))
        })
        .collect();
    let (first_half, second_half) = approvals.split_at(issues / 2);
    send_all(first_half.to_vec()).await;
    let victim_pid = rig.replicas[VICTIM].child.as_ref().unwrap().id();
    // Killed while it runs a workflow step: its log shows the job started and not ended. The
    // jobs it holds (leased to it) at that moment are read just before the kill.
    let victim_process = *rig.replicas[VICTIM].runs.last().unwrap();
    let victim_log = rig.log_path(victim_process);
    // The workflow jobs the victim's log shows started and not ended.
    let steps_in_log = || -> BTreeSet<i64> {
        let log = std::fs::read_to_string(&victim_log).unwrap();
        executions(victim_process, &log)
            .iter()
            .filter(|e| e.end.is_none() && e.workflow != 0)
            .map(|e| e.job)
            .collect()
    };
    let owned = format!("SELECT id, kind, attempts FROM jobs WHERE status = 'running' AND lease_owner LIKE '{victim_pid}-%'");
    // A step may end between reading the log and the kill, and a job may be committed done with
    // its log line still unwritten. So the victim is frozen (SIGSTOP) first; it is killed only if
    // then its log shows a workflow step under way that the database still has leased to it
    // (one another replica must take over); otherwise it runs on (SIGCONT) and is tried again.
    let signal = |name: &str| {
        let ok = std::process::Command::new("kill")
            .args([name, &victim_pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {name} {victim_pid}");
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let held: Vec<(i64, String, i64)> = loop {
        rig.wait_for("the victim to run a workflow step", Duration::from_secs(30), || async {
            (!steps_in_log().is_empty()).then_some(())
        })
        .await;
        signal("-STOP");
        let steps = steps_in_log();
        let held: Vec<(i64, String, i64)> = sqlx::query(&owned)
            .fetch_all(rig.store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if held.iter().any(|(id, kind, _)| kind == "workflow" && steps.contains(id)) {
            break held;
        }
        signal("-CONT");
        assert!(
            std::time::Instant::now() < deadline,
            "the victim never stopped inside a leased workflow step"
        );
    };
    balancer.live.lock().unwrap()[VICTIM] = false;
    rig.kill_at(VICTIM);
    let killed_at = unix_micros(SystemTime::now());
    send_all(second_half.to_vec()).await;
    rig.wait_for("every workflow DONE", Duration::from_secs(120), || async {
        (count(&rig, "SELECT COUNT(*) FROM workflows WHERE state = 'DONE'").await == issues as i64).then_some(())
    })
    .await;
    rig.wait_for("no job running or due", Duration::from_secs(30), || async {
        let live: i64 = sqlx::query("SELECT COUNT(*) FROM jobs WHERE status = 'running' OR (status = 'queued' AND run_at <= $1)")
            .bind(orch::store::now_ms())
            .fetch_one(rig.store.pool())
            .await
            .unwrap()
            .get(0);
        (live == 0).then_some(())
    })
    .await;
    let done_secs = started.elapsed().as_secs_f64();
    // Stopped for good with SIGKILL too: nothing is running, so nothing is cut.
    let mut stopped_at = BTreeMap::new();
    stopped_at.insert(victim_process, killed_at);
    for i in 0..REPLICAS {
        if rig.running(i) {
            rig.kill_at(i);
            stopped_at.insert(*rig.replicas[i].runs.last().unwrap(), unix_micros(SystemTime::now()));
        }
    }

    // The invariants of the crash suite.
    let ledger = ledger.lock().unwrap().clone();
    {
        let mut l = ledger.clone();
        l.triage = l.issues.clone();
        let snapshot = Snapshot::take(&rig, &l).await;
        let problems = invariants::check(&snapshot, &l);
        assert!(
            problems.is_empty(),
            "{} problem(s):{}",
            problems.len(),
            invariants::report(&problems)
        );
        let duplicates = l.sent.values().filter(|s| s.attempts > 1).count();
        assert!(duplicates >= issues / 2, "{duplicates} GUIDs sent twice");
        assert_eq!(snapshot.deliveries.len(), 2 * issues, "one stored delivery per GUID");
    }

    // The victim's jobs, finished by the others.
    let mut finished_at: BTreeMap<i64, i64> = BTreeMap::new();
    let mut taken_over = Vec::new();
    let mut final_jobs: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    for r in sqlx::query("SELECT id, status, finished_at, attempts FROM jobs ORDER BY id")
        .fetch_all(rig.store.pool())
        .await
        .unwrap()
    {
        let (id, status, at, attempts): (i64, String, Option<i64>, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        if let Some((_, kind, then)) = held.iter().find(|(h, _, _)| *h == id) {
            assert_eq!(status, "done", "{kind} job {id} of the killed replica");
            if attempts > *then {
                taken_over.push(id);
            }
        }
        if let Some(at) = at {
            finished_at.insert(id, at);
        }
        final_jobs.insert(id, (status, attempts));
    }

    // One worker at a time per workflow, from the three processes' logs.
    let mut all = Vec::new();
    let mut per_process = Vec::new();
    for process in 1..=rig.starts {
        let log = std::fs::read_to_string(rig.log_path(process)).unwrap();
        let list = executions(process, &log);
        per_process.push((process, list.len(), list.iter().filter(|e| e.end.is_none()).count()));
        all.extend(list);
    }
    let cut: Vec<&Execution> = all.iter().filter(|e| e.end.is_none()).collect();
    assert!(
        cut.iter().all(|e| e.process == victim_process),
        "only the killed replica leaves jobs unfinished: {cut:?}"
    );
    let cut_jobs: BTreeSet<i64> = cut.iter().map(|e| e.job).collect();
    assert!(
        cut.iter().any(|e| e.workflow != 0),
        "the kill cut no workflow step in the victim's log: {cut:?}"
    );
    // A job cut in the log either was run to its end by another replica, or the victim itself
    // committed it just before the kill (then no later attempt exists: the log line is what
    // the kill cut).
    for e in &cut {
        let others = all
            .iter()
            .filter(|o| o.job == e.job && o.process != victim_process && o.end.is_some())
            .count();
        let (status, attempts) = &final_jobs[&e.job];
        assert!(
            status == "done" && (others >= 1 || *attempts == e.attempt),
            "job {} (attempt {}), cut by the kill, is {status} after {attempts} attempts and {others} runs elsewhere",
            e.job,
            e.attempt
        );
    }
    // The other two finished the victim's work: a job cut by the kill, run to its end elsewhere
    // (once the dead replica's lease ran out).
    let finished_elsewhere: Vec<i64> = cut
        .iter()
        .filter(|e| all.iter().any(|o| o.job == e.job && o.process != victim_process && o.end.is_some()))
        .map(|e| e.job)
        .collect();
    assert!(
        !finished_elsewhere.is_empty(),
        "no job cut by the kill ({cut_jobs:?}) was finished by another replica"
    );
    let workflow_runs = all.iter().filter(|e| e.workflow != 0).count();
    assert!(
        workflow_runs >= issues * 2,
        "only {workflow_runs} workflow job executions in the logs; the first process's log begins {:?}",
        std::fs::read_to_string(rig.log_path(1))
            .unwrap()
            .lines()
            .take(5)
            .collect::<Vec<_>>()
    );
    let found = overlaps(&all, &finished_at, &stopped_at);
    assert!(
        found.is_empty(),
        "{} overlapping executions of one workflow, e.g. {:#?}",
        found.len(),
        &found[..found.len().min(5)]
    );
    let by_process: BTreeMap<usize, usize> = all.iter().filter(|e| e.workflow != 0).fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.process).or_default() += 1;
        m
    });
    assert_eq!(by_process.len(), REPLICAS, "every replica ran workflow jobs: {by_process:?}");
    eprintln!(
        "three replicas: {issues} workflows, {} deliveries ({} GUIDs sent twice); proposals after {proposals_secs:.1}s, \
         all DONE after {done_secs:.1}s; replica {VICTIM} killed holding {} jobs ({} of them workflow jobs; started and cut in its log: {cut_jobs:?}, \
         of them {finished_elsewhere:?} run to their end by the others), all done, {} claimed again after its lease ran out; {workflow_runs} workflow job executions, none overlapping; executions per process \
         (process, jobs, cut) {per_process:?}; {:.1}s in all",
        2 * issues,
        ledger.sent.values().filter(|s| s.attempts > 1).count(),
        held.len(),
        held.iter().filter(|(_, kind, _)| kind == "workflow").count(),
        taken_over.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn timestamps_and_overlaps_are_read_right() {
    assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Some(1_500_000));
    assert_eq!(parse_timestamp("2026-11-22T05:01:02.000123Z"), Some(1_795_323_662_000_123));
    let log = "\u{1b}[2m2026-11-22T05:01:02.000001Z\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m \u{1b}[1mjob\u{1b}[0m\u{1b}[1m{\u{1b}[0m\u{1b}[3mid\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 \u{1b}[3mkind\u{1b}[0m\u{1b}[2m=\u{1b}[0mworkflow \u{1b}[3mworkflow\u{1b}[0m\u{1b}[2m=\u{1b}[0m3\u{1b}[1m}\u{1b}[0m\u{1b}[2m:\u{1b}[0m job started \u{1b}[3mowner\u{1b}[0m\u{1b}[2m=\u{1b}[0m1-ab\n\
               2026-11-22T05:01:02.000900Z DEBUG job{id=7 kind=workflow delivery= workflow=3 attempt=1}: job ended\n\
               2026-11-22T05:01:02.000500Z DEBUG job{id=8 kind=workflow delivery= workflow=3 attempt=1}: job started owner=1-ab\n";
    let list = executions(1, log);
    assert_eq!((list[0].job, list[0].workflow, list[0].attempt), (7, 3, 0), "{list:?}");
    assert_eq!(list.len(), 2, "{list:?}");
    let finished = BTreeMap::new();
    let killed: BTreeMap<usize, i64> = [(1, 1_795_323_662_001_000)].into_iter().collect();
    // Job 8 starts while job 7 still runs: found.
    assert_eq!(overlaps(&list, &finished, &killed).len(), 1);
    // Job 7 completed (finished_at) before job 8 started: no overlap.
    let later: Vec<Execution> = list
        .iter()
        .cloned()
        .map(|mut e| {
            if e.job == 8 {
                e.start = 1_795_323_662_002_000;
            }
            e
        })
        .collect();
    assert!(overlaps(&later, &finished, &killed).is_empty());
}
