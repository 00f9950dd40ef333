//! The audit log (SPEC §13) on both backends: the hash chain, the database refusing changes,
//! `verify` finding changes made behind the triggers' back, one gapless chain under concurrent
//! appenders, appends that commit or roll back with their transaction, export and paging.

mod common;

use common::{Backend, TestDb};
use orch::audit::{self, chain, Entry, Filter, Record, Verdict, GENESIS};
use orch::store::Store;
use serde_json::json;
use std::time::Duration;

/// A fixed clock: every time the store sees is passed explicitly.
const T0: i64 = 1_700_000_000_000;

fn entry(i: i64) -> Entry<'static> {
    let (kind, subject) = match i % 3 {
        0 => (audit::kind::DELIVERY, "acme/widgets#12"),
        1 => (audit::kind::TRANSITION, "workflow:7"),
        _ => (audit::kind::VOTE, "workflow:7"),
    };
    let actor = if i % 2 == 0 { "orch" } else { "alice" };
    Entry::new(
        kind,
        actor,
        subject,
        json!({"i": i, "note": format!("entry {i}"), "nested": {"b": [1, 2], "a": null}}),
    )
}

/// Appends in a write transaction of its own, at a fixed time.
async fn append_at(store: &Store, e: &Entry<'_>, now: i64) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let seq = audit::append(&mut tx, store.backend(), e, now).await.unwrap();
    tx.commit().await.unwrap();
    seq
}

async fn all(store: &Store) -> Vec<Record> {
    audit::page(store.pool(), 0, audit::PAGE_MAX, &Filter::default()).await.unwrap()
}

/// Runs raw SQL with the SQLite write lock held (as every writer must).
async fn exec(store: &Store, sql: &str) -> sqlx::Result<u64> {
    let _write = store.write_guard().await;
    sqlx::query(sql).execute(store.pool()).await.map(|r| r.rows_affected())
}

/// Takes the append-only triggers away, as the SQLite file's owner or a Postgres superuser could.
async fn bypass_triggers(store: &Store, backend: Backend) {
    match backend {
        Backend::Sqlite => {
            exec(store, "DROP TRIGGER audit_log_no_update").await.unwrap();
            exec(store, "DROP TRIGGER audit_log_no_delete").await.unwrap();
        }
        Backend::Postgres => {
            exec(store, "ALTER TABLE audit_log DISABLE TRIGGER ALL").await.unwrap();
        }
    }
}

async fn appends_form_a_chain(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    assert_eq!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact {
            rows: 0,
            head: GENESIS.to_string()
        }
    );

    for i in 1..=4 {
        assert_eq!(append_at(&store, &entry(i), T0 + i).await, i);
    }
    let rows = all(&store).await;
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(rows[0].prev_hash, GENESIS);
    for pair in rows.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "{pair:?}");
    }
    // Each hash is the documented one, recomputed here from the record.
    for r in &rows {
        let line = chain::canonical_line(r.seq, r.at, &r.kind, &r.actor, &r.subject, &chain::canonical_json(&r.details));
        assert_eq!(r.hash, chain::link_hash(&r.prev_hash, &line));
        assert_eq!(r.hash.len(), 64);
    }
    let e = entry(2);
    assert_eq!(
        (
            rows[1].at,
            rows[1].kind.as_str(),
            rows[1].actor.as_str(),
            rows[1].subject.as_str(),
            &rows[1].details
        ),
        (T0 + 2, e.kind, e.actor, e.subject, &e.details)
    );
    // The stored details are the canonical text, keys sorted.
    let stored: String = {
        use sqlx::Row;
        sqlx::query("SELECT details FROM audit_log WHERE seq = 2")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    };
    assert_eq!(stored, r#"{"i":2,"nested":{"a":null,"b":[1,2]},"note":"entry 2"}"#);

    assert_eq!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact {
            rows: 4,
            head: rows[3].hash.clone()
        }
    );

    // append_now stamps the current time and continues the chain.
    let before = orch::store::now_ms();
    assert_eq!(audit::append_now(&store, &entry(5)).await.unwrap(), 5);
    let fifth = all(&store).await.pop().unwrap();
    assert!(fifth.at >= before && fifth.at <= orch::store::now_ms(), "{fifth:?}");
    assert_eq!(fifth.prev_hash, rows[3].hash);
    assert_eq!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact { rows: 5, head: fifth.hash }
    );
}

async fn the_database_refuses_update_and_delete(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    for i in 1..=3 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    let before = all(&store).await;

    let mut statements = vec![
        "UPDATE audit_log SET details = '{}' WHERE seq = 2",
        "UPDATE audit_log SET actor = 'mallory'",
        "UPDATE audit_log SET hash = hash",
        "DELETE FROM audit_log WHERE seq = 3",
        "DELETE FROM audit_log",
    ];
    if backend == Backend::Postgres {
        statements.push("TRUNCATE audit_log");
    }
    for sql in statements {
        let e = exec(&store, sql).await.expect_err(sql);
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(all(&store).await, before);
    assert!(matches!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact { rows: 3, .. }
    ));
}

async fn a_changed_row_is_named(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    for i in 1..=5 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    bypass_triggers(&store, backend).await;

    // SQLite: row 2's details; Postgres: row 3's. Everything else stays as it was.
    let target = match backend {
        Backend::Sqlite => 2,
        Backend::Postgres => 3,
    };
    let changed = exec(
        &store,
        &format!(r#"UPDATE audit_log SET details = '{{"i":{target},"note":"nothing happened"}}' WHERE seq = {target}"#),
    )
    .await
    .unwrap();
    assert_eq!(changed, 1);
    match audit::verify(store.pool()).await.unwrap() {
        Verdict::Broken { seq, problem } => {
            assert_eq!(seq, target, "{problem}");
            assert!(problem.contains("changed"), "{problem}");
        }
        v => panic!("expected a broken chain, got {v:?}"),
    }

    // Re-hashing the changed row to match moves the break to the next link, never hides it.
    let rows = all(&store).await;
    let r = &rows[target as usize - 1];
    let line = chain::canonical_line(r.seq, r.at, &r.kind, &r.actor, &r.subject, &chain::canonical_json(&r.details));
    let forged = chain::link_hash(&r.prev_hash, &line);
    exec(&store, &format!("UPDATE audit_log SET hash = '{forged}' WHERE seq = {target}"))
        .await
        .unwrap();
    match audit::verify(store.pool()).await.unwrap() {
        Verdict::Broken { seq, problem } => {
            assert_eq!(seq, target + 1, "{problem}");
            assert!(problem.contains("prev_hash"), "{problem}");
        }
        v => panic!("expected a broken chain, got {v:?}"),
    }
}

async fn a_removed_row_is_named(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    for i in 1..=5 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    bypass_triggers(&store, backend).await;

    assert_eq!(exec(&store, "DELETE FROM audit_log WHERE seq = 3").await.unwrap(), 1);
    match audit::verify(store.pool()).await.unwrap() {
        Verdict::Broken { seq, problem } => {
            assert_eq!(seq, 3, "{problem}");
            assert!(problem.contains("missing"), "{problem}");
        }
        v => panic!("expected a broken chain, got {v:?}"),
    }

    // The first row gone: the chain is broken at 1.
    exec(&store, "DELETE FROM audit_log WHERE seq = 1").await.unwrap();
    assert!(matches!(audit::verify(store.pool()).await.unwrap(), Verdict::Broken { seq: 1, .. }));
}

/// 8 tasks × 25 appends, each in a transaction of its own: one chain, seq 1..=200, no gap.
///
/// On Postgres this rests on the advisory lock: without it two appenders read the same last row
/// and both try the same seq; the primary key refuses the second insert, whose `append_now` fails
/// (tried: with the lock statement replaced by a plain SELECT, this test and the next one fail with
/// `duplicate key value violates unique constraint "audit_log_pkey"`). The chain never forks, but
/// appends fail. `the_next_appender_waits_for_the_open_one` shows the wait itself.
async fn concurrent_appenders_make_one_chain(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let tasks: Vec<_> = (0..8i64)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25 {
                    let subject = format!("task:{t}");
                    let e = Entry::new(audit::kind::MODEL_CALL, "orch", &subject, json!({"task": t, "i": i}));
                    seqs.push(audit::append_now(&store, &e).await.unwrap());
                }
                seqs
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        seqs.extend(mine);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<i64>>());

    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = audit::page(store.pool(), after, 64, &Filter::default()).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        stored.extend(page.iter().map(|r| r.seq));
    }
    assert_eq!(stored, (1..=200).collect::<Vec<i64>>());
    match audit::verify(store.pool()).await.unwrap() {
        Verdict::Intact { rows, head } => {
            assert_eq!(rows, 200);
            assert_eq!(head, all(&store).await.pop().unwrap().hash);
        }
        v => panic!("{v}"),
    }
    // Every task's own rows are there, each task in order.
    for t in 0..8 {
        let filter = Filter {
            subject: Some(format!("task:{t}")),
            ..Filter::default()
        };
        let mine = audit::page(store.pool(), 0, 100, &filter).await.unwrap();
        let order: Vec<i64> = mine.iter().map(|r| r.details["i"].as_i64().unwrap()).collect();
        assert_eq!(order, (0..25).collect::<Vec<i64>>());
    }
}

/// An append inside an open transaction holds the appenders' lock until that transaction ends: the
/// next appender waits, then extends whatever the first left, and a rolled-back append leaves no
/// gap. Without the lock, on Postgres, the waiting appender would read the old last row, try the
/// same seq, and fail on the primary key once the first commits.
async fn the_next_appender_waits_for_the_open_one(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    append_at(&store, &entry(1), T0).await;

    for (round, commit) in [(0, true), (1, false)] {
        let mut tx = store.begin().await.unwrap();
        let held = audit::append(&mut tx, store.backend(), &entry(10 + round), T0 + 10).await.unwrap();
        assert_eq!(held, 2 + 2 * round);

        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { audit::append_now(&store, &entry(20 + round)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the second appender did not wait for the open transaction");

        if commit {
            tx.commit().await.unwrap();
            assert_eq!(waiting.await.unwrap(), held + 1);
        } else {
            tx.rollback().await.unwrap();
            // The rolled-back seq goes to the next append: no gap.
            assert_eq!(waiting.await.unwrap(), held);
        }
    }
    let rows = all(&store).await;
    let notes: Vec<&str> = rows.iter().map(|r| r.details["note"].as_str().unwrap()).collect();
    assert_eq!(notes, ["entry 1", "entry 10", "entry 20", "entry 21"]);
    assert!(matches!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact { rows: 4, .. }
    ));
}

/// Appenders that skip the store's write transaction (a raw pool transaction, or another process
/// on the same database) still queue: on Postgres behind the advisory lock, on SQLite behind the
/// database's own write lock, which `append` takes before reading the last row. Without that first
/// write (tried: replace it by a plain SELECT), the second SQLite appender reads the old last row
/// and its INSERT then fails at once with "database is locked": SQLite does not let a reading
/// transaction wait for the write lock.
async fn appenders_outside_write_tx_still_queue(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;

    let mut first = store.pool().begin().await.unwrap();
    assert_eq!(audit::append(&mut first, store.backend(), &entry(1), T0).await.unwrap(), 1);
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut second = store.pool().begin().await.unwrap();
            let seq = audit::append(&mut second, store.backend(), &entry(2), T0 + 1).await.unwrap();
            second.commit().await.unwrap();
            seq
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second appender did not wait for the open transaction");
    first.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap(), 2);
    assert!(matches!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact { rows: 2, .. }
    ));
}

/// The audit row commits or rolls back with the transaction (and so the effect) it records; the
/// seqs a rolled-back transaction took are taken again, so the chain has no gap.
async fn appends_roll_back_with_their_transaction(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;

    let mut tx = store.begin().await.unwrap();
    assert_eq!(audit::append(&mut tx, store.backend(), &entry(1), T0).await.unwrap(), 1);
    assert_eq!(audit::append(&mut tx, store.backend(), &entry(2), T0).await.unwrap(), 2);
    tx.rollback().await.unwrap();
    assert!(all(&store).await.is_empty());

    let mut tx = store.begin().await.unwrap();
    assert_eq!(audit::append(&mut tx, store.backend(), &entry(3), T0).await.unwrap(), 1);
    assert_eq!(audit::append(&mut tx, store.backend(), &entry(4), T0).await.unwrap(), 2);
    tx.commit().await.unwrap();
    let rows = all(&store).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].prev_hash, rows[0].hash);
    assert!(matches!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact { rows: 2, .. }
    ));
}

async fn export_writes_one_object_per_line(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let mut out = Vec::new();
    assert_eq!(audit::export_jsonl(store.pool(), &mut out).await.unwrap(), 0);
    assert!(out.is_empty());

    let odd = Entry::new(
        audit::kind::OPERATOR,
        "operator:root",
        "acme/widgets#1",
        json!({"text": "line\nbreak \"quoted\" ünïcode 🦀", "n": 1.5, "big": u64::MAX}),
    );
    append_at(&store, &odd, T0).await;
    for i in 2..=4 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    let mut out = Vec::new();
    assert_eq!(audit::export_jsonl(store.pool(), &mut out).await.unwrap(), 4);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    let parsed: Vec<Record> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed, all(&store).await);
    assert_eq!(parsed[0].details, odd.details);
    // Each line is a JSON object with the documented fields, and re-hashes to its hash.
    let object: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let mut keys: Vec<&str> = object.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["actor", "at", "details", "hash", "kind", "prev_hash", "seq", "subject"]);
    let mut prev = GENESIS.to_string();
    for r in &parsed {
        let line = chain::canonical_line(r.seq, r.at, &r.kind, &r.actor, &r.subject, &chain::canonical_json(&r.details));
        assert_eq!(chain::link_hash(&prev, &line), r.hash);
        prev = r.hash.clone();
    }
}

async fn page_filters_and_pages(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    // entry(i): kind by i % 3 (0 delivery, 1 transition, 2 vote), actor alice when i is odd.
    for i in 1..=12 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    let seqs = |rs: Vec<Record>| rs.iter().map(|r| r.seq).collect::<Vec<i64>>();
    let none = Filter::default();

    assert_eq!(seqs(audit::page(store.pool(), 0, 5, &none).await.unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(audit::page(store.pool(), 5, 5, &none).await.unwrap()), [6, 7, 8, 9, 10]);
    assert_eq!(seqs(audit::page(store.pool(), 10, 5, &none).await.unwrap()), [11, 12]);
    assert!(audit::page(store.pool(), 12, 5, &none).await.unwrap().is_empty());
    assert!(audit::page(store.pool(), 0, 0, &none).await.unwrap().is_empty());
    assert!(audit::page(store.pool(), 0, -3, &none).await.unwrap().is_empty());

    let kind = Filter {
        kind: Some("transition".into()),
        ..Filter::default()
    };
    assert_eq!(seqs(audit::page(store.pool(), 0, 100, &kind).await.unwrap()), [1, 4, 7, 10]);
    assert_eq!(seqs(audit::page(store.pool(), 0, 2, &kind).await.unwrap()), [1, 4]);
    assert_eq!(seqs(audit::page(store.pool(), 4, 2, &kind).await.unwrap()), [7, 10]);

    let subject = Filter {
        subject: Some("acme/widgets#12".into()),
        ..Filter::default()
    };
    assert_eq!(seqs(audit::page(store.pool(), 0, 100, &subject).await.unwrap()), [3, 6, 9, 12]);

    let actor = Filter {
        actor: Some("alice".into()),
        ..Filter::default()
    };
    assert_eq!(seqs(audit::page(store.pool(), 0, 100, &actor).await.unwrap()), [1, 3, 5, 7, 9, 11]);

    let all_three = Filter {
        kind: Some("vote".into()),
        subject: Some("workflow:7".into()),
        actor: Some("orch".into()),
    };
    assert_eq!(seqs(audit::page(store.pool(), 0, 100, &all_three).await.unwrap()), [2, 8]);
    let nothing = Filter {
        kind: Some("vote' OR '1'='1".into()),
        ..Filter::default()
    };
    assert!(audit::page(store.pool(), 0, 100, &nothing).await.unwrap().is_empty());

    // Pages work inside a transaction too (the function takes any executor).
    let mut tx = store.begin().await.unwrap();
    assert_eq!(seqs(audit::page(&mut *tx, 11, 5, &none).await.unwrap()), [12]);
    tx.rollback().await.unwrap();
}

/// Appending several entries at once makes the same chain as appending them one by one: seqs
/// follow on, each links the previous hash, `verify` finds it intact, and it goes on from
/// earlier single appends (and past one INSERT's worth of rows).
async fn a_batch_append_continues_the_chain(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    assert_eq!(append_at(&store, &entry(1), T0).await, 1);
    let entries: Vec<Entry> = (2..=301).map(entry).collect();
    let mut tx = store.begin().await.unwrap();
    let seqs = audit::append_many(&mut tx, store.backend(), &entries, T0 + 1).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seqs, (2..=301).collect::<Vec<i64>>());
    assert_eq!(append_at(&store, &entry(302), T0 + 2).await, 302);
    let rows = all(&store).await;
    assert_eq!(rows.len(), 302);
    for pair in rows.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "{pair:?}");
    }
    for r in &rows {
        let line = chain::canonical_line(r.seq, r.at, &r.kind, &r.actor, &r.subject, &chain::canonical_json(&r.details));
        assert_eq!(r.hash, chain::link_hash(&r.prev_hash, &line));
    }
    assert!(matches!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact { rows: 302, .. }
    ));
}

/// Replaces row `seq`'s details and recomputes every link from row 1 with `hash`, as someone with
/// write access to the database (triggers bypassed) rewriting history would.
async fn rewrite(store: &Store, seq: i64, details: &str, hash: impl Fn(&str, &str) -> String) {
    let mut prev = GENESIS.to_string();
    for r in all(store).await {
        let details = if r.seq == seq {
            details.to_string()
        } else {
            chain::canonical_json(&r.details)
        };
        let line = chain::canonical_line(r.seq, r.at, &r.kind, &r.actor, &r.subject, &details);
        let new_hash = hash(&prev, &line);
        let _write = store.write_guard().await;
        sqlx::query("UPDATE audit_log SET details = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(details)
            .bind(prev.clone())
            .bind(new_hash.clone())
            .bind(r.seq)
            .execute(store.pool())
            .await
            .unwrap();
        prev = new_hash;
    }
}

const KEY: &str = "audit-key-for-tests-0123456789abcdef";

async fn a_truncated_tail_fails_verify_with_the_anchor(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    for i in 1..=5 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    let anchor = audit::anchor(store.pool()).await.unwrap();
    assert_eq!(anchor.seq, 5);
    assert_eq!(anchor.hash, all(&store).await[4].hash);
    let printed = anchor.to_string();
    assert_eq!(printed.parse::<audit::Anchor>().unwrap(), anchor);
    for i in 6..=7 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    // Rows after the anchor are fine: the anchor still matches.
    assert!(matches!(
        audit::verify_with(store.pool(), None, Some(&anchor)).await.unwrap(),
        Verdict::Intact { rows: 7, .. }
    ));

    bypass_triggers(&store, backend).await;
    assert_eq!(exec(&store, "DELETE FROM audit_log WHERE seq >= 4").await.unwrap(), 4);
    // Without the anchor the shorter chain is intact: nothing inside the database shows the cut.
    assert!(matches!(
        audit::verify(store.pool()).await.unwrap(),
        Verdict::Intact { rows: 3, .. }
    ));
    match audit::verify_with(store.pool(), None, Some(&anchor)).await.unwrap() {
        Verdict::Broken { seq, problem } => {
            assert_eq!(seq, 4, "{problem}");
            assert!(problem.contains("rows 4 to 5 are missing"), "{problem}");
            assert!(problem.contains("cut off") && problem.contains(&printed), "{problem}");
        }
        v => panic!("expected the cut to be found, got {v:?}"),
    }
    // An anchor whose hash the row does not have: the log was rewritten up to it.
    let other = audit::Anchor {
        seq: 2,
        hash: "ab".repeat(32),
    };
    match audit::verify_with(store.pool(), None, Some(&other)).await.unwrap() {
        Verdict::Broken { seq, problem } => {
            assert_eq!(seq, 2, "{problem}");
            assert!(problem.contains("anchor"), "{problem}");
        }
        v => panic!("expected a mismatch at the anchor, got {v:?}"),
    }
    assert!("5".parse::<audit::Anchor>().is_err());
    assert!("5:XYZ".parse::<audit::Anchor>().is_err());
}

async fn a_chain_rewritten_without_the_key_fails_with_the_key(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    audit::set_key(Some(&KEY.to_string().into()));
    for i in 1..=5 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    let rows = all(&store).await;
    // Keyed links: the stored hash is the HMAC, not the plain sha256.
    let line = chain::canonical_line(
        1,
        rows[0].at,
        &rows[0].kind,
        &rows[0].actor,
        &rows[0].subject,
        &chain::canonical_json(&rows[0].details),
    );
    assert_eq!(rows[0].hash, chain::keyed_link_hash(KEY.as_bytes(), GENESIS, &line));
    assert_ne!(rows[0].hash, chain::link_hash(GENESIS, &line));
    assert!(matches!(
        audit::verify_with(store.pool(), Some(KEY.as_bytes()), None).await.unwrap(),
        Verdict::Intact { rows: 5, .. }
    ));

    // The attacker rewrites row 3 and rehashes the whole chain with plain sha256.
    bypass_triggers(&store, backend).await;
    rewrite(&store, 3, r#"{"i":3,"note":"nothing happened"}"#, chain::link_hash).await;
    // Without the key that rewrite is a valid chain …
    assert!(matches!(
        audit::verify_with(store.pool(), None, None).await.unwrap(),
        Verdict::Intact { rows: 5, .. }
    ));
    // … with it, the first rehashed row is named.
    match audit::verify(store.pool()).await.unwrap() {
        Verdict::Broken { seq, problem } => {
            assert_eq!(seq, 1, "{problem}");
            assert!(problem.contains("not keyed with ORCH_AUDIT_KEY"), "{problem}");
        }
        v => panic!("expected the rewrite to be found, got {v:?}"),
    }
    // Rehashed under a guessed key: refused too.
    rewrite(&store, 3, r#"{"i":3,"note":"nothing happened"}"#, |p, l| {
        chain::keyed_link_hash(b"guessed-key", p, l)
    })
    .await;
    match audit::verify(store.pool()).await.unwrap() {
        Verdict::Broken { seq, problem } => {
            assert_eq!(seq, 1, "{problem}");
            assert!(problem.contains("another key"), "{problem}");
        }
        v => panic!("expected the rewrite to be found, got {v:?}"),
    }
}

async fn unkeyed_rows_verify_with_the_key_only_up_to_an_anchor(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    audit::set_key(None);
    for i in 1..=3 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    // The operator anchors the unkeyed log, then turns the key on.
    let anchor = audit::anchor(store.pool()).await.unwrap();
    audit::set_key(Some(&KEY.to_string().into()));
    for i in 4..=5 {
        append_at(&store, &entry(i), T0 + i).await;
    }
    let key = Some(KEY.as_bytes());
    assert!(matches!(
        audit::verify_with(store.pool(), key, None).await.unwrap(),
        Verdict::Broken { seq: 1, .. }
    ));
    assert!(matches!(
        audit::verify_with(store.pool(), key, Some(&anchor)).await.unwrap(),
        Verdict::Intact { rows: 5, .. }
    ));
    // A plain row after the anchor is still refused.
    bypass_triggers(&store, backend).await;
    rewrite(&store, 4, r#"{"i":4}"#, chain::link_hash).await;
    assert!(matches!(
        audit::verify_with(store.pool(), key, Some(&anchor)).await.unwrap(),
        Verdict::Broken { seq: 4, .. }
    ));
}

both_backends!(
    a_batch_append_continues_the_chain,
    appends_form_a_chain,
    the_database_refuses_update_and_delete,
    a_changed_row_is_named,
    a_removed_row_is_named,
    concurrent_appenders_make_one_chain,
    the_next_appender_waits_for_the_open_one,
    appenders_outside_write_tx_still_queue,
    appends_roll_back_with_their_transaction,
    export_writes_one_object_per_line,
    page_filters_and_pages,
    a_truncated_tail_fails_verify_with_the_anchor,
    a_chain_rewritten_without_the_key_fails_with_the_key,
    unkeyed_rows_verify_with_the_key_only_up_to_an_anchor,
);
