//! The hub's own MQTT client, a transport: it hands what devices publish to the ingest service
//! and, on every ConnAck, subscribes to device reports and asks the publisher to republish
//! every retained message the hub owns (trust, each desired state, each ack) from the
//! database: a broker may have lost them (mosquitto saves retained messages only
//! periodically), and agents ignore what they already have.
//!
//! Invariant: the read loop (the only caller of `EventLoop::poll`, which alone drains the
//! client's request queue) never awaits anything that waits on that queue. Subscribing and
//! republishing run in their own tasks; acks leave through the ingest's acker. The one thing
//! the loop waits on is room in the ingest queue, whose writer waits only on the database:
//! that pause is the back-pressure (the loop stops reading and TCP holds the rest at the
//! broker).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::service::ingest::Ingest;
use crate::service::publisher::{Publisher, RetainedSink};

/// A publisher handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HubLink {
    client: AsyncClient,
    /// Whether the broker accepted the current connection (set on ConnAck, cleared on error).
    up: Arc<AtomicBool>,
}

impl HubLink {
    /// Whether the hub is connected to the broker now (the rollout driver holds while not:
    /// what it would read of the devices is going stale).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

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

impl crate::service::rollout::BrokerLink for HubLink {
    fn is_up(&self) -> bool {
        HubLink::is_up(self)
    }
}

impl RetainedSink for HubLink {
    fn publish_retained(&self, topic: String, payload: Vec<u8>) -> BoxFuture<'_, ()> {
        Box::pin(HubLink::publish_retained(self, topic, payload))
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

/// The client's event loop, to [`run`] once the services that handle its messages exist.
pub struct Connection {
    login: BrokerLogin,
    client: AsyncClient,
    eventloop: EventLoop,
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.login.host)
            .field("port", &self.login.port)
            .finish()
    }
}

/// Makes the hub's MQTT client; nothing is sent until [`run`] polls it.
pub fn client(login: BrokerLogin) -> (HubLink, Connection) {
    let mut opts = MqttOptions::new(
        protocol::hub_client_id(std::process::id()),
        login.host.clone(),
        login.port,
    );
    opts.set_credentials(login.username.clone(), login.password.clone());
    opts.set_clean_session(true);
    opts.set_keep_alive(Duration::from_secs(15));
    let max = protocol::limits::MAX_ENVELOPE_BYTES + 64 * 1024;
    opts.set_max_packet_size(max, max);
    opts.set_inflight(100);
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let up = Arc::new(AtomicBool::new(false));
    (
        HubLink {
            client: client.clone(),
            up: up.clone(),
        },
        Connection {
            login,
            client,
            eventloop,
            up,
        },
    )
}

/// Runs the client on `tasks` until `cancel` fires: reconnects with backoff, republishes on
/// every connection, hands device messages to `ingest`.
pub fn run(
    conn: Connection,
    publisher: Publisher,
    ingest: Ingest,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    let Connection {
        login,
        client,
        mut eventloop,
        up,
    } = conn;
    let spawner = tasks.clone();
    let inlet = ingest.start(tasks, cancel.clone());
    tasks.spawn(async move {
        let mut failures = 0u32;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    crate::metrics::hub().broker_link_up.set(1);
                    crate::metrics::hub().broker_connects.inc();
                    up.store(true, Ordering::SeqCst);
                    tracing::info!(host = %login.host, port = login.port, "hub connected to broker");
                    let (client, publisher) = (client.clone(), publisher.clone());
                    spawner.spawn(async move {
                        for f in protocol::topics::HUB_SUBSCRIPTIONS {
                            if let Err(e) = client.subscribe(f, QoS::AtLeastOnce).await {
                                tracing::error!(filter = f, error = %e, "cannot subscribe");
                            }
                        }
                        match publisher.republish().await {
                            Ok(n) => tracing::info!(messages = n, "republished retained state"),
                            Err(e) => tracing::error!(error = %e, "cannot read retained state"),
                        }
                    });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let offered = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = inlet.offer(&p.topic, p.payload) => r,
                    };
                    if offered.is_err() {
                        tracing::error!("the ingest stopped; the hub's MQTT link stops");
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failures = failures.saturating_add(1);
                    crate::metrics::hub().broker_link_up.set(0);
                    up.store(false, Ordering::SeqCst);
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
}
