//! The ingest of what devices report (DESIGN §3.4, §3.5):
//! - events are stored idempotently by (device, seq) in one transaction per batch, then the
//!   highest contiguous stored seq is published, retained, on the device's `ack` topic;
//! - presence is kept only when its epoch supersedes the stored one;
//! - the device id comes from the topic; a message naming another device, or that does not
//!   decode, is logged and dropped.

use std::sync::Arc;

use protocol::{Ack, Channel, EventBatch, Presence, StatusReport, Topic};
use tokio::sync::broadcast;

use super::publisher::RetainedSink;
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

/// The ingest service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Ingest {
    store: Store,
    sink: Arc<dyn RetainedSink>,
    reports: broadcast::Sender<Report>,
}

impl Ingest {
    /// Ingest into `store`, acking through `sink`, announcing on `reports`.
    pub fn new(
        store: Store,
        sink: Arc<dyn RetainedSink>,
        reports: broadcast::Sender<Report>,
    ) -> Self {
        Self {
            store,
            sink,
            reports,
        }
    }

    /// Live reports, for views that follow the fleet.
    pub fn subscribe(&self) -> broadcast::Receiver<Report> {
        self.reports.subscribe()
    }

    /// Handles one device message and publishes its ack, if any.
    pub async fn handle(&self, topic: String, payload: Vec<u8>) {
        let (store, reports) = (self.store.clone(), self.reports.clone());
        // Ingest is short SQLite work; run it off the event loop.
        let ack =
            tokio::task::spawn_blocking(move || ingest(&store, &topic, &payload, &reports)).await;
        if let Ok(Some((t, a))) = ack {
            self.sink.publish_retained(t, a).await;
        }
    }
}

/// Handles one device message; returns an ack to publish, if any.
pub fn ingest(
    store: &Store,
    topic: &str,
    payload: &[u8],
    reports: &broadcast::Sender<Report>,
) -> Option<(String, Vec<u8>)> {
    let Some(Topic::Device(device, channel)) = Topic::parse(topic) else {
        tracing::warn!(topic, "message on an unknown topic dropped");
        return None;
    };
    match store.device_exists(&device) {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(%device, "message from an unknown device dropped");
            return None;
        }
        Err(e) => {
            tracing::error!(%device, error = %e, "looking up a device; message dropped");
            return None;
        }
    }
    match channel {
        Channel::Status => match StatusReport::decode(payload) {
            Ok(s) if s.device == device => {
                if let Err(e) = store.set_status(&device, &s) {
                    tracing::error!(error = %e, "storing status");
                }
                let _ = reports.send(Report::Status(device.to_string()));
            }
            Ok(_) => tracing::warn!(%device, "status naming another device dropped"),
            Err(e) => tracing::warn!(%device, error = %e, "bad status dropped"),
        },
        Channel::Events => match EventBatch::decode(payload) {
            Ok(b) if b.device == device => match store.insert_events(&device, &b.events) {
                Ok(acked) => {
                    let _ = reports.send(Report::Events(device.to_string()));
                    return Some((
                        Topic::device(&device, Channel::Ack).to_string(),
                        protocol::json::encode(&Ack { acked }),
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %e, "storing events (not acked; the device resends)")
                }
            },
            Ok(_) => tracing::warn!(%device, "events naming another device dropped"),
            Err(e) => tracing::warn!(%device, error = %e, "bad event batch dropped"),
        },
        Channel::Presence => match Presence::decode(payload) {
            Ok(p) => match store.set_presence(&device, p) {
                Ok(true) => {
                    let _ = reports.send(Report::Presence(device.to_string()));
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "storing presence"),
            },
            Err(e) => tracing::warn!(%device, error = %e, "bad presence dropped"),
        },
        Channel::Desired | Channel::Ack => {}
    }
    None
}
