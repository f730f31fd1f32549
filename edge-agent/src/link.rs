//! The MQTT link (rumqttc): one task owns the event loop and turns what arrives into messages for
//! the owner loop; the loop publishes with `try_publish`, so nothing here can block the reconciler.
//!
//! - Client id = username = device id, clean session: correctness never rests on the broker
//!   keeping a session (DESIGN §3.4). In-flight publishes from a lost connection are dropped on
//!   reconnect; the outbox resends what stays unacked.
//! - Presence: `online` with this connection's epoch, retained, on every ConnAck; the last will
//!   carries `offline` with the same epoch. The epoch is `boot << 32 | connection`, where `boot`
//!   grows with every agent start (persisted), so it only ever increases.
//! - Reconnects back off exponentially with jitter, capped at 30 s.
//! - A connection whose publishes stay unacknowledged for two keep-alive periods is dropped and
//!   made again (C44): MQTT resends in-flight publishes only on a new connection, so a broker
//!   that lost or withheld PUBACKs would otherwise leave the window full, and the agent unable
//!   to publish, for as long as its pings are answered.

use std::time::Duration;

use tokio::time::Instant;

use protocol::{Channel, DeviceId, Presence, PresenceState, Topic};
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the link tells the owner loop.
#[derive(Debug)]
pub enum LinkMsg {
    /// Connected (after subscribing).
    Connected,
    /// Connection lost.
    Disconnected(String),
    /// A message on `desired`.
    Desired(Vec<u8>),
    /// A message on `trust`.
    Trust(Vec<u8>),
    /// A message on `ack`.
    Ack(Vec<u8>),
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Device id (client id and username).
    pub device: DeviceId,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Password.
    pub password: String,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Agent start counter (high half of the presence epoch).
    pub boot: u64,
}

/// The owner loop's handle for publishing.
#[derive(Clone, Debug)]
pub struct Link {
    client: AsyncClient,
    device: DeviceId,
}

fn presence(epoch: u64, state: PresenceState) -> Vec<u8> {
    protocol::json::encode(&Presence { state, epoch })
}

fn will(cfg: &LinkConfig, epoch: u64) -> LastWill {
    LastWill::new(
        Topic::device(&cfg.device, Channel::Presence).to_string(),
        presence(epoch, PresenceState::Offline),
        QoS::AtLeastOnce,
        true,
    )
}

impl Link {
    /// Publishes without waiting; `false` when the request queue is full (the caller retries
    /// later: status snapshots are superseded anyway, events stay in the outbox).
    pub fn try_publish(&self, channel: Channel, payload: Vec<u8>) -> bool {
        let topic = Topic::device(&self.device, channel).to_string();
        self.client
            .try_publish(topic, QoS::AtLeastOnce, channel.retained(), payload)
            .is_ok()
    }
}

/// Starts the link task. Messages arrive on the returned receiver.
pub fn spawn(cfg: LinkConfig, cancel: CancellationToken) -> (Link, mpsc::Receiver<LinkMsg>) {
    let mut opts = MqttOptions::new(cfg.device.as_str(), cfg.host.clone(), cfg.port);
    opts.set_credentials(cfg.device.as_str(), cfg.password.clone());
    opts.set_clean_session(true);
    opts.set_keep_alive(cfg.keep_alive);
    // Incoming packets up to 16 times the envelope limit are read, so an oversized retained
    // document is rejected as `too_large` and reported instead of breaking the connection on
    // every re-delivery (C48); the project's broker configs cap packets well below this bound.
    let incoming = protocol::limits::MAX_ENVELOPE_BYTES * 16;
    let outgoing = protocol::limits::MAX_ENVELOPE_BYTES + 4096;
    opts.set_max_packet_size(incoming, outgoing);
    opts.set_inflight(32);
    let first_epoch = (cfg.boot << 32) | 1;
    opts.set_last_will(will(&cfg, first_epoch));
    let (client, eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::channel(64);
    let link = Link {
        client: client.clone(),
        device: cfg.device.clone(),
    };
    tokio::spawn(run(cfg, client, eventloop, tx, cancel));
    (link, rx)
}

async fn run(
    cfg: LinkConfig,
    client: AsyncClient,
    mut eventloop: EventLoop,
    tx: mpsc::Sender<LinkMsg>,
    cancel: CancellationToken,
) {
    let mut conn: u64 = 1;
    let mut failures: u32 = 0;
    // When publishes last made progress: a PUBACK came, or nothing was in flight.
    let mut progress = Instant::now();
    let stall = cfg.keep_alive.saturating_mul(2);
    let desired = Topic::device(&cfg.device, Channel::Desired).to_string();
    let ack = Topic::device(&cfg.device, Channel::Ack).to_string();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => {
                let epoch = (cfg.boot << 32) | conn;
                let topic = Topic::device(&cfg.device, Channel::Presence).to_string();
                let _ = client.try_publish(topic, QoS::AtLeastOnce, true, presence(epoch, PresenceState::Offline));
                // Give the offline presence a moment to leave.
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    loop { if eventloop.poll().await.is_err() { break; } }
                }).await;
                return;
            }
            ev = eventloop.poll() => ev,
        };
        if matches!(ev, Ok(Event::Incoming(Packet::PubAck(_)))) || eventloop.state.inflight() == 0 {
            progress = Instant::now();
        }
        let ev = if progress.elapsed() > stall {
            tracing::warn!(
                in_flight = eventloop.state.inflight(),
                "publishes unacknowledged for two keep-alive periods; connecting again"
            );
            progress = Instant::now();
            eventloop.clean();
            Err(rumqttc::ConnectionError::NetworkTimeout)
        } else {
            ev
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                progress = Instant::now();
                let epoch = (cfg.boot << 32) | conn;
                // Trust first: a retained desired state signed by a newly listed key must find it.
                for t in [protocol::topics::TRUST, desired.as_str(), ack.as_str()] {
                    let _ = client.try_subscribe(t, QoS::AtLeastOnce);
                }
                let topic = Topic::device(&cfg.device, Channel::Presence).to_string();
                let _ = client.try_publish(
                    topic,
                    QoS::AtLeastOnce,
                    true,
                    presence(epoch, PresenceState::Online),
                );
                crate::metrics::link_up(true);
                let _ = tx.send(LinkMsg::Connected).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = if p.topic == desired {
                    LinkMsg::Desired(p.payload.to_vec())
                } else if p.topic == ack {
                    LinkMsg::Ack(p.payload.to_vec())
                } else if p.topic == protocol::topics::TRUST {
                    LinkMsg::Trust(p.payload.to_vec())
                } else {
                    continue;
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                crate::metrics::link_up(false);
                let _ = tx.send(LinkMsg::Disconnected(e.to_string())).await;
                // Fresh session next time: drop what was in flight, the outbox resends.
                eventloop.pending.clear();
                conn += 1;
                eventloop
                    .mqtt_options
                    .set_last_will(will(&cfg, (cfg.boot << 32) | conn));
                failures = failures.saturating_add(1);
                let base = 250u64.saturating_mul(1 << failures.min(7)).min(30_000);
                let jitter = rand::thread_rng().gen_range(0..=base / 2);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(base / 2 + jitter)) => {}
                }
            }
        }
    }
}
