//! Workers: take jobs from the store's queue, keep their lease alive while working, apply the
//! job's effects and complete it in one transaction. Nothing is held only in memory: a job that
//! was running when the process died is taken over when its lease runs out.

use crate::store::ingest::IngestSignals;
use crate::store::{deliveries, installations, jobs, now_ms, Store, WriteTx};
use crate::webhook::Event;
use crate::workflow::engine::{Engine, Next};
use crate::workflow::state::State;
use crate::workflow::triggers::concerns_workflows;
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
/// Claims of one job before a worker claims a whole batch again (see `worker_loop`).
const SINGLE_CLAIMS: u32 = 16;

/// Starts `concurrency` workers; they stop after their current job once `stop` turns true.
/// `engine` is None when no GitHub App is configured: deliveries are then recorded and nothing
/// acts on them.
pub fn spawn(
    store: Store,
    engine: Option<Arc<Engine>>,
    config: WorkerConfig,
    signals: Arc<IngestSignals>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let config = Arc::new(config);
    (0..config.concurrency)
        .map(|n| {
            let worker = Worker {
                store: store.clone(),
                engine: engine.clone(),
                config: config.clone(),
            };
            let (signals, stop) = (signals.clone(), stop.clone());
            tokio::spawn(worker_loop(n, worker, signals, stop))
        })
        .collect()
}

/// What a worker works with.
#[derive(Clone)]
struct Worker {
    store: Store,
    engine: Option<Arc<Engine>>,
    config: Arc<WorkerConfig>,
}

async fn worker_loop(n: usize, worker: Worker, signals: Arc<IngestSignals>, mut stop: watch::Receiver<bool>) {
    let (store, config) = (&worker.store, &worker.config);
    let lease_ms = config.lease.as_millis() as i64;
    // After a claim whose jobs had to run one by one (they wait on GitHub), the next claims take
    // one job: claiming a whole batch to run one and give the rest back costs two writes of every
    // row of it. Every so often two are tried again, and a batch that ran as one doubles the
    // next, for deliveries that batch; a wrong guess gives back at most what was tried.
    let mut claim_size = config.batch;
    let mut single_claims = 0;
    // Jobs whose lease ran out (their process died) are looked for every quarter lease, not at
    // every claim: a claim is then one statement instead of two.
    let mut expired_scanned_at = i64::MIN;
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
        let batch = if busy { claim_size.min(32) } else { claim_size };
        let claimed_at = now_ms();
        let scan_expired = claimed_at.saturating_sub(expired_scanned_at) >= lease_ms / 4;
        let claimed = {
            let _write = store.write_guard().await;
            if scan_expired {
                expired_scanned_at = claimed_at;
                jobs::claim(store.pool(), store.backend(), &config.owner, lease_ms, batch, claimed_at).await
            } else {
                jobs::claim_queued(store.pool(), store.backend(), &config.owner, lease_ms, batch, claimed_at).await
            }
        };
        match claimed {
            Ok(list) if !list.is_empty() => {
                // There may be more: the next idle worker looks (ingest wakes only one).
                signals.jobs_ready.notify_one();
                let one_by_one = run_batch(&worker, list, claimed_at).await;
                if one_by_one {
                    (claim_size, single_claims) = (1, 0);
                } else if claim_size > 1 {
                    // The batch ran as one: try twice as many.
                    claim_size = (claim_size * 2).min(config.batch);
                } else {
                    single_claims += 1;
                    if single_claims >= SINGLE_CLAIMS {
                        (claim_size, single_claims) = (2.min(config.batch), 0);
                    }
                }
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
/// own so that one bad job cannot hold back the others. True when jobs of the batch were given
/// back unstarted. `claimed_at`: when the batch's leases were taken.
async fn run_batch(worker: &Worker, batch: Vec<jobs::Job>, claimed_at: i64) -> bool {
    let (store, config) = (&worker.store, &*worker.config);
    if batch.len() > 1 && batch.iter().all(|j| j.kind == jobs::KIND_DELIVERY) {
        match process_delivery_batch(store, config, worker.engine.is_some(), &batch).await {
            Ok(done) => {
                tracing::debug!(jobs = batch.len(), done, "delivery batch committed");
                return false;
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "batch failed; running its jobs one by one"),
        }
    }
    // Jobs that wait on GitHub run one per claim: the first here, the rest back to the queue at
    // once for any worker. Holding them while the first runs would let their leases run out
    // (only the running job's lease is kept alive) and another worker start them too.
    let mut jobs = batch.into_iter();
    let Some(first) = jobs.next() else { return false };
    let rest: Vec<i64> = jobs.map(|j| j.id).collect();
    let gave_back = !rest.is_empty();
    if gave_back {
        let released = async {
            let _write = store.write_guard().await;
            jobs::release_unstarted(store.pool(), &rest, &config.owner).await
        };
        if let Err(e) = released.await {
            tracing::warn!(error = %e, "could not give unstarted jobs back; their leases will run out");
        }
    }
    run_job(worker, first, claimed_at).await;
    gave_back
}

/// Applies a batch of delivery jobs in one transaction; refuses (and the jobs run one by one)
/// when one of them needs GitHub, which no database transaction should wait on.
async fn process_delivery_batch(store: &Store, config: &WorkerConfig, acting: bool, batch: &[jobs::Job]) -> anyhow::Result<usize> {
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
    if acting && events.values().any(concerns_workflows) {
        anyhow::bail!("the batch holds deliveries that act on workflows");
    }
    let ids: Vec<i64> = batch.iter().map(|j| j.id).collect();
    let now = now_ms();
    // Relaxed: a power loss that undoes it leaves the jobs to run again (see `Store::begin_relaxed`).
    let mut tx = store.begin_relaxed().await?;
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
    // One append for the whole batch (appended last: the chain's lock is held until commit).
    let entries: Vec<crate::audit::Entry> = processed.iter().map(|guid| delivery_entry(guid, &events[*guid])).collect();
    crate::audit::append_many(&mut tx, store.backend(), &entries, now).await?;
    tx.commit().await?;
    Ok(processed.len())
}

/// Backoff before attempt `attempts + 1`: 1 s, 2 s, 4 s, … capped at 5 minutes.
fn backoff_ms(attempts: i64) -> i64 {
    1000i64.saturating_mul(1 << attempts.clamp(1, 9).saturating_sub(1)).min(300_000)
}

async fn run_job(worker: &Worker, job: jobs::Job, claimed_at: i64) {
    let (store, config) = (&worker.store, &*worker.config);
    let span = tracing::info_span!("job", id = job.id, kind = %job.kind, delivery = job.delivery_guid.as_deref().unwrap_or(""), workflow = job.workflow_id.unwrap_or(0), attempt = job.attempts);
    async {
        let lease_ms = config.lease.as_millis() as i64;
        // The lease is renewed before the job starts: if it ran out and another worker took the
        // job, this one must not start it. A lease taken a moment ago cannot have run out.
        let renewed = if now_ms() - claimed_at < lease_ms / 3 {
            Ok(true)
        } else {
            let _write = store.write_guard().await;
            jobs::heartbeat(store.pool(), job.id, &config.owner, now_ms() + lease_ms).await
        };
        match renewed {
            // With `ended`, what a log shows of when each job ran and in which process (the
            // replica tests check from them that a workflow is worked on by one worker at a time).
            Ok(true) => tracing::debug!(owner = %config.owner, "job started"),
            Ok(false) => {
                tracing::info!("lease lost before the job started; another worker has it");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the lease; leaving the job to its lease");
                return;
            }
        }
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
            r = process(worker, &job) => r,
            _ = heartbeat => Err(anyhow!("lease lost to another worker")),
        };
        match outcome {
            Ok(true) => tracing::debug!("job done"),
            Ok(false) => tracing::warn!("lease was lost before completion; the other worker's result stands"),
            Err(e) if crate::github::client::rate_limit_of(&e).is_some() => {
                let wait = crate::github::client::rate_limit_of(&e).unwrap_or_default();
                if let Err(e) = defer_for_github(worker, &job, wait, &format!("{e:#}")).await {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "could not defer the job; the lease will expire and the job run again"
                    );
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                let mut retry_at = (job.attempts < config.max_attempts).then(|| now_ms() + backoff_ms(job.attempts));
                // A workflow step that failed for good ends its workflow, and says so on GitHub.
                if let (Some(engine), Some(id)) = (&worker.engine, job.workflow_id) {
                    if retry_at.is_none() || is_permanent(&e) {
                        match engine.give_up(id, &e).await {
                            Ok(()) => retry_at = None,
                            Err(e) => tracing::error!(error = format!("{e:#}"), "could not end the failed workflow; its job runs again"),
                        }
                    }
                }
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
        tracing::debug!("job ended");
    }
    .instrument(span)
    .await
}

/// Puts a job that GitHub's rate limit holds back in the queue until the limit lifts (SPEC §11):
/// it is not a failure, so it costs no attempt and never ends its workflow. Jobs of one lane
/// (installation and repository) queue behind that lane's jobs already waiting, one pacing slot
/// apart, so that when the limit lifts every repository of the installation takes its turn
/// instead of the busiest one going first with all of its jobs.
async fn defer_for_github(worker: &Worker, job: &jobs::Job, wait: Duration, reason: &str) -> anyhow::Result<()> {
    let (store, config) = (&worker.store, &*worker.config);
    let lane = lane_of(store, job).await?;
    let spacing = worker.engine.as_ref().map(|e| e.github.deferral_spacing_ms()).unwrap_or(0);
    let now = now_ms();
    let until = now + wait.as_millis() as i64;
    let mut tx = store.begin().await?;
    let behind = jobs::lane_backlog(&mut *tx, &lane, until).await?;
    let run_at = deferral_time(until, behind, spacing, jitter_ms(spacing));
    let deferral = jobs::Deferral {
        run_at,
        github_until: run_at,
        lane: &lane,
        reason,
    };
    let deferred = jobs::defer_for_github(&mut *tx, job.id, &config.owner, &deferral).await?;
    tx.commit().await?;
    tracing::info!(deferred, %lane, wait_ms = run_at - now, behind, "GitHub's rate limit: the job waits");
    Ok(())
}

/// When a deferred job runs: after the limit lifts (`until`), behind the `behind` jobs of its
/// lane already waiting, one `spacing` apart, plus `jitter` so that replicas do not run in step.
fn deferral_time(until: i64, behind: i64, spacing: i64, jitter: i64) -> i64 {
    until.saturating_add(behind.saturating_mul(spacing)).saturating_add(jitter)
}

/// Up to half a pacing slot (at least 50 ms, at most a second) of randomness.
fn jitter_ms(spacing: i64) -> i64 {
    let bound = (spacing / 2).clamp(50, 1000);
    let mut b = [0u8; 4];
    match getrandom::getrandom(&mut b) {
        Ok(()) => i64::from(u32::from_le_bytes(b)) % bound,
        Err(_) => 0,
    }
}

/// The job's lane: `installation/owner/repo` of its workflow or delivery (`-` when unknown).
async fn lane_of(store: &Store, job: &jobs::Job) -> anyhow::Result<String> {
    if let Some(id) = job.workflow_id {
        if let Some(wf) = crate::store::workflows::get(store.pool(), id).await? {
            return Ok(format!("{}/{}", wf.installation_id, wf.repository));
        }
    }
    if let Some(guid) = &job.delivery_guid {
        if let Some(d) = deliveries::get(store.pool(), guid).await? {
            return Ok(format!(
                "{}/{}",
                d.installation_id.unwrap_or(0),
                d.repository.as_deref().unwrap_or("-")
            ));
        }
    }
    Ok("-".to_string())
}

/// GitHub refused for good (a 4xx other than rate limits): repeating the step cannot help.
fn is_permanent(e: &anyhow::Error) -> bool {
    use crate::github::client::{client_error_of, ClientError};
    client_error_of(e).is_some_and(|c| matches!(c, ClientError::Github(_)) && !c.is_transient())
}

/// Runs one job. Ok(false): the lease was lost, nothing was committed.
async fn process(worker: &Worker, job: &jobs::Job) -> anyhow::Result<bool> {
    match job.kind.as_str() {
        jobs::KIND_DELIVERY => {
            let guid = job.delivery_guid.as_deref().context("delivery job without a delivery")?;
            process_delivery(worker, job.id, guid).await
        }
        jobs::KIND_WORKFLOW => {
            let id = job.workflow_id.context("workflow job without a workflow")?;
            let engine = worker.engine.as_ref().context("workflow job, but no GitHub App is configured")?;
            process_workflow(worker, engine, job.id, id).await
        }
        other => Err(anyhow!("unknown job kind {other:?}")),
    }
}

/// Runs a workflow until it waits, then completes the job and queues the next one: now when the
/// workflow can move on (someone moved it while this job ran), later while reactions are polled.
async fn process_workflow(worker: &Worker, engine: &Engine, job_id: i64, workflow_id: i64) -> anyhow::Result<bool> {
    let next = engine.run(workflow_id).await?;
    let now = now_ms();
    let mut tx = worker.store.begin_relaxed().await?;
    if !jobs::complete(&mut *tx, job_id, &worker.config.owner, now).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    let wf = crate::store::workflows::get(&mut *tx, workflow_id)
        .await?
        .context("the workflow vanished")?;
    let due = match (wf.state, next) {
        (State::Done | State::Failed | State::BlockedPolicy | State::NeedsHuman, _) => None,
        (State::WaitingUserApproval, Next::At(at)) => Some(at),
        (State::WaitingUserApproval, Next::Idle) => None,
        _ => Some(now),
    };
    if let Some(at) = due {
        jobs::enqueue_workflow_job(&mut tx, workflow_id, at, now).await?;
    }
    tx.commit().await?;
    Ok(true)
}

async fn process_delivery(worker: &Worker, job_id: i64, guid: &str) -> anyhow::Result<bool> {
    let (store, config) = (&worker.store, &*worker.config);
    let delivery = deliveries::get(store.pool(), guid)
        .await?
        .with_context(|| format!("delivery {guid} is not stored"))?;
    let event: Event = serde_json::from_str(&delivery.event_data).context("stored event does not decode")?;
    // GitHub work happens before the transaction and is idempotent: if this job runs again, its
    // replies and reactions are found already made and workflows already created.
    if let Some(engine) = &worker.engine {
        if concerns_workflows(&event) {
            let span = tracing::info_span!("delivery", guid, event = event.kind());
            engine.handle(guid, delivery.installation_id, &event).instrument(span).await?;
        }
    }
    let now = now_ms();
    let mut tx = store.begin_relaxed().await?;
    // The job is completed first, in the same transaction as its effects: if another worker took
    // the lease over, this transaction applies nothing.
    if !jobs::complete(&mut *tx, job_id, &config.owner, now).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    apply_delivery(&mut tx, &event, now).await?;
    deliveries::mark_processed(&mut *tx, guid, now).await?;
    audit_delivery(&mut tx, store, guid, &event, now).await?;
    tx.commit().await?;
    Ok(true)
}

/// The worker's decision on a delivery, in the audit log (appended last in the transaction: the
/// chain's lock is held until commit).
async fn audit_delivery(tx: &mut WriteTx, store: &Store, guid: &str, event: &Event, now: i64) -> anyhow::Result<()> {
    crate::audit::append(tx, store.backend(), &delivery_entry(guid, event), now).await?;
    Ok(())
}

fn delivery_entry<'a>(guid: &'a str, event: &Event) -> crate::audit::Entry<'a> {
    crate::audit::Entry {
        kind: crate::audit::kind::DELIVERY,
        actor: "orch",
        subject: guid,
        details: serde_json::json!({ "event": event.kind(), "decision": "processed" }),
    }
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
    fn deferred_jobs_of_a_lane_queue_one_slot_apart_behind_its_waiting_ones() {
        assert_eq!(deferral_time(10_000, 0, 833, 0), 10_000);
        assert_eq!(deferral_time(10_000, 3, 833, 7), 12_506);
        assert_eq!(deferral_time(10_000, i64::MAX, 833, 0), i64::MAX, "saturates");
        for spacing in [0, 12, 833, 8000] {
            for _ in 0..100 {
                let j = jitter_ms(spacing);
                assert!((0..(spacing / 2).clamp(50, 1000)).contains(&j), "{spacing}: {j}");
            }
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(3), 4000);
        assert_eq!(backoff_ms(50), 256_000);
    }
}
