//! Group commit for write transactions on SQLite.
//!
//! SQLite has one writer at a time, and each durable commit is a sync of its log. A workflow
//! step is a handful of short transactions, so under load the writers queue behind each other's
//! commits. Here the writers that are waiting when a transaction ends share its database
//! transaction instead: each is a savepoint in it (its own rollback stays its own), the last of
//! them commits once for all, and every member's `commit` returns only after that commit, so a
//! member never acts on (or answers for) anything that is not durable yet. Nothing is weakened:
//! a group with a durable member (see [`Durability`]) has its log synced before any member's
//! `commit` returns; a group of relaxed members only is committed without the sync.
//!
//! The open transaction travels with the process's write lock from member to member; writers
//! outside the group (single statements, the ingest writer) wait for the lock as before, and get
//! it once the group has committed. A group takes at most [`MAX_MEMBERS`] members or
//! [`MAX_AGE`] of time, which bounds what its first member waits; and none more once the ingest
//! writer waits for the lock, since a webhook's answer waits behind it (processing can wait).

use super::{Backend, Durability, SqliteSync, Tx};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Mutex, OwnedMutexGuard};

const MAX_MEMBERS: usize = 64;
const MAX_AGE: Duration = Duration::from_millis(25);
const SAVEPOINT: &str = "orch_group_member";

/// What a group's commit came to, for the members that wait on it.
type Outcome = Option<Result<(), String>>;

/// The process's group: whether one is open, and who waits to join it.
pub(super) struct GroupCommit {
    state: std::sync::Mutex<Waiting>,
    /// Syncs the log after a commit that a durable member is part of.
    log: Arc<SqliteSync>,
    /// Writers that must not wait for a group to fill (the ingest writer) and wait for the lock.
    priority_waiters: std::sync::atomic::AtomicUsize,
}

/// A priority writer waiting for the write lock; the open group commits at its next member's end.
pub(super) struct Priority<'a>(&'a GroupCommit);

impl Drop for Priority<'_> {
    fn drop(&mut self) {
        self.0.priority_waiters.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Waiting {
    /// A group's transaction is open and in use by a member: a new writer queues to join it.
    open: bool,
    joiners: VecDeque<oneshot::Sender<Open>>,
}

impl GroupCommit {
    pub(super) fn new(log: Arc<SqliteSync>) -> Self {
        GroupCommit {
            state: Default::default(),
            log,
            priority_waiters: Default::default(),
        }
    }

    /// Marks a priority writer as waiting for the lock until the returned value is dropped.
    pub(super) fn priority(&self) -> Priority<'_> {
        self.priority_waiters.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Priority(self)
    }

    fn priority_waits(&self) -> bool {
        self.priority_waiters.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No group is open any more; whoever waited to join takes the write lock instead.
    fn close(&self) {
        let mut w = self.waiting();
        w.open = false;
        w.joiners.clear();
    }
}

/// An open group transaction, with the write lock, on its way from member to member.
struct Open {
    tx: Option<Tx>,
    _guard: OwnedMutexGuard<()>,
    outcome: Arc<watch::Sender<Outcome>>,
    members: usize,
    /// A member needs the commit on disk before it returns (see [`Durability`]).
    durable: bool,
    started: Instant,
    group: Arc<GroupCommit>,
}

impl Open {
    fn tx(&mut self) -> &mut Tx {
        self.tx.as_mut().expect("an open group holds its transaction")
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // Dropped with its transaction (a cancelled future): the transaction rolls back, the
        // members waiting on it are told so by the closed outcome, the joiners start afresh.
        if self.tx.is_some() {
            self.group.close();
        }
    }
}

/// One writer's part of a group: a savepoint in the group's transaction.
pub(super) struct Member {
    open: Option<Open>,
}

/// Joins the open group, or opens one: takes the write lock and begins `BEGIN IMMEDIATE`. A
/// group counts as open from the moment its opener queues for the lock, so the writers that
/// arrive while the previous group commits join the next one instead of queueing one by one.
pub(super) async fn begin(
    group: &Arc<GroupCommit>,
    lock: &Arc<Mutex<()>>,
    pool: &sqlx::AnyPool,
    backend: Backend,
    durability: Durability,
) -> sqlx::Result<Member> {
    let mut open = loop {
        let joined = {
            let mut w = group.waiting();
            if w.open {
                let (send, receive) = oneshot::channel();
                w.joiners.push_back(send);
                Some(receive)
            } else {
                w.open = true;
                None
            }
        };
        match joined {
            Some(receive) => match receive.await {
                Ok(open) => break open,
                // The group filled up or failed: join or open the next.
                Err(_) => continue,
            },
            None => {
                // Until the transaction is open, an opener that fails or is cancelled must not
                // leave the joiners waiting for it.
                let opening = Opening(group);
                let guard = lock.clone().lock_owned().await;
                let tx = match backend {
                    Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
                    Backend::Postgres => pool.begin().await?,
                };
                std::mem::forget(opening);
                break Open {
                    tx: Some(tx),
                    _guard: guard,
                    outcome: Arc::new(watch::channel(None).0),
                    members: 0,
                    durable: false,
                    started: Instant::now(),
                    group: group.clone(),
                };
            }
        }
    };
    open.members += 1;
    open.durable |= durability == Durability::Durable;
    if let Err(e) = sqlx::query(&format!("SAVEPOINT {SAVEPOINT}")).execute(&mut **open.tx()).await {
        abort(open, &e).await;
        return Err(e);
    }
    Ok(Member { open: Some(open) })
}

/// A group being opened; closes it unless the opener gets its transaction.
struct Opening<'a>(&'a GroupCommit);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Member {
    pub(super) fn conn(&self) -> &sqlx::AnyConnection {
        self.open
            .as_ref()
            .and_then(|o| o.tx.as_ref())
            .map(|tx| &**tx)
            .expect("a member holds its group until it ends")
    }

    pub(super) fn conn_mut(&mut self) -> &mut sqlx::AnyConnection {
        self.open.as_mut().expect("a member holds its group until it ends").tx()
    }

    /// Ends the member's part and returns once the group's commit is durable.
    pub(super) async fn commit(mut self) -> sqlx::Result<()> {
        let open = self.open.take().expect("a member holds its group until it ends");
        let mut outcome = open.outcome.subscribe();
        // In a task of its own: a caller that gives up waiting must not strand the group.
        match tokio::spawn(finish(open, true)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(sqlx::Error::Protocol(format!("the group commit task failed: {e}"))),
        }
        let committed = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Ok(())),
            Err(_) => Err("the group's transaction ended without a commit".to_string()),
        };
        committed.map_err(|e| sqlx::Error::Protocol(format!("group commit failed: {e}")))
    }

    /// Undoes the member's part; the group goes on without it.
    pub(super) async fn rollback(mut self) -> sqlx::Result<()> {
        let open = self.open.take().expect("a member holds its group until it ends");
        match tokio::spawn(finish(open, false)).await {
            Ok(r) => r,
            Err(e) => Err(sqlx::Error::Protocol(format!("the group rollback task failed: {e}"))),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Neither committed nor rolled back (an error returned early): rolled back, as a dropped
        // transaction is, without taking the others' work with it.
        if let Some(open) = self.open.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        let _ = finish(open, false).await;
                    });
                }
                Err(_) => drop(open),
            }
        }
    }
}

/// Releases (or rolls back to) the member's savepoint and hands the group on.
async fn finish(mut open: Open, keep: bool) -> sqlx::Result<()> {
    let ended = async {
        if !keep {
            sqlx::query(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                .execute(&mut **open.tx())
                .await?;
        }
        sqlx::query(&format!("RELEASE SAVEPOINT {SAVEPOINT}"))
            .execute(&mut **open.tx())
            .await?;
        sqlx::Result::Ok(())
    }
    .await;
    match ended {
        Ok(()) => {
            pass_on(open).await;
            Ok(())
        }
        Err(e) => {
            abort(open, &e).await;
            Err(e)
        }
    }
}

/// Gives the group to the next writer waiting to join, or, when none waits or the group is
/// full, commits it and tells every member how that went.
async fn pass_on(mut open: Open) {
    loop {
        let next = {
            let mut w = open.group.waiting();
            let full = open.members >= MAX_MEMBERS || open.started.elapsed() >= MAX_AGE || open.group.priority_waits();
            match w.joiners.pop_front() {
                Some(joiner) if !full => Some(joiner),
                _ => {
                    w.open = false;
                    w.joiners.clear();
                    None
                }
            }
        };
        match next {
            Some(joiner) => match joiner.send(open) {
                Ok(()) => return,
                // The joiner stopped waiting: the next one, or the commit.
                Err(back) => open = back,
            },
            None => {
                let tx = open.tx.take().expect("an open group holds its transaction");
                let mut committed = tx.commit().await.map_err(|e| e.to_string());
                let (members, durable, outcome, log) = (open.members, open.durable, open.outcome.clone(), open.group.log.clone());
                // The write lock goes to the next writer before the log is synced: its frames
                // follow this group's, and a sync covers whatever was written before it ended.
                drop(open);
                if committed.is_ok() && durable {
                    committed = match tokio::task::spawn_blocking(move || log.sync()).await {
                        Ok(synced) => synced.map_err(|e| format!("syncing the log: {e}")),
                        Err(e) => Err(format!("the log sync task failed: {e}")),
                    };
                }
                if let Err(e) = &committed {
                    tracing::error!(error = %e, members, "group commit failed");
                }
                outcome.send_replace(Some(committed));
                return;
            }
        }
    }
}

/// Ends the group without committing: its transaction can no longer be trusted.
async fn abort(mut open: Open, error: &sqlx::Error) {
    tracing::error!(error = %error, members = open.members, "a group transaction failed; every member's work is rolled back");
    open.group.close();
    if let Some(tx) = open.tx.take() {
        let _ = tx.rollback().await;
    }
    open.outcome.send_replace(Some(Err(error.to_string())));
}
