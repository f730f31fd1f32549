//! One device cannot starve the fleet (issue 15): an enrolled device flooding its own `events`
//! topic with large batches, at full speed, while an honest device reports. The honest report
//! is stored and acked, the flood is refused and counted in the flooder's API view, and what
//! the hub stored of the flood stays within the per-device bucket.

mod common;

use std::time::{Duration, Instant};

use cloud_hub::store::Store;
use common::{seed_devices, Hub};
use fleet_sim::hub::HubClient;
use fleet_sim::identity::Identity;
use fleet_sim::{Fleet, Settings};
use protocol::{Channel, Event, EventBatch, EventBody, Topic};
use reqwest::Method;
use rumqttc::{AsyncClient, MqttOptions, QoS};

const FLOOD: Duration = Duration::from_secs(10);
/// Events per flood message (about 100 KiB each).
const PER_MESSAGE: usize = 200;

/// Publishes large event batches on `flooder`'s own topic as fast as the broker takes them,
/// until `FLOOD` has passed; returns how many messages it sent.
async fn flood(flooder: Identity, port: u16) -> u64 {
    let id = flooder.device.clone();
    let mut opts = MqttOptions::new(id.as_str(), "127.0.0.1", port);
    opts.set_credentials(id.as_str(), flooder.password.clone());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let topic = Topic::device(&id, Channel::Events).to_string();
    let reason = "x".repeat(400);
    let (until, mut seq, mut sent) = (Instant::now() + FLOOD, 1u64, 0u64);
    while Instant::now() < until {
        let events = (0..PER_MESSAGE)
            .map(|i| Event {
                seq: seq + i as u64,
                time: fleet_test_kit::now(),
                body: EventBody::DesiredRejected {
                    code: "flood".into(),
                    reason: reason.clone(),
                },
            })
            .collect();
        seq += PER_MESSAGE as u64;
        let batch = EventBatch {
            device: id.clone(),
            events,
        };
        let payload = protocol::json::encode(&batch);
        if client
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    poller.abort();
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_refused_and_counted_while_an_honest_one_is_stored_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut devices = seed_devices(dir.path(), "flood", 2);
    let hub = Hub::start(dir.path()).await;
    let (host, port) = hub.broker();
    let honest = devices.pop().expect("honest device");
    let flooder = devices.pop().expect("flooding device");
    let flooder_id = flooder.device.to_string();

    let settings = Settings {
        broker: Some((host, port)),
        jitter: Duration::from_millis(100),
        resend: Duration::from_secs(3),
        ..Settings::default()
    };
    let fleet = Fleet::start(vec![honest], settings, 0);
    fleet
        .wait_for(Duration::from_secs(20), |s| {
            s.connected == 1 && s.events.generated == 1 && s.events.pending == 0
        })
        .await
        .expect("the honest device connects and reports");

    let flooding = tokio::spawn(flood(flooder, port));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The honest device reports in the middle of the flood.
    fleet.burst(5);
    let s = fleet
        .wait_for(Duration::from_secs(20), |s| {
            s.events.generated == 6 && s.events.pending == 0
        })
        .await
        .unwrap_or_else(|s| panic!("the honest report was not stored during the flood: {s:?}"));
    assert_eq!(s.events.acked, 6, "{s:?}");
    assert!(
        !flooding.is_finished(),
        "the honest report was stored while the flood was still on"
    );
    let sent = flooding.await.expect("flood task");

    // What was stored of the flood stays within the bucket: 4 MiB at once, then 256 KiB/s, for
    // the flood and the few seconds its queued messages took to drain.
    let message_bytes = 100 * 1024;
    let admitted_max =
        (4 << 20) / message_bytes + (256 << 10) * (FLOOD.as_secs() + 10) / message_bytes;
    let stored = Store::open(&hub.data.join("hub.db"))
        .expect("hub store")
        .events(&flooder_id, u32::MAX, None)
        .expect("events")
        .len() as u64;
    eprintln!("flood: {sent} messages sent, {stored} events stored");
    assert!(
        stored <= admitted_max * PER_MESSAGE as u64,
        "{stored} flood events stored, over the bucket ({admitted_max} messages of {PER_MESSAGE}); {sent} sent"
    );
    // Refused and counted, visible in the flooder's view; the honest device refused nothing.
    let api = HubClient::new(&hub.http, &hub.token);
    let view = |id: String| {
        let api = api.clone();
        async move {
            api.admin(Method::GET, &format!("/api/v1/devices/{id}"), None)
                .await
                .expect("device view")
        }
    };
    let flooded = view(flooder_id.clone()).await;
    let refused = flooded["ingest_refused"]["messages"].as_u64().unwrap_or(0);
    eprintln!("flood: {refused} messages refused");
    assert!(refused > 0, "the flood was not refused: {flooded}");
    assert!(refused <= sent, "{refused} refused of {sent} sent");
    let honest_view = view(fleet.ids()[0].to_string()).await;
    assert_eq!(
        honest_view["ingest_refused"]["messages"], 0,
        "{honest_view}"
    );

    fleet.stop().await;
}
