//! The embedded MQTT broker (the `mqtt5` crate's broker, in-process), for a single-machine
//! install with nothing else to run. It enforces what a production broker's ACLs would
//! (DESIGN §3.4):
//! - a device connects with client id = username = its device id and the password issued at
//!   enrollment (checked against the hub's store); anonymous clients and wrong passwords are
//!   refused;
//! - a device may subscribe only to its own `desired` and `ack` and to `trust`, and publish only
//!   its own `status`, `events` and `presence` — its last will included;
//! - the hub's own client (user `hub`, a password made at start-up) may do anything.
//!
//! Devices connect to the hub's listener ([`crate::accept::accept_loop`]), which caps open
//! connections below the file limit and backs off when `accept` fails, where the broker's own
//! accept loop would retry at once and log every failure (out of file descriptors, that is a
//! spin writing megabytes a second). The listener peeks at each client's CONNECT (decoded with
//! the broker's own codec, nothing consumed) to know whose connection it is, so a deleted
//! device's live session is dropped at once ([`Sessions`], C67), then runs the connection in
//! the broker's client handler in place. The broker's own listener is on a loopback port nobody
//! is told about.
//!
//! Why `mqtt5`: of the embeddable Rust brokers, it is the one with an authorization hook for
//! every publish, subscribe and will (`AuthProvider::authorize_*`); rumqttd has a connect-time
//! auth callback but no per-topic authorization.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::broker::client_handler::ClientHandler;
use mqtt5::broker::config::{StorageBackend, StorageConfig};
use mqtt5::broker::transport::BrokerTransport;
use mqtt5::broker::{BrokerConfig, MqttBroker};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::packet::MqttPacket as _;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use mqtt5::{FixedHeader, PacketType};
use protocol::topics::{device_may_publish, device_may_subscribe};
use protocol::DeviceId;
use tokio_util::sync::CancellationToken;

/// Checks a device's broker password.
pub type PasswordCheck = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The hub's own broker user; no device id can equal it (`protocol::HUB_USERNAME`).
pub const HUB_USER: &str = protocol::HUB_USERNAME;

/// Authentication and per-topic authorization for devices.
pub struct DeviceAuth {
    check: PasswordCheck,
    hub_password: String,
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceAuth")
    }
}

impl DeviceAuth {
    /// Devices are checked with `check`; the hub's client uses `hub_password`.
    pub fn new(check: PasswordCheck, hub_password: String) -> Self {
        Self {
            check,
            hub_password,
        }
    }

    fn decide(&self, connect: &ConnectPacket) -> AuthResult {
        let Some(user) = connect.username.as_deref() else {
            return AuthResult::fail(ReasonCode::NotAuthorized);
        };
        let password = connect
            .password
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        if user == HUB_USER {
            return if crate::secrets::constant_time_eq(&password, &self.hub_password) {
                AuthResult::success_with_user(HUB_USER)
            } else {
                AuthResult::fail(ReasonCode::BadUsernameOrPassword)
            };
        }
        // Device ids exclude '+', '#', '/', so a valid id can never act as a wildcard.
        if DeviceId::new(user).is_err() || connect.client_id != user {
            return AuthResult::fail(ReasonCode::NotAuthorized);
        }
        if (self.check)(user, &password) {
            AuthResult::success_with_user(user)
        } else {
            AuthResult::fail(ReasonCode::BadUsernameOrPassword)
        }
    }
}

type BoxFut<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl AuthProvider for DeviceAuth {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _client_addr: SocketAddr,
    ) -> BoxFut<'a, mqtt5::error::Result<AuthResult>> {
        let r = self.decide(connect);
        if !r.authenticated {
            tracing::warn!(client = %connect.client_id, "broker refused a connection");
        }
        Box::pin(async move { Ok(r) })
    }

    fn authorize_publish<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic: &'a str,
    ) -> BoxFut<'a, bool> {
        let ok = match user_id {
            Some(HUB_USER) => true,
            Some(u) => DeviceId::new(u).is_ok_and(|d| device_may_publish(&d, topic)),
            None => false,
        };
        if !ok {
            tracing::warn!(client = client_id, topic, "broker denied a publish");
        }
        Box::pin(async move { ok })
    }

    fn authorize_subscribe<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> BoxFut<'a, bool> {
        let ok = match user_id {
            Some(HUB_USER) => true,
            Some(u) => DeviceId::new(u).is_ok_and(|d| device_may_subscribe(&d, topic_filter)),
            None => false,
        };
        if !ok {
            tracing::warn!(
                client = client_id,
                filter = topic_filter,
                "broker denied a subscribe"
            );
        }
        Box::pin(async move { ok })
    }
}

/// A running embedded broker.
pub struct Embedded {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: mqtt5::broker::BrokerShutdownHandle,
    front: tokio_util::sync::CancellationToken,
    parts: Arc<Parts>,
    sessions: Sessions,
}

/// What the broker's client handler needs, taken from the running broker.
struct Parts {
    config: Arc<BrokerConfig>,
    router: Arc<mqtt5::broker::router::MessageRouter>,
    auth: Arc<dyn AuthProvider>,
    storage: Option<Arc<mqtt5::broker::DynamicStorage>>,
    stats: Arc<mqtt5::broker::sys_topics::BrokerStats>,
    monitor: Arc<mqtt5::broker::ResourceMonitor>,
    /// Ends every client handler started here.
    stop: tokio::sync::broadcast::Sender<()>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Embedded({})", self.addr)
    }
}

impl Embedded {
    /// The live sessions, to drop a deleted device's.
    pub fn sessions(&self) -> Sessions {
        self.sessions.clone()
    }

    /// Stops the broker.
    pub fn shutdown(&self) {
        self.front.cancel();
        let _ = self.parts.stop.send(());
        self.shutdown.shutdown();
    }
}

/// Starts the broker on `addr` (port 0 picks a free one), at most `max_connections` open at
/// once; a client that sends nothing within `first_byte` is closed before it reaches the broker.
pub async fn start(
    addr: SocketAddr,
    auth: DeviceAuth,
    max_connections: usize,
    first_byte: std::time::Duration,
) -> anyhow::Result<Embedded> {
    // Bind the public listener first so a bad address fails before the broker starts.
    let public = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the broker on {addr}: {e}"))?;
    let public_addr = public.local_addr()?;
    let inner = SocketAddr::from(([127, 0, 0, 1], 0));
    let max = protocol::limits::MAX_ENVELOPE_BYTES + 64 * 1024;
    // In memory: correctness never rests on the broker keeping anything (DESIGN §3.4); the hub
    // republishes every retained message from its database on start and reconnect.
    // The hub's session is the one that takes every device's reports: when the hub's ingest
    // pushes back (it stops reading), the broker first holds up each publisher for up to 2 s
    // (its per-client channel of 10,000 is full), then queues behind; size that queue for a
    // whole fleet reporting at once rather than the default 10,000 messages / 64 MiB.
    let storage = StorageConfig {
        backend: StorageBackend::Memory,
        enable_persistence: false,
        max_queued_messages_per_client: 1_000_000,
        max_queued_bytes_per_client: 512 << 20,
        ..StorageConfig::default()
    };
    let config = BrokerConfig::default()
        .with_storage(storage)
        .with_bind_address(inner)
        .with_max_clients(max_connections)
        .with_max_packet_size(max)
        .with_max_retained_message_size(max);
    let mut broker = MqttBroker::with_config(config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("starting the embedded broker: {e}"))?
        .with_auth_provider(Arc::new(auth));
    let shutdown = broker.shutdown_handle();
    // Accepted connections are handed to the broker's own client handler (as its accept loop
    // does), not forwarded over a second loopback connection: one descriptor per client
    // instead of three, and no copy buffers. The broker's per-address and per-second limits
    // are not consulted: the cap here is the one that fits the file limit, and behind NAT a
    // whole fleet may share one address.
    let parts = Arc::new(Parts {
        config: Arc::new(config),
        router: broker.router(),
        auth: broker.auth_provider(),
        storage: broker.storage(),
        stats: broker.stats(),
        monitor: broker.resource_monitor(),
        stop: tokio::sync::broadcast::channel(1).0,
    });
    tokio::spawn(async move {
        if let Err(e) = broker.run().await {
            tracing::error!(error = %e, "embedded broker stopped");
        }
    });
    let front = tokio_util::sync::CancellationToken::new();
    let (stop, tasks) = (front.clone(), tokio_util::task::TaskTracker::new());
    let clients = parts.clone();
    let sessions = Sessions::default();
    let live = sessions.clone();
    tokio::spawn(async move {
        let conns = tasks.clone();
        crate::accept::accept_loop(
            "mqtt",
            public,
            max_connections,
            stop,
            &conns,
            move |client, permit| {
                let parts = clients.clone();
                let sessions = live.clone();
                async move {
                    // A silent client holds a slot, not also the broker's state for it.
                    let mut b = [0u8; 1];
                    if !matches!(
                        tokio::time::timeout(first_byte, client.peek(&mut b)).await,
                        Ok(Ok(1..))
                    ) {
                        drop(permit);
                        return;
                    }
                    // The first packet names the client, so its session can be dropped later.
                    let Some(id) = peek_connect(&client, first_byte).await else {
                        drop(permit);
                        return;
                    };
                    let Ok(peer) = client.peer_addr() else {
                        drop(permit);
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let handler = ClientHandler::new(
                        BrokerTransport::tcp(client),
                        peer,
                        parts.config.clone(),
                        parts.router.clone(),
                        parts.auth.clone(),
                        parts.storage.clone(),
                        parts.stats.clone(),
                        parts.monitor.clone(),
                        parts.stop.subscribe(),
                    );
                    let (n, cut) = sessions.add(&id);
                    tokio::select! {
                        r = handler.run() => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, %peer, "broker client ended");
                            }
                        }
                        () = cut.cancelled() => {
                            tracing::info!(client = %id, "dropped the session of a deleted device");
                        }
                    }
                    sessions.remove(&id, n);
                    drop(permit);
                }
            },
        )
        .await;
    });
    Ok(Embedded {
        addr: public_addr,
        shutdown,
        front,
        parts,
        sessions,
    })
}

/// The live connections through the front listener, by MQTT client id (a device's id), so a
/// deleted device's session is dropped at once rather than lasting until it reconnects.
#[derive(Clone, Debug, Default)]
pub struct Sessions(Arc<Mutex<Live>>);

#[derive(Debug, Default)]
struct Live {
    next: u64,
    by_client: HashMap<String, Vec<(u64, CancellationToken)>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, client: &str) -> (u64, CancellationToken) {
        let mut l = self.lock();
        l.next += 1;
        let (n, cut) = (l.next, CancellationToken::new());
        l.by_client
            .entry(client.to_string())
            .or_default()
            .push((n, cut.clone()));
        (n, cut)
    }

    fn remove(&self, client: &str, n: u64) {
        let mut l = self.lock();
        if let Some(v) = l.by_client.get_mut(client) {
            v.retain(|(m, _)| *m != n);
            if v.is_empty() {
                l.by_client.remove(client);
            }
        }
    }

    /// Closes every connection of `client`; returns how many there were.
    pub fn drop_client(&self, client: &str) -> usize {
        let cut = self.lock().by_client.remove(client).unwrap_or_default();
        for (_, c) in &cut {
            c.cancel();
        }
        cut.len()
    }
}

/// The largest first packet the front looks at before handing the connection to the broker.
const MAX_CONNECT_BYTES: usize = 64 * 1024;

/// Peeks at the client's first packet, which must be a CONNECT, within `deadline`, and returns
/// its client id; nothing is consumed, so the broker's handler reads the packet itself. `None`:
/// not a CONNECT, too large, too slow, or the client left.
async fn peek_connect(
    client: &tokio::net::TcpStream,
    deadline: std::time::Duration,
) -> Option<String> {
    let look = async {
        let mut buf = vec![0u8; 1024];
        loop {
            let n = match client.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            match parse_connect(&buf[..n]) {
                Parsed::Done(id) => return Some(id),
                Parsed::Bad => return None,
                Parsed::More if n == buf.len() => {
                    // The packet is longer than the window: widen it (bounded by the parse).
                    let wider = (buf.len() * 2).min(MAX_CONNECT_BYTES);
                    buf.resize(wider, 0);
                }
                // The rest has not arrived: `peek` would answer at once with the same bytes.
                Parsed::More => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
            }
        }
    };
    tokio::time::timeout(deadline, look).await.ok().flatten()
}

enum Parsed {
    Done(String),
    More,
    Bad,
}

/// The client id of a CONNECT at the start of `buf` (decoded with the broker's own codec).
fn parse_connect(buf: &[u8]) -> Parsed {
    let mut cur = buf;
    let Ok(header) = FixedHeader::decode(&mut cur) else {
        // A fixed header is at most 5 bytes.
        return if buf.len() < 5 {
            Parsed::More
        } else {
            Parsed::Bad
        };
    };
    let (head, body) = (buf.len() - cur.len(), header.remaining_length as usize);
    if header.packet_type != PacketType::Connect || head + body > MAX_CONNECT_BYTES {
        return Parsed::Bad;
    }
    if cur.len() < body {
        return Parsed::More;
    }
    let mut packet = &cur[..body];
    match ConnectPacket::decode_body(&mut packet, &header) {
        Ok(c) => Parsed::Done(c.client_id),
        Err(_) => Parsed::Bad,
    }
}
