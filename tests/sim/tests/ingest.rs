//! The hub's ingest under a burst (issue 16): 2,000 simulated devices report at the same
//! instant, through the embedded broker and through mosquitto, and every report must be stored
//! once and acked from its first send (no resend needed), with the hub's MQTT link still alive
//! for a second burst. Before the ingest left the read loop, the link stopped for good after
//! about 1,100 batches (embedded broker) or half the reports were lost (mosquitto).
//!
//! The tests run one at a time (`.config/nextest.toml`, group `fleet-load`) and take about a
//! minute each, most of it accepting 2,000 connections.

mod common;

use std::path::Path;
use std::time::Duration;

use cloud_hub::store::Store;
use common::{seed_devices, Hub};
use fleet_sim::{Fleet, Settings};
use fleet_test_kit::free_port;
use fleet_test_kit::mosquitto::Mosquitto;

const DEVICES: usize = 2_000;

/// mosquitto as `deploy/mosquitto/mosquitto.conf` sizes it for a fleet (anonymous here: the
/// test is about load, not access control).
fn mosquitto(dir: &Path) -> Mosquitto {
    Mosquitto::start(
        dir,
        free_port(),
        "allow_anonymous true\npersistence false\nmax_packet_size 1048576\n\
         max_queued_messages 1000000\nmax_inflight_messages 1000\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_devices_reporting_at_once_through_the_embedded_broker_are_all_stored_and_acked(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeding = std::time::Instant::now();
    let devices = seed_devices(dir.path(), "burst", DEVICES);
    eprintln!("seeded {DEVICES} devices in {:?}", seeding.elapsed());
    let hub = Hub::start(dir.path()).await;
    every_report_is_stored_once_and_acked(&hub, devices, hub.broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_devices_reporting_at_once_through_mosquitto_are_all_stored_and_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = mosquitto(dir.path());
    let devices = seed_devices(dir.path(), "burst", DEVICES);
    let ext = format!("127.0.0.1:{}", broker.port);
    let hub = Hub::start_with(dir.path(), &["--external-mqtt", &ext]).await;
    every_report_is_stored_once_and_acked(&hub, devices, ("127.0.0.1".into(), broker.port)).await;
}

async fn every_report_is_stored_once_and_acked(
    hub: &Hub,
    devices: Vec<fleet_sim::identity::Identity>,
    broker: (String, u16),
) {
    let settings = Settings {
        broker: Some(broker),
        jitter: Duration::from_secs(5),
        // The debug-built broker and simulator share two loaded cores: a keep-alive of 15 s
        // sees connections dropped while 2,000 of them are being accepted.
        keep_alive: Duration::from_secs(60),
        // Longer than the test: every event must be acked from its first send.
        resend: Duration::from_secs(600),
    };
    let started = std::time::Instant::now();
    let fleet = Fleet::start(devices, settings, 0);
    // Connecting, each device reports presence, status and its trust_accepted event.
    // Accepting 2,000 connections is the slow part on a loaded machine (a debug-built broker
    // and simulator on two cores: 30-45 s); the ingest itself is what the bursts measure.
    let s = fleet
        .wait_for(Duration::from_secs(120), |s| {
            s.connected == DEVICES && s.events.generated == DEVICES as u64 && s.events.pending == 0
        })
        .await
        .unwrap_or_else(|s| panic!("the fleet did not connect and report: {s:?}"));
    assert_eq!(s.events.acked, DEVICES as u64, "{s:?}");
    eprintln!("connected and reported in {:?}", started.elapsed());

    // Everyone at once, twice: the second burst shows the link survived the first.
    for round in 1..=2u64 {
        let burst = std::time::Instant::now();
        fleet.burst(3);
        let want = DEVICES as u64 * (1 + 3 * round);
        let s = fleet
            .wait_for(Duration::from_secs(60), |s| {
                s.events.generated == want && s.events.pending == 0
            })
            .await
            .unwrap_or_else(|s| panic!("burst {round} was not all acked: {s:?}"));
        assert_eq!(s.events.acked, want, "{s:?}");
        assert_eq!(s.events.sent, want, "nothing had to be resent: {s:?}");
        assert_eq!(s.connected, DEVICES, "{s:?}");
        eprintln!("burst {round} stored and acked in {:?}", burst.elapsed());
    }

    // The hub holds each device's events 1..=7 exactly once, and acked all of them.
    let store = Store::open(&hub.data.join("hub.db")).expect("hub store");
    for (id, last) in fleet.ids().iter().zip(fleet.last_seqs()) {
        assert_eq!(last, 7, "{id}");
        let mut seqs: Vec<u64> = store
            .events(id.as_str(), 100, None)
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>(), "{id}");
        assert_eq!(store.acked(id.as_str()).expect("acked"), 7, "{id}");
    }
    fleet.stop().await;
}

/// A measurement, not a test (run by hand, figures in `docs/BENCHMARKS.md`): `N` devices
/// (`FLEET_SIM_DEVICES`, default 2,000) through the embedded broker or mosquitto
/// (`FLEET_SIM_BROKER=mosquitto`) report at once `ROUNDS` times (`FLEET_SIM_ROUNDS`, default 10),
/// each round as soon as the last was acked; prints the reports stored and acked per second.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run by hand with --release and --run-ignored only"]
async fn measure_ingest_rate() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, rounds) = (
        env("FLEET_SIM_DEVICES", DEVICES),
        env("FLEET_SIM_ROUNDS", 10),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = seed_devices(dir.path(), "rate", n);
    let mosquitto = std::env::var("FLEET_SIM_BROKER").is_ok_and(|b| b == "mosquitto");
    let (_broker, hub) = if mosquitto {
        let b = self::mosquitto(dir.path());
        let ext = format!("127.0.0.1:{}", b.port);
        let hub = Hub::start_with(dir.path(), &["--external-mqtt", &ext]).await;
        (Some(b), hub)
    } else {
        (None, Hub::start(dir.path()).await)
    };
    let broker = match &_broker {
        Some(b) => ("127.0.0.1".to_string(), b.port),
        None => hub.broker(),
    };
    let settings = Settings {
        broker: Some(broker),
        jitter: Duration::from_secs(10),
        keep_alive: Duration::from_secs(60),
        resend: Duration::from_secs(600),
    };
    let fleet = Fleet::start(devices, settings, 0);
    let t = std::time::Instant::now();
    fleet
        .wait_for(Duration::from_secs(600), |s| {
            s.connected == n && s.events.generated == n as u64 && s.events.pending == 0
        })
        .await
        .expect("connected");
    eprintln!("{n} devices connected and reported in {:?}", t.elapsed());
    let before = writer_counters(&hub).await;
    let all = std::time::Instant::now();
    let mut worst = Duration::ZERO;
    for round in 1..=rounds as u64 {
        let t = std::time::Instant::now();
        fleet.burst(1);
        let want = n as u64 * (1 + round);
        let s = fleet
            .wait_for(Duration::from_secs(300), |s| {
                s.events.generated == want && s.events.pending == 0
            })
            .await
            .unwrap_or_else(|s| panic!("round {round} not acked: {s:?}"));
        assert_eq!(s.events.sent, want, "{s:?}");
        worst = worst.max(t.elapsed());
    }
    let secs = all.elapsed().as_secs_f64();
    eprintln!(
        "broker={} devices={n} rounds={rounds}: {} reports in {secs:.2} s = {:.0} reports/s; slowest round {worst:?}",
        if mosquitto { "mosquitto" } else { "embedded" },
        n * rounds,
        (n * rounds) as f64 / secs
    );
    // Where the time went at the hub: how long its writer spent in batches (decode and one
    // transaction each), and how many messages a batch held.
    let after = writer_counters(&hub).await;
    let (busy, batches, messages) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    eprintln!(
        "hub writer: {messages:.0} messages in {batches:.0} batches ({:.0} a batch), \
         busy {busy:.2} s of {secs:.2} s ({:.0} %), {:.0} messages/s while busy",
        messages / batches.max(1.0),
        100.0 * busy / secs,
        messages / busy.max(1e-9)
    );
    fleet.stop().await;
}

/// The hub's ingest writer counters from `/metrics`: seconds spent in batches, batches, and
/// messages stored.
async fn writer_counters(hub: &Hub) -> (f64, f64, f64) {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", hub.http))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("fleet_hub_ingest_batch_seconds_sum"),
        sum("fleet_hub_ingest_batch_seconds_count"),
        sum("fleet_hub_ingest_messages_total"),
    )
}
