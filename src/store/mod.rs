//! The store: SQLite (embedded default) or PostgreSQL (production, several replicas), one set of
//! runtime-checked queries through sqlx's `Any` driver. Queries are functions over an executor so
//! that they compose inside transactions. Times are unix milliseconds in BIGINT columns, the one
//! representation both backends agree on.

pub mod actions;
pub mod archive;
pub mod deliveries;
pub mod github_budget;
mod group;
pub mod health;
pub mod ingest;
pub mod installations;
pub mod jobs;
pub mod model_calls;
pub mod policies;
pub mod read_cache;
pub mod server_keys;
pub mod trigger_runs;
pub mod workflows;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use sqlx::Any as Db;
pub type Tx = sqlx::Transaction<'static, Db>;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a connection talks to.
    pub fn of(conn: &sqlx::AnyConnection) -> Backend {
        if conn.backend_name().eq_ignore_ascii_case("postgresql") || conn.backend_name().eq_ignore_ascii_case("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// How the SQLite log is synced at commit (`synchronous`); Postgres keeps its server setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Full,
    Normal,
}

/// Whether a write transaction's commit must be on disk when `commit` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Durable,
    Relaxed,
}

/// Syncs the SQLite log (`<file>-wal`). The pool's connections commit with `synchronous=NORMAL`,
/// which writes a commit to the log without syncing it; syncing the log afterwards makes that
/// commit, and every one before it, durable, as `synchronous=FULL` would have at each commit.
/// Concurrent callers share one sync: whoever arrives while one runs waits for the next.
pub(crate) struct SqliteSync {
    wal: std::path::PathBuf,
    /// `ORCH_DURABILITY=os` syncs nothing.
    enabled: bool,
    state: std::sync::Mutex<Syncs>,
    done: std::sync::Condvar,
}

/// Syncs started and finished (numbered 1, 2, …): a caller needs one that started after it
/// arrived; the number and error of the latest that failed.
#[derive(Default)]
struct Syncs {
    started: u64,
    finished: u64,
    failed: Option<(u64, String)>,
}

impl SqliteSync {
    fn new(db: &std::path::Path, sync: SyncMode) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        SqliteSync {
            wal: wal.into(),
            enabled: sync == SyncMode::Full,
            state: std::sync::Mutex::new(Syncs::default()),
            done: std::sync::Condvar::new(),
        }
    }

    /// Blocks until a sync that started after this call has finished.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A sync already running may have missed this caller's commit: it needs the next one.
        let needed = state.started + 1;
        loop {
            if let Some((ticket, error)) = &state.failed {
                if *ticket >= needed {
                    return Err(std::io::Error::other(error.clone()));
                }
            }
            if state.finished >= needed {
                return Ok(());
            }
            if state.started == state.finished {
                state.started += 1;
                let ticket = state.started;
                drop(state);
                let result = match std::fs::OpenOptions::new().write(true).open(&self.wal) {
                    Ok(file) => file.sync_data(),
                    // No log yet: nothing was written through it, so nothing waits to be synced.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                };
                let mut after = self.state.lock().unwrap_or_else(|p| p.into_inner());
                after.finished = ticket;
                if let Err(e) = &result {
                    after.failed = Some((ticket, e.to_string()));
                }
                self.done.notify_all();
                return result;
            }
            state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time. Writers of this process queue here, in order, instead
    /// of colliding inside SQLite, whose busy handler sleeps and retries (and turns contention
    /// into latency spikes). None on Postgres, whose row locks do the job.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// SQLite: the write transactions waiting for the write lock share one commit (see [`group`]).
    /// Not on Postgres: there a group's long transaction would hold the audit chain's lock and its
    /// row locks across members, and replicas waiting on each other's groups deadlock.
    group: Option<Arc<group::GroupCommit>>,
    /// SQLite: syncs the log after the commits that must be durable.
    log_sync: Option<Arc<SqliteSync>>,
    /// The SQLite file and sync mode, for the ingest writer's own connection.
    sqlite: Option<(std::path::PathBuf, SyncMode)>,
    /// The Postgres URL, for the ingest writer's own connection. Never logged: it may hold a password.
    postgres_url: Option<String>,
}

/// A write transaction. On SQLite it is a member of a group commit (see [`group`]) that holds the
/// process's write lock; on Postgres a transaction of its own. `commit` returns once its work is
/// durable either way.
pub struct WriteTx {
    inner: Inner,
    /// Audit entries appended when the transaction commits ([`crate::audit::append_at_commit`]).
    audit: Vec<crate::audit::Deferred>,
}

enum Inner {
    Own(Tx),
    Member(group::Member),
}

impl WriteTx {
    fn new(inner: Inner) -> Self {
        WriteTx { inner, audit: Vec::new() }
    }

    pub async fn commit(mut self) -> sqlx::Result<()> {
        if !self.audit.is_empty() {
            let deferred = std::mem::take(&mut self.audit);
            let backend = Backend::of(&self);
            crate::audit::append_deferred(&mut self, backend, &deferred).await?;
        }
        match self.inner {
            Inner::Own(tx) => tx.commit().await,
            Inner::Member(m) => m.commit().await,
        }
    }

    pub(crate) fn defer_audit(&mut self, entry: crate::audit::Deferred) {
        self.audit.push(entry);
    }

    pub async fn rollback(self) -> sqlx::Result<()> {
        match self.inner {
            Inner::Own(tx) => tx.rollback().await,
            Inner::Member(m) => m.rollback().await,
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        match &self.inner {
            Inner::Own(tx) => tx,
            Inner::Member(m) => m.conn(),
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.inner {
            Inner::Own(tx) => tx,
            Inner::Member(m) => m.conn_mut(),
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend.name())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SQLite URLs get `mode=rwc` so that the embedded default creates its file on first start.
fn normalise_url(url: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rwc")
    } else {
        url.to_string()
    }
}

/// The file of a `sqlite:` URL.
fn sqlite_file(url: &str) -> std::path::PathBuf {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    std::path::PathBuf::from(rest.split('?').next().unwrap_or(rest))
}

impl Store {
    /// Connects; does not migrate (see [`Store::migrate`]).
    pub async fn connect(url: &str, sync: SyncMode) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = normalise_url(url);
        let options = AnyConnectOptions::from_str(&url)
            .context("ORCH_DATABASE_URL: not a database URL")?
            .disable_statement_logging();
        let max = match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Checkpoints run in a background task (see `checkpoint_loop`), never inside
                        // a commit that a webhook answer waits for. The pool's commits do not sync
                        // the log themselves: the store syncs it after the commits that must be
                        // durable (see `SqliteSync`), whatever `sync` says.
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=15000; \
                             PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=0;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to the {} database named by ORCH_DATABASE_URL", backend.name()))?;
        let write_lock = (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let sqlite = (backend == Backend::Sqlite).then(|| (sqlite_file(&url), sync));
        let log_sync = sqlite.as_ref().map(|(path, sync)| Arc::new(SqliteSync::new(path, *sync)));
        let group = log_sync.as_ref().map(|log| Arc::new(group::GroupCommit::new(log.clone())));
        let postgres_url = (backend == Backend::Postgres).then(|| url.clone());
        Ok(Store {
            pool,
            backend,
            write_lock,
            group,
            log_sync,
            sqlite,
            postgres_url,
        })
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await.context("running database migrations")?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that writes. Use it (or [`Store::write_guard`]) for every write.
    ///
    /// On SQLite the transaction is `BEGIN IMMEDIATE`: it takes the database's write lock at once
    /// (waiting up to `busy_timeout` for another process or connection that holds it). A deferred
    /// transaction that reads first and writes later fails with SQLITE_BUSY_SNAPSHOT ("database is
    /// locked", no waiting) when another connection committed in between — the in-process mutex
    /// does not cover a second process such as `orch circuit reset`. The writers waiting for the
    /// lock share that transaction and its one commit, each in a savepoint of its own.
    ///
    /// Its commit is durable (it survives a power loss) when `commit` returns.
    pub async fn begin(&self) -> anyhow::Result<WriteTx> {
        self.begin_with(Durability::Durable).await
    }

    /// A write transaction whose commit need not reach the disk before `commit` returns: orch's
    /// own bookkeeping between two effects (a workflow's transitions, a job completed), which a
    /// power loss may undo, so that the step runs again. Every commit made durable later (by
    /// [`Store::begin`] or [`Store::sync`]) makes the relaxed ones before it durable too, since
    /// the log is written in order; so nothing orch did outside (a GitHub write, a model call,
    /// an answer) can outlive the record that it was started. A crash of orch alone loses
    /// nothing either way: the commit is in the operating system's hands (on Postgres, the
    /// server's: `synchronous_commit = off` for this transaction).
    pub async fn begin_relaxed(&self) -> anyhow::Result<WriteTx> {
        self.begin_with(Durability::Relaxed).await
    }

    async fn begin_with(&self, durability: Durability) -> anyhow::Result<WriteTx> {
        let inner = match (&self.group, &self.write_lock) {
            (Some(group), Some(lock)) => Inner::Member(group::begin(group, lock, &self.pool, self.backend, durability).await?),
            _ => {
                let tx = match durability {
                    Durability::Durable => self.pool.begin().await?,
                    // Postgres: the commit does not wait for its log flush; a later synchronous
                    // commit flushes the log up to it and beyond. It matters more than the flush
                    // itself: a transaction that appends to the audit chain holds the chain's
                    // lock until its commit returns, so every appender would queue behind
                    // each flush (1,000 triages took 51 s instead of 14 s). Sent with the BEGIN
                    // as one simple query: one round trip, not two.
                    Durability::Relaxed => self.pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await?,
                };
                Inner::Own(tx)
            }
        };
        Ok(WriteTx::new(inner))
    }

    /// Makes every write committed so far durable (SQLite: syncs the log, which relaxed commits
    /// and single statements leave to the operating system). Call it before an effect outside
    /// the database that a write committed outside [`Store::begin`] must survive, such as the
    /// lease that says a GitHub write is being attempted. On Postgres single statements commit
    /// synchronously already.
    pub async fn sync(&self) -> anyhow::Result<()> {
        match &self.log_sync {
            Some(log) => {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.sync())
                    .await
                    .context("the log sync task failed")?
                    .context("syncing the SQLite log")
            }
            None => Ok(()),
        }
    }

    /// Holds the SQLite write lock for a single writing statement run on the pool.
    pub async fn write_guard(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        }
    }

    /// The process's SQLite write lock, for writers on threads of their own.
    pub fn write_lock(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.write_lock.clone()
    }

    /// The SQLite group commit, which the ingest writer asks to yield the lock (None on Postgres).
    fn group_commit(&self) -> Option<Arc<group::GroupCommit>> {
        self.group.clone()
    }

    /// The SQLite file and its sync mode (None on Postgres).
    pub fn sqlite_file(&self) -> Option<&(std::path::PathBuf, SyncMode)> {
        self.sqlite.as_ref()
    }

    /// A typed Postgres connection pool of `size` for a writer of its own (None on SQLite).
    pub async fn postgres_pool(&self, size: u32) -> anyhow::Result<Option<sqlx::PgPool>> {
        match &self.postgres_url {
            None => Ok(None),
            Some(url) => Ok(Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(size)
                    .connect(url)
                    .await
                    .context("cannot connect to the postgres database named by ORCH_DATABASE_URL")?,
            )),
        }
    }

    pub async fn close(&self) {
        if self.backend == Backend::Sqlite {
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await;
        }
        self.pool.close().await;
    }

    /// SQLite only: copy the WAL into the database file off the answer path, regularly, so the
    /// log stays short without any commit paying for a checkpoint.
    pub async fn checkpoint_loop(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.backend != Backend::Sqlite {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
    }
}
