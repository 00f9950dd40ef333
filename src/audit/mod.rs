//! The tamper-evident audit log (SPEC §13): one append-only table, `audit_log`, whose rows form a
//! hash chain. Every delivery decision, transition, vote, model call, policy verdict and GitHub
//! write is appended in the same transaction as the effect it records, so the row commits or
//! rolls back with it.
//!
//! # Rows
//!
//! `seq` (1, 2, 3 … assigned here, never a gap: a rolled-back append gives its number to the next
//! one), `at` (unix ms, the caller's clock; not checked for order, replicas' clocks differ), `kind`
//! (see [`kind`]), `actor` (a GitHub login, `orch`, `policy`, `operator:<name>` …), `subject`
//! (`acme/widgets#12`, `workflow:7` …), `details` (JSON, stored as canonical text), `prev_hash`
//! and `hash = sha256_hex(prev_hash ‖ "\n" ‖ canonical line)`. The encoding is documented and
//! pinned in [`chain`]; the first row's `prev_hash` is [`GENESIS`] (64 zeros).
//!
//! # API
//!
//! * [`append`]`(conn, backend, &Entry, now) -> sqlx::Result<seq>` inside the caller's
//!   transaction; [`append_now`]`(store, &Entry) -> anyhow::Result<seq>` in a transaction of its own.
//! * [`page`]`(conn, after_seq, limit, &Filter) -> Vec<Record>`: rows with `seq > after_seq` in
//!   order, at most `limit` (capped at [`PAGE_MAX`]), filtered by exact kind, subject and actor.
//! * [`verify`]`(pool) -> Verdict`: recomputes the whole chain, in pages, and names the first broken
//!   seq ([`Verdict::Broken`]) or the row count and head hash ([`Verdict::Intact`]).
//! * [`export_jsonl`]`(pool, out) -> rows`: every row as one JSON object per line (the fields of
//!   [`Record`], `details` as a JSON value), in seq order.
//!
//! # One chain, whoever appends
//!
//! Appenders are serialized inside the caller's transaction before the last row is read, and the
//! lock is held until that transaction ends:
//! * Postgres: `pg_advisory_xact_lock(`[`LOCK_KEY`]`)`, shared by every orch process on the
//!   database. Assumes READ COMMITTED (the default), where the read after the lock sees the
//!   previous holder's commit. Without the lock two appenders would read the same last row and
//!   both try the same seq; the primary key lets one win and fails the other (the chain never
//!   forks, but appends fail under load) — the lock turns that collision into a queue.
//! * SQLite: one writer at a time already (the process's [`WriteTx`](crate::store::WriteTx)); in
//!   addition the append starts with a write that matches no row, which takes SQLite's own write
//!   lock before the read, so a writer outside `WriteTx` (or another process) waits for it (up to
//!   `busy_timeout`) instead of reading a stale last row and failing with "database is locked".
//!
//! Because the lock lasts until commit, append late in a transaction (after its other writes):
//! appends of other transactions wait for this one to end.
//!
//! # What the database refuses, and what verify finds
//!
//! UPDATE, DELETE (and TRUNCATE on Postgres) are refused by triggers, with an error naming
//! `append-only`. Someone able to drop or disable the triggers (the SQLite file's owner, a Postgres
//! superuser) can still change rows; [`verify`] then reports the first row whose hash, `prev_hash`
//! link or seq is wrong. Removing the newest rows leaves a shorter chain that is intact: compare
//! the reported head hash with one kept elsewhere (an earlier export, a log line) to detect that.
//!
//! # Keyed chain and anchors
//!
//! With `ORCH_AUDIT_KEY` set ([`set_key`], once at start), new rows carry
//! `HMAC-SHA256(key, prev_hash ‖ "\n" ‖ line)` instead of the plain sha256, and [`verify_with`]
//! given the key refuses any row not keyed with it: someone with write access to the database but
//! not the key can no longer rewrite a row and recompute the rest of the chain. Cutting off the
//! newest rows is caught by an [`Anchor`] (`SEQ:HASH`, printed by `orch audit anchor`) kept outside
//! the database: verifying against it checks that row SEQ still exists with that hash. Rows up to
//! an anchor may be plain (written before the key was set): the anchor's hash pins them, because
//! every hash covers the one before it. So to turn the key on for an existing log, take an anchor
//! first and verify with it.

pub mod chain;

use crate::store::{now_ms, Backend, Db, Store, WriteTx};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

pub use chain::GENESIS;

/// The Postgres advisory lock key that serializes appenders: the bytes of `"orchaudt"`.
pub const LOCK_KEY: i64 = 0x6f72_6368_6175_6474;

/// The most rows one [`page`] returns.
pub const PAGE_MAX: i64 = 1000;

/// The kinds orch writes. `kind` is free text; these are the names to use.
pub mod kind {
    /// A webhook delivery accepted, ignored or refused.
    pub const DELIVERY: &str = "delivery";
    /// A workflow state change.
    pub const TRANSITION: &str = "transition";
    /// An approval or rejection (command, reaction, button, API, policy).
    pub const VOTE: &str = "vote";
    /// An `/orch` command refused (not allowed, malformed).
    pub const COMMAND_DENIED: &str = "command_denied";
    /// A model call: prompt hash, tokens, cost.
    pub const MODEL_CALL: &str = "model_call";
    /// A policy gate's decision.
    pub const POLICY_VERDICT: &str = "policy_verdict";
    /// A write to GitHub (or its dry-run record).
    pub const GITHUB_WRITE: &str = "github_write";
    /// An operator action (API, CLI).
    pub const OPERATOR: &str = "operator";
    /// The circuit breaker opened on its own (the error rate reached the threshold).
    pub const BREAKER: &str = "circuit_breaker";
}

/// What to append.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<'a> {
    pub kind: &'a str,
    pub actor: &'a str,
    pub subject: &'a str,
    pub details: serde_json::Value,
}

impl<'a> Entry<'a> {
    pub fn new(kind: &'a str, actor: &'a str, subject: &'a str, details: serde_json::Value) -> Self {
        Entry {
            kind,
            actor,
            subject,
            details,
        }
    }
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub subject: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Exact-match filters of [`page`]; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub actor: Option<String>,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every row checked; `head` is the last row's hash ([`GENESIS`] when the log is empty).
    Intact { rows: i64, head: String },
    /// The first broken link: the row whose hash or `prev_hash` is wrong, or the first missing seq.
    Broken { seq: i64, problem: String },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Intact { rows, head } => write!(f, "intact: {rows} rows, head {head}"),
            Verdict::Broken { seq, problem } => write!(f, "broken at seq {seq}: {problem}"),
        }
    }
}

/// The chain key of this process (`ORCH_AUDIT_KEY`), read by every append. A process-wide
/// setting rather than a parameter because every append site (deliveries, workflows, the API…)
/// must use the same one, and the key belongs to the deployment, not to a caller.
static KEY: std::sync::RwLock<Option<std::sync::Arc<Vec<u8>>>> = std::sync::RwLock::new(None);

/// Sets (or clears) the key new rows are hashed with; call once at start from the configuration.
pub fn set_key(key: Option<&secrecy::SecretString>) {
    use secrecy::ExposeSecret;
    let key = key.map(|k| std::sync::Arc::new(k.expose_secret().as_bytes().to_vec()));
    *KEY.write().unwrap_or_else(|e| e.into_inner()) = key;
}

fn current_key() -> Option<std::sync::Arc<Vec<u8>>> {
    KEY.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A head of the chain kept outside the database: `SEQ:HASH` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::str::FromStr for Anchor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (seq, hash) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not an anchor: expected SEQ:HASH, as `orch audit anchor` prints"))?;
        let seq: i64 = seq
            .parse()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("anchor seq {seq:?} is not a number ≥ 0"))?;
        let valid = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(format!("anchor hash {hash:?} is not 64 lowercase hex digits"));
        }
        Ok(Anchor {
            seq,
            hash: hash.to_string(),
        })
    }
}

const COLUMNS: &str = "seq, at, kind, actor, subject, details, prev_hash, hash";

/// Appends `entry` at time `now` inside the caller's transaction and returns its seq. Takes the
/// appenders' lock (see the module docs), which the caller's transaction holds until it ends.
/// Call it inside a transaction: outside one, the lock would end before the INSERT, and a
/// concurrent appender makes one of the two fail on the seq (the chain never forks).
pub async fn append(conn: &mut AnyConnection, backend: Backend, entry: &Entry<'_>, now: i64) -> sqlx::Result<i64> {
    let seqs = append_many(conn, backend, std::slice::from_ref(entry), now).await?;
    Ok(seqs[0])
}

/// Rows per INSERT statement of [`append_many`] (8 bound values each; well under the bind limits
/// of both databases).
const ROWS_PER_INSERT: usize = 256;

/// Appends `entries` in order, all stamped `now`, as consecutive links of the chain; returns their
/// seqs. The same protocol as [`append`] (which is this with one entry), but the lock, the read
/// of the last link and the savepoint are paid once, and rows go in with multi-row INSERTs: a
/// worker applying a batch of deliveries records them all for about the cost of one.
pub async fn append_many(conn: &mut AnyConnection, backend: Backend, entries: &[Entry<'_>], now: i64) -> sqlx::Result<Vec<i64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // Inside the caller's transaction, one INSERT needs no savepoint: it is atomic by itself,
    // and a caller whose append fails rolls its transaction back (on Postgres a failed
    // statement ends the transaction's usefulness anyway). Each statement saved is a round trip
    // (to sqlx's SQLite thread, or to the Postgres server), and a workflow records about eight.
    // The lock stays: it is what makes appenders outside the store's write transactions queue.
    let stamped: Vec<(Entry<'_>, i64)> = entries.iter().map(|e| (e.clone(), now)).collect();
    if entries.len() <= ROWS_PER_INSERT {
        let last = lock_and_read_last(conn, backend).await?;
        return insert_links(conn, last, &stamped).await;
    }
    let mut tx = conn.begin().await?;
    let last = lock_and_read_last(&mut tx, backend).await?;
    let seqs = insert_links(&mut tx, last, &stamped).await?;
    tx.commit().await?;
    Ok(seqs)
}

/// An entry waiting for its transaction's commit (see [`append_at_commit`]).
#[derive(Debug, Clone)]
pub struct Deferred {
    kind: String,
    actor: String,
    subject: String,
    details: serde_json::Value,
    at: i64,
}

/// Appends `entry`, stamped `at`, when `tx` commits, with every other entry deferred in it:
/// one lock, one read of the last link and one INSERT for all of them, just before the COMMIT.
/// The chain's lock is every appender's queue (on Postgres one lock for every orch process), so
/// it is held only for those round trips, not for the rest of the transaction as [`append`]
/// holds it. Nothing is appended if `tx` rolls back. A transaction that also writes a row that
/// every appender writes (the breaker's) must use [`append`] before that write instead, or the
/// row would be held while the lock is waited for.
pub fn append_at_commit(tx: &mut WriteTx, entry: &Entry<'_>, at: i64) {
    tx.defer_audit(Deferred {
        kind: entry.kind.to_string(),
        actor: entry.actor.to_string(),
        subject: entry.subject.to_string(),
        details: entry.details.clone(),
        at,
    });
}

/// Appends the entries deferred in a transaction (called by [`WriteTx::commit`]).
pub(crate) async fn append_deferred(conn: &mut AnyConnection, backend: Backend, deferred: &[Deferred]) -> sqlx::Result<()> {
    let entries: Vec<(Entry<'_>, i64)> = deferred
        .iter()
        .map(|d| (Entry::new(&d.kind, &d.actor, &d.subject, d.details.clone()), d.at))
        .collect();
    let last = lock_and_read_last(conn, backend).await?;
    insert_links(conn, last, &entries).await?;
    Ok(())
}

/// [`LOCK_KEY`] written out: a simple query has no parameters, and a static text keeps the
/// future `Send` (the test below checks that the two agree).
const POSTGRES_LOCK_AND_READ_LAST: &str =
    "SELECT pg_advisory_xact_lock(8030590385517847668); SELECT seq::text AS last_seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1";

/// Takes the appenders' lock and reads the chain's last link (seq and hash).
///
/// On Postgres in one round trip: the lock is every appender's queue, and each round trip made
/// while holding it is paid by every appender behind it. The two statements go as one simple
/// query; they run in order, and under READ COMMITTED (orch's transactions) the SELECT takes its
/// snapshot after the lock is granted, so it sees the previous appender's commit.
async fn lock_and_read_last(conn: &mut AnyConnection, backend: Backend) -> sqlx::Result<Option<(i64, String)>> {
    let rows = match backend {
        Backend::Postgres => {
            // The lock's row (one column) comes first; the link's row, if any, has two.
            // A bare text has no arguments, so sqlx sends it as a simple query.
            (&mut *conn)
                .fetch_all(POSTGRES_LOCK_AND_READ_LAST)
                .await?
                .into_iter()
                .filter(|r| r.columns().len() == 2)
                .collect::<Vec<_>>()
        }
        Backend::Sqlite => {
            lock_chain(conn, backend).await?;
            sqlx::query("SELECT CAST(seq AS TEXT) AS last_seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_all(&mut *conn)
                .await?
        }
    };
    match rows.first() {
        Some(row) => {
            let seq: String = row.try_get(0)?;
            let seq = seq.parse::<i64>().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            Ok(Some((seq, row.try_get(1)?)))
        }
        None => Ok(None),
    }
}

/// Takes the appenders' lock, held until the caller's transaction ends. [`append`] takes it
/// itself; a transaction that also locks a row other appenders write takes it first, so that
/// the two are always taken in the same order.
pub async fn lock_chain(conn: &mut AnyConnection, backend: Backend) -> sqlx::Result<()> {
    match backend {
        Backend::Postgres => {
            // Waits for the previous appender's transaction to end.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LOCK_KEY)
                .execute(&mut *conn)
                .await?;
        }
        Backend::Sqlite => {
            // A write that matches no row (so no trigger fires) takes SQLite's write lock now,
            // before the last row is read (a no-op inside `BEGIN IMMEDIATE`, which holds it).
            sqlx::query("UPDATE audit_log SET seq = seq WHERE 0 = 1")
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Inserts `entries` after the chain's last link `last` (the caller holds the lock).
async fn insert_links(conn: &mut AnyConnection, last: Option<(i64, String)>, entries: &[(Entry<'_>, i64)]) -> sqlx::Result<Vec<i64>> {
    let (mut seq, mut prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let key = current_key();
    let mut seqs = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from("INSERT INTO audit_log (seq, at, kind, actor, subject, details, prev_hash, hash) VALUES ");
        let mut rows = Vec::with_capacity(chunk.len());
        for (i, (entry, at)) in chunk.iter().enumerate() {
            let details = chain::canonical_json(&entry.details);
            let hash = chain::hash_for(
                key.as_deref().map(Vec::as_slice),
                &prev_hash,
                &chain::canonical_line(seq, *at, entry.kind, entry.actor, entry.subject, &details),
            );
            let b = i * 8;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8
            ));
            let next = hash.clone();
            rows.push((seq, *at, entry, details, std::mem::replace(&mut prev_hash, next), hash));
            seqs.push(seq);
            seq += 1;
        }
        let mut query = sqlx::query(&sql);
        for (seq, at, entry, details, prev, hash) in rows {
            query = query
                .bind(seq)
                .bind(at)
                .bind(entry.kind.to_string())
                .bind(entry.actor.to_string())
                .bind(entry.subject.to_string())
                .bind(details)
                .bind(prev)
                .bind(hash);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(seqs)
}

/// Appends `entry`, stamped now, in a write transaction of its own; returns its seq. For records
/// of things that are not database writes (a model call, a refused command).
pub async fn append_now(store: &Store, entry: &Entry<'_>) -> anyhow::Result<i64> {
    let mut tx = store.begin().await?;
    let seq = append(&mut tx, store.backend(), entry, now_ms())
        .await
        .with_context(|| format!("appending a {} record to the audit log", entry.kind))?;
    tx.commit().await.context("committing an audit record")?;
    Ok(seq)
}

fn record_from(r: &AnyRow) -> sqlx::Result<Record> {
    let details: String = r.try_get(5)?;
    Ok(Record {
        seq: r.try_get(0)?,
        at: r.try_get(1)?,
        kind: r.try_get(2)?,
        actor: r.try_get(3)?,
        subject: r.try_get(4)?,
        details: serde_json::from_str(&details).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        prev_hash: r.try_get(6)?,
        hash: r.try_get(7)?,
    })
}

/// Rows with `seq > after_seq` matching `filter`, in seq order, at most `limit` (0 to
/// [`PAGE_MAX`]). The next page starts after the last seq returned.
pub async fn page<'c, E: Executor<'c, Database = Db>>(conn: E, after_seq: i64, limit: i64, filter: &Filter) -> sqlx::Result<Vec<Record>> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1");
    let mut values = Vec::new();
    for (column, value) in [("kind", &filter.kind), ("subject", &filter.subject), ("actor", &filter.actor)] {
        if let Some(v) = value {
            values.push(v.clone());
            sql.push_str(&format!(" AND {column} = ${}", values.len() + 1));
        }
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT ${}", values.len() + 2));
    let mut query = sqlx::query(&sql).bind(after_seq);
    for v in values {
        query = query.bind(v);
    }
    let rows = query.bind(limit.clamp(0, PAGE_MAX)).fetch_all(conn).await?;
    rows.iter().map(record_from).collect()
}

/// [`verify_with`] with this process's key (see [`set_key`]) and no anchor.
pub async fn verify(pool: &AnyPool) -> anyhow::Result<Verdict> {
    let key = current_key();
    verify_with(pool, key.as_deref().map(Vec::as_slice), None).await
}

/// The head of an intact chain as an [`Anchor`] (`0:GENESIS` for an empty log); an error naming
/// the break when the chain is broken, since anchoring a broken chain would vouch for it.
pub async fn anchor(pool: &AnyPool) -> anyhow::Result<Anchor> {
    match verify(pool).await? {
        Verdict::Intact { rows, head } => Ok(Anchor { seq: rows, hash: head }),
        broken @ Verdict::Broken { .. } => anyhow::bail!("not anchoring: the audit log is {broken}"),
    }
}

/// Recomputes the chain from row 1, a page at a time, checking that seqs run 1, 2, 3 … without a
/// gap, that each `prev_hash` is the previous row's `hash` and that each `hash` matches its row.
/// With `key`, every hash must be the keyed one, except rows up to `anchor` (which the anchor's
/// hash pins); with `anchor`, row `anchor.seq` must exist and carry `anchor.hash`. Names the first
/// broken seq; a missing row is named by its own (absent) seq.
pub async fn verify_with(pool: &AnyPool, key: Option<&[u8]>, anchor: Option<&Anchor>) -> anyhow::Result<Verdict> {
    let mut expected = 1i64;
    let mut prev = GENESIS.to_string();
    let pinned_up_to = anchor.map_or(0, |a| a.seq);
    if let Some(a) = anchor.filter(|a| a.seq == 0) {
        if a.hash != GENESIS {
            return Ok(Verdict::Broken {
                seq: 0,
                problem: format!("anchor 0:{} is not the empty log's head (64 zeros)", a.hash),
            });
        }
    }
    loop {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"))
            .bind(expected - 1)
            .bind(PAGE_MAX)
            .fetch_all(pool)
            .await
            .context("reading the audit log")?;
        if rows.is_empty() {
            let rows = expected - 1;
            if let Some(a) = anchor.filter(|a| a.seq > rows) {
                let problem = if rows + 1 == a.seq {
                    format!("row {} is missing: the log ends at seq {rows}, but the anchor {a} was taken when row {} existed; the tail was cut off", a.seq, a.seq)
                } else {
                    format!("rows {} to {} are missing: the log ends at seq {rows}, but the anchor {a} was taken when row {} existed; the tail was cut off", rows + 1, a.seq, a.seq)
                };
                return Ok(Verdict::Broken { seq: rows + 1, problem });
            }
            return Ok(Verdict::Intact { rows, head: prev });
        }
        for r in &rows {
            let seq: i64 = r.try_get(0)?;
            if seq != expected {
                let problem = if expected == 1 {
                    format!("row 1 is missing: the log starts at seq {seq}")
                } else {
                    format!("row {expected} is missing: row {} is followed by row {seq}", expected - 1)
                };
                return Ok(Verdict::Broken { seq: expected, problem });
            }
            let (at, kind, actor, subject, details, prev_hash, hash): (i64, String, String, String, String, String, String) = (
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
            );
            if prev_hash != prev {
                let problem = if seq == 1 {
                    format!("prev_hash is {prev_hash}, not the genesis value (64 zeros)")
                } else {
                    format!("prev_hash is {prev_hash}, but row {} has hash {prev}", seq - 1)
                };
                return Ok(Verdict::Broken { seq, problem });
            }
            let line = chain::canonical_line(seq, at, &kind, &actor, &subject, &details);
            let plain = chain::link_hash(&prev_hash, &line);
            if let Some(key) = key {
                let keyed = chain::keyed_link_hash(key, &prev_hash, &line);
                // A plain row is accepted only where an anchor pins it: written before the key
                // was set. Anywhere else it is what someone without the key would write.
                if hash != keyed && !(hash == plain && seq <= pinned_up_to) {
                    let problem = if hash == plain {
                        "hash is plain sha256, not keyed with ORCH_AUDIT_KEY: the row was written or rewritten by someone without the key (rows written before the key was set verify only up to an anchor taken before it)".to_string()
                    } else {
                        format!("hash is {hash}, but the row's contents hash (keyed) to {keyed}: the row was changed, or hashed with another key")
                    };
                    return Ok(Verdict::Broken { seq, problem });
                }
            } else if plain != hash {
                return Ok(Verdict::Broken {
                    seq,
                    problem: format!("hash is {hash}, but the row's contents hash to {plain}: the row was changed (or it was written with ORCH_AUDIT_KEY set; verify with the key)"),
                });
            }
            if let Some(a) = anchor.filter(|a| a.seq == seq && a.hash != hash) {
                return Ok(Verdict::Broken {
                    seq,
                    problem: format!("hash is {hash}, but the anchor {a} says otherwise: the log was rewritten up to the anchor"),
                });
            }
            prev = hash;
            expected += 1;
        }
    }
}

/// Writes every row, in seq order, as one JSON object per line (a [`Record`]); returns the count.
pub async fn export_jsonl(pool: &AnyPool, out: &mut impl std::io::Write) -> anyhow::Result<i64> {
    let mut after = 0;
    let mut written = 0;
    loop {
        let records = page(pool, after, PAGE_MAX, &Filter::default())
            .await
            .context("reading the audit log")?;
        let Some(last) = records.last() else {
            out.flush().context("writing the audit export")?;
            return Ok(written);
        };
        after = last.seq;
        for record in &records {
            serde_json::to_writer(&mut *out, record).context("writing the audit export")?;
            out.write_all(b"\n").context("writing the audit export")?;
            written += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_postgres_lock_statement_takes_the_appenders_lock_key() {
        assert!(super::POSTGRES_LOCK_AND_READ_LAST.starts_with(&format!("SELECT pg_advisory_xact_lock({});", super::LOCK_KEY)));
    }
}
