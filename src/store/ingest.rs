//! Group commit for webhook ingest. Handlers hand their delivery to one writer task and wait;
//! the writer takes everything that queued up meanwhile, appends the bodies to the archive (one
//! write; synced in the background, see `archive`), inserts the rows and their jobs in one
//! transaction, commits, and only then releases every waiting handler. Each answer therefore
//! follows a durable commit, while the cost of a commit is shared by every delivery in the group.
//!
//! The ingest path is the hottest one, so each backend's writer uses its own connection rather
//! than the generic pool: on SQLite a thread with cached statements (no thread hop and type
//! conversion per statement; it takes the store's write lock like every other SQLite writer of
//! the process); on Postgres one statement per group that inserts the deliveries, their bodies
//! and their jobs from arrays (one round trip, one plan).

use super::archive::PayloadArchive;
use super::deliveries::NewDelivery;
use super::{jobs, Store};
use anyhow::Context;
use axum::body::Bytes;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};

/// Upper bound of one group; larger groups add latency without saving more.
const MAX_GROUP: usize = 512;

/// Ingest counts as under pressure while it stores more than this many deliveries per
/// [`PRESSURE_WINDOW_MS`] (1,000 a second): far above what a busy GitHub App receives, and the
/// point from which processing and answering compete for the same cores.
const BUSY_PER_WINDOW: i64 = 100;
const PRESSURE_WINDOW_MS: i64 = 100;

/// What the ingest writer tells the workers: that work was queued, and whether ingest is under
/// pressure. Answering GitHub within its 10 s comes first; processing is asynchronous anyway, so
/// during a burst workers take a bounded share of the machine and catch up afterwards.
#[derive(Debug, Default)]
pub struct IngestSignals {
    pub jobs_ready: Notify,
    /// Start of the current counting window and deliveries stored in it (written by the one
    /// writer only).
    window_start_ms: AtomicI64,
    window_count: AtomicI64,
    /// When ingest was last seen above the pressure rate.
    busy_at_ms: AtomicI64,
}

impl IngestSignals {
    fn committed(&self, group_len: usize, queued_work: bool) {
        self.count(super::now_ms(), group_len as i64);
        if queued_work {
            // One worker; a worker that finds work wakes the next (see `worker`), so a commit
            // does not send every idle worker to claim from a queue that one of them empties.
            self.jobs_ready.notify_one();
        }
    }

    fn count(&self, now: i64, stored: i64) {
        if now - self.window_start_ms.load(Ordering::Relaxed) >= PRESSURE_WINDOW_MS {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.window_count.store(0, Ordering::Relaxed);
        }
        if self.window_count.fetch_add(stored, Ordering::Relaxed) + stored >= BUSY_PER_WINDOW {
            self.busy_at_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Whether ingest was above the pressure rate within the last window.
    pub fn busy(&self, now_ms: i64) -> bool {
        now_ms - self.busy_at_ms.load(Ordering::Relaxed) < PRESSURE_WINDOW_MS
    }
}

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
    deadline: std::time::Duration,
}

/// GitHub gives up on a delivery after 10 s. A delivery not committed within this deadline is
/// answered 503 while GitHub still listens, so the failure is recorded cleanly and the delivery
/// can be redelivered; if it commits later after all, the redelivery is a duplicate.
pub const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(8);

impl Ingest {
    /// Starts the writer. `archive: None` keeps bodies inline in the database. `signals` is told
    /// of every commit.
    pub async fn start(
        store: Store,
        archive: Option<Arc<PayloadArchive>>,
        signals: Arc<IngestSignals>,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(8192);
        let handle = match (store.sqlite_file().cloned(), store.write_lock()) {
            (Some((path, sync)), Some(lock)) => {
                let lock = IngestLock {
                    lock,
                    groups: store.group_commit(),
                };
                tokio::task::spawn_blocking(move || sqlite_writer(&path, sync, archive, rx, signals, lock))
            }
            _ => {
                let pool = store.postgres_pool(1).await?.context("the store is neither SQLite nor Postgres")?;
                tokio::spawn(postgres_writer(pool, archive, rx, signals))
            }
        };
        Ok((
            Self {
                tx,
                deadline: DEFAULT_DEADLINE,
            },
            handle,
        ))
    }

    /// Stores one delivery durably; returns once it is committed (or found to be a duplicate).
    pub async fn submit(&self, row: NewDelivery, body: Bytes) -> Result<IngestOutcome, IngestError> {
        let (reply, wait) = oneshot::channel();
        let stored = async {
            self.tx
                .send(Pending { row, body, reply })
                .await
                .map_err(|_| IngestError("the writer has stopped".into()))?;
            wait.await.map_err(|_| IngestError("the writer stopped before committing".into()))?
        };
        tokio::time::timeout(self.deadline, stored)
            .await
            .map_err(|_| IngestError(format!("not committed within {:?}", self.deadline)))?
    }

    /// The same writer with another commit deadline (tests; see [`DEFAULT_DEADLINE`]).
    pub fn with_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

async fn postgres_writer(
    pool: sqlx::PgPool,
    archive: Option<Arc<PayloadArchive>>,
    mut rx: mpsc::Receiver<Pending>,
    signals: Arc<IngestSignals>,
) {
    let mut group: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
    // Ends when every `Ingest` handle is gone (the server stopped accepting), after the last
    // group is committed: graceful shutdown never drops a delivery that is being answered.
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        let result = commit_group_postgres(&pool, archive.as_ref(), &group).await;
        answer(&mut group, result, &signals);
    }
    pool.close().await;
}

/// Inserts a group's deliveries, bodies and jobs in one statement; returns the new GUIDs.
const POSTGRES_GROUP_INSERT: &str = "
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[])
        AS t (guid, event, action, installation_id, repository, received_at, status, payload_ref, payload_crc32, event_data, payload)
), fresh AS (
    INSERT INTO deliveries (guid, event, action, installation_id, repository, received_at, status, payload_ref, payload_crc32)
    SELECT guid, event, action, installation_id, repository, received_at, status, payload_ref, payload_crc32 FROM input
    ON CONFLICT (guid) DO NOTHING
    RETURNING guid, status, received_at
), bodies AS (
    INSERT INTO delivery_bodies (guid, event_data, payload)
    SELECT input.guid, input.event_data, input.payload FROM input JOIN fresh ON fresh.guid = input.guid
), queued AS (
    INSERT INTO jobs (kind, delivery_guid, status, run_at, created_at)
    SELECT 'delivery', guid, 'queued', received_at, received_at FROM fresh WHERE status = 'queued'
)
SELECT guid FROM fresh";

async fn commit_group_postgres(
    pool: &sqlx::PgPool,
    archive: Option<&Arc<PayloadArchive>>,
    group: &[Pending],
) -> anyhow::Result<HashSet<String>> {
    // A GUID twice in one group: the first is stored, the later ones are duplicates.
    let mut seen = HashSet::with_capacity(group.len());
    let unique: Vec<&Pending> = group.iter().filter(|p| seen.insert(p.row.guid.as_str())).collect();
    let refs: Option<Vec<String>> = match archive {
        Some(archive) => {
            let archive = Arc::clone(archive);
            let bodies: Vec<Bytes> = unique.iter().map(|p| p.body.clone()).collect();
            Some(
                tokio::task::spawn_blocking(move || {
                    let slices: Vec<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
                    archive.append_batch(&slices)
                })
                .await??,
            )
        }
        None => None,
    };
    let col = |f: fn(&NewDelivery) -> Option<String>| unique.iter().map(|p| f(&p.row)).collect::<Vec<_>>();
    let rows = sqlx::query_scalar::<_, String>(POSTGRES_GROUP_INSERT)
        .bind(col(|r| Some(r.guid.clone())))
        .bind(col(|r| Some(r.event.clone())))
        .bind(col(|r| r.action.clone()))
        .bind(unique.iter().map(|p| p.row.installation_id).collect::<Vec<_>>())
        .bind(col(|r| r.repository.clone()))
        .bind(unique.iter().map(|p| p.row.received_at).collect::<Vec<_>>())
        .bind(col(|r| Some(r.status.to_string())))
        .bind(match &refs {
            Some(refs) => refs.iter().map(|r| Some(r.clone())).collect(),
            None => vec![None::<String>; unique.len()],
        })
        .bind(col(|r| Some(r.payload_crc32.clone())))
        .bind(col(|r| Some(r.event_data.clone())))
        .bind(match &refs {
            Some(_) => vec![None::<&[u8]>; unique.len()],
            None => unique.iter().map(|p| Some(p.body.as_ref())).collect(),
        })
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Releases every handler of a group with its outcome, and wakes the workers if work was queued.
fn answer(group: &mut Vec<Pending>, result: anyhow::Result<HashSet<String>>, signals: &IngestSignals) {
    let group_len = group.len();
    let mut queued_work = false;
    match result {
        Ok(fresh) => {
            let mut answered: HashSet<String> = HashSet::with_capacity(group.len());
            for p in group.drain(..) {
                let new = fresh.contains(&p.row.guid) && answered.insert(p.row.guid.clone());
                queued_work |= new && p.row.status == "queued";
                let _ = p.reply.send(Ok(if new { IngestOutcome::Stored } else { IngestOutcome::Duplicate }));
            }
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), deliveries = group.len(), "group commit failed");
            for p in group.drain(..) {
                let _ = p.reply.send(Err(IngestError("database write failed".into())));
            }
        }
    }
    signals.committed(group_len, queued_work);
}

/// A group whose bodies are durable in the archive (`refs[i]` belongs to `group[i]`), on its way
/// to the database.
struct Archived {
    group: Vec<Pending>,
    refs: Option<Vec<String>>,
}

/// The SQLite writer is a two-stage pipeline: one thread appends a group's bodies to the archive,
/// the next commits the rows of every group that has reached it in one transaction. While one
/// group's rows are committed the next group's bodies are being written, and a row is never
/// committed before its body is written.
/// The process's SQLite write lock as the ingest writer takes it: ahead of the workflows' group
/// commits, which stop taking members while it waits (see `group`).
struct IngestLock {
    lock: Arc<tokio::sync::Mutex<()>>,
    groups: Option<Arc<super::group::GroupCommit>>,
}

impl IngestLock {
    fn take(&self) -> tokio::sync::MutexGuard<'_, ()> {
        let _first = self.groups.as_deref().map(super::group::GroupCommit::priority);
        self.lock.blocking_lock()
    }
}

fn sqlite_writer(
    path: &std::path::Path,
    sync: super::SyncMode,
    archive: Option<Arc<PayloadArchive>>,
    mut rx: mpsc::Receiver<Pending>,
    signals: Arc<IngestSignals>,
    lock: IngestLock,
) {
    let (to_db, from_archive) = std::sync::mpsc::sync_channel::<Archived>(4);
    let db_signals = signals.clone();
    let conn = open_sqlite(path, sync);
    let db_stage = std::thread::Builder::new()
        .name("orch-ingest-db".into())
        .spawn(move || {
            while let Ok(first) = from_archive.recv() {
                let mut group = first.group;
                let mut refs = first.refs;
                // Everything that is ready goes into the same transaction.
                while let Ok(more) = from_archive.try_recv() {
                    group.extend(more.group);
                    if let (Some(r), Some(m)) = (refs.as_mut(), more.refs) {
                        r.extend(m);
                    }
                }
                let result = match &conn {
                    Ok(conn) => commit_rows_sqlite(conn, &group, refs.as_deref(), &lock),
                    Err(e) => Err(anyhow::anyhow!("the SQLite ingest connection could not be opened: {e}")),
                };
                answer(&mut group, result, &db_signals);
            }
        })
        .expect("spawn the ingest database thread");

    let mut group: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let refs = match &archive {
            None => Ok(None),
            Some(archive) => {
                let slices: Vec<&[u8]> = group.iter().map(|p| p.body.as_ref()).collect();
                archive.append_batch(&slices).map(Some)
            }
        };
        match refs {
            Ok(refs) => {
                let batch = Archived {
                    group: std::mem::replace(&mut group, Vec::with_capacity(MAX_GROUP)),
                    refs,
                };
                if let Err(unsent) = to_db.send(batch) {
                    let mut group = unsent.0.group;
                    answer(&mut group, Err(anyhow::anyhow!("the ingest database thread has stopped")), &signals);
                }
            }
            Err(e) => answer(&mut group, Err(anyhow::Error::from(e).context("payload archive")), &signals),
        }
    }
    // Every handle is gone: let the database stage commit what it holds, then end.
    drop(to_db);
    let _ = db_stage.join();
}

fn open_sqlite(path: &std::path::Path, sync: super::SyncMode) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    let synchronous = match sync {
        super::SyncMode::Full => "FULL",
        super::SyncMode::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; PRAGMA busy_timeout=15000; PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=0;"
    ))?;
    conn.set_prepared_statement_cache_capacity(8);
    Ok(conn)
}

fn commit_rows_sqlite(
    conn: &rusqlite::Connection,
    group: &[Pending],
    refs: Option<&[String]>,
    lock: &IngestLock,
) -> anyhow::Result<HashSet<String>> {
    let _write = lock.take();
    let tx = conn.unchecked_transaction()?;
    let mut fresh = HashSet::with_capacity(group.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO deliveries (guid, event, action, installation_id, repository, received_at, status, payload_ref, payload_crc32) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (guid) DO NOTHING",
        )?;
        let mut body = tx.prepare_cached("INSERT INTO delivery_bodies (guid, event_data, payload) VALUES (?1, ?2, ?3)")?;
        let mut job =
            tx.prepare_cached("INSERT INTO jobs (kind, delivery_guid, status, run_at, created_at) VALUES (?1, ?2, 'queued', ?3, ?3)")?;
        // A GUID twice in the transaction: the second insert does nothing and it is answered as
        // a duplicate.
        for (i, p) in group.iter().enumerate() {
            let r = &p.row;
            let (inline, reference): (Option<&[u8]>, Option<&str>) = match refs {
                Some(refs) => (None, Some(refs[i].as_str())),
                None => (Some(p.body.as_ref()), None),
            };
            let inserted = insert.execute(rusqlite::params![
                r.guid,
                r.event,
                r.action,
                r.installation_id,
                r.repository,
                r.received_at,
                r.status,
                reference,
                r.payload_crc32,
            ])?;
            if inserted == 1 {
                body.execute(rusqlite::params![r.guid, r.event_data, inline])?;
                if r.status == "queued" {
                    job.execute(rusqlite::params![jobs::KIND_DELIVERY, r.guid, r.received_at])?;
                }
                fresh.insert(r.guid.clone());
            }
        }
    }
    tx.commit()?;
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_high_rate_marks_ingest_busy_for_a_window() {
        let s = IngestSignals::default();
        let t0 = 1_000_000;
        assert!(!s.busy(t0));
        // A steady trickle never counts as pressure.
        for i in 0..50 {
            s.count(t0 + i * 20, 1);
            assert!(!s.busy(t0 + i * 20), "trickle at {i}");
        }
        // A burst within one window does, for one window.
        let t1 = t0 + 10_000;
        for i in 0..BUSY_PER_WINDOW / 10 {
            s.count(t1 + i, 10);
        }
        assert!(s.busy(t1 + 20));
        assert!(!s.busy(t1 + 20 + PRESSURE_WINDOW_MS), "pressure ends with its window");
    }
}
