//! The hub's own MQTT client and the ingest of what devices report (DESIGN §3.4, §3.5).
//!
//! - On every ConnAck it subscribes to device reports and republishes every retained message
//!   the hub owns (trust, each desired state, each ack) from the database: a broker may have
//!   lost them (mosquitto saves retained messages only periodically), and agents ignore what
//!   they already have.
//! - Events are stored idempotently by (device, seq) in one transaction per batch, then the
//!   highest contiguous stored seq is published, retained, on the device's `ack` topic.
//! - Presence is kept only when its epoch supersedes the stored one.
//! - The device id comes from the topic; a message naming another device, or that does not
//!   decode, is logged and dropped.

use std::time::Duration;

use protocol::{Ack, Channel, EventBatch, Presence, StatusReport, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// A publisher handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HubLink {
    client: AsyncClient,
}

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

impl HubLink {
    /// Publishes a retained message at QoS 1 (queued; sent while connected).
    pub async fn publish_retained(&self, topic: String, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .publish(topic.clone(), QoS::AtLeastOnce, true, payload)
            .await
        {
            tracing::warn!(%topic, error = %e, "publish failed; it is republished on reconnect");
        }
    }
}

/// Where the broker is and how the hub logs in.
#[derive(Debug, Clone)]
pub struct BrokerLogin {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
}

/// Starts the hub's MQTT client.
pub fn start(
    login: BrokerLogin,
    store: Store,
    reports: broadcast::Sender<Report>,
    cancel: CancellationToken,
) -> HubLink {
    let mut opts = MqttOptions::new(
        format!("fleet-hub-{}", std::process::id()),
        login.host.clone(),
        login.port,
    );
    opts.set_credentials(login.username.clone(), login.password.clone());
    opts.set_clean_session(true);
    opts.set_keep_alive(Duration::from_secs(15));
    let max = protocol::limits::MAX_ENVELOPE_BYTES + 64 * 1024;
    opts.set_max_packet_size(max, max);
    opts.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let link = HubLink {
        client: client.clone(),
    };
    let publisher = link.clone();
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    tracing::info!(host = %login.host, port = login.port, "hub connected to broker");
                    for f in protocol::topics::HUB_SUBSCRIPTIONS {
                        let _ = client.subscribe(f, QoS::AtLeastOnce).await;
                    }
                    let store = store.clone();
                    let publisher = publisher.clone();
                    tokio::spawn(async move {
                        match tokio::task::spawn_blocking(move || store.retained_messages()).await {
                            Ok(Ok(msgs)) => {
                                let n = msgs.len();
                                for (t, p) in msgs {
                                    publisher.publish_retained(t, p).await;
                                }
                                tracing::info!(messages = n, "republished retained state");
                            }
                            other => tracing::error!(?other, "cannot read retained state"),
                        }
                    });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let store = store.clone();
                    let reports = reports.clone();
                    let publisher = publisher.clone();
                    let topic = p.topic.clone();
                    let payload = p.payload.to_vec();
                    // Ingest is short SQLite work; run it off the event loop.
                    let ack = tokio::task::spawn_blocking(move || {
                        ingest(&store, &topic, &payload, &reports)
                    })
                    .await;
                    if let Ok(Some((t, a))) = ack {
                        publisher.publish_retained(t, a).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(error = %e, "hub lost the broker; reconnecting");
                    }
                    eventloop.pending.clear();
                    let wait = (250u64 << failures.min(6)).min(10_000);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    }
                }
            }
        }
    });
    link
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
    if !store.device_exists(&device) {
        tracing::warn!(%device, "message from an unknown device dropped");
        return None;
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
            Ok(p) => {
                if store.set_presence(&device, p).unwrap_or(false) {
                    let _ = reports.send(Report::Presence(device.to_string()));
                }
            }
            Err(e) => tracing::warn!(%device, error = %e, "bad presence dropped"),
        },
        Channel::Desired | Channel::Ack => {}
    }
    None
}
