//! Per-device ingest limits (issue 15, "one device can starve the fleet"): a token bucket of
//! bytes per device, checked in the MQTT read loop before a message is queued, decoded or
//! stored. What a device sends over its bucket is dropped, not acked, and counted in a
//! [`RefusedLedger`] that the device's API view shows; an honest agent resends it later.
//!
//! Sizing: the bucket holds more than an agent's whole outbox (its byte budget, 1 MiB by
//! default) so a device that comes back from a long partition empties its backlog at once;
//! it refills at a rate far above what a working agent reports and far below what one device
//! could make the hub store. Time is an argument, so the arithmetic is tested without a clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::model::Refused;

/// What each message costs at least, so a flood of tiny messages is bounded too (each one is
/// a database write whatever its size).
pub const MESSAGE_FLOOR_BYTES: u64 = 512;

/// The limits of one device's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Bucket size: what a device may send at once.
    pub burst_bytes: u64,
    /// Refill rate.
    pub bytes_per_sec: u64,
}

impl Default for RateLimit {
    /// 4 MiB at once (four default agent outboxes), then 256 KiB/s.
    fn default() -> Self {
        Self {
            burst_bytes: 4 << 20,
            bytes_per_sec: 256 << 10,
        }
    }
}

/// One device's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Refusals per device, shared by the ingest (which counts) and the registry (which shows
/// them). In memory: the counters start at zero when the hub starts.
#[derive(Debug, Default)]
pub struct RefusedLedger(Mutex<HashMap<String, Refused>>);

impl RefusedLedger {
    /// What was refused from `device`.
    pub fn get(&self, device: &str) -> Refused {
        self.lock().get(device).copied().unwrap_or_default()
    }

    fn add(&self, device: &str, bytes: u64) {
        let mut map = self.lock();
        let r = map.entry(device.to_string()).or_default();
        r.messages += 1;
        r.bytes += bytes;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Refused>> {
        // A panic while holding this lock leaves only counters behind; keep counting.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The buckets of every device that sent something, and the ledger of refusals.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
    refused: Arc<RefusedLedger>,
}

impl Limiter {
    /// Buckets of `limit`, refusals counted in `refused`.
    pub fn new(limit: RateLimit, refused: Arc<RefusedLedger>) -> Self {
        Self {
            limit,
            buckets: Mutex::default(),
            refused,
        }
    }

    /// Takes the cost of a message of `len` bytes from `device`'s bucket at `now`; false (and
    /// the refusal counted) when the bucket does not hold it.
    pub fn admit(&self, device: &str, len: usize, now: Instant) -> bool {
        let cost = (len as u64).max(MESSAGE_FLOOR_BYTES) as f64;
        let RateLimit {
            burst_bytes,
            bytes_per_sec,
        } = self.limit;
        let ok = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            let b = buckets.entry(device.to_string()).or_insert(Bucket {
                tokens: burst_bytes as f64,
                at: now,
            });
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * bytes_per_sec as f64).min(burst_bytes as f64);
            b.at = now;
            if b.tokens >= cost {
                b.tokens -= cost;
                true
            } else {
                false
            }
        };
        if !ok {
            self.refused.add(device, len as u64);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(burst: u64, rate: u64) -> (Limiter, Arc<RefusedLedger>) {
        let ledger = Arc::new(RefusedLedger::default());
        let limit = RateLimit {
            burst_bytes: burst,
            bytes_per_sec: rate,
        };
        (Limiter::new(limit, ledger.clone()), ledger)
    }

    #[test]
    fn a_device_may_send_its_burst_at_once_then_only_the_refill_rate() {
        let (l, ledger) = limiter(10_000, 1_000);
        let t0 = Instant::now();
        assert!((0..10).all(|_| l.admit("a", 1_000, t0)));
        assert!(!l.admit("a", 1_000, t0));
        assert!(!l.admit("a", 1_000, t0 + Duration::from_millis(500)));
        assert!(l.admit("a", 1_000, t0 + Duration::from_millis(1_500)));
        assert_eq!(
            ledger.get("a"),
            Refused {
                messages: 2,
                bytes: 2_000
            }
        );
    }

    #[test]
    fn one_device_over_its_limit_costs_another_nothing() {
        let (l, ledger) = limiter(10_000, 1_000);
        let t0 = Instant::now();
        for _ in 0..1_000 {
            l.admit("flood", 5_000, t0);
        }
        assert!(l.admit("honest", 5_000, t0));
        assert_eq!(ledger.get("honest"), Refused::default());
        assert_eq!(ledger.get("flood").messages, 998);
    }

    #[test]
    fn tiny_messages_cost_the_floor_and_an_idle_bucket_never_exceeds_its_size() {
        let (l, _) = limiter(10 * MESSAGE_FLOOR_BYTES, 1_000);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3_600);
        assert!(l.admit("a", 1, t0));
        let admitted = (0..100).filter(|_| l.admit("a", 0, later)).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn the_default_bucket_holds_an_agents_whole_outbox() {
        let agent_outbox_budget = 1u64 << 20;
        assert!(RateLimit::default().burst_bytes >= agent_outbox_budget);
    }
}
