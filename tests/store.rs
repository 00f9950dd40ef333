//! The store on both backends: migrations, delivery inserts, transactions, the job queue's
//! leases and retries, group-commit ingest, installations and the circuit-breaker row.

mod common;

use axum::body::Bytes;
use common::{Backend, TestDb};
use orch::store::archive::PayloadArchive;
use orch::store::deliveries::{self, DeliveryRecord, NewDelivery, PayloadLocation};
use orch::store::ingest::{Ingest, IngestOutcome};
use orch::store::{health, installations, jobs, Store, SyncMode};
use orch::webhook::event::RepoName;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// A fixed clock: every time the queue sees is passed explicitly.
const T0: i64 = 1_700_000_000_000;

fn checksum(body: &[u8]) -> String {
    orch::store::archive::checksum(body)
}

/// A body that differs per GUID and holds bytes that are not UTF-8.
fn body_for(guid: &str) -> Vec<u8> {
    let mut b = format!("{{\"guid\":\"{guid}\"}}").into_bytes();
    b.extend_from_slice(&[0, 0xff, 0xfe, b'\n', 0x80]);
    b.extend(guid.bytes().rev());
    b
}

/// A delivery whose optional fields vary with `i`, so that both NULL and values round-trip.
fn delivery(guid: &str, i: usize, status: &'static str, body: &[u8]) -> NewDelivery {
    NewDelivery {
        guid: guid.to_string(),
        event: if i % 2 == 0 { "issue_comment".into() } else { "issues".into() },
        action: (i % 3 != 0).then(|| format!("action-{i}")),
        installation_id: (i % 4 != 0).then_some(1_000_000_000_000 + i as i64),
        repository: (i % 5 != 0).then(|| format!("acme/repo-{i}")),
        received_at: T0 + i as i64,
        status,
        event_data: serde_json::json!({"n": i, "text": "ünïcødé \"quoted\""}).to_string(),
        payload_crc32: checksum(body),
    }
}

fn record(row: &NewDelivery, payload: &PayloadLocation) -> DeliveryRecord {
    DeliveryRecord {
        guid: row.guid.clone(),
        event: row.event.clone(),
        action: row.action.clone(),
        installation_id: row.installation_id,
        repository: row.repository.clone(),
        received_at: row.received_at,
        status: row.status.to_string(),
        event_data: row.event_data.clone(),
        payload_ref: match payload {
            PayloadLocation::Inline(_) => None,
            PayloadLocation::Archived(r) => Some(r.clone()),
        },
        payload_crc32: row.payload_crc32.clone(),
        processed_at: None,
        process_count: 0,
        error: None,
    }
}

/// Rows for `guids`: every third archived, the rest inline; every fourth ignored.
fn batch(guids: &[String], tag: &str) -> (Vec<NewDelivery>, Vec<PayloadLocation>) {
    let mut rows = Vec::new();
    let mut payloads = Vec::new();
    for (i, guid) in guids.iter().enumerate() {
        let body = [body_for(guid), tag.as_bytes().to_vec()].concat();
        let status = if i % 4 == 3 { "ignored" } else { "queued" };
        rows.push(delivery(guid, i, status, &body));
        payloads.push(if i % 3 == 2 {
            PayloadLocation::Archived(format!("1:{}:{}", i * 100, body.len()))
        } else {
            PayloadLocation::Inline(Bytes::from(body))
        });
    }
    (rows, payloads)
}

fn guids(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:04}")).collect()
}

/// Inserts deliveries and queues a job for each, in one transaction.
async fn seed_jobs(store: &Store, guids: &[String], now: i64) {
    let (rows, payloads) = batch(guids, "");
    let mut tx = store.begin().await.unwrap();
    let fresh = deliveries::insert_new(&mut tx, &rows, &payloads).await.unwrap();
    assert_eq!(fresh.len(), guids.len());
    let refs: Vec<&str> = guids.iter().map(String::as_str).collect();
    jobs::enqueue_for_deliveries(&mut tx, &refs, now).await.unwrap();
    tx.commit().await.unwrap();
}

async fn migrations_are_idempotent(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let (rows, payloads) = batch(&guids("mig", 0..3), "");
    let mut conn = store.pool().acquire().await.unwrap();
    deliveries::insert_new(&mut conn, &rows, &payloads).await.unwrap();
    drop(conn);
    installations::upsert_installation(store.pool(), 5, Some("acme"), false, false, T0)
        .await
        .unwrap();

    // Again on the same pool, and from a second connection as another replica would.
    store.migrate().await.unwrap();
    let other = Store::connect(&db.url, orch::store::SyncMode::Full).await.unwrap();
    other.migrate().await.unwrap();
    other.migrate().await.unwrap();

    for s in [&store, &other] {
        let stored = deliveries::list(s.pool(), 100).await.unwrap();
        let expected: Vec<DeliveryRecord> = rows.iter().zip(&payloads).map(|(r, p)| record(r, p)).collect();
        assert_eq!(stored, expected);
        assert_eq!(
            installations::get_installation(s.pool(), 5).await.unwrap().and_then(|i| i.account),
            Some("acme".to_string())
        );
        // The seed row was not inserted twice, and each migration is recorded once.
        let breakers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM circuit_breaker")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(breakers, 1);
    }
    let dir = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let files = std::fs::read_dir(format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count() as i64;
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(applied, files);
    other.close().await;
    store.close().await;
}

async fn insert_new_reports_only_fresh_guids(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let mut conn = store.pool().acquire().await.unwrap();

    // 150 rows: chunks of 64, 64, 16, 4, 1, 1.
    let first = guids("ins", 0..150);
    let (rows1, payloads1) = batch(&first, "first");
    let fresh = deliveries::insert_new(&mut conn, &rows1, &payloads1).await.unwrap();
    assert_eq!(fresh, first.iter().cloned().collect::<HashSet<_>>());

    // 50 already stored (with different contents), 100 new.
    let second = guids("ins", 100..250);
    let (rows2, payloads2) = batch(&second, "second");
    let fresh = deliveries::insert_new(&mut conn, &rows2, &payloads2).await.unwrap();
    assert_eq!(fresh, guids("ins", 150..250).into_iter().collect::<HashSet<_>>());

    // Everything again: nothing is new.
    let fresh = deliveries::insert_new(&mut conn, &rows1, &payloads1).await.unwrap();
    assert!(fresh.is_empty(), "{fresh:?}");
    let fresh = deliveries::insert_new(&mut conn, &[], &[]).await.unwrap();
    assert!(fresh.is_empty());

    // The first insert of a GUID is what is kept.
    let mut expected: BTreeMap<String, (NewDelivery, PayloadLocation)> = BTreeMap::new();
    for (r, p) in rows2.iter().zip(&payloads2).chain(rows1.iter().zip(&payloads1)) {
        expected.insert(r.guid.clone(), (r.clone(), p.clone()));
    }
    assert_eq!(expected.len(), 250);
    let (mut inline, mut archived) = (0, 0);
    for (guid, (row, payload)) in &expected {
        let got = deliveries::get(&mut *conn, guid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{guid} not stored"));
        assert_eq!(got, record(row, payload), "{guid}");
        let body = deliveries::inline_payload(&mut *conn, guid).await.unwrap();
        match payload {
            PayloadLocation::Inline(b) => {
                inline += 1;
                assert_eq!(body.as_deref(), Some(b.as_ref()), "{guid}");
                assert_eq!(checksum(b), got.payload_crc32);
            }
            PayloadLocation::Archived(_) => {
                archived += 1;
                assert_eq!(body, None, "{guid}");
            }
        }
    }
    assert!(inline > 100 && archived > 50, "{inline} inline, {archived} archived");
    assert_eq!(deliveries::get(&mut *conn, "ins-9999").await.unwrap(), None);
    assert_eq!(deliveries::inline_payload(&mut *conn, "ins-9999").await.unwrap(), None);

    let mut counts: HashMap<&str, i64> = HashMap::new();
    for (row, _) in expected.values() {
        *counts.entry(row.status).or_default() += 1;
    }
    assert_eq!(
        deliveries::count_by_status(&mut *conn).await.unwrap(),
        vec![("ignored".to_string(), counts["ignored"]), ("queued".to_string(), counts["queued"])]
    );
    assert_eq!(deliveries::list(&mut *conn, 1000).await.unwrap().len(), 250);
    drop(conn);
    store.close().await;
}

async fn transaction_rollback_leaves_nothing(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let all = guids("rb", 0..70);
    let (rows, payloads) = batch(&all, "");

    let mut tx = store.begin().await.unwrap();
    let fresh = deliveries::insert_new(&mut tx, &rows, &payloads).await.unwrap();
    assert_eq!(fresh.len(), 70);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    jobs::enqueue_for_deliveries(&mut tx, &refs, T0).await.unwrap();
    installations::upsert_installation(&mut *tx, 9, Some("gone"), false, false, T0)
        .await
        .unwrap();
    // Visible inside the transaction...
    assert!(deliveries::get(&mut *tx, "rb-0000").await.unwrap().is_some());
    assert_eq!(jobs::depth(&mut *tx).await.unwrap(), 70);
    tx.rollback().await.unwrap();

    // ...and gone after the rollback.
    assert!(deliveries::list(store.pool(), 1000).await.unwrap().is_empty());
    assert!(deliveries::count_by_status(store.pool()).await.unwrap().is_empty());
    assert_eq!(jobs::depth(store.pool()).await.unwrap(), 0);
    assert_eq!(installations::get_installation(store.pool(), 9).await.unwrap(), None);

    // A transaction dropped without commit rolls back as well.
    {
        let mut tx = store.begin().await.unwrap();
        deliveries::insert_new(&mut tx, &rows[..1], &payloads[..1]).await.unwrap();
    }
    assert!(deliveries::list(store.pool(), 1000).await.unwrap().is_empty());

    // The same rows are still new afterwards: nothing half-stored blocks them.
    let mut tx = store.begin().await.unwrap();
    let fresh = deliveries::insert_new(&mut tx, &rows, &payloads).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(fresh.len(), 70);
    assert_eq!(deliveries::list(store.pool(), 1000).await.unwrap().len(), 70);
    store.close().await;
}

/// A relaxed transaction is a transaction like any other (its writes commit together or not at
/// all); on Postgres its commit alone does not wait for the log flush, and the setting ends with
/// it: the next transaction on the same pooled connection is durable again.
async fn relaxed_transactions_commit_and_roll_back_like_durable_ones(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let all = guids("rx", 0..3);
    let (rows, payloads) = batch(&all, "");

    let mut tx = store.begin_relaxed().await.unwrap();
    deliveries::insert_new(&mut tx, &rows[..1], &payloads[..1]).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(deliveries::list(store.pool(), 10).await.unwrap().is_empty());

    let mut tx = store.begin_relaxed().await.unwrap();
    if backend == Backend::Postgres {
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
        assert_eq!(setting, "off", "a relaxed transaction on Postgres");
    }
    deliveries::insert_new(&mut tx, &rows, &payloads).await.unwrap();
    tx.commit().await.unwrap();
    store.sync().await.unwrap();
    assert_eq!(deliveries::list(store.pool(), 10).await.unwrap().len(), 3);

    if backend == Backend::Postgres {
        // Every connection of the pool, taken at once: none kept the relaxed setting.
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut tx = store.begin().await.unwrap();
            let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
            assert_eq!(setting, "on", "a durable transaction after a relaxed one");
            held.push(tx);
        }
    }
    store.close().await;
}

async fn jobs_are_leased_to_one_worker(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let b = store.backend();
    let pool = store.pool();
    let all = guids("lease", 0..3);
    seed_jobs(&store, &all, T0).await;
    assert_eq!(jobs::depth(pool).await.unwrap(), 3);
    // A job needs its delivery: the foreign key holds on SQLite too (foreign_keys=ON).
    let mut conn = pool.acquire().await.unwrap();
    assert!(jobs::enqueue_for_deliveries(&mut conn, &["no-such-delivery"], T0).await.is_err());
    drop(conn);
    assert_eq!(jobs::depth(pool).await.unwrap(), 3);

    // Not due before run_at.
    assert!(jobs::claim(pool, b, "A", 1000, 10, T0 - 1).await.unwrap().is_empty());

    let a = jobs::claim(pool, b, "A", 1000, 10, T0).await.unwrap();
    assert_eq!(a.len(), 3);
    let mut claimed_guids: Vec<String> = a.iter().map(|j| j.delivery_guid.clone().unwrap()).collect();
    claimed_guids.sort();
    assert_eq!(claimed_guids, all);
    assert!(a.iter().all(|j| j.kind == jobs::KIND_DELIVERY && j.attempts == 1), "{a:?}");
    assert!(a.windows(2).all(|w| w[0].id < w[1].id));
    for g in &all {
        assert_eq!(jobs::for_delivery(pool, g).await.unwrap(), vec![("running".to_string(), 1)]);
    }
    // Running jobs still count as depth.
    assert_eq!(jobs::depth(pool).await.unwrap(), 3);

    // B gets nothing while A's lease (until T0 + 1000) holds, including its last millisecond.
    for now in [T0, T0 + 500, T0 + 1000] {
        assert!(jobs::claim(pool, b, "B", 1000, 10, now).await.unwrap().is_empty(), "at {now}");
    }
    // A heartbeat by someone else neither succeeds nor shortens or moves the lease.
    assert!(!jobs::heartbeat(pool, a[0].id, "B", T0).await.unwrap());
    // A extends its lease on the first job to T0 + 3000.
    assert!(jobs::heartbeat(pool, a[0].id, "A", T0 + 3000).await.unwrap());

    // After T0 + 1000, B takes over the two jobs whose lease ran out, not the extended one.
    let b1 = jobs::claim(pool, b, "B", 60_000, 10, T0 + 1001).await.unwrap();
    assert_eq!(b1.iter().map(|j| j.id).collect::<Vec<_>>(), vec![a[1].id, a[2].id]);
    assert!(b1.iter().all(|j| j.attempts == 2), "{b1:?}");
    // After T0 + 3000, B takes the first one as well.
    assert!(jobs::claim(pool, b, "C", 1000, 10, T0 + 2999).await.unwrap().is_empty());
    let b2 = jobs::claim(pool, b, "B", 1000, 10, T0 + 3001).await.unwrap();
    assert_eq!(b2.len(), 1);
    assert_eq!((b2[0].id, b2[0].attempts), (a[0].id, 2));

    for job in &a {
        // A lost every lease: it can neither extend nor complete.
        assert!(!jobs::heartbeat(pool, job.id, "A", T0 + 9000).await.unwrap());
        assert!(!jobs::complete(pool, job.id, "A", T0 + 3100).await.unwrap());
        assert!(jobs::heartbeat(pool, job.id, "B", T0 + 9000).await.unwrap());
        assert!(jobs::complete(pool, job.id, "B", T0 + 3100).await.unwrap());
        // Done once: neither a second completion nor a heartbeat applies.
        assert!(!jobs::complete(pool, job.id, "B", T0 + 3200).await.unwrap());
        assert!(!jobs::heartbeat(pool, job.id, "B", T0 + 9999).await.unwrap());
    }
    for g in &all {
        assert_eq!(jobs::for_delivery(pool, g).await.unwrap(), vec![("done".to_string(), 2)]);
    }
    assert_eq!(jobs::depth(pool).await.unwrap(), 0);
    // A finished job is never claimed again, however late.
    assert!(jobs::claim(pool, b, "D", 1000, 10, T0 + 10_000_000).await.unwrap().is_empty());
    store.close().await;
}

async fn concurrent_claims_never_share_a_job(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let all = guids("cc", 0..200);
    seed_jobs(&store, &all, T0).await;

    let workers = 4;
    let start = Arc::new(tokio::sync::Barrier::new(workers));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (store, start) = (store.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                let owner = format!("worker-{w}");
                let mut claimed = Vec::new();
                start.wait().await;
                loop {
                    // One fixed time and an hour-long lease: no lease can expire during the test,
                    // so a job seen twice was handed out twice. No `write_guard` on purpose: the
                    // database alone must keep claims apart, as between two processes.
                    let batch = jobs::claim(store.pool(), store.backend(), &owner, 3_600_000, 5, T0).await.unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    assert!(batch.len() <= 5);
                    for job in batch {
                        assert_eq!(job.attempts, 1, "{job:?} claimed by {owner}");
                        assert!(
                            jobs::complete(store.pool(), job.id, &owner, T0).await.unwrap(),
                            "{job:?} by {owner}"
                        );
                        claimed.push(job);
                    }
                    tokio::task::yield_now().await;
                }
                claimed
            })
        })
        .collect();

    let mut times_claimed: HashMap<i64, usize> = HashMap::new();
    let mut guids_seen: HashSet<String> = HashSet::new();
    for t in tasks {
        for job in tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("workers finish")
            .unwrap()
        {
            *times_claimed.entry(job.id).or_default() += 1;
            guids_seen.insert(job.delivery_guid.unwrap());
        }
    }
    let shared: Vec<_> = times_claimed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(shared.is_empty(), "jobs claimed more than once: {shared:?}");
    assert_eq!(times_claimed.len(), 200);
    assert_eq!(guids_seen, all.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(jobs::depth(store.pool()).await.unwrap(), 0);
    for g in &all {
        assert_eq!(
            jobs::for_delivery(store.pool(), g).await.unwrap(),
            vec![("done".to_string(), 1)],
            "{g}"
        );
    }
    store.close().await;
}

async fn failed_jobs_retry_then_fail(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let (b, pool) = (store.backend(), store.pool());
    let guid = "retry-0000";
    seed_jobs(&store, &[guid.to_string()], T0).await;

    let first = jobs::claim(pool, b, "A", 1000, 10, T0).await.unwrap();
    assert_eq!(first.len(), 1);
    let id = first[0].id;
    // Only the lease holder may release it.
    assert!(!jobs::release_failed(pool, id, "B", "not mine", Some(T0 + 10), T0 + 1)
        .await
        .unwrap());
    assert_eq!(jobs::for_delivery(pool, guid).await.unwrap(), vec![("running".to_string(), 1)]);

    // Retry at T0 + 5000: queued again, but not due before then.
    assert!(jobs::release_failed(pool, id, "A", "transient", Some(T0 + 5000), T0 + 10)
        .await
        .unwrap());
    assert_eq!(jobs::for_delivery(pool, guid).await.unwrap(), vec![("queued".to_string(), 1)]);
    assert_eq!(jobs::depth(pool).await.unwrap(), 1);
    // Released: A no longer holds it.
    assert!(!jobs::complete(pool, id, "A", T0 + 20).await.unwrap());
    assert!(!jobs::heartbeat(pool, id, "A", T0 + 20).await.unwrap());
    for now in [T0 + 10, T0 + 1001, T0 + 4999] {
        assert!(
            jobs::claim(pool, b, "B", 1000, 10, now).await.unwrap().is_empty(),
            "claimed at {now}"
        );
    }
    let second = jobs::claim(pool, b, "B", 1000, 10, T0 + 5000).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].id, second[0].attempts), (id, 2));

    // No retry: failed for good, never claimed again.
    assert!(jobs::release_failed(pool, id, "B", "permanent", None, T0 + 5100).await.unwrap());
    assert_eq!(jobs::for_delivery(pool, guid).await.unwrap(), vec![("failed".to_string(), 2)]);
    assert_eq!(jobs::depth(pool).await.unwrap(), 0);
    for now in [T0 + 5100, T0 + 6101, T0 + 100_000_000] {
        assert!(
            jobs::claim(pool, b, "C", 1000, 10, now).await.unwrap().is_empty(),
            "claimed at {now}"
        );
    }
    assert!(!jobs::complete(pool, id, "B", T0 + 5200).await.unwrap());
    assert!(!jobs::release_failed(pool, id, "B", "again", Some(T0), T0 + 5200).await.unwrap());
    assert_eq!(jobs::for_delivery(pool, guid).await.unwrap(), vec![("failed".to_string(), 2)]);
    store.close().await;
}

/// 300 concurrent submissions of 200 distinct GUIDs (100 of them twice) through the group-commit
/// writer, with bodies in the archive or inline.
async fn group_commit_run(backend: Backend, archived: bool) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let archive = archived.then(|| Arc::new(PayloadArchive::open(&db.dir.path().join("payloads"), true).unwrap()));
    let signals = Arc::new(orch::store::ingest::IngestSignals::default());
    let notified = signals.jobs_ready.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let (ingest, writer) = Ingest::start(store.clone(), archive.clone(), Arc::clone(&signals)).await.unwrap();

    let distinct = guids("gc", 0..200);
    let status_of = |i: usize| if i % 5 == 4 { "ignored" } else { "queued" };
    let mut submissions: Vec<(usize, String)> = distinct.iter().cloned().enumerate().collect();
    submissions.extend(distinct.iter().cloned().enumerate().filter(|(i, _)| i % 2 == 0));
    assert_eq!(submissions.len(), 300);
    // Shuffle (7919 is prime to 300) so that the two copies of a GUID go through different tasks.
    let mut shuffled: Vec<(usize, (usize, String))> = submissions.into_iter().enumerate().collect();
    shuffled.sort_by_key(|(p, _)| (p * 7919) % 300);
    let submissions: Vec<(usize, String)> = shuffled.into_iter().map(|(_, s)| s).collect();

    let tasks: Vec<_> = submissions
        .chunks(10)
        .map(|chunk| {
            let (ingest, chunk) = (ingest.clone(), chunk.to_vec());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for (i, guid) in chunk {
                    let body = body_for(&guid);
                    let row = delivery(&guid, i, status_of(i), &body);
                    outcomes.push((guid, ingest.submit(row, Bytes::from(body)).await.unwrap()));
                }
                outcomes
            })
        })
        .collect();
    assert_eq!(tasks.len(), 30);
    let mut outcomes: HashMap<String, Vec<IngestOutcome>> = HashMap::new();
    for t in tasks {
        for (guid, outcome) in tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("submissions finish")
            .unwrap()
        {
            outcomes.entry(guid).or_default().push(outcome);
        }
    }
    assert_eq!(outcomes.len(), 200);
    for (i, guid) in distinct.iter().enumerate() {
        let got = &outcomes[guid];
        let stored = got.iter().filter(|o| **o == IngestOutcome::Stored).count();
        let duplicate = got.iter().filter(|o| **o == IngestOutcome::Duplicate).count();
        let copies = if i % 2 == 0 { 2 } else { 1 };
        assert_eq!((stored, duplicate), (1, copies - 1), "{guid}: {got:?}");
    }
    // A commit that queued work woke the workers.
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("jobs_ready notified");

    // A GUID submitted once more, after its commit, is a duplicate too.
    let late = delivery(&distinct[1], 1, status_of(1), b"other");
    assert_eq!(
        ingest.submit(late, Bytes::from_static(b"other")).await.unwrap(),
        IngestOutcome::Duplicate
    );

    // The writer ends once every handle is gone.
    drop(ingest);
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the writer stops")
        .unwrap();

    let stored = deliveries::list(store.pool(), 10_000).await.unwrap();
    assert_eq!(stored.len(), 200);
    let mut queued = 0;
    for (i, guid) in distinct.iter().enumerate() {
        let body = body_for(guid);
        let d = deliveries::get(store.pool(), guid).await.unwrap().unwrap();
        let row = delivery(guid, i, status_of(i), &body);
        let payload = match &archive {
            Some(a) => {
                let reference = d.payload_ref.clone().unwrap_or_else(|| panic!("{guid} has no payload_ref"));
                assert_eq!(a.read(&reference, &d.payload_crc32).unwrap(), body, "{guid}");
                assert_eq!(deliveries::inline_payload(store.pool(), guid).await.unwrap(), None, "{guid}");
                PayloadLocation::Archived(reference)
            }
            None => {
                assert_eq!(
                    deliveries::inline_payload(store.pool(), guid).await.unwrap(),
                    Some(body.clone()),
                    "{guid}"
                );
                PayloadLocation::Inline(Bytes::from(body))
            }
        };
        assert_eq!(d, record(&row, &payload), "{guid}");
        let job_rows = jobs::for_delivery(store.pool(), guid).await.unwrap();
        if status_of(i) == "queued" {
            queued += 1;
            assert_eq!(job_rows, vec![("queued".to_string(), 0)], "{guid}");
        } else {
            assert!(job_rows.is_empty(), "{guid}: {job_rows:?}");
        }
    }
    assert_eq!(queued, 160);
    assert_eq!(jobs::depth(store.pool()).await.unwrap(), 160);
    if archived {
        // Every stored delivery points at its own bytes.
        let refs: HashSet<_> = stored.iter().map(|d| d.payload_ref.clone().unwrap()).collect();
        assert_eq!(refs.len(), 200);
    }
    store.close().await;
}

async fn group_commit_stores_each_guid_once(backend: Backend) {
    group_commit_run(backend, false).await;
    group_commit_run(backend, true).await;
}

async fn installations_are_upserted(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let pool = store.pool();
    let repo = |id: i64, name: &str| RepoName {
        id,
        full_name: name.to_string(),
    };
    let installation = |id, account: Option<&str>, suspended, deleted| installations::InstallationRow {
        id,
        account: account.map(str::to_string),
        suspended,
        deleted,
    };

    assert_eq!(installations::get_installation(pool, 1).await.unwrap(), None);
    installations::upsert_installation(pool, 1, Some("acme"), false, false, T0)
        .await
        .unwrap();
    assert_eq!(
        installations::get_installation(pool, 1).await.unwrap(),
        Some(installation(1, Some("acme"), false, false))
    );
    // No account in the event: the known one is kept.
    installations::upsert_installation(pool, 1, None, true, false, T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        installations::get_installation(pool, 1).await.unwrap(),
        Some(installation(1, Some("acme"), true, false))
    );
    installations::upsert_installation(pool, 1, Some("acme-renamed"), false, true, T0 + 2)
        .await
        .unwrap();
    assert_eq!(
        installations::get_installation(pool, 1).await.unwrap(),
        Some(installation(1, Some("acme-renamed"), false, true))
    );
    installations::upsert_installation(pool, 2, None, false, false, T0).await.unwrap();
    assert_eq!(
        installations::get_installation(pool, 2).await.unwrap(),
        Some(installation(2, None, false, false))
    );

    assert!(installations::active_repositories(pool, 1).await.unwrap().is_empty());
    installations::set_repository(pool, 1, &repo(10, "acme/zeta"), false, T0)
        .await
        .unwrap();
    installations::set_repository(pool, 1, &repo(11, "acme/alpha"), false, T0)
        .await
        .unwrap();
    installations::set_repository(pool, 2, &repo(20, "other/x"), false, T0)
        .await
        .unwrap();
    assert_eq!(
        installations::active_repositories(pool, 1).await.unwrap(),
        vec!["acme/alpha", "acme/zeta"]
    );
    assert_eq!(installations::active_repositories(pool, 2).await.unwrap(), vec!["other/x"]);

    // Removed, then granted again, renamed, and moved to another installation.
    installations::set_repository(pool, 1, &repo(10, "acme/zeta"), true, T0 + 1)
        .await
        .unwrap();
    assert_eq!(installations::active_repositories(pool, 1).await.unwrap(), vec!["acme/alpha"]);
    installations::set_repository(pool, 1, &repo(10, "acme/zeta"), false, T0 + 2)
        .await
        .unwrap();
    installations::set_repository(pool, 1, &repo(11, "acme/beta"), false, T0 + 2)
        .await
        .unwrap();
    assert_eq!(
        installations::active_repositories(pool, 1).await.unwrap(),
        vec!["acme/beta", "acme/zeta"]
    );
    installations::set_repository(pool, 2, &repo(10, "other/zeta"), false, T0 + 3)
        .await
        .unwrap();
    assert_eq!(installations::active_repositories(pool, 1).await.unwrap(), vec!["acme/beta"]);
    assert_eq!(
        installations::active_repositories(pool, 2).await.unwrap(),
        vec!["other/x", "other/zeta"]
    );

    // Removing all of one installation's repositories leaves the other's alone.
    installations::remove_all_repositories(pool, 2, T0 + 4).await.unwrap();
    assert!(installations::active_repositories(pool, 2).await.unwrap().is_empty());
    assert_eq!(installations::active_repositories(pool, 1).await.unwrap(), vec!["acme/beta"]);
    installations::remove_all_repositories(pool, 1, T0 + 4).await.unwrap();
    assert!(installations::active_repositories(pool, 1).await.unwrap().is_empty());
    // A repository granted again after that is active again.
    installations::set_repository(pool, 2, &repo(20, "other/x"), false, T0 + 5)
        .await
        .unwrap();
    assert_eq!(installations::active_repositories(pool, 2).await.unwrap(), vec!["other/x"]);
    assert!(installations::active_repositories(pool, 3).await.unwrap().is_empty());
    store.close().await;
}

async fn breaker_row_exists(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let row = health::breaker(store.pool()).await.unwrap();
    assert_eq!(
        row,
        health::BreakerRow {
            is_open: false,
            total_tasks: 0,
            failed_tasks: 0,
            total_cost_usd: 0.0,
        }
    );
    store.close().await;
}

/// A store that cannot commit (another connection holds the write lock) is answered within the
/// deadline instead of making GitHub time out; the delivery still commits once the store frees
/// up, and its redelivery is then a duplicate.
async fn a_stuck_store_answers_within_the_deadline(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let signals = Arc::new(orch::store::ingest::IngestSignals::default());
    let (ingest, writer) = Ingest::start(store.clone(), None, signals).await.unwrap();
    let ingest = ingest.with_deadline(Duration::from_millis(500));

    // Hold the database's write lock from outside the writer.
    enum Holder {
        Sqlite(rusqlite::Connection),
        Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    }
    let holder = match backend {
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(db.dir.path().join("orch.db")).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            Holder::Sqlite(conn)
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .unwrap();
            Holder::Postgres(tx)
        }
    };
    let body = body_for("stuck-1");
    let started = std::time::Instant::now();
    let err = ingest
        .submit(delivery("stuck-1", 1, "queued", &body), Bytes::from(body.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not committed within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());

    match holder {
        Holder::Sqlite(conn) => conn.execute_batch("COMMIT").unwrap(),
        Holder::Postgres(tx) => tx.commit().await.unwrap(),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while deliveries::get(store.pool(), "stuck-1").await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the held-up delivery never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = ingest
        .submit(delivery("stuck-1", 1, "queued", &body), Bytes::from(body))
        .await
        .unwrap();
    assert_eq!(again, IngestOutcome::Duplicate);
    drop(ingest);
    writer.await.unwrap();
}

/// Two stores on one database (two orch processes, or `orch circuit reset` beside `orch serve`):
/// a write transaction that reads first and writes after the other store committed must wait for
/// the lock, never fail. On SQLite a deferred transaction failed here with SQLITE_BUSY_SNAPSHOT
/// ("database is locked"), which the busy timeout does not cover.
async fn write_transactions_of_two_stores_wait_for_each_other(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let first = db.store().await;
    let second = Store::connect(&db.url, SyncMode::Normal).await.unwrap();
    for round in 0..20 {
        let mut tx = first.begin().await.unwrap();
        let before: i64 = sqlx::query_scalar("SELECT total_tasks FROM circuit_breaker WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        // The other store commits a write while this transaction is open (or waits for it).
        let other = second.clone();
        let racer = tokio::spawn(async move {
            let mut tx = other.begin().await.unwrap();
            sqlx::query("UPDATE circuit_breaker SET failed_tasks = failed_tasks + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sqlx::query("UPDATE circuit_breaker SET total_tasks = $1 WHERE id = 1")
            .bind(before + 1)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the write after the read failed: {e}"));
        tx.commit().await.unwrap();
        racer.await.unwrap();
    }
    let row = health::breaker(first.pool()).await.unwrap();
    assert_eq!((row.total_tasks, row.failed_tasks), (20, 20), "no update was lost");
    second.close().await;
    first.close().await;
}

both_backends!(
    a_stuck_store_answers_within_the_deadline,
    write_transactions_of_two_stores_wait_for_each_other,
    migrations_are_idempotent,
    insert_new_reports_only_fresh_guids,
    transaction_rollback_leaves_nothing,
    relaxed_transactions_commit_and_roll_back_like_durable_ones,
    jobs_are_leased_to_one_worker,
    concurrent_claims_never_share_a_job,
    failed_jobs_retry_then_fail,
    group_commit_stores_each_guid_once,
    installations_are_upserted,
    breaker_row_exists,
);
