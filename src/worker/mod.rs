//! Workers: take jobs from the store's queue, keep their lease alive while working, apply the
//! job's effects and complete it in one transaction. Nothing is held only in memory: a job that
//! was running when the process died is taken over when its lease runs out.

use crate::store::ingest::IngestSignals;
use crate::store::{deliveries, installations, jobs, now_ms, Store, WriteTx};
use crate::webhook::Event;
use anyhow::{anyhow, Context};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Identifies this process's leases; unique per process start.
    pub owner: String,
    pub lease: Duration,
    pub concurrency: usize,
    /// How often idle workers look for work that other processes queued.
    pub poll: Duration,
    pub max_attempts: i64,
    /// Jobs claimed at once; delivery jobs of one claim are completed in one transaction.
    pub batch: i64,
}

impl WorkerConfig {
    pub fn new(lease: Duration, concurrency: usize) -> Self {
        let mut nonce = [0u8; 6];
        getrandom::getrandom(&mut nonce).expect("system randomness");
        Self {
            owner: format!("{}-{}", std::process::id(), hex::encode(nonce)),
            lease,
            concurrency,
            poll: Duration::from_millis(500),
            max_attempts: 5,
            batch: 128,
        }
    }
}

/// How long workers hold back while ingest is under pressure.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// Starts `concurrency` workers; they stop after their current job once `stop` turns true.
pub fn spawn(
    store: Store,
    config: WorkerConfig,
    signals: Arc<IngestSignals>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let config = Arc::new(config);
    (0..config.concurrency)
        .map(|n| {
            let (store, config, signals, stop) = (store.clone(), config.clone(), signals.clone(), stop.clone());
            tokio::spawn(worker_loop(n, store, config, signals, stop))
        })
        .collect()
}

async fn worker_loop(n: usize, store: Store, config: Arc<WorkerConfig>, signals: Arc<IngestSignals>, mut stop: watch::Receiver<bool>) {
    let lease_ms = config.lease.as_millis() as i64;
    loop {
        if *stop.borrow() {
            return;
        }
        // Registered before claiming, so a commit that lands between the claim and the wait
        // still wakes this worker.
        let notified = signals.jobs_ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // While ingest is under pressure, one worker goes on with small batches and pauses
        // between them, the others wait: a bounded share that keeps processing moving without
        // slowing the answers to GitHub. Nothing waits in memory; the queue is in the store.
        let busy = signals.busy(now_ms());
        if busy && n > 0 {
            tokio::select! {
                _ = tokio::time::sleep(BUSY_PAUSE) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let batch = if busy { config.batch.min(32) } else { config.batch };
        let claimed = {
            let _write = store.write_guard().await;
            jobs::claim(store.pool(), store.backend(), &config.owner, lease_ms, batch, now_ms()).await
        };
        match claimed {
            Ok(list) if !list.is_empty() => {
                run_batch(&store, &config, list).await;
                if busy {
                    tokio::select! {
                        _ = tokio::time::sleep(BUSY_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(worker = n, error = %e, "could not claim jobs"),
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(config.poll) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Runs a claimed batch. Delivery jobs only touch the database, so a batch of them is applied
/// in one transaction (one commit instead of one per job); if that fails, each job runs on its
/// own so that one bad job cannot hold back the others.
async fn run_batch(store: &Store, config: &WorkerConfig, batch: Vec<jobs::Job>) {
    if batch.len() > 1 && batch.iter().all(|j| j.kind == jobs::KIND_DELIVERY) {
        match process_delivery_batch(store, config, &batch).await {
            Ok(done) => {
                tracing::debug!(jobs = batch.len(), done, "delivery batch committed");
                return;
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "batch failed; running its jobs one by one"),
        }
    }
    for job in batch {
        run_job(store, config, job).await;
    }
}

async fn process_delivery_batch(store: &Store, config: &WorkerConfig, batch: &[jobs::Job]) -> anyhow::Result<usize> {
    let guids: Vec<&str> = batch
        .iter()
        .map(|j| j.delivery_guid.as_deref().context("delivery job without a delivery"))
        .collect::<anyhow::Result<_>>()?;
    let mut events = std::collections::HashMap::with_capacity(guids.len());
    for (guid, data) in deliveries::events_of(store.pool(), &guids).await? {
        let event: Event = serde_json::from_str(&data).with_context(|| format!("stored event of {guid} does not decode"))?;
        events.insert(guid, event);
    }
    if let Some(missing) = guids.iter().find(|g| !events.contains_key(**g)) {
        anyhow::bail!("delivery {missing} is not stored");
    }
    let ids: Vec<i64> = batch.iter().map(|j| j.id).collect();
    let now = now_ms();
    let mut tx = store.begin().await?;
    // Completed first, with their effects: jobs another worker took over are left out whole.
    let done: std::collections::HashSet<i64> = jobs::complete_many(&mut *tx, &ids, &config.owner, now).await?.into_iter().collect();
    let mut processed = Vec::with_capacity(done.len());
    for (job, guid) in batch.iter().zip(&guids) {
        if done.contains(&job.id) {
            apply_delivery(&mut tx, &events[*guid], now).await?;
            processed.push(*guid);
        }
    }
    deliveries::mark_many_processed(&mut *tx, &processed, now).await?;
    tx.commit().await?;
    Ok(processed.len())
}

/// Backoff before attempt `attempts + 1`: 1 s, 2 s, 4 s, … capped at 5 minutes.
fn backoff_ms(attempts: i64) -> i64 {
    1000i64.saturating_mul(1 << attempts.clamp(1, 9).saturating_sub(1)).min(300_000)
}

async fn run_job(store: &Store, config: &WorkerConfig, job: jobs::Job) {
    let span = tracing::info_span!("job", id = job.id, kind = %job.kind, delivery = job.delivery_guid.as_deref().unwrap_or(""), attempt = job.attempts);
    async {
        let lease_ms = config.lease.as_millis() as i64;
        // Keeps the lease alive while the job runs; a lost lease means another worker took over.
        let heartbeat = async {
            let mut tick = tokio::time::interval(config.lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let beat = {
                    let _write = store.write_guard().await;
                    jobs::heartbeat(store.pool(), job.id, &config.owner, now_ms() + lease_ms).await
                };
                match beat {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
        };
        let outcome = tokio::select! {
            r = process(store, config, &job) => r,
            _ = heartbeat => Err(anyhow!("lease lost to another worker")),
        };
        match outcome {
            Ok(true) => tracing::debug!("job done"),
            Ok(false) => tracing::warn!("lease was lost before completion; the other worker's result stands"),
            Err(e) => {
                let message = format!("{e:#}");
                let retry_at = (job.attempts < config.max_attempts).then(|| now_ms() + backoff_ms(job.attempts));
                tracing::warn!(error = %message, will_retry = retry_at.is_some(), "job failed");
                let released = async {
                    let mut tx = store.begin().await?;
                    let released = jobs::release_failed(&mut *tx, job.id, &config.owner, &message, retry_at, now_ms()).await?;
                    if released && retry_at.is_none() {
                        if let Some(guid) = &job.delivery_guid {
                            deliveries::mark_failed(&mut *tx, guid, &message).await?;
                        }
                    }
                    tx.commit().await?;
                    anyhow::Ok(())
                };
                if let Err(e) = released.await {
                    tracing::error!(error = %e, "could not record the failure; the lease will expire and the job run again");
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs one job. Ok(false): the lease was lost, nothing was committed.
async fn process(store: &Store, config: &WorkerConfig, job: &jobs::Job) -> anyhow::Result<bool> {
    match job.kind.as_str() {
        jobs::KIND_DELIVERY => {
            let guid = job.delivery_guid.as_deref().context("delivery job without a delivery")?;
            process_delivery(store, config, job.id, guid).await
        }
        other => Err(anyhow!("unknown job kind {other:?}")),
    }
}

async fn process_delivery(store: &Store, config: &WorkerConfig, job_id: i64, guid: &str) -> anyhow::Result<bool> {
    let delivery = deliveries::get(store.pool(), guid)
        .await?
        .with_context(|| format!("delivery {guid} is not stored"))?;
    let event: Event = serde_json::from_str(&delivery.event_data).context("stored event does not decode")?;
    let now = now_ms();
    let mut tx = store.begin().await?;
    // The job is completed first, in the same transaction as its effects: if another worker took
    // the lease over, this transaction applies nothing.
    if !jobs::complete(&mut *tx, job_id, &config.owner, now).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    apply_delivery(&mut tx, &event, now).await?;
    deliveries::mark_processed(&mut *tx, guid, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// The database effects of one delivery.
async fn apply_delivery(tx: &mut WriteTx, event: &Event, now: i64) -> anyhow::Result<()> {
    match event {
        Event::Installation {
            action,
            installation_id,
            account,
            repositories,
        } => {
            let deleted = action == "deleted";
            let suspended = action == "suspend";
            installations::upsert_installation(&mut **tx, *installation_id, account.as_deref(), suspended, deleted, now).await?;
            if deleted {
                installations::remove_all_repositories(&mut **tx, *installation_id, now).await?;
            } else {
                for repo in repositories {
                    installations::set_repository(&mut **tx, *installation_id, repo, false, now).await?;
                }
            }
        }
        Event::InstallationRepositories {
            installation_id,
            account,
            added,
            removed,
            ..
        } => {
            installations::upsert_installation(&mut **tx, *installation_id, account.as_deref(), false, false, now).await?;
            for repo in added {
                installations::set_repository(&mut **tx, *installation_id, repo, false, now).await?;
            }
            for repo in removed {
                installations::set_repository(&mut **tx, *installation_id, repo, true, now).await?;
            }
        }
        // Triggers, commands and workflows act on these in later stages of the pipeline; here
        // the delivery is recorded as processed.
        other => tracing::debug!(kind = other.kind(), "delivery recorded"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(3), 4000);
        assert_eq!(backoff_ms(50), 256_000);
    }
}
