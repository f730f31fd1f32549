//! Checklist C57 at a size CI can afford: 1,000 simulated devices on a hub behind mosquitto.
//! The broker is killed (-9) and started again: every device reconnects after its own jittered
//! back-off, reports what it appended meanwhile, and the hub lists all of them online and
//! converged, its own link back, hub and broker up. Then a tenth of the fleet is cut off while
//! a second release goes out, healed, and every device converges on it with each of its
//! events stored exactly once.
//!
//! About 45 s on a loaded two-core machine with debug builds, most of it
//! accepting 1,000 connections three times over; it runs alone (`.config/nextest.toml`, group
//! `fleet-load`). `docs/BENCHMARKS.md` has the same at 10,000 with release builds.

mod common;

use std::time::Duration;

use cloud_hub::store::Store;
use common::{seed_devices, Hub};
use fleet_sim::hub::HubClient;
use fleet_sim::scenario::hub_lists_all;
use fleet_sim::{Fleet, Settings};
use fleet_test_kit::free_port;
use fleet_test_kit::mosquitto::Mosquitto;

const DEVICES: usize = 1_000;
const PREFIX: &str = "rst";

/// Deploys a fresh release to every simulated device and waits until `expect` devices
/// verified it with nothing pending.
async fn deploy(api: &HubClient, fleet: &Fleet, version: &str, expect: usize) {
    let digest = api.upload_image("rstapp", version).await.expect("image");
    let release = api
        .release("rstapp", version, &digest)
        .await
        .expect("release");
    fleet.mark();
    api.deploy(release, &format!("sim={PREFIX}"))
        .await
        .expect("deploy");
    fleet
        .wait_for(Duration::from_secs(120), |s| {
            s.delivered_since_mark == expect && s.connected == expect
        })
        .await
        .unwrap_or_else(|s| panic!("release {version} did not reach {expect} devices: {s:?}"));
}

/// The hub's metrics text (admin token).
async fn metrics(hub: &Hub) -> String {
    reqwest::Client::new()
        .get(format!("{}/metrics", hub.http))
        .bearer_auth(&hub.token)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_every_device_reconnects_and_a_healed_partition_loses_no_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::start(
        dir.path(),
        free_port(),
        "allow_anonymous true\npersistence false\nmax_packet_size 1048576\n\
         max_queued_messages 1000000\nmax_inflight_messages 1000\n",
    );
    let devices = seed_devices(dir.path(), PREFIX, DEVICES);
    let ext = format!("127.0.0.1:{}", broker.port);
    let mut hub = Hub::start_with(dir.path(), &["--external-mqtt", &ext]).await;
    let api = HubClient::new(&hub.http, &hub.token);
    let settings = Settings {
        broker: Some(("127.0.0.1".into(), broker.port)),
        jitter: Duration::from_secs(5),
        // Debug builds on two loaded cores: a short keep-alive drops connections while a
        // thousand of them are being accepted.
        keep_alive: Duration::from_secs(60),
        resend: Duration::from_secs(5),
    };
    let fleet = Fleet::start(devices, settings, 0);
    fleet
        .wait_for(Duration::from_secs(120), |s| {
            s.connected == DEVICES && s.events.pending == 0
        })
        .await
        .unwrap_or_else(|s| panic!("the fleet did not connect: {s:?}"));
    deploy(&api, &fleet, "1", DEVICES).await;
    assert!(
        hub_lists_all(&api, DEVICES as u64, Duration::from_secs(60))
            .await
            .expect("summary"),
        "every device online and converged before the restart"
    );

    // The broker dies without a word and comes back; every device appends an event meanwhile.
    let before = fleet.summary();
    tokio::task::block_in_place(|| broker.restart());
    let restarted = std::time::Instant::now();
    fleet.burst(1);
    let s = fleet
        .wait_for(Duration::from_secs(120), |s| {
            s.connects >= before.connects + DEVICES as u64
                && s.connected == DEVICES
                && s.events.pending == 0
        })
        .await
        .unwrap_or_else(|s| panic!("not every device came back: {s:?}"));
    assert_eq!(s.events.generated, before.events.generated + DEVICES as u64);
    assert_eq!(s.rejected, 0, "{s:?}");
    assert!(
        hub_lists_all(&api, DEVICES as u64, Duration::from_secs(60))
            .await
            .expect("summary"),
        "every device online and converged after the restart"
    );
    eprintln!(
        "{DEVICES} devices back, online and converged {:?} after the broker restart",
        restarted.elapsed()
    );
    assert!(hub.proc.running(), "the hub stays up");
    let text = metrics(&hub).await;
    assert!(text.contains("fleet_hub_broker_link_up 1"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("fleet_hub_broker_connects_total ")
                && l.trim_end().ends_with(" 2")),
        "the hub's link reconnected once: {text}"
    );

    // A tenth is cut off while release 2 goes out, then healed.
    let cut = fleet.cut(10.0);
    assert_eq!(cut, DEVICES / 10);
    deploy(&api, &fleet, "2", DEVICES - cut).await;
    fleet.heal();
    let s = fleet
        .wait_for(Duration::from_secs(120), |s| {
            s.connected == DEVICES && s.delivered_since_mark == DEVICES && s.events.pending == 0
        })
        .await
        .unwrap_or_else(|s| panic!("the fleet did not converge after the heal: {s:?}"));
    assert_eq!(s.events.acked, s.events.generated, "{s:?}");
    assert!(
        hub_lists_all(&api, DEVICES as u64, Duration::from_secs(60))
            .await
            .expect("summary"),
        "every device online and converged after the heal"
    );

    // Every event each device ever appended is stored exactly once, and acked.
    let store = Store::open(&hub.data.join("hub.db")).expect("hub store");
    let revisions = fleet.revisions();
    for ((id, last), rev) in fleet.ids().iter().zip(fleet.last_seqs()).zip(revisions) {
        let mut seqs: Vec<u64> = store
            .events(id.as_str(), 1000, None)
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "{id}: no loss, no duplicate"
        );
        assert_eq!(store.acked(id.as_str()).expect("acked"), last, "{id}");
        assert!(rev > 0, "{id} holds a verified state");
    }
    fleet.stop().await;
    assert!(hub.proc.running(), "the hub stays up");
}
