//! The background publisher under a crash: the hub is killed with SIGKILL in the middle of
//! publishing a 5,000-device deployment; after the restart every device gets exactly the state
//! the store holds, and no device ever got a state absent from it.
//!
//! The hub publishes through Debian's mosquitto (anonymous, in this test only), so a plain MQTT
//! client can watch every desired state as the hub user would. The 5,000 devices are registered
//! through the store's bulk path (`Store::import_devices`), not 5,000 enrollment round trips;
//! none of them connects (what reaches the broker is what counts).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cloud_hub::model::NewDevice;
use cloud_hub::store::Store;
use common::*;
use fleet_test_kit::mosquitto::Mosquitto;
use protocol::{Arch, DesiredState, DeviceId, Envelope, RuntimeKind};
use serde_json::json;

const DEVICES: usize = 5_000;

/// Every desired state seen on the broker, per device, in arrival order.
type Seen = Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>>;

/// A plain MQTT client on `fleet/v1/dev/+/desired` recording what it receives.
async fn watch(port: u16, id: &str) -> Seen {
    let mut dev = Device::connect(port, id, id, "unused");
    assert!(dev.connected().await, "{id} connects to mosquitto");
    dev.client
        .subscribe("fleet/v1/dev/+/desired", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        let _keep = dev.client;
        while let Some((topic, payload)) = dev.rx.recv().await {
            let Some(device) = topic
                .strip_prefix("fleet/v1/dev/")
                .and_then(|t| t.strip_suffix("/desired"))
            else {
                continue;
            };
            s.lock()
                .expect("lock")
                .entry(device.to_string())
                .or_default()
                .push(payload);
        }
    });
    seen
}

fn seen_count(seen: &Seen) -> usize {
    seen.lock().expect("lock").len()
}

fn revision(wire: &[u8]) -> u64 {
    let env = Envelope::decode(wire).expect("envelope");
    serde_json::from_slice::<DesiredState>(&env.payload)
        .expect("state")
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_batch_publishes_after_restart_exactly_what_its_store_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // No limit on a client's queue: a new subscriber is sent all 5,000 retained states at once
    // (mosquitto's default queue of 1,000 would drop the rest).
    let _broker = Mosquitto::start(
        dir.path(),
        port,
        "allow_anonymous true\npersistence false\nmax_packet_size 1048576\nmax_queued_messages 0\n",
    );
    // Small chunks, so the batch spans many transactions and the kill lands inside it. The
    // only test in this binary, so setting the variable races with nothing.
    std::env::set_var("FLEET_HUB_PUBLISH_CHUNK", "25");
    let mut hub = Hub::start_with(
        dir.path(),
        &["--external-mqtt", &format!("127.0.0.1:{port}")],
    )
    .await;
    let store = Store::open(&hub.dir.join("hub.db")).expect("open the hub's store");
    let devices: Vec<NewDevice> = (0..DEVICES)
        .map(|i| NewDevice {
            id: DeviceId::new(format!("gw-{i:05}")).expect("id"),
            public_key: "unused".into(),
            password_hash: "unused".into(),
            password_salt: "unused".into(),
            profile: "local-dev".into(),
            arch: Arch::host().expect("arch"),
            runtimes: vec![RuntimeKind::Process],
            agent_version: "t".into(),
            labels: [("site".to_string(), "north".to_string())].into(),
        })
        .collect();
    store.import_devices(&devices, now()).expect("import");
    let (release, _) = hub.release("app", "1").await;
    let seen = watch(port, "watcher-1").await;

    let v = hub
        .admin(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(json!({"release": release, "selector": "site=north"})),
        )
        .await;
    assert_eq!(v["marked"], DEVICES, "{v}");
    eventually_async(30, "the first states on the broker", || async {
        (seen_count(&seen) > 0).then_some(())
    })
    .await;
    hub.kill();
    let pending = store.publish_pending().expect("pending");
    let held = store.fleet_summary().expect("summary").with_state;
    assert!(
        pending > 0 && held > 0,
        "the kill landed inside the batch: {held} stored, {pending} still marked"
    );

    hub.restart().await;
    eventually_async(
        120,
        "every marked device published after the restart",
        || async {
            let s = store.fleet_summary().ok()?;
            (s.publish_pending == 0 && s.with_state == DEVICES as u64).then_some(())
        },
    )
    .await;
    eventually_async(60, "a state for every device on the watcher", || async {
        (seen_count(&seen) == DEVICES).then_some(())
    })
    .await;
    // A client arriving now reads every retained state.
    let late = watch(port, "watcher-2").await;
    eventually_async(60, "every retained state for a new subscriber", || async {
        (seen_count(&late) == DEVICES).then_some(())
    })
    .await;

    let mut revisions = std::collections::BTreeSet::new();
    for (name, watched) in [("before and after the kill", &seen), ("retained", &late)] {
        let watched = watched.lock().expect("lock");
        for (device, payloads) in watched.iter() {
            let stored = store
                .desired_envelope(device)
                .expect("read")
                .unwrap_or_else(|| panic!("{device} got a state and the store holds none"));
            for p in payloads {
                assert!(
                    *p == stored,
                    "{device} got revision {} ({name}), the store holds revision {}",
                    revision(p),
                    revision(&stored)
                );
            }
            revisions.insert(revision(&stored));
        }
    }
    assert_eq!(revisions.len(), DEVICES, "one revision per device");
}

fn now() -> u64 {
    fleet_test_kit::now()
}
