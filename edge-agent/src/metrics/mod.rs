//! The agent's Prometheus metrics (names in `docs/AGENT.md`, "Metrics"), served by a small
//! local listener that is off unless `metrics_addr` is set.
//!
//! The counters are process-wide atomics moved where the work happens (the owner loop's pass,
//! the outbox, the image download); moving one is an atomic add, so the hooks cost nothing
//! measurable with or without a listener. The outbox depth is read by the owner loop after each
//! pass, only while a listener runs, since it is a query.
//!
//! Built with the `metrics` feature (on by default): `prometheus-client` for the families and
//! the text format, and a hand-written HTTP/1.1 responder rather than a server library — it
//! answers one `GET /metrics` per connection, one connection at a time, with bounded reads
//! and a deadline, which is all a local scraper needs and keeps the binary small
//! (`docs/BENCHMARKS.md`, "Agent footprint"). Without the feature the hooks remain and do
//! nothing, and a configured `metrics_addr` is refused at start.

use std::sync::atomic::{AtomicBool, Ordering};

/// How an image's bytes came: the whole blob, or a delta against one the agent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Download {
    /// The full blob (`GET /v1/blobs/{digest}`).
    Full,
    /// A delta; the delta download counts its bytes with
    /// `metrics::downloaded(Download::Delta, n)`.
    Delta,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether a listener serves the metrics (gauges that cost a query are kept only then).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::LazyLock;

    use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
    use prometheus_client::registry::Registry;

    use super::Download;

    #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
    #[allow(non_camel_case_types)]
    enum Kind {
        full,
        delta,
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct KindLabel {
        kind: Kind,
    }

    pub(super) struct Metrics {
        registry: Registry,
        pub(super) passes: Counter,
        pub(super) pass_seconds: Histogram,
        pub(super) outbox_events: Gauge,
        pub(super) outbox_bytes: Gauge,
        pub(super) outbox_dropped: Counter,
        downloaded: Family<KindLabel, Counter>,
        pub(super) restarts: Counter,
        pub(super) link_up: Gauge,
    }

    impl Metrics {
        fn new() -> Self {
            let mut r = Registry::with_prefix("fleet_agent");
            let passes = Counter::default();
            // 100 µs to about 3 s.
            let pass_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
            let outbox_events = Gauge::default();
            let outbox_bytes = Gauge::default();
            let outbox_dropped = Counter::default();
            let downloaded = Family::<KindLabel, Counter>::default();
            let restarts = Counter::default();
            let link_up = Gauge::default();
            r.register("reconcile_passes", "Reconciler passes", passes.clone());
            r.register(
                "reconcile_seconds",
                "Reconciler pass duration: observe, plan, persist, act, report",
                pass_seconds.clone(),
            );
            r.register(
                "outbox_events",
                "Events waiting for the hub's ack",
                outbox_events.clone(),
            );
            r.register(
                "outbox_bytes",
                "Bytes of the events waiting for the hub's ack",
                outbox_bytes.clone(),
            );
            r.register(
                "outbox_dropped",
                "Events dropped from the outbox over its byte budget",
                outbox_dropped.clone(),
            );
            r.register(
                "download_bytes",
                "Image bytes downloaded, full blobs or deltas",
                downloaded.clone(),
            );
            r.register(
                "workload_restarts",
                "Workload restarts after an exit, by the restart policy",
                restarts.clone(),
            );
            r.register(
                "link_up",
                "1 while the agent's MQTT link is connected",
                link_up.clone(),
            );
            // Both kinds are shown from the start, so a dashboard's ratio has its series.
            for kind in [Kind::full, Kind::delta] {
                let _ = downloaded.get_or_create(&KindLabel { kind });
            }
            Self {
                registry: r,
                passes,
                pass_seconds,
                outbox_events,
                outbox_bytes,
                outbox_dropped,
                downloaded,
                restarts,
                link_up,
            }
        }

        pub(super) fn downloaded(&self, kind: Download, n: u64) {
            let kind = match kind {
                Download::Full => Kind::full,
                Download::Delta => Kind::delta,
            };
            self.downloaded.get_or_create(&KindLabel { kind }).inc_by(n);
        }

        pub(super) fn encode(&self) -> String {
            let mut out = String::new();
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
            out
        }
    }

    pub(super) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

    /// The `Content-Type` of [`Metrics::encode`].
    pub(super) const CONTENT_TYPE: &str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Counts one reconciler pass that took `secs`.
pub fn pass(secs: f64) {
    #[cfg(feature = "metrics")]
    {
        imp::METRICS.passes.inc();
        imp::METRICS.pass_seconds.observe(secs);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = secs;
}

/// The outbox holds `events` events of `bytes` bytes.
pub fn outbox(events: u64, bytes: u64) {
    #[cfg(feature = "metrics")]
    {
        imp::METRICS.outbox_events.set(to_i64(events));
        imp::METRICS.outbox_bytes.set(to_i64(bytes));
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (to_i64(events), bytes);
}

/// `n` events were dropped from the outbox.
pub fn outbox_dropped(n: u64) {
    #[cfg(feature = "metrics")]
    imp::METRICS.outbox_dropped.inc_by(n);
    #[cfg(not(feature = "metrics"))]
    let _ = n;
}

/// `n` image bytes arrived, as `kind`.
pub fn downloaded(kind: Download, n: u64) {
    #[cfg(feature = "metrics")]
    imp::METRICS.downloaded(kind, n);
    #[cfg(not(feature = "metrics"))]
    let _ = (kind, n);
}

/// `n` workloads are to be restarted after an exit.
pub fn restarts(n: u64) {
    #[cfg(feature = "metrics")]
    imp::METRICS.restarts.inc_by(n);
    #[cfg(not(feature = "metrics"))]
    let _ = n;
}

/// The MQTT link is up or down.
pub fn link_up(up: bool) {
    #[cfg(feature = "metrics")]
    imp::METRICS.link_up.set(i64::from(up));
    #[cfg(not(feature = "metrics"))]
    let _ = up;
}

/// Every metric in the Prometheus text format, and its content type.
#[cfg(feature = "metrics")]
pub fn encode() -> (&'static str, String) {
    (imp::CONTENT_TYPE, imp::METRICS.encode())
}

#[cfg(feature = "metrics")]
mod listener;
#[cfg(feature = "metrics")]
pub use listener::serve;

/// Without the `metrics` feature there is nothing to serve: a configured address is an error.
#[cfg(not(feature = "metrics"))]
pub async fn serve(
    addr: std::net::SocketAddr,
    _cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<std::future::Ready<()>> {
    anyhow::bail!(
        "metrics_addr {addr} is set, but this agent was built without the `metrics` feature"
    )
}
