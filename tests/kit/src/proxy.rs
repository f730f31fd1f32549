//! A fault-injecting TCP proxy on 127.0.0.1. Modes apply to existing and new connections:
//! - `Pass`: forward both ways;
//! - `Cut`: close every connection and refuse new ones (accept, then close at once);
//! - `Blackhole(dir)`: keep connections open but forward nothing in that direction (or both),
//!   like a firewall DROP: bytes wait, and flow again after `heal` unless a side gave up;
//! - `Delay(d)`: forward each chunk after `d`;
//! - `Throttle(bps)`: forward at most `bps` bytes per second.
//!
//! [`Proxy::start_mqtt`] frames MQTT packets instead of forwarding bytes, and adds the faults of
//! [`crate::mqtt::MqttFaults`] (withheld PUBACKs, duplicated PUBLISHes, injected floods).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::mqtt::MqttFaults;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → upstream.
    Upstream,
    /// Upstream → client.
    Downstream,
    /// Both.
    Both,
}

/// The proxy's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// Close everything, refuse new connections.
    Cut,
    /// Forward nothing in this direction.
    Blackhole(Direction),
    /// Forward each chunk after a delay.
    Delay(Duration),
    /// Forward at most this many bytes per second.
    Throttle(u64),
}

#[derive(Debug, Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    accepted: AtomicU64,
}

/// A running proxy. Dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    mqtt: Option<Arc<MqttFaults>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Self::launch(upstream, None)
    }

    /// Starts a proxy to the MQTT broker at `upstream` that frames packets, so that on top of
    /// the modes it can inject MQTT faults ([`Proxy::mqtt`]).
    pub fn start_mqtt(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Self::launch(upstream, Some(Arc::new(MqttFaults::default())))
    }

    /// The MQTT faults of a proxy started with [`Proxy::start_mqtt`].
    ///
    /// # Panics
    /// On a plain TCP proxy.
    pub fn mqtt(&self) -> &MqttFaults {
        self.mqtt
            .as_deref()
            .expect("an MQTT proxy (Proxy::start_mqtt)")
    }

    fn launch(upstream: SocketAddr, mqtt: Option<Arc<MqttFaults>>) -> std::io::Result<Proxy> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let faults = mqtt.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.accepted.fetch_add(1, Ordering::Relaxed);
                if *rx.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let (rx, c, faults) = (rx.clone(), c.clone(), faults.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let (up, down) = if let Some(f) = faults {
                        let injections = f.register();
                        let up = Link::new(rx.clone(), Direction::Upstream, c.clone(), f.clone());
                        let down = Link::new(rx, Direction::Downstream, c, f);
                        (
                            tokio::spawn(up.pump_packets(cr, sw, None)),
                            tokio::spawn(down.pump_packets(sr, cw, Some(injections))),
                        )
                    } else {
                        (
                            tokio::spawn(pump(cr, sw, rx.clone(), Direction::Upstream, c.clone())),
                            tokio::spawn(pump(sr, cw, rx, Direction::Downstream, c)),
                        )
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Proxy {
            addr,
            mode,
            counters,
            mqtt,
            rt: Some(rt),
        })
    }

    /// Sets the mode.
    pub fn set(&self, m: Mode) {
        let _ = self.mode.send(m);
    }
    /// Closes all connections and refuses new ones.
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }
    /// Forwards nothing either way.
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole(Direction::Both));
    }
    /// Back to normal.
    pub fn heal(&self) {
        self.set(Mode::Pass);
    }
    /// Bytes forwarded client → upstream.
    pub fn bytes_up(&self) -> u64 {
        self.counters.up.load(Ordering::Relaxed)
    }
    /// Bytes forwarded upstream → client.
    pub fn bytes_down(&self) -> u64 {
        self.counters.down.load(Ordering::Relaxed)
    }
    /// Connections accepted (including refused ones).
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn blocks(m: Mode, dir: Direction) -> bool {
    matches!(m, Mode::Blackhole(d) if d == Direction::Both || d == dir)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    dir: Direction,
    c: Arc<Counters>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Hold while blackholed; leave when cut.
        loop {
            let m = *mode.borrow_and_update();
            if m == Mode::Cut {
                return;
            }
            if !blocks(m, dir) {
                break;
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = mode.changed() => continue,
        };
        let mut sent = 0;
        while sent < n {
            let m = *mode.borrow();
            if m == Mode::Cut {
                return;
            }
            if blocks(m, dir) {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let chunk = match m {
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    n - sent
                }
                Mode::Throttle(bps) => {
                    let step = (bps / 10).max(1) as usize;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    step.min(n - sent)
                }
                _ => n - sent,
            };
            if to.write_all(&buf[sent..sent + chunk]).await.is_err() {
                return;
            }
            sent += chunk;
            let ctr = if dir == Direction::Upstream {
                &c.up
            } else {
                &c.down
            };
            ctr.fetch_add(chunk as u64, Ordering::Relaxed);
        }
    }
}

/// One direction of an MQTT connection, forwarded packet by packet.
struct Link {
    mode: watch::Receiver<Mode>,
    dir: Direction,
    c: Arc<Counters>,
    faults: Arc<MqttFaults>,
}

impl Link {
    fn new(
        mode: watch::Receiver<Mode>,
        dir: Direction,
        c: Arc<Counters>,
        f: Arc<MqttFaults>,
    ) -> Self {
        Self {
            mode,
            dir,
            c,
            faults: f,
        }
    }

    /// Waits while the mode holds this direction; false once cut.
    async fn open(&mut self) -> bool {
        loop {
            let m = *self.mode.borrow_and_update();
            if m == Mode::Cut {
                return false;
            }
            if !blocks(m, self.dir) {
                if let Mode::Delay(d) = m {
                    tokio::time::sleep(d).await;
                }
                return true;
            }
            if self.mode.changed().await.is_err() {
                return false;
            }
        }
    }

    async fn send(&mut self, to: &mut tokio::net::tcp::OwnedWriteHalf, p: &[u8]) -> bool {
        if !self.open().await || !crate::mqtt::write(to, p).await {
            return false;
        }
        let ctr = if self.dir == Direction::Upstream {
            &self.c.up
        } else {
            &self.c.down
        };
        ctr.fetch_add(p.len() as u64, Ordering::Relaxed);
        true
    }

    async fn pump_packets(
        mut self,
        from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        injections: Option<tokio::sync::mpsc::UnboundedReceiver<crate::mqtt::Injection>>,
    ) {
        let mut packets = crate::mqtt::frames(from);
        let mut injections = injections;
        loop {
            if *self.mode.borrow() == Mode::Cut {
                return;
            }
            let injected = async {
                match injections.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                p = packets.recv() => {
                    let Some(p) = p else { return };
                    for _ in 0..self.faults.copies(&p, self.dir == Direction::Downstream) {
                        if !self.send(&mut to, &p).await {
                            return;
                        }
                    }
                }
                Some((p, n)) = injected => {
                    for _ in 0..n {
                        if !self.send(&mut to, &p).await {
                            return;
                        }
                    }
                    self.faults.count_injected(n);
                }
                _ = self.mode.changed() => {}
            }
        }
    }
}
