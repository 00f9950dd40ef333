//! The circuit breaker lives in the database: it opens at the error rate, holds for every
//! process and across restarts, and closes on reset.

mod common;

use common::{Backend, TestDb};
use orch::workflow::guard;

async fn the_breaker_opens_at_the_error_rate_and_holds_until_reset(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let store = db.store().await;
    let record = |failed: bool| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let opened = guard::record_task(&mut tx, failed, 0.01, 0.5, 1_000).await.unwrap();
            tx.commit().await.unwrap();
            opened
        }
    };
    // Two failures in three tasks: too few to judge.
    assert!(!record(true).await);
    assert!(!record(false).await);
    assert!(!record(true).await);
    assert!(!guard::breaker(store.pool()).await.unwrap().is_open);
    // The fourth task makes the sample; 2 of 4 reaches 50 %.
    assert!(record(false).await, "the fourth task opens it");
    let b = guard::breaker(store.pool()).await.unwrap();
    assert!(
        b.is_open && b.total_tasks == 4 && b.failed_tasks == 2 && b.opened_at == Some(1_000),
        "{b:?}"
    );
    assert!((b.total_cost_usd - 0.04).abs() < 1e-9);
    assert!(!record(false).await, "already open: not opened again");
    // Another connection (another process) and a restart see it open.
    store.close().await;
    let store = db.store().await;
    assert!(guard::breaker(store.pool()).await.unwrap().is_open);
    let refusal = guard::admit_call(&guard::breaker(store.pool()).await.unwrap(), &Default::default(), 0.0, 0.0, 0.0).unwrap_err();
    assert!(
        matches!(refusal, guard::Refusal::BreakerOpen { failed: 2, total: 5 }),
        "{refusal:?}"
    );
    {
        let _write = store.write_guard().await;
        guard::reset(store.pool(), 2_000).await.unwrap();
    }
    let b = guard::breaker(store.pool()).await.unwrap();
    assert!(
        !b.is_open && b.total_tasks == 0 && b.failed_tasks == 0 && b.opened_at.is_none(),
        "{b:?}"
    );
    assert!((b.total_cost_usd - 0.05).abs() < 1e-9, "spending is kept");
    // Successes keep it closed.
    for _ in 0..10 {
        let mut tx = store.begin().await.unwrap();
        assert!(!guard::record_task(&mut tx, false, 0.0, 0.5, 3_000).await.unwrap());
        tx.commit().await.unwrap();
    }
    assert!(!guard::breaker(store.pool()).await.unwrap().is_open);
}

both_backends!(the_breaker_opens_at_the_error_rate_and_holds_until_reset);
