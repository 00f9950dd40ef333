//! Missed deliveries (SPEC §11): GitHub keeps the App's webhook deliveries for three days and
//! redelivers one on request. On start and periodically, orch lists them and asks again for every
//! delivery that orch's endpoint did not accept (no 2xx for any attempt of its GUID) and whose
//! GUID orch never stored. A redelivery reuses the GUID, so one that arrives twice is still
//! processed once.

use super::auth::parse_timestamp;
use super::client::{ClientError, GithubClient, HookDelivery, HOOK_DELIVERIES_PER_PAGE};
use crate::store::{deliveries, Store};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long GitHub keeps deliveries (and accepts redelivery requests for them).
pub const GITHUB_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);
/// A bound on the pages read per run (100 deliveries each), whatever GitHub answers.
pub const MAX_PAGES: usize = 200;

/// What one run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Delivery attempts listed within the window.
    pub seen: usize,
    /// GUIDs with no successful attempt.
    pub failed: usize,
    /// GUIDs GitHub was asked to redeliver, newest first.
    pub redelivered: Vec<String>,
    /// Failed GUIDs orch had stored anyway (its answer was lost on the way back): not asked.
    pub already_stored: usize,
    /// Redelivery requests GitHub refused or that did not reach it (tried again next run).
    pub errors: usize,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The start of GitHub's window now, in unix seconds.
pub fn window_start() -> u64 {
    unix_now().saturating_sub(GITHUB_WINDOW.as_secs())
}

/// Lists the App's deliveries at or after `since` (unix seconds; never before GitHub's window)
/// and asks GitHub to redeliver each failed one orch never stored, once per GUID.
pub async fn reconcile(client: &GithubClient, store: &Store, since: u64) -> Result<Report, ClientError> {
    let since = since.max(window_start());
    let mut listed: Vec<HookDelivery> = Vec::new();
    let mut cursor: Option<String> = None;
    'pages: for _ in 0..MAX_PAGES {
        let (page, next) = client.list_hook_deliveries(cursor.as_deref(), HOOK_DELIVERIES_PER_PAGE).await?;
        for d in page {
            // Newest first: the first one older than `since` ends the listing. An unreadable
            // timestamp is kept (better one request too many than a missed delivery).
            if parse_timestamp(&d.delivered_at).is_some_and(|t| t < since) {
                break 'pages;
            }
            listed.push(d);
        }
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut report = Report {
        seen: listed.len(),
        ..Report::default()
    };
    // Every attempt of a GUID, newest first (the listing's order).
    let mut by_guid: BTreeMap<&str, Vec<&HookDelivery>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for d in &listed {
        let attempts = by_guid.entry(d.guid.as_str()).or_default();
        if attempts.is_empty() {
            order.push(d.guid.as_str());
        }
        attempts.push(d);
    }
    let mut asked: HashSet<&str> = HashSet::new();
    for guid in order {
        let attempts = &by_guid[guid];
        if attempts.iter().any(|d| d.succeeded()) || !asked.insert(guid) {
            continue;
        }
        report.failed += 1;
        let stored = deliveries::get(store.pool(), guid)
            .await
            .map_err(|e| ClientError::Decode(format!("reading delivery {guid}: {e}")))?;
        if stored.is_some() {
            report.already_stored += 1;
            continue;
        }
        let latest = attempts[0];
        match client.redeliver_hook(latest.id).await {
            Ok(()) => {
                tracing::info!(%guid, delivery_id = latest.id, event = %latest.event, status_code = ?latest.status_code, "asked GitHub to redeliver a missed delivery");
                let entry = crate::audit::Entry::new(
                    crate::audit::kind::DELIVERY,
                    "orch",
                    guid,
                    serde_json::json!({
                        "decision": "redelivery_requested",
                        "delivery_id": latest.id,
                        "event": latest.event,
                        "action": latest.action,
                        "status_code": latest.status_code,
                        "attempts": attempts.len(),
                    }),
                );
                if let Err(e) = crate::audit::append_now(store, &entry).await {
                    tracing::error!(%guid, error = %format!("{e:#}"), "could not audit a redelivery request");
                }
                report.redelivered.push(guid.to_string());
            }
            Err(ClientError::DryRun { .. }) => {
                tracing::info!(%guid, delivery_id = latest.id, "dry-run: a missed delivery was not asked for again");
                report.errors += 1;
            }
            Err(e) => {
                tracing::warn!(%guid, delivery_id = latest.id, error = %e, "GitHub did not take a redelivery request");
                report.errors += 1;
            }
        }
    }
    Ok(report)
}

/// Runs [`reconcile`] now and then every `every` until `stop` turns true; logs each report.
pub async fn reconcile_loop(client: GithubClient, store: Store, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        // A run against an unreachable GitHub may take a while (retries): shutdown does not wait.
        let result = tokio::select! {
            r = reconcile(&client, &store, window_start()) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok(r) if r.redelivered.is_empty() && r.errors == 0 => {
                tracing::debug!(
                    seen = r.seen,
                    failed = r.failed,
                    already_stored = r.already_stored,
                    "missed deliveries: none"
                )
            }
            Ok(r) => tracing::info!(
                seen = r.seen,
                failed = r.failed,
                already_stored = r.already_stored,
                redelivered = r.redelivered.len(),
                errors = r.errors,
                guids = ?r.redelivered,
                "missed deliveries reconciled"
            ),
            Err(e) => tracing::warn!(error = %e, "missed deliveries: could not list the App's hook deliveries"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::HookDelivery;

    fn attempt(code: Option<u16>) -> HookDelivery {
        HookDelivery {
            id: 1,
            guid: "g".into(),
            delivered_at: "2026-01-01T00:00:00Z".into(),
            redelivery: false,
            status: String::new(),
            status_code: code,
            event: "issues".into(),
            action: None,
            installation_id: None,
            repository_id: None,
        }
    }

    #[test]
    fn only_2xx_answers_count_as_delivered() {
        assert!(attempt(Some(202)).succeeded());
        assert!(attempt(Some(200)).succeeded());
        for failed in [None, Some(0), Some(301), Some(401), Some(502)] {
            assert!(!attempt(failed).succeeded(), "{failed:?}");
        }
    }
}
