//! In-process counters, read by `/health` today and by `/metrics` later.

use std::collections::HashMap;
use std::sync::Mutex;

const OUTCOMES: [&str; 5] = ["queued", "pong", "ignored", "duplicate", "error"];

#[derive(Debug, Default)]
pub struct Metrics {
    deliveries: Mutex<HashMap<String, [u64; OUTCOMES.len()]>>,
}

impl Metrics {
    pub fn count_delivery(&self, event: &str, outcome: &str) {
        let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) else {
            return;
        };
        let mut map = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(event) {
            Some(counts) => counts[i] += 1,
            None => {
                let mut counts = [0; OUTCOMES.len()];
                counts[i] = 1;
                map.insert(event.to_string(), counts);
            }
        }
    }

    /// (event, outcome, count) for every non-zero counter, sorted.
    pub fn deliveries(&self) -> Vec<(String, &'static str, u64)> {
        let map = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|(event, counts)| {
                OUTCOMES
                    .iter()
                    .zip(counts)
                    .filter(|(_, n)| **n > 0)
                    .map(move |(o, n)| (event.clone(), *o, *n))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_event_and_outcome() {
        let m = Metrics::default();
        m.count_delivery("issues", "queued");
        m.count_delivery("issues", "queued");
        m.count_delivery("ping", "pong");
        m.count_delivery("ping", "not-an-outcome");
        assert_eq!(m.deliveries(), vec![("issues".into(), "queued", 2), ("ping".into(), "pong", 1)]);
    }
}
