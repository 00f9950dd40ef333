//! Queries on the `deliveries` table.

use super::Db;
use sqlx::{Executor, Row};
use std::collections::HashSet;

/// Where a delivery's raw body is kept.
#[derive(Debug, Clone)]
pub enum PayloadLocation {
    /// Kept in the `payload` column (shared with the handler, not copied until bound).
    Inline(axum::body::Bytes),
    /// Kept in the payload archive; the reference is `segment:offset:length`.
    Archived(String),
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub guid: String,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<i64>,
    pub repository: Option<String>,
    pub received_at: i64,
    /// `queued` when the event needs work, otherwise `ignored`.
    pub status: &'static str,
    pub event_data: String,
    pub payload_crc32: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub guid: String,
    pub event: String,
    pub action: Option<String>,
    pub installation_id: Option<i64>,
    pub repository: Option<String>,
    pub received_at: i64,
    pub status: String,
    pub event_data: String,
    pub payload_ref: Option<String>,
    pub payload_crc32: String,
    pub processed_at: Option<i64>,
    pub process_count: i64,
    pub error: Option<String>,
}

/// Statement sizes used for multi-row inserts: a handful of distinct statements keeps the
/// prepared-statement caches warm whatever the batch size.
pub(crate) const CHUNKS: [usize; 4] = [64, 16, 4, 1];

pub(crate) fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for size in CHUNKS {
        while n >= size {
            out.push(size);
            n -= size;
        }
    }
    out
}

pub(crate) fn values_clause(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    let mut n = 1;
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            s.push('$');
            s.push_str(&n.to_string());
            n += 1;
        }
        s.push(')');
    }
    s
}

/// Inserts deliveries that are not stored yet; returns the GUIDs that were new.
/// `payloads[i]` belongs to `rows[i]`. GUIDs must be unique within `rows`.
pub async fn insert_new(
    conn: &mut sqlx::AnyConnection,
    rows: &[NewDelivery],
    payloads: &[PayloadLocation],
) -> sqlx::Result<HashSet<String>> {
    let mut inserted = HashSet::with_capacity(rows.len());
    let mut start = 0;
    for size in chunk_sizes(rows.len()) {
        let sql = format!(
            "INSERT INTO deliveries (guid, event, action, installation_id, repository, received_at, status, payload_ref, payload_crc32) \
             VALUES {} ON CONFLICT (guid) DO NOTHING RETURNING guid",
            values_clause(size, 9)
        );
        let mut q = sqlx::query(&sql);
        for (row, payload) in rows[start..start + size].iter().zip(&payloads[start..start + size]) {
            let reference = match payload {
                PayloadLocation::Inline(_) => None,
                PayloadLocation::Archived(r) => Some(r.clone()),
            };
            q = q
                .bind(row.guid.clone())
                .bind(row.event.clone())
                .bind(row.action.clone())
                .bind(row.installation_id)
                .bind(row.repository.clone())
                .bind(row.received_at)
                .bind(row.status)
                .bind(reference)
                .bind(row.payload_crc32.clone());
        }
        for r in q.fetch_all(&mut *conn).await? {
            inserted.insert(r.try_get::<String, _>(0)?);
        }
        start += size;
    }
    // Bodies only for the rows that were new: a duplicate must not touch the first one's.
    let fresh: Vec<usize> = (0..rows.len()).filter(|i| inserted.contains(&rows[*i].guid)).collect();
    let mut start = 0;
    for size in chunk_sizes(fresh.len()) {
        let sql = format!(
            "INSERT INTO delivery_bodies (guid, event_data, payload) VALUES {}",
            values_clause(size, 3)
        );
        let mut q = sqlx::query(&sql);
        for i in &fresh[start..start + size] {
            let inline = match &payloads[*i] {
                PayloadLocation::Inline(b) => Some(b.to_vec()),
                PayloadLocation::Archived(_) => None,
            };
            q = q.bind(rows[*i].guid.clone()).bind(rows[*i].event_data.clone()).bind(inline);
        }
        q.execute(&mut *conn).await?;
        start += size;
    }
    Ok(inserted)
}

const COLUMNS: &str = "d.guid, d.event, d.action, d.installation_id, d.repository, d.received_at, d.status, b.event_data, \
                       d.payload_ref, d.payload_crc32, d.processed_at, d.process_count, d.error";
const FROM: &str = "deliveries d JOIN delivery_bodies b ON b.guid = d.guid";

fn record(r: &sqlx::any::AnyRow) -> sqlx::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        guid: r.try_get(0)?,
        event: r.try_get(1)?,
        action: r.try_get(2)?,
        installation_id: r.try_get(3)?,
        repository: r.try_get(4)?,
        received_at: r.try_get(5)?,
        status: r.try_get(6)?,
        event_data: r.try_get(7)?,
        payload_ref: r.try_get(8)?,
        payload_crc32: r.try_get(9)?,
        processed_at: r.try_get(10)?,
        process_count: r.try_get(11)?,
        error: r.try_get(12)?,
    })
}

pub async fn get<'c, E: Executor<'c, Database = Db>>(conn: E, guid: &str) -> sqlx::Result<Option<DeliveryRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE d.guid = $1");
    sqlx::query(&sql)
        .bind(guid.to_string())
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(record)
        .transpose()
}

/// The raw body when it is kept inline in the database.
pub async fn inline_payload<'c, E: Executor<'c, Database = Db>>(conn: E, guid: &str) -> sqlx::Result<Option<Vec<u8>>> {
    let row = sqlx::query("SELECT payload FROM delivery_bodies WHERE guid = $1")
        .bind(guid.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(r) => r.try_get(0)?,
        None => None,
    })
}

/// A delivery's raw body, wherever it is kept: the archive (checked against its checksum) or
/// the database. None when no such delivery is stored.
pub async fn raw_payload(
    pool: &sqlx::AnyPool,
    archive: Option<&super::archive::PayloadArchive>,
    guid: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(d) = get(pool, guid).await? else {
        return Ok(None);
    };
    match (&d.payload_ref, archive) {
        (Some(reference), Some(archive)) => archive.read(reference, &d.payload_crc32).map(Some),
        (Some(_), None) => anyhow::bail!("delivery {guid} is in the payload archive, which is not open here"),
        (None, _) => Ok(inline_payload(pool, guid).await?),
    }
}

/// Every delivery, oldest first (tests, the demo, the conformance check of the crash test).
pub async fn list<'c, E: Executor<'c, Database = Db>>(conn: E, limit: i64) -> sqlx::Result<Vec<DeliveryRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM {FROM} ORDER BY d.received_at, d.guid LIMIT $1");
    sqlx::query(&sql).bind(limit).fetch_all(conn).await?.iter().map(record).collect()
}

pub async fn mark_processed<'c, E: Executor<'c, Database = Db>>(conn: E, guid: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE deliveries SET status = 'processed', processed_at = $1, process_count = process_count + 1, error = NULL WHERE guid = $2",
    )
    .bind(now)
    .bind(guid.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// [`mark_processed`] for several deliveries in one statement.
pub async fn mark_many_processed<'c, E: Executor<'c, Database = Db>>(conn: E, guids: &[&str], now: i64) -> sqlx::Result<()> {
    if guids.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = (0..guids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "UPDATE deliveries SET status = 'processed', processed_at = $1, process_count = process_count + 1, error = NULL WHERE guid IN ({})",
        list.join(",")
    );
    let mut q = sqlx::query(&sql).bind(now);
    for guid in guids {
        q = q.bind(guid.to_string());
    }
    q.execute(conn).await?;
    Ok(())
}

/// (guid, event_data) of several deliveries, in no particular order: what a worker reads.
pub async fn events_of<'c, E: Executor<'c, Database = Db>>(conn: E, guids: &[&str]) -> sqlx::Result<Vec<(String, String)>> {
    if guids.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<String> = (0..guids.len()).map(|i| format!("${}", i + 1)).collect();
    let sql = format!("SELECT guid, event_data FROM delivery_bodies WHERE guid IN ({})", list.join(","));
    let mut q = sqlx::query(&sql);
    for guid in guids {
        q = q.bind(guid.to_string());
    }
    q.fetch_all(conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

pub async fn mark_failed<'c, E: Executor<'c, Database = Db>>(conn: E, guid: &str, error: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE deliveries SET status = 'failed', error = $1 WHERE guid = $2")
        .bind(error.to_string())
        .bind(guid.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Number of deliveries per status.
pub async fn count_by_status<'c, E: Executor<'c, Database = Db>>(conn: E) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT status, COUNT(*) FROM deliveries GROUP BY status ORDER BY status")
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_covers_every_row_with_few_statement_shapes() {
        for n in 0..300 {
            let sizes = chunk_sizes(n);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| CHUNKS.contains(s)));
        }
        assert_eq!(values_clause(2, 2), "($1,$2),($3,$4)");
    }
}
