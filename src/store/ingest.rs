//! Group commit for webhook ingest. Handlers hand their delivery to one writer task and wait;
//! the writer takes everything that queued up meanwhile, appends the bodies to the archive (one
//! write, one sync), inserts the rows and their jobs in one transaction, commits, and only then
//! releases every waiting handler. Each answer therefore follows a durable commit, while the cost
//! of a commit is shared by every delivery in the group.

use super::archive::PayloadArchive;
use super::deliveries::{self, NewDelivery, PayloadLocation};
use super::{jobs, Store};
use axum::body::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};

/// Upper bound of one group; larger groups add latency without saving more.
const MAX_GROUP: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Newly stored (and queued, if it needs processing).
    Stored,
    /// A delivery with this GUID was already stored; nothing was done.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
#[error("the delivery could not be stored: {0}")]
pub struct IngestError(String);

struct Pending {
    row: NewDelivery,
    body: Bytes,
    reply: oneshot::Sender<Result<IngestOutcome, IngestError>>,
}

/// The handlers' side of the group-commit writer.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Pending>,
}

impl Ingest {
    /// Starts the writer. `archive: None` keeps bodies inline in the database. `jobs_ready` is
    /// notified after every commit that queued work.
    pub fn start(store: Store, archive: Option<Arc<PayloadArchive>>, jobs_ready: Arc<Notify>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(8192);
        let handle = tokio::spawn(writer(store, archive, rx, jobs_ready));
        (Self { tx }, handle)
    }

    /// Stores one delivery durably; returns once it is committed (or found to be a duplicate).
    pub async fn submit(&self, row: NewDelivery, body: Bytes) -> Result<IngestOutcome, IngestError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Pending { row, body, reply })
            .await
            .map_err(|_| IngestError("the writer has stopped".into()))?;
        wait.await.map_err(|_| IngestError("the writer stopped before committing".into()))?
    }
}

async fn writer(store: Store, archive: Option<Arc<PayloadArchive>>, mut rx: mpsc::Receiver<Pending>, jobs_ready: Arc<Notify>) {
    let mut group: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
    // Ends when every `Ingest` handle is gone (the server stopped accepting), after the last
    // group is committed: graceful shutdown never drops a delivery that is being answered.
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let started = std::time::Instant::now();
        let result = commit_group(&store, archive.as_ref(), &group).await;
        tracing::debug!(
            deliveries = group.len(),
            micros = started.elapsed().as_micros() as u64,
            "group committed"
        );
        let mut queued_work = false;
        match result {
            Ok(fresh) => {
                let mut answered: HashSet<&str> = HashSet::with_capacity(group.len());
                let mut outcomes = Vec::with_capacity(group.len());
                for p in &group {
                    let new = fresh.contains(&p.row.guid) && answered.insert(p.row.guid.as_str());
                    queued_work |= new && p.row.status == "queued";
                    outcomes.push(if new { IngestOutcome::Stored } else { IngestOutcome::Duplicate });
                }
                for (p, outcome) in group.drain(..).zip(outcomes) {
                    let _ = p.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), deliveries = group.len(), "group commit failed");
                for p in group.drain(..) {
                    let _ = p.reply.send(Err(IngestError("database write failed".into())));
                }
            }
        }
        if queued_work {
            jobs_ready.notify_waiters();
        }
    }
}

async fn commit_group(store: &Store, archive: Option<&Arc<PayloadArchive>>, group: &[Pending]) -> anyhow::Result<HashSet<String>> {
    // A GUID twice in one group: the first is stored, the later ones are duplicates.
    let mut seen = HashSet::with_capacity(group.len());
    let unique: Vec<&Pending> = group.iter().filter(|p| seen.insert(p.row.guid.as_str())).collect();

    let payloads: Vec<PayloadLocation> = match archive {
        Some(archive) => {
            let bodies: Vec<Bytes> = unique.iter().map(|p| p.body.clone()).collect();
            let archive = Arc::clone(archive);
            let refs = tokio::task::spawn_blocking(move || {
                let slices: Vec<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
                archive.append_batch(&slices)
            })
            .await??;
            refs.into_iter().map(PayloadLocation::Archived).collect()
        }
        None => unique.iter().map(|p| PayloadLocation::Inline(p.body.clone())).collect(),
    };
    let rows: Vec<NewDelivery> = unique.iter().map(|p| p.row.clone()).collect();

    let mut tx = store.begin().await?;
    let fresh = deliveries::insert_new(&mut tx, &rows, &payloads).await?;
    let to_queue: Vec<&str> = rows
        .iter()
        .filter(|r| r.status == "queued" && fresh.contains(&r.guid))
        .map(|r| r.guid.as_str())
        .collect();
    if !to_queue.is_empty() {
        let now = rows.iter().map(|r| r.received_at).max().unwrap_or_else(super::now_ms);
        jobs::enqueue_for_deliveries(&mut tx, &to_queue, now).await?;
    }
    tx.commit().await?;
    Ok(fresh)
}
