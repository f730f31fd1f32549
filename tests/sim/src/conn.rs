//! One task per simulated device: it owns the device's protocol state and its rumqttc event
//! loop, and `select!`s over the connection, the fleet's control channel, the outbox's resend
//! deadline and shutdown. Like the agent's link (`edge-agent/src/link.rs`):
//!
//! - client id = username = device id, clean session; a lost connection's in-flight publishes
//!   are dropped and the outbox resends what stays unacked;
//! - on every ConnAck: subscribe to trust, desired and ack, publish `online` (retained) with
//!   this connection's epoch; the last will carries `offline` with the same epoch;
//! - after an error, back off exponentially (capped) with jitter.
//!
//! A cut drops the client and its socket without a DISCONNECT, so the broker publishes the
//! will, as it would when a gateway's link dies; a heal reconnects after a random delay within
//! the configured jitter.
//!
//! Each connection gets a fresh rumqttc event loop. rumqttc 0.24 gives every event loop a
//! 65,536-entry `incoming_pub` table (256 KiB) that `EventLoop::clean` writes in full, so a loop
//! kept across reconnects stays resident at that size; a fresh one is lazily zeroed memory from
//! `calloc` and costs little once glibc's mmap threshold is pinned (see the README).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{Channel, Presence, PresenceState, Topic};
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::watch;

use crate::device::{Device, Outcome};
use crate::fleet::{Control, Shared};
use crate::identity::Identity;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn presence(epoch: u64, state: PresenceState) -> Vec<u8> {
    protocol::json::encode(&Presence { state, epoch })
}

/// Why a connection ended.
enum Exit {
    Cut,
    Error,
    Shutdown,
}

fn client_for(
    ident: &Identity,
    dev: &Device,
    conn: u64,
    shared: &Shared,
) -> (AsyncClient, EventLoop) {
    let (host, port) = shared
        .settings
        .broker
        .clone()
        .unwrap_or_else(|| (ident.mqtt_host.clone(), ident.mqtt_port));
    let id = ident.device.as_str();
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_credentials(id, ident.password.clone());
    opts.set_clean_session(true);
    opts.set_keep_alive(shared.settings.keep_alive);
    opts.set_max_packet_size(
        protocol::limits::MAX_ENVELOPE_BYTES * 16,
        protocol::limits::MAX_ENVELOPE_BYTES + 4096,
    );
    opts.set_inflight(16);
    opts.set_last_will(LastWill::new(
        Topic::device(&ident.device, Channel::Presence).to_string(),
        presence(dev.epoch(conn), PresenceState::Offline),
        QoS::AtLeastOnce,
        true,
    ));
    AsyncClient::new(opts, 16)
}

/// Runs device `index` until shutdown; returns its identity with the state to persist.
pub async fn run(
    index: usize,
    mut ident: Identity,
    shared: Arc<Shared>,
    mut control: watch::Receiver<Control>,
) -> Identity {
    let mut saved = ident.state.clone();
    saved.boot += 1;
    let mut dev = Device::new(ident.device.clone(), ident.root.clone(), saved);
    shared.started(index, &dev);
    let mut burst_seen = control.borrow().burst;
    let mut conn: u64 = 0;
    let mut failures: u32 = 0;
    let jitter = shared.settings.jitter;
    // The first connection, like every reconnect after a heal, waits a random share of the jitter.
    let mut wait = random_within(jitter);
    'run: loop {
        // Wait out the delay and any cut; bursts still land in the outbox meanwhile. The delay
        // runs from the heal, so a healed partition does not reconnect all at once.
        let mut until = tokio::time::Instant::now() + wait;
        let mut was_cut = false;
        loop {
            let c = control.borrow_and_update().clone();
            if c.burst != burst_seen {
                burst_seen = c.burst;
                burst(&mut dev, c.burst_events, &shared, index);
            }
            let cut = index < c.cut;
            if was_cut && !cut {
                until = tokio::time::Instant::now() + random_within(jitter);
            }
            was_cut = cut;
            if !cut && tokio::time::Instant::now() >= until {
                break;
            }
            tokio::select! {
                _ = shared.cancel.cancelled() => break 'run,
                r = control.changed() => if r.is_err() { break 'run },
                _ = tokio::time::sleep_until(until), if !cut => {}
            }
        }
        conn += 1;
        let exit = connection(
            index,
            &ident,
            &mut dev,
            conn,
            &shared,
            &mut control,
            &mut burst_seen,
        )
        .await;
        wait = match exit {
            Exit::Shutdown => break 'run,
            Exit::Cut => {
                failures = 0;
                random_within(jitter)
            }
            Exit::Error => {
                failures = failures.saturating_add(1);
                let base = (250u64 << failures.min(7)).min(30_000);
                Duration::from_millis(base / 2 + rand::thread_rng().gen_range(0..=base / 2))
                    + random_within(jitter)
            }
        };
    }
    ident.state = dev.persisted();
    ident
}

fn random_within(jitter: Duration) -> Duration {
    let ms = jitter.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=ms)
    })
}

/// Everyone reporting at once: `n` events appended together.
fn burst(dev: &mut Device, n: usize, shared: &Shared, index: usize) {
    let now = unix_now();
    if let Ok(workload) = protocol::WorkloadName::new("svc") {
        for i in 0..n {
            let body = protocol::EventBody::HealthChanged {
                workload: workload.clone(),
                healthy: i % 2 == 0,
            };
            dev.outbox.push(body, now);
        }
    }
    shared.sync(index, dev);
}

/// One connection, from building the client to its end.
async fn connection(
    index: usize,
    ident: &Identity,
    dev: &mut Device,
    conn: u64,
    shared: &Shared,
    control: &mut watch::Receiver<Control>,
    burst_seen: &mut u64,
) -> Exit {
    let (client, mut el) = client_for(ident, dev, conn, shared);
    let desired = Topic::device(&ident.device, Channel::Desired).to_string();
    let ack = Topic::device(&ident.device, Channel::Ack).to_string();
    let resend = shared.settings.resend;
    let mut connected = false;
    let exit = loop {
        let resend_at = dev
            .outbox
            .resend_at(resend)
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = shared.cancel.cancelled() => break Exit::Shutdown,
            r = control.changed() => {
                if r.is_err() {
                    break Exit::Shutdown;
                }
                let c = control.borrow_and_update().clone();
                if index < c.cut {
                    break Exit::Cut;
                }
                if c.burst != *burst_seen {
                    *burst_seen = c.burst;
                    burst(dev, c.burst_events, shared, index);
                    if connected {
                        publish_status(&client, dev);
                        flush(&client, dev, shared);
                    }
                }
            }
            _ = sleep_until_opt(resend_at), if connected && resend_at.is_some() => {
                flush(&client, dev, shared);
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    shared.connected.fetch_add(1, Relaxed);
                    shared.connects.fetch_add(1, Relaxed);
                    // Trust first: a retained desired state signed by a newly listed key must find it.
                    for t in [protocol::topics::TRUST, desired.as_str(), ack.as_str()] {
                        let _ = client.try_subscribe(t, QoS::AtLeastOnce);
                    }
                    let topic = Topic::device(&ident.device, Channel::Presence).to_string();
                    let _ = client.try_publish(topic, QoS::AtLeastOnce, true, presence(dev.epoch(conn), PresenceState::Online));
                    dev.outbox.reconnected();
                    publish_status(&client, dev);
                    flush(&client, dev, shared);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = unix_now();
                    let outcomes = if p.topic == desired {
                        vec![dev.on_desired(&p.payload, now)]
                    } else if p.topic == protocol::topics::TRUST {
                        dev.on_trust(&p.payload, now)
                    } else if p.topic == ack {
                        match dev.on_ack(&p.payload) {
                            Some(n) => { shared.events_acked.fetch_add(n as u64, Relaxed); }
                            None => tracing::warn!(device = %ident.device, "malformed ack ignored"),
                        }
                        Vec::new()
                    } else {
                        Vec::new()
                    };
                    let mut changed = false;
                    for o in outcomes {
                        changed |= shared.record(index, &o);
                        if let Outcome::Rejected { code } = o {
                            tracing::warn!(device = %ident.device, code, "document rejected");
                        }
                    }
                    if changed {
                        publish_status(&client, dev);
                    }
                    flush(&client, dev, shared);
                    shared.sync(index, dev);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(device = %ident.device, error = %e, "connection lost");
                    break Exit::Error;
                }
            }
        }
    };
    if connected {
        shared.connected.fetch_sub(1, Relaxed);
        shared.disconnects.fetch_add(1, Relaxed);
    }
    // Dropping the event loop closes the socket without a DISCONNECT: the broker sends the will.
    drop(el);
    drop(client);
    exit
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn publish_status(client: &AsyncClient, dev: &Device) {
    let topic = Topic::device(dev.id(), Channel::Status).to_string();
    let body = protocol::json::encode(&dev.status(unix_now()));
    // A full queue drops this snapshot; the next change or reconnect sends a newer one.
    let _ = client.try_publish(topic, QoS::AtLeastOnce, false, body);
}

fn flush(client: &AsyncClient, dev: &mut Device, shared: &Shared) {
    let now = Instant::now();
    let Some(batch) = dev.outbox.batch(dev.id(), now, shared.settings.resend) else {
        return;
    };
    let Some(last) = batch.events.last().map(|e| e.seq) else {
        return;
    };
    let n = batch.events.len() as u64;
    let topic = Topic::device(dev.id(), Channel::Events).to_string();
    // A full queue counts as lost in flight: the resend deadline tries again.
    if client
        .try_publish(
            topic,
            QoS::AtLeastOnce,
            false,
            protocol::json::encode(&batch),
        )
        .is_ok()
    {
        shared.events_sent.fetch_add(n, Relaxed);
    }
    dev.outbox.sent(last, now);
}
