//! The hub's Prometheus metrics (`GET /metrics`, viewer token; names in `docs/HUB.md`,
//! "Metrics"), with `prometheus-client`.
//!
//! Counters and histograms live in one process-wide [`HubMetrics`] ([`hub`]) and are moved where
//! the work happens (the publisher, the ingest, the HTTP layer, the accept loops, the MQTT
//! link): an increment is an atomic add, nothing is awaited and no lock is held. Gauges that
//! describe the store (devices by state, devices waiting for the publisher) are read from it at
//! scrape time ([`HubMetrics::set_fleet`]), so a scrape shows what the store says, not a count
//! kept beside it that could drift.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::FleetSummary;

/// The `Content-Type` of what [`HubMetrics::encode`] writes (Prometheus text format 0.0.4).
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A device state the fleet gauge counts.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DeviceState {
    /// Enrolled.
    enrolled,
    /// Last presence online.
    online,
    /// Enrolled and not online.
    offline,
    /// Converged on the revision the hub holds for it.
    converged,
    /// Last update failed.
    failed,
    /// Its state is past its expiry.
    stale,
}

/// `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: DeviceState,
}

/// `channel` label: what a device reported on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// `status`, `events` or `presence`.
    pub channel: &'static str,
}

/// `listener` label: `http` or `mqtt` (the embedded broker).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// The accept loop's name.
    pub listener: &'static str,
}

/// Labels of an HTTP request: the route pattern (never the raw path, so ids do not make new
/// series), the method and the status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The matched route (`/api/v1/devices/:id`), or `unmatched`.
    pub route: String,
    /// The response status code.
    pub status: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the hub exports.
#[derive(Debug)]
pub struct HubMetrics {
    registry: Registry,
    /// Devices by state (read from the store at scrape time).
    pub devices: Family<StateLabel, Gauge>,
    /// Devices marked for the publisher and not published yet (read at scrape time).
    pub publish_pending: Gauge,
    /// Desired states signed.
    pub states_signed: Counter,
    /// Desired states handed to the broker client after being stored.
    pub states_published: Counter,
    /// Per publisher chunk: from taking the chunk to its last state handed to the broker
    /// client (compute, sign, store, publish).
    pub publish_seconds: Histogram,
    /// Device messages stored, by channel.
    pub ingest_messages: Family<ChannelLabel, Counter>,
    /// Events stored (new ones; a resent event already stored is not counted).
    pub ingest_events: Counter,
    /// Messages waiting between the MQTT read loop and the ingest's writer.
    pub ingest_queue: Gauge,
    /// Per ingest batch: decode and store in one transaction.
    pub ingest_batch_seconds: Histogram,
    /// Device messages refused at ingest (over the device's rate limit).
    pub ingest_refused: Counter,
    /// HTTP requests by route, method and status, with their latency.
    pub http_seconds: HistogramFamily<RouteLabels>,
    /// Open connections per listener (HTTP, the embedded broker).
    pub connections: Family<ListenerLabel, Gauge>,
    /// 1 while the hub's own MQTT client is connected to the broker.
    pub broker_link_up: Gauge,
    /// Times the hub's MQTT client (re)connected to the broker.
    pub broker_connects: Counter,
}

fn latency_buckets() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl HubMetrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("fleet_hub");
        let m = Self {
            devices: Family::default(),
            publish_pending: Gauge::default(),
            states_signed: Counter::default(),
            states_published: Counter::default(),
            publish_seconds: latency_buckets(),
            ingest_messages: Family::default(),
            ingest_events: Counter::default(),
            ingest_queue: Gauge::default(),
            ingest_batch_seconds: latency_buckets(),
            ingest_refused: Counter::default(),
            http_seconds: Family::new_with_constructor(latency_buckets),
            connections: Family::default(),
            broker_link_up: Gauge::default(),
            broker_connects: Counter::default(),
            registry: Registry::default(),
        };
        r.register("devices", "Devices by state", m.devices.clone());
        r.register(
            "publish_pending",
            "Devices marked for the publisher, not published yet",
            m.publish_pending.clone(),
        );
        r.register(
            "states_signed",
            "Desired states signed",
            m.states_signed.clone(),
        );
        r.register(
            "states_published",
            "Desired states stored and handed to the broker client",
            m.states_published.clone(),
        );
        r.register(
            "publish_chunk_seconds",
            "Publisher chunk: compute, sign, store and publish",
            m.publish_seconds.clone(),
        );
        r.register(
            "ingest_messages",
            "Device messages stored, by channel",
            m.ingest_messages.clone(),
        );
        r.register(
            "ingest_events",
            "Device events stored",
            m.ingest_events.clone(),
        );
        r.register(
            "ingest_queue_depth",
            "Device messages waiting for the ingest writer",
            m.ingest_queue.clone(),
        );
        r.register(
            "ingest_batch_seconds",
            "Ingest batch: decode and store in one transaction",
            m.ingest_batch_seconds.clone(),
        );
        r.register(
            "ingest_refused",
            "Device messages refused over the device's rate limit",
            m.ingest_refused.clone(),
        );
        r.register(
            "http_request_seconds",
            "HTTP request latency by route, method and status",
            m.http_seconds.clone(),
        );
        r.register(
            "connections",
            "Open connections per listener",
            m.connections.clone(),
        );
        r.register(
            "broker_link_up",
            "1 while the hub's MQTT client is connected to the broker",
            m.broker_link_up.clone(),
        );
        r.register(
            "broker_connects",
            "Connections of the hub's MQTT client to the broker",
            m.broker_connects.clone(),
        );
        // Every channel is shown from the start, so a rate has its series before the first report.
        for channel in ["status", "events", "presence"] {
            m.ingested_zero(channel);
        }
        Self { registry: r, ..m }
    }

    /// Sets the gauges that describe the store from a fleet summary.
    pub fn set_fleet(&self, s: &FleetSummary) {
        let set = |state, v: u64| {
            self.devices
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(DeviceState::enrolled, s.devices);
        set(DeviceState::online, s.online);
        set(DeviceState::offline, s.devices.saturating_sub(s.online));
        set(DeviceState::converged, s.converged);
        set(DeviceState::failed, s.failed);
        set(DeviceState::stale, s.stale);
        self.publish_pending
            .set(i64::try_from(s.publish_pending).unwrap_or(i64::MAX));
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one stored device message.
    pub fn ingested(&self, channel: &'static str) {
        self.ingest_messages
            .get_or_create(&ChannelLabel { channel })
            .inc();
    }

    fn ingested_zero(&self, channel: &'static str) {
        let _ = self
            .ingest_messages
            .get_or_create(&ChannelLabel { channel });
    }

    /// Counts one HTTP request that took since `start`. A method outside the standard ones is
    /// counted as `other`, so a client cannot grow the series without bound.
    pub fn http_request(&self, method: &str, route: &str, status: u16, start: Instant) {
        const KNOWN: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
        let method = if KNOWN.contains(&method) {
            method
        } else {
            "other"
        };
        self.http_seconds
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .observe(start.elapsed().as_secs_f64());
    }

    /// The open-connections gauge of `listener`.
    pub fn connections(&self, listener: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabel { listener })
            .clone()
    }
}

static HUB: LazyLock<HubMetrics> = LazyLock::new(HubMetrics::new);

/// The process's metrics.
pub fn hub() -> &'static HubMetrics {
    &HUB
}

/// Holds a gauge up by one while alive (an open connection, a queued message).
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Raises `gauge` by one until dropped.
    pub fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_gauges_follow_the_summary_and_offline_is_the_rest() {
        let m = HubMetrics::new();
        m.set_fleet(&FleetSummary {
            devices: 5,
            online: 3,
            converged: 2,
            failed: 1,
            ..FleetSummary::default()
        });
        m.http_request("GET", "/metrics", 200, Instant::now());
        let text = m.encode();
        assert!(
            text.contains("fleet_hub_devices{state=\"offline\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("fleet_hub_devices{state=\"converged\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE fleet_hub_http_request_seconds histogram"));
    }

    #[test]
    fn made_up_methods_share_one_series() {
        let m = HubMetrics::new();
        for method in ["BREW", "WHEN", "GET"] {
            m.http_request(method, "unmatched", 405, Instant::now());
        }
        let text = m.encode();
        assert!(text.contains("method=\"other\""), "{text}");
        assert!(!text.contains("BREW") && !text.contains("WHEN"), "{text}");
        assert!(text.contains("method=\"GET\""), "{text}");
    }
}
