//! GitHub's budget per installation, shared by every replica through the store (SPEC §11):
//! until when GitHub's rate limit blocks an installation (all requests, or its content-creating
//! ones after a secondary limit), the headroom its latest answers showed, and the content-creating
//! requests sent in the secondary limits' windows.

use super::{Backend, Db, Store};
use sqlx::{Executor, Row};

/// At most `count` content-creating requests per `window_ms` per installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimit {
    pub count: u32,
    pub window_ms: i64,
}

/// The secondary limits orch paces its writes under, with the share of them it leaves unused.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteLimits {
    pub limits: Vec<WriteLimit>,
    /// The margin orch keeps, as a fraction by which it stretches each window (0.1: GitHub's 80 a
    /// minute become 80 per 66 s, its 500 an hour 500 per 66 min). A margin in time rather than
    /// in count: a burst still gets each window's full count, so 1,000 writes under 500 an hour
    /// take a little over one hour, where leaving a tenth of the count unused made it two (the
    /// 451st write would have waited a whole window).
    pub headroom: f64,
}

/// GitHub's documented secondary limits for content-creating requests: 80 a minute, 500 an hour.
pub const DEFAULT_WRITE_LIMITS: &str = "80/60s,500/3600s";
pub const DEFAULT_WRITE_HEADROOM: f64 = 0.1;

impl Default for WriteLimits {
    fn default() -> Self {
        WriteLimits {
            limits: parse_write_limits(DEFAULT_WRITE_LIMITS).expect("the default parses"),
            headroom: DEFAULT_WRITE_HEADROOM,
        }
    }
}

impl WriteLimits {
    /// No pacing (an empty list).
    pub fn none() -> Self {
        WriteLimits {
            limits: Vec::new(),
            headroom: 0.0,
        }
    }

    /// How many writes a limit lets orch send per (stretched) window.
    pub fn usable(&self, limit: &WriteLimit) -> u32 {
        limit.count
    }

    /// A limit's window as orch counts it: GitHub's, stretched by the headroom.
    pub fn window_ms(&self, limit: &WriteLimit) -> i64 {
        limit.window_ms + (limit.window_ms as f64 * self.headroom).round() as i64
    }

    fn longest_window(&self) -> i64 {
        self.limits.iter().map(|l| self.window_ms(l)).max().unwrap_or(0)
    }

    /// The spacing that spreads the shortest window's usable writes evenly over it: how far
    /// apart deferred jobs of one repository are put, so that others fit between them (the
    /// longer windows are left to the write slots themselves).
    pub fn spacing_ms(&self) -> i64 {
        self.limits
            .iter()
            .min_by_key(|l| l.window_ms)
            .map(|l| self.window_ms(l) / i64::from(self.usable(l)))
            .unwrap_or(0)
    }

    /// When the next write may leave, given the send times of this installation's latest writes
    /// (newest first, at least as many as the largest usable count, within the longest window):
    /// None when it may leave now. Pure: the clock is passed in.
    pub fn next_slot(&self, sent_newest_first: &[i64], now: i64) -> Option<i64> {
        self.limits
            .iter()
            .filter_map(|limit| {
                let usable = self.usable(limit) as usize;
                // The usable-th newest write still in the window keeps the window full until it leaves.
                let blocking = *sent_newest_first.get(usable - 1)?;
                let window = self.window_ms(limit);
                (blocking > now - window).then_some(blocking + window)
            })
            .max()
    }
}

/// Parses `COUNT/WINDOW[,COUNT/WINDOW…]` with windows in `ms`, `s`, `m` or `h` (`80/60s,500/1h`).
/// An empty string means no pacing.
pub fn parse_write_limits(text: &str) -> Result<Vec<WriteLimit>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (count, window) = part.split_once('/').ok_or_else(|| format!("`{part}` is not COUNT/WINDOW"))?;
            let count: u32 = count
                .trim()
                .parse()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| format!("`{count}` in `{part}` is not a positive whole number"))?;
            let window = window.trim();
            let split = window.find(|c: char| !c.is_ascii_digit()).unwrap_or(window.len());
            let (number, unit) = window.split_at(split);
            let number: i64 = number
                .parse()
                .map_err(|_| format!("`{window}` in `{part}` is not a window such as 60s"))?;
            let scale = match unit {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return Err(format!("`{window}` in `{part}`: the unit is ms, s, m or h")),
            };
            if number <= 0 {
                return Err(format!("`{window}` in `{part}` is not a positive window"));
            }
            Ok(WriteLimit {
                count,
                window_ms: number * scale,
            })
        })
        .collect()
}

/// What the store holds for an installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub installation_id: i64,
    pub blocked_until: i64,
    pub writes_blocked_until: i64,
    pub remaining: Option<i64>,
    pub limit_total: Option<i64>,
    pub reset_at: Option<i64>,
}

/// Until when (unix ms) GitHub's limit blocks the installation's requests; for a write, its
/// secondary limit's block counts too. None when nothing blocks it at `now`.
pub async fn blocked_until<'c, E: Executor<'c, Database = Db>>(
    conn: E,
    installation: i64,
    write: bool,
    now: i64,
) -> sqlx::Result<Option<i64>> {
    let row = sqlx::query("SELECT blocked_until, writes_blocked_until FROM github_budget WHERE installation_id = $1")
        .bind(installation)
        .fetch_optional(conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (all, writes): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    let until = if write { all.max(writes) } else { all };
    Ok((until > now).then_some(until))
}

/// Records that GitHub's limit blocks the installation until `until` (all requests, or only
/// its content-creating ones). A later block already recorded stands.
pub async fn record_block(store: &Store, installation: i64, until: i64, writes_only: bool, now: i64) -> sqlx::Result<()> {
    let column = if writes_only { "writes_blocked_until" } else { "blocked_until" };
    let sql = format!(
        "INSERT INTO github_budget (installation_id, {column}, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (installation_id) DO UPDATE SET \
         {column} = CASE WHEN excluded.{column} > github_budget.{column} THEN excluded.{column} ELSE github_budget.{column} END, \
         updated_at = excluded.updated_at"
    );
    let _write = store.write_guard().await;
    sqlx::query(&sql)
        .bind(installation)
        .bind(until)
        .bind(now)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Records GitHub's headroom as an answer gave it (callers write it only when it runs low).
pub async fn record_remaining(store: &Store, installation: i64, remaining: i64, limit: i64, reset_at: i64, now: i64) -> sqlx::Result<()> {
    let _write = store.write_guard().await;
    sqlx::query(
        "INSERT INTO github_budget (installation_id, remaining, limit_total, reset_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (installation_id) DO UPDATE SET remaining = excluded.remaining, limit_total = excluded.limit_total, \
         reset_at = excluded.reset_at, updated_at = excluded.updated_at",
    )
    .bind(installation)
    .bind(remaining)
    .bind(limit)
    .bind(reset_at)
    .bind(now)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Takes a slot for one content-creating request of the installation: Ok when it may leave now
/// (the slot is recorded), Err(until) when a block or a full window holds it until then.
/// Replicas serialise per installation on its budget row (Postgres) or the database's single
/// writer (SQLite), so two of them cannot both take the window's last slot.
pub async fn reserve_write(store: &Store, installation: i64, limits: &WriteLimits, now: i64) -> anyhow::Result<Result<(), i64>> {
    let mut tx = store.begin().await?;
    sqlx::query("INSERT INTO github_budget (installation_id, updated_at) VALUES ($1, $2) ON CONFLICT (installation_id) DO NOTHING")
        .bind(installation)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let lock = match store.backend() {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let row = sqlx::query(&format!(
        "SELECT blocked_until, writes_blocked_until FROM github_budget WHERE installation_id = $1{lock}"
    ))
    .bind(installation)
    .fetch_one(&mut *tx)
    .await?;
    let blocked: i64 = row.try_get::<i64, _>(0)?.max(row.try_get(1)?);
    if blocked > now {
        tx.rollback().await?;
        return Ok(Err(blocked));
    }
    if !limits.limits.is_empty() {
        let longest = limits.longest_window();
        sqlx::query("DELETE FROM github_writes WHERE installation_id = $1 AND sent_at <= $2")
            .bind(installation)
            .bind(now - longest)
            .execute(&mut *tx)
            .await?;
        let most = limits.limits.iter().map(|l| limits.usable(l)).max().unwrap_or(1);
        let sent: Vec<i64> =
            sqlx::query("SELECT sent_at FROM github_writes WHERE installation_id = $1 AND sent_at > $2 ORDER BY sent_at DESC LIMIT $3")
                .bind(installation)
                .bind(now - longest)
                .bind(i64::from(most))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<sqlx::Result<_>>()?;
        if let Some(at) = limits.next_slot(&sent, now) {
            tx.rollback().await?;
            return Ok(Err(at));
        }
        sqlx::query("INSERT INTO github_writes (installation_id, sent_at) VALUES ($1, $2)")
            .bind(installation)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Ok(()))
}

/// Every installation's budget row (for `/metrics`).
pub async fn all<'c, E: Executor<'c, Database = Db>>(conn: E) -> sqlx::Result<Vec<Budget>> {
    let rows = sqlx::query(
        "SELECT installation_id, blocked_until, writes_blocked_until, remaining, limit_total, reset_at FROM github_budget ORDER BY installation_id",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Budget {
                installation_id: r.try_get(0)?,
                blocked_until: r.try_get(1)?,
                writes_blocked_until: r.try_get(2)?,
                remaining: r.try_get(3)?,
                limit_total: r.try_get(4)?,
                reset_at: r.try_get(5)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_units_and_refuse_nonsense() {
        assert_eq!(
            parse_write_limits("80/60s, 500/1h").unwrap(),
            vec![
                WriteLimit {
                    count: 80,
                    window_ms: 60_000
                },
                WriteLimit {
                    count: 500,
                    window_ms: 3_600_000
                }
            ]
        );
        assert_eq!(parse_write_limits("80/1s,500/60s").unwrap()[0].window_ms, 1000);
        assert_eq!(parse_write_limits("3/250ms").unwrap()[0].window_ms, 250);
        assert_eq!(parse_write_limits("2/1m").unwrap()[0].window_ms, 60_000);
        assert!(parse_write_limits("").unwrap().is_empty());
        for bad in ["80", "0/60s", "80/60", "80/60d", "x/60s", "80/0s", "80/-1s"] {
            assert!(parse_write_limits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headroom_stretches_each_window_and_keeps_its_count() {
        let limits = WriteLimits::default();
        assert_eq!(limits.usable(&limits.limits[0]), 80);
        assert_eq!(limits.usable(&limits.limits[1]), 500);
        assert_eq!(limits.window_ms(&limits.limits[0]), 66_000);
        assert_eq!(limits.window_ms(&limits.limits[1]), 3_960_000);
        // 80 writes over 66 s: one every 825 ms.
        assert_eq!(limits.spacing_ms(), 825);
        assert_eq!(WriteLimits::none().spacing_ms(), 0);
        // A full minute window frees 66 s after its oldest write, not 60 s.
        let sent: Vec<i64> = (0..80).map(|i| 100_000 - i * 100).collect();
        assert_eq!(limits.next_slot(&sent, 100_001), Some(sent[79] + 66_000));
        // The same 79 writes leave room for one more at once.
        assert_eq!(limits.next_slot(&sent[..79], 100_001), None);
    }

    #[test]
    fn a_full_window_frees_when_its_oldest_counted_write_leaves_it() {
        let limits = WriteLimits {
            limits: parse_write_limits("3/1000ms,5/10000ms").unwrap(),
            headroom: 0.0,
        };
        let now = 50_000;
        assert_eq!(limits.next_slot(&[], now), None);
        assert_eq!(limits.next_slot(&[49_900, 49_800], now), None);
        // Three in the last second: the third newest leaves the window at 49_700 + 1000.
        assert_eq!(limits.next_slot(&[49_900, 49_800, 49_700], now), Some(50_700));
        // The third newest is already out of the second's window.
        assert_eq!(limits.next_slot(&[49_900, 49_800, 48_000], now), None);
        // Five in ten seconds: the second's window is clear, the ten seconds' is not.
        assert_eq!(limits.next_slot(&[49_900, 48_000, 47_000, 46_000, 45_000], now), Some(55_000));
        // Both windows full: the later of the two.
        assert_eq!(limits.next_slot(&[49_990, 49_980, 49_970, 46_000, 45_500], now), Some(55_500));
        // A write exactly one window ago no longer counts.
        assert_eq!(limits.next_slot(&[49_900, 49_800, 49_000], now), None);
        assert_eq!(WriteLimits::none().next_slot(&[now; 10], now), None);
    }
}
