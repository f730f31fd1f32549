//! MQTT-level faults for [`crate::proxy::Proxy::start_mqtt`]: the proxy frames MQTT packets
//! (3.1.1 and 5 share the fixed header) in both directions and can, on top of its TCP modes,
//! - withhold every PUBACK the broker sends the client (a broker that never acknowledges);
//! - send every PUBLISH from the broker to the client twice (a retained copy and a queued one);
//! - inject a flood of QoS 0 PUBLISH packets into the client's side of every connection.
//!
//! The packets it makes are plain MQTT: a QoS 0 PUBLISH needs no packet id, so a client takes
//! it like any other message on a topic it subscribed to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// MQTT control packet types (the high nibble of the first byte).
const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;

/// What the proxy does to MQTT packets; shared by all of its connections.
#[derive(Debug, Default)]
pub struct MqttFaults {
    withhold_pubacks: AtomicBool,
    duplicate_publishes: AtomicBool,
    pubacks_withheld: AtomicU64,
    publishes_duplicated: AtomicU64,
    publishes_up: AtomicU64,
    injected: AtomicU64,
    connects: AtomicU64,
    clean_connects: AtomicU64,
    clients: Mutex<Vec<mpsc::UnboundedSender<Injection>>>,
}

/// A packet to write `count` times towards the client.
pub(crate) type Injection = (Arc<Vec<u8>>, usize);

impl MqttFaults {
    /// Drops (or, with `false`, forwards again) every PUBACK from the broker to the client.
    pub fn withhold_pubacks(&self, on: bool) {
        self.withhold_pubacks.store(on, Ordering::SeqCst);
    }

    /// Sends every PUBLISH from the broker to the client twice (or once again, with `false`).
    pub fn duplicate_publishes(&self, on: bool) {
        self.duplicate_publishes.store(on, Ordering::SeqCst);
    }

    /// Writes `count` QoS 0 PUBLISH packets of `payload` on `topic` to the client of every open
    /// connection, between the broker's own packets; returns how many connections got them.
    pub fn flood(&self, topic: &str, payload: &[u8], count: usize) -> usize {
        let packet = Arc::new(publish_packet(topic, payload));
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|c| c.send((packet.clone(), count)).is_ok());
        clients.len()
    }

    /// PUBACKs dropped so far.
    pub fn pubacks_withheld(&self) -> u64 {
        self.pubacks_withheld.load(Ordering::SeqCst)
    }

    /// PUBLISH packets sent to a client a second time so far.
    pub fn publishes_duplicated(&self) -> u64 {
        self.publishes_duplicated.load(Ordering::SeqCst)
    }

    /// PUBLISH packets the clients sent towards the broker so far.
    pub fn publishes_up(&self) -> u64 {
        self.publishes_up.load(Ordering::SeqCst)
    }

    /// Injected packets written to clients so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// CONNECT packets the clients sent, and how many of them asked for a clean session (3.1.1)
    /// or a clean start (5).
    pub fn connects(&self) -> (u64, u64) {
        (
            self.connects.load(Ordering::SeqCst),
            self.clean_connects.load(Ordering::SeqCst),
        )
    }

    /// Registers a new connection's client side for injections.
    pub(crate) fn register(&self) -> mpsc::UnboundedReceiver<Injection> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    /// What to do with one packet on its way: how many copies to forward (0 drops it).
    pub(crate) fn copies(&self, packet: &[u8], downstream: bool) -> usize {
        let kind = packet.first().map(|b| b >> 4).unwrap_or(0);
        match (downstream, kind) {
            (true, PUBACK) if self.withhold_pubacks.load(Ordering::SeqCst) => {
                self.pubacks_withheld.fetch_add(1, Ordering::SeqCst);
                0
            }
            (true, PUBLISH) if self.duplicate_publishes.load(Ordering::SeqCst) => {
                self.publishes_duplicated.fetch_add(1, Ordering::SeqCst);
                2
            }
            (false, CONNECT) => {
                self.connects.fetch_add(1, Ordering::SeqCst);
                if connect_flags(packet).is_some_and(|f| f & 0x02 != 0) {
                    self.clean_connects.fetch_add(1, Ordering::SeqCst);
                }
                1
            }
            (false, PUBLISH) => {
                self.publishes_up.fetch_add(1, Ordering::SeqCst);
                1
            }
            _ => 1,
        }
    }

    pub(crate) fn count_injected(&self, n: usize) {
        self.injected.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// The connect-flags byte of a CONNECT packet: after the fixed header, the protocol name and
/// the protocol level.
fn connect_flags(packet: &[u8]) -> Option<u8> {
    let mut i = 1;
    while packet.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = usize::from(u16::from_be_bytes([
        *packet.get(i + 1)?,
        *packet.get(i + 2)?,
    ]));
    packet.get(i + 3 + name_len + 1).copied()
}

/// A QoS 0 PUBLISH packet.
pub fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let topic_len = u16::try_from(topic.len()).expect("a topic fits in 64 KiB");
    let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
    body.extend_from_slice(&topic_len.to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    let mut packet = vec![PUBLISH << 4];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Reads one whole MQTT packet (fixed header included); `None` at the end of the stream or on
/// a malformed length.
pub(crate) async fn read_packet(r: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let first = r.read_u8().await.ok()?;
    let mut packet = vec![first];
    let (mut len, mut shift) = (0usize, 0u32);
    loop {
        let b = r.read_u8().await.ok()?;
        packet.push(b);
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return None;
        }
    }
    let head = packet.len();
    packet.resize(head + len, 0);
    r.read_exact(&mut packet[head..]).await.ok()?;
    Some(packet)
}

/// Frames packets from `from` into a channel, so the pump can wait on them and on injections
/// at once without losing half a packet.
pub(crate) fn frames(mut from: tokio::net::tcp::OwnedReadHalf) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(p) = read_packet(&mut from).await {
            if tx.send(p).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Writes `packet` to `to`; false when the other side is gone.
pub(crate) async fn write(to: &mut tokio::net::tcp::OwnedWriteHalf, packet: &[u8]) -> bool {
    to.write_all(packet).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_publish_packet_reads_back_whole_with_a_multi_byte_length() {
        let payload = vec![7u8; 300];
        let p = publish_packet("fleet/v1/dev/a/desired", &payload);
        assert_eq!(p[0], 0x30);
        let mut r = &p[..];
        let back = read_packet(&mut r).await.expect("one packet");
        assert_eq!(back, p);
        assert!(read_packet(&mut r).await.is_none(), "nothing after it");
    }

    #[test]
    fn withheld_pubacks_and_duplicated_publishes_are_counted() {
        let f = MqttFaults::default();
        assert_eq!(f.copies(&[0x40, 2, 0, 1], true), 1);
        f.withhold_pubacks(true);
        assert_eq!(f.copies(&[0x40, 2, 0, 1], true), 0);
        assert_eq!(
            f.copies(&[0x40, 2, 0, 1], false),
            1,
            "only towards the client"
        );
        f.duplicate_publishes(true);
        assert_eq!(f.copies(&[0x32, 0], true), 2);
        assert_eq!((f.pubacks_withheld(), f.publishes_duplicated()), (1, 1));
        // CONNECT, length 12, "MQTT", level 4, flags: clean session.
        let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 5, 0, 0];
        assert_eq!(f.copies(&connect, false), 1);
        assert_eq!(f.connects(), (1, 1));
    }
}
