//! The ingest of what devices report (DESIGN §3.4, §3.5), off the MQTT read loop (issue 16):
//!
//! ```text
//! read loop ──offer──► per-device bucket ──► bounded queue ──► writer ──► acks ──► acker
//!  (mqtt.rs)           (limits.rs; excess     (back-pressure:   (one        (coalesced   (publishes
//!                       dropped, counted)      the loop waits)   transaction  per device)  retained)
//!                                                                per batch)
//! ```
//!
//! - The read loop only parses the topic, charges the device's bucket and queues the message;
//!   when the queue is full it waits, so it stops reading from the broker and TCP flow control
//!   holds the rest there. It never waits on anything that waits on it: acks leave through
//!   the acker, which alone may wait on the client's request queue (drained by the read loop).
//! - The writer takes whatever is queued (up to [`IngestConfig::batch`]), decodes it and stores
//!   it in one transaction; events are idempotent by (device, seq); presence is kept only when
//!   its epoch supersedes the stored one. If a batch fails, its messages are retried one per
//!   transaction so one bad message costs no other.
//! - Invariant: an ack is offered only after the transaction holding its events committed
//!   ("acked ⇒ stored"). Acks are retained and only the highest matters, so the acker keeps one
//!   per device and publishes the latest.
//! - The device id comes from the topic; a message naming another device, or that does not
//!   decode, is logged and dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use protocol::{Ack, Channel, DeviceId, EventBatch, Presence, StatusReport, Topic};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::{Limiter, RateLimit, RefusedLedger};
use super::publisher::RetainedSink;
use crate::model::{Inbound, Stored};
use crate::store::Store;

/// Something devices reported, for live views.
#[derive(Debug, Clone)]
pub enum Report {
    /// A status snapshot arrived.
    Status(String),
    /// Events were stored for a device.
    Events(String),
    /// Presence changed.
    Presence(String),
}

/// Queue and batch sizes, and the per-device limit.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Messages queued between the read loop and the writer. With the broker's packet limit
    /// (about 320 KiB) this bounds the queue's memory at about 320 MiB in the worst case;
    /// reports are a few hundred bytes.
    pub queue: usize,
    /// Messages stored per transaction at most.
    pub batch: usize,
    /// Each device's bucket.
    pub limit: RateLimit,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            queue: 1024,
            batch: 512,
            limit: RateLimit::default(),
        }
    }
}

/// The ingest service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ingest {
    store: Store,
    sink: Arc<dyn RetainedSink>,
    reports: broadcast::Sender<Report>,
    config: IngestConfig,
    refused: Arc<RefusedLedger>,
}

/// A device message waiting for the writer.
#[derive(Debug)]
struct Raw {
    device: DeviceId,
    channel: Channel,
    payload: Bytes,
}

/// The read loop's side of the ingest: admits and queues device messages.
#[derive(Debug)]
pub struct Inlet {
    limiter: Limiter,
    queue: mpsc::Sender<Raw>,
}

/// The queue is closed: the ingest has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the ingest has stopped")]
pub struct Stopped;

impl Inlet {
    /// Admits one device message and queues it, waiting while the queue is full. A message on
    /// a topic devices do not report on, or over the device's bucket, is dropped here.
    pub async fn offer(&self, topic: &str, payload: Bytes) -> Result<(), Stopped> {
        let (device, channel) = match Topic::parse(topic) {
            Some(Topic::Device(d, c @ (Channel::Status | Channel::Events | Channel::Presence))) => {
                (d, c)
            }
            Some(Topic::Device(..)) => return Ok(()),
            _ => {
                tracing::warn!(topic, "message on an unknown topic dropped");
                return Ok(());
            }
        };
        if !self
            .limiter
            .admit(device.as_str(), payload.len(), Instant::now())
        {
            tracing::debug!(%device, "message over the device's rate limit dropped");
            crate::metrics::hub().ingest_refused.inc();
            return Ok(());
        }
        let raw = Raw {
            device,
            channel,
            payload,
        };
        self.queue.send(raw).await.map_err(|_| Stopped)?;
        crate::metrics::hub().ingest_queue.inc();
        Ok(())
    }
}

/// The latest ack per device, waiting for the acker.
#[derive(Debug, Default)]
struct AckQueue {
    pending: Mutex<HashMap<DeviceId, u64>>,
    wake: Notify,
}

impl AckQueue {
    fn offer(&self, device: DeviceId, acked: u64) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let held = p.entry(device).or_insert(acked);
            *held = (*held).max(acked);
        }
        self.wake.notify_one();
    }

    fn take(&self) -> HashMap<DeviceId, u64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Ingest {
    /// Ingest into `store`, acking through `sink`, announcing on `reports`, counting refusals
    /// in `refused`.
    pub fn new(
        store: Store,
        sink: Arc<dyn RetainedSink>,
        reports: broadcast::Sender<Report>,
        config: IngestConfig,
        refused: Arc<RefusedLedger>,
    ) -> Self {
        Self {
            store,
            sink,
            reports,
            config,
            refused,
        }
    }

    /// Live reports, for views that follow the fleet.
    pub fn subscribe(&self) -> broadcast::Receiver<Report> {
        self.reports.subscribe()
    }

    /// Starts the writer and the acker on `tasks` and returns the inlet for the read loop. The
    /// writer ends when the inlet is dropped and the queue is drained; the acker on `cancel`.
    pub fn start(&self, tasks: &TaskTracker, cancel: CancellationToken) -> Inlet {
        let (queue, rx) = mpsc::channel(self.config.queue.max(1));
        let acks = Arc::new(AckQueue::default());
        tasks.spawn(self.clone().write(rx, acks.clone()));
        tasks.spawn(self.clone().ack(acks, cancel));
        Inlet {
            limiter: Limiter::new(self.config.limit, self.refused.clone()),
            queue,
        }
    }

    async fn write(self, mut rx: mpsc::Receiver<Raw>, acks: Arc<AckQueue>) {
        let max = self.config.batch.max(1);
        let mut batch = Vec::with_capacity(max);
        while rx.recv_many(&mut batch, max).await > 0 {
            let raws = std::mem::take(&mut batch);
            let metrics = crate::metrics::hub();
            metrics
                .ingest_queue
                .dec_by(i64::try_from(raws.len()).unwrap_or(i64::MAX));
            let store = self.store.clone();
            let start = Instant::now();
            let stored = tokio::task::spawn_blocking(move || store_batch(&store, raws)).await;
            metrics
                .ingest_batch_seconds
                .observe(start.elapsed().as_secs_f64());
            let stored = match stored {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "ingest batch failed (not acked; devices resend)");
                    continue;
                }
            };
            for (device, what) in stored {
                let report = match what {
                    Stored::Events { acked } => {
                        metrics.ingested("events");
                        acks.offer(device.clone(), acked);
                        Report::Events(device.to_string())
                    }
                    Stored::Status => {
                        metrics.ingested("status");
                        Report::Status(device.to_string())
                    }
                    Stored::Presence { changed: true } => {
                        metrics.ingested("presence");
                        Report::Presence(device.to_string())
                    }
                    Stored::Presence { changed: false } | Stored::UnknownDevice => continue,
                };
                let _ = self.reports.send(report);
            }
        }
    }

    async fn ack(self, acks: Arc<AckQueue>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = acks.wake.notified() => {}
            }
            for (device, acked) in acks.take() {
                let topic = Topic::device(&device, Channel::Ack).to_string();
                let payload = protocol::json::encode(&Ack { acked });
                self.sink.publish_retained(topic, payload).await;
            }
        }
    }
}

/// Decodes and stores a batch in one transaction (one per message if the batch fails);
/// returns what was stored, per device, in order.
fn store_batch(store: &Store, raws: Vec<Raw>) -> Vec<(DeviceId, Stored)> {
    let inbound: Vec<Inbound> = raws.into_iter().filter_map(decode).collect();
    let events: usize = inbound
        .iter()
        .map(|i| match i {
            Inbound::Events(_, e) => e.len(),
            _ => 0,
        })
        .sum();
    crate::metrics::hub()
        .ingest_events
        .inc_by(u64::try_from(events).unwrap_or(u64::MAX));
    let stored = match store.ingest_batch(&inbound) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, messages = inbound.len(), "ingest batch failed; one by one");
            inbound
                .iter()
                .map(|i| match store.ingest_batch(std::slice::from_ref(i)) {
                    Ok(mut s) => s.pop().unwrap_or(Stored::UnknownDevice),
                    Err(e) => {
                        tracing::error!(device = %i.device(), error = %e,
                            "storing a report (not acked; the device resends)");
                        Stored::UnknownDevice
                    }
                })
                .collect()
        }
    };
    inbound
        .iter()
        .zip(stored)
        .map(|(i, s)| {
            if s == Stored::UnknownDevice {
                tracing::warn!(device = %i.device(), "message from an unknown device dropped");
            }
            (i.device().clone(), s)
        })
        .collect()
}

/// Decodes one message; a message that does not decode or names another device is dropped.
fn decode(raw: Raw) -> Option<Inbound> {
    let Raw {
        device,
        channel,
        payload,
    } = raw;
    let named = |other: &DeviceId| {
        let same = *other == device;
        if !same {
            tracing::warn!(%device, "a report naming another device dropped");
        }
        same
    };
    let bad = |e: &dyn std::fmt::Display| tracing::warn!(%device, error = %e, "bad report dropped");
    match channel {
        Channel::Status => match StatusReport::decode(&payload) {
            Ok(s) if named(&s.device) => Some(Inbound::Status(device, s)),
            Ok(_) => None,
            Err(e) => {
                bad(&e);
                None
            }
        },
        Channel::Events => match EventBatch::decode(&payload) {
            Ok(b) if named(&b.device) => Some(Inbound::Events(device, b.events)),
            Ok(_) => None,
            Err(e) => {
                bad(&e);
                None
            }
        },
        Channel::Presence => match Presence::decode(&payload) {
            Ok(p) => Some(Inbound::Presence(device, p)),
            Err(e) => {
                bad(&e);
                None
            }
        },
        Channel::Desired | Channel::Ack => None,
    }
}
