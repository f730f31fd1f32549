//! The simulator against the real `cloud-hub` binary (built with `cargo build -p cloud-hub`):
//! 200 devices enrolled through the real API, a release deployed through the API, every device
//! verifying its state and the hub holding every device converged and every event once.

use std::time::Duration;

mod common;

use common::Hub;
use fleet_sim::hub::HubClient;
use fleet_sim::identity::{self, EnrollPlan, StateFile};
use fleet_sim::scenario::{self, Kind, Plan};
use fleet_sim::{Fleet, Settings};
use reqwest::Method;

const DEVICES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_verify_a_deployment_and_the_hub_stores_every_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let api = HubClient::new(&hub.http, &hub.token);
    let prefix = "simt";
    let plan = EnrollPlan {
        prefix: prefix.into(),
        count: DEVICES,
        labels: fleet_sim::scenario::labels(prefix),
        profile: "local-dev".into(),
        concurrency: 8,
    };
    let identity::Enrolled {
        devices, enrolled, ..
    } = identity::enroll_missing(&api, &plan, Vec::new())
        .await
        .expect("enroll");
    assert_eq!((devices.len(), enrolled), (DEVICES, DEVICES));
    let settings = Settings {
        jitter: Duration::from_millis(300),
        resend: Duration::from_secs(3),
        ..Settings::default()
    };
    let fleet = Fleet::start(devices, settings, enrolled);
    fleet
        .wait_for(Duration::from_secs(20), |s| s.connected == DEVICES)
        .await
        .expect("every device connects");

    let digest = api.upload_image("simapp", "1").await.expect("image");
    let release = api.release("simapp", "1", &digest).await.expect("release");
    fleet.mark();
    let answer = api
        .deploy(release, &format!("sim={prefix}"))
        .await
        .expect("deploy");
    assert_eq!(answer["marked"].as_u64(), Some(DEVICES as u64), "{answer}");
    let s = fleet
        .wait_for(Duration::from_secs(30), |s| {
            s.delivered_since_mark == DEVICES && s.events.pending == 0
        })
        .await
        .unwrap_or_else(|s| panic!("not every device got its state and its acks: {s:?}"));
    assert_eq!(s.rejected, 0, "{s:?}");
    assert_eq!(s.delivery.count, DEVICES);
    // trust_accepted, desired_accepted, workload_started (one workload), update_succeeded.
    assert_eq!(s.events.generated, 4 * DEVICES as u64, "{s:?}");
    assert_eq!(s.events.acked, s.events.generated, "{s:?}");
    hub_holds(&api, &held(&fleet), true).await;

    // Everyone reports at once: five events each, all stored and acked.
    let before = s.events.generated;
    fleet.burst(5);
    let s = fleet
        .wait_for(Duration::from_secs(20), |s| {
            s.events.generated == before + 5 * DEVICES as u64 && s.events.pending == 0
        })
        .await
        .unwrap_or_else(|s| panic!("the burst was not acked: {s:?}"));
    assert_eq!(s.events.acked, s.events.generated, "{s:?}");

    // A tenth of the fleet is cut off while a second release goes out; after the heal every
    // device converges on it and nothing it reported is lost or stored twice.
    assert_eq!(fleet.cut(10.0), DEVICES / 10);
    fleet
        .wait_for(Duration::from_secs(10), |s| {
            s.connected == DEVICES - DEVICES / 10
        })
        .await
        .expect("the cut devices drop");
    let digest = api.upload_image("simapp", "2").await.expect("image");
    let release = api.release("simapp", "2", &digest).await.expect("release");
    fleet.mark();
    api.deploy(release, &format!("sim={prefix}"))
        .await
        .expect("deploy");
    fleet
        .wait_for(Duration::from_secs(30), |s| {
            s.delivered_since_mark == DEVICES - DEVICES / 10
        })
        .await
        .unwrap_or_else(|s| panic!("the connected devices did not get release 2: {s:?}"));
    assert_eq!(fleet.summary().delivered_since_mark, DEVICES - DEVICES / 10);
    fleet.heal();
    let s = fleet
        .wait_for(Duration::from_secs(30), |s| {
            s.connected == DEVICES && s.delivered_since_mark == DEVICES && s.events.pending == 0
        })
        .await
        .unwrap_or_else(|s| panic!("the fleet did not converge after the heal: {s:?}"));
    assert_eq!(s.rejected, 0, "{s:?}");
    assert_eq!(s.disconnects, (DEVICES / 10) as u64, "{s:?}");
    hub_holds(&api, &held(&fleet), true).await;
    fleet.stop().await;
}

/// What the simulator says each device holds: (id, accepted revision, last event seq).
fn held(fleet: &Fleet) -> Vec<(String, u64, u64)> {
    let (revs, seqs) = (fleet.revisions(), fleet.last_seqs());
    fleet
        .ids()
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), revs[i], seqs[i]))
        .collect()
}

/// The hub lists every device converged on the revision the device verified (and online when
/// `online`), with the device's events 1..=n each stored exactly once.
async fn hub_holds(api: &HubClient, devices: &[(String, u64, u64)], online: bool) {
    let listed = api
        .admin(Method::GET, "/api/v1/devices", None)
        .await
        .expect("device list");
    let listed = listed.as_array().expect("array");
    for (id, revision, last_seq) in devices {
        let d = listed
            .iter()
            .find(|d| d["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} is not listed"));
        let want = d["desired_revision"].as_u64();
        assert_eq!(
            want,
            Some(*revision),
            "{id}: the hub holds what it verified"
        );
        assert_eq!(d["status"]["applied_revision"].as_u64(), want, "{id}: {d}");
        assert_eq!(d["status"]["convergence"], "converged", "{id}: {d}");
        if online {
            assert_eq!(d["presence"]["state"], "online", "{id}: {d}");
        }
        let events = api
            .admin(
                Method::GET,
                &format!("/api/v1/devices/{id}/events?limit=1000"),
                None,
            )
            .await
            .expect("events");
        let mut seqs: Vec<u64> = events
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .collect();
        seqs.sort_unstable();
        let expected: Vec<u64> = (1..=*last_seq).collect();
        assert_eq!(seqs, expected, "{id}: every event stored exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_reuses_the_identities_and_continues_their_event_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let api = HubClient::new(&hub.http, &hub.token);
    let state = dir.path().join("sim-state.json");
    let plan = |kind| Plan {
        kind,
        enroll: EnrollPlan {
            prefix: "reuse".into(),
            count: 20,
            labels: fleet_sim::scenario::labels("reuse"),
            profile: "local-dev".into(),
            concurrency: 4,
        },
        settings: Settings {
            jitter: Duration::from_millis(100),
            resend: Duration::from_secs(3),
            ..Settings::default()
        },
        state: Some(state.clone()),
        cut_percent: 0.0,
        hold: Duration::ZERO,
        burst_events: 1,
        timeout: Duration::from_secs(30),
        restart_cmd: None,
    };
    let first = scenario::run(&api, &plan(Kind::Burst))
        .await
        .expect("first run");
    assert!(first.ok, "{first:?}");
    assert_eq!((first.summary.enrolled, first.summary.reused), (20, 0));
    // trust_accepted and one burst event each.
    assert_eq!(first.summary.events.acked, 40, "{first:?}");

    let second = scenario::run(&api, &plan(Kind::Deploy))
        .await
        .expect("second run");
    assert!(second.ok, "{second:?}");
    assert_eq!((second.summary.enrolled, second.summary.reused), (0, 20));
    assert_eq!(second.summary.delivered_since_mark, 20);
    // The trust is the one already held; desired_accepted, workload_started, update_succeeded.
    assert_eq!(second.summary.events.acked, 60, "{second:?}");

    let saved = StateFile::load(&state).expect("state file");
    assert_eq!(saved.devices.len(), 20);
    let devices: Vec<(String, u64, u64)> = saved
        .devices
        .iter()
        .map(|d| {
            let s = &d.state;
            (d.device.to_string(), s.floor.revision, s.next_seq - 1)
        })
        .collect();
    assert!(devices.iter().all(|(_, _, last)| *last == 5), "{devices:?}");
    hub_holds(&api, &devices, false).await;
}
