//! The simulated fleet: one task per device (`conn::run`), a control channel every task
//! watches (cut, heal, burst), and counters the tasks update without locks, read into a
//! [`Summary`] at any time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::DeviceId;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::device::{Device, Outcome};
use crate::identity::Identity;

/// Connection settings shared by every device.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connect here instead of the broker address the hub gave at enrollment.
    pub broker: Option<(String, u16)>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Upper bound of the random delay before the first connection and each reconnect.
    pub jitter: Duration,
    /// Resend an unacked event batch after this long.
    pub resend: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            broker: None,
            keep_alive: Duration::from_secs(15),
            jitter: Duration::from_millis(500),
            resend: Duration::from_secs(10),
        }
    }
}

/// What every device task watches.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Devices with an index below this are cut off.
    pub cut: usize,
    /// Bumped to make every device report at once.
    pub burst: u64,
    /// Events each device appends in a burst.
    pub burst_events: usize,
}

/// State shared by the device tasks.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub settings: Settings,
    /// Stops every device.
    pub cancel: CancellationToken,
    /// Devices connected now.
    pub connected: AtomicUsize,
    /// ConnAcks received.
    pub connects: AtomicU64,
    /// Connections that ended after a ConnAck.
    pub disconnects: AtomicU64,
    /// Events published (resends included).
    pub events_sent: AtomicU64,
    /// Events released by acks.
    pub events_acked: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    revision: Vec<AtomicU64>,
    first_seq: Vec<AtomicU64>,
    next_seq: Vec<AtomicU64>,
    pending: Vec<AtomicU64>,
    /// Per device: the mark generation its last accepted state arrived in.
    delivered_gen: Vec<AtomicU64>,
    mark_gen: AtomicU64,
    mark: Mutex<Option<Instant>>,
    /// Delivery latencies since the mark, in microseconds. A `std` mutex: never held across
    /// an `.await`.
    latencies: Mutex<Vec<u64>>,
}

impl Shared {
    fn new(settings: Settings, n: usize) -> Self {
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Self {
            settings,
            cancel: CancellationToken::new(),
            connected: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            events_acked: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            revision: v(),
            first_seq: v(),
            next_seq: v(),
            pending: v(),
            delivered_gen: v(),
            mark_gen: AtomicU64::new(0),
            mark: Mutex::new(None),
            latencies: Mutex::new(Vec::new()),
        }
    }

    /// A device task started from this state.
    pub fn started(&self, i: usize, dev: &Device) {
        self.first_seq[i].store(dev.outbox.next_seq(), Relaxed);
        self.sync(i, dev);
    }

    /// Copies a device's counters after it changed.
    pub fn sync(&self, i: usize, dev: &Device) {
        self.revision[i].store(dev.revision(), Relaxed);
        self.next_seq[i].store(dev.outbox.next_seq(), Relaxed);
        self.pending[i].store(dev.outbox.len() as u64, Relaxed);
    }

    /// Counts an outcome; returns whether the device's status changed.
    pub fn record(&self, i: usize, o: &Outcome) -> bool {
        match o {
            Outcome::Unchanged => false,
            Outcome::AcceptedTrust { .. } => true,
            Outcome::Rejected { .. } => {
                self.rejected.fetch_add(1, Relaxed);
                true
            }
            Outcome::AcceptedDesired { .. } => {
                self.accepted.fetch_add(1, Relaxed);
                let g = self.mark_gen.load(Relaxed);
                if g > 0 && self.delivered_gen[i].swap(g, Relaxed) != g {
                    let since = self.mark.lock().ok().and_then(|m| *m).map(|m| m.elapsed());
                    if let (Some(d), Ok(mut l)) = (since, self.latencies.lock()) {
                        l.push(d.as_micros() as u64);
                    }
                }
                true
            }
        }
    }
}

/// Desired-state delivery latency since the mark, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    /// Deliveries measured.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Event counters.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Events {
    /// Events the devices appended in this run.
    pub generated: u64,
    /// Events published (resends included).
    pub sent: u64,
    /// Events acked by the hub.
    pub acked: u64,
    /// Events still waiting for an ack.
    pub pending: u64,
}

/// The state of the run, printed as JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Simulated devices.
    pub devices: usize,
    /// Enrolled in this run.
    pub enrolled: usize,
    /// Loaded from the state file.
    pub reused: usize,
    /// Connected now.
    pub connected: usize,
    /// Devices holding an accepted desired state.
    pub with_state: usize,
    /// Lowest accepted revision among devices holding one.
    pub revision_min: u64,
    /// Highest accepted revision.
    pub revision_max: u64,
    /// Devices that accepted a new desired state since the mark (a deploy).
    pub delivered_since_mark: usize,
    /// Desired states accepted.
    pub accepted: u64,
    /// Documents rejected.
    pub rejected: u64,
    /// Events.
    pub events: Events,
    /// ConnAcks.
    pub connects: u64,
    /// Connections lost or cut.
    pub disconnects: u64,
    /// Delivery latency since the mark.
    pub delivery: Latency,
    /// Resident memory of this process.
    pub rss_mib: f64,
    /// Resident memory per device above what the process held before connecting.
    pub rss_per_device_kib: f64,
}

/// Resident set size of this process in KiB (Linux), 0 when unknown.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// A running simulated fleet.
#[derive(Debug)]
pub struct Fleet {
    shared: Arc<Shared>,
    control: watch::Sender<Control>,
    tasks: Vec<tokio::task::JoinHandle<Identity>>,
    ids: Vec<DeviceId>,
    enrolled: usize,
    rss_before: u64,
}

impl Fleet {
    /// Starts one task per identity. `enrolled` says how many of them are new in this run.
    pub fn start(identities: Vec<Identity>, settings: Settings, enrolled: usize) -> Fleet {
        let rss_before = rss_kib();
        let shared = Arc::new(Shared::new(settings, identities.len()));
        let (control, rx) = watch::channel(Control::default());
        let ids = identities.iter().map(|i| i.device.clone()).collect();
        let tasks = identities
            .into_iter()
            .enumerate()
            .map(|(i, ident)| tokio::spawn(crate::conn::run(i, ident, shared.clone(), rx.clone())))
            .collect();
        Fleet {
            shared,
            control,
            tasks,
            ids,
            enrolled,
            rss_before,
        }
    }

    /// Device ids in index order.
    pub fn ids(&self) -> &[DeviceId] {
        &self.ids
    }

    /// Each device's accepted revision (0: none), in index order.
    pub fn revisions(&self) -> Vec<u64> {
        self.shared
            .revision
            .iter()
            .map(|r| r.load(Relaxed))
            .collect()
    }

    /// Each device's count of events ever appended (its last sequence number), in index order.
    pub fn last_seqs(&self) -> Vec<u64> {
        let s = &self.shared.next_seq;
        s.iter()
            .map(|n| n.load(Relaxed).saturating_sub(1))
            .collect()
    }

    /// Starts measuring delivery: the next desired state each device accepts counts from now.
    pub fn mark(&self) {
        if let Ok(mut m) = self.shared.mark.lock() {
            *m = Some(Instant::now());
        }
        if let Ok(mut l) = self.shared.latencies.lock() {
            l.clear();
        }
        self.shared.mark_gen.fetch_add(1, Relaxed);
    }

    /// Cuts the connections of the first `percent` % of devices.
    pub fn cut(&self, percent: f64) -> usize {
        let n = ((self.ids.len() as f64) * percent.clamp(0.0, 100.0) / 100.0).round() as usize;
        self.control.send_modify(|c| c.cut = n);
        n
    }

    /// Lets every cut device reconnect (each after its own random delay).
    pub fn heal(&self) {
        self.control.send_modify(|c| c.cut = 0);
    }

    /// Every device appends `events` events and reports them at once.
    pub fn burst(&self, events: usize) {
        self.control.send_modify(|c| {
            c.burst += 1;
            c.burst_events = events;
        });
    }

    /// The state of the run now.
    pub fn summary(&self) -> Summary {
        let s = &self.shared;
        let load = |v: &[AtomicU64]| v.iter().map(|a| a.load(Relaxed)).collect::<Vec<_>>();
        let revs = load(&s.revision);
        let held: Vec<u64> = revs.iter().copied().filter(|r| *r > 0).collect();
        let g = s.mark_gen.load(Relaxed);
        let delivered = if g == 0 {
            0
        } else {
            s.delivered_gen
                .iter()
                .filter(|d| d.load(Relaxed) == g)
                .count()
        };
        let generated: u64 = load(&s.next_seq)
            .iter()
            .zip(load(&s.first_seq))
            .map(|(n, f)| n.saturating_sub(f))
            .sum();
        let mut lat = s.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        lat.sort_unstable();
        let rss = rss_kib();
        let n = self.ids.len();
        Summary {
            devices: n,
            enrolled: self.enrolled,
            reused: n - self.enrolled.min(n),
            connected: s.connected.load(Relaxed),
            with_state: held.len(),
            revision_min: held.iter().copied().min().unwrap_or(0),
            revision_max: held.iter().copied().max().unwrap_or(0),
            delivered_since_mark: delivered,
            accepted: s.accepted.load(Relaxed),
            rejected: s.rejected.load(Relaxed),
            events: Events {
                generated,
                sent: s.events_sent.load(Relaxed),
                acked: s.events_acked.load(Relaxed),
                pending: load(&s.pending).iter().sum(),
            },
            connects: s.connects.load(Relaxed),
            disconnects: s.disconnects.load(Relaxed),
            delivery: Latency {
                count: lat.len(),
                p50_ms: percentile(&lat, 0.50),
                p99_ms: percentile(&lat, 0.99),
                max_ms: percentile(&lat, 1.0),
            },
            rss_mib: rss as f64 / 1024.0,
            rss_per_device_kib: if n == 0 {
                0.0
            } else {
                rss.saturating_sub(self.rss_before) as f64 / n as f64
            },
        }
    }

    /// Polls the summary every 100 ms until `done` holds or `timeout` passes; returns the last
    /// summary either way, `Ok` when `done` held.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&Summary) -> bool,
    ) -> Result<Summary, Box<Summary>> {
        let until = Instant::now() + timeout;
        loop {
            let s = self.summary();
            if done(&s) {
                return Ok(s);
            }
            if Instant::now() >= until {
                return Err(Box::new(s));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every device (their connections drop; the broker sends their wills) and returns
    /// the identities with the state to persist.
    pub async fn stop(self) -> Vec<Identity> {
        self.shared.cancel.cancel();
        let mut out = Vec::with_capacity(self.tasks.len());
        for (t, id) in self.tasks.into_iter().zip(&self.ids) {
            match t.await {
                Ok(ident) => out.push(ident),
                Err(e) => {
                    tracing::error!(device = %id, error = %e, "device task failed; its state is not saved")
                }
            }
        }
        out
    }
}
