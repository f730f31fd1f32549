//! MQTT faults between a real agent and the hub's embedded broker (or mosquitto), made by the
//! kit's MQTT-framing proxy in front of each agent: a broker that never acknowledges (C44), a
//! flood on the device's own topics (C45), a retained state delivered twice (C49), a device
//! offline past the broker's session expiry (C50), and a link that only works one way (C54).

use std::path::Path;
use std::time::Duration;

use fleet_test_kit::eventually;
use fleet_tests::fleet::{bin, Fleet};
use serde_json::Value;

/// The agent's own view of its store (`edge-agent status --json`), read beside the running agent.
fn local_status(data: &Path) -> Value {
    let out = std::process::Command::new(bin("edge-agent"))
        .arg("--data-dir")
        .arg(data)
        .args(["status", "--json"])
        .output()
        .expect("edge-agent status");
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Every event the hub stored for `id` has the next sequence number: none lost, none twice.
fn seqs_contiguous_once(fleet: &Fleet, id: &str) -> bool {
    let ev = fleet.events(id);
    !ev.is_empty()
        && ev
            .iter()
            .enumerate()
            .all(|(i, e)| e["seq"].as_u64() == Some(i as u64 + 1))
}

fn count(fleet: &Fleet, id: &str, kind: &str) -> usize {
    fleet
        .events(id)
        .iter()
        .filter(|e| e["body"]["type"] == kind)
        .count()
}

/// C44: the broker withholds every PUBACK. MQTT resends unacknowledged publishes only on a new
/// connection, so the agent, finding its publishes unacknowledged for two keep-alive periods,
/// connects again (before that, at most its in-flight window of 32 is held: memory bounded);
/// its reconciler applies a new release meanwhile; events wait in the outbox until the hub's
/// acks take them; when PUBACKs flow again every event has arrived once.
#[test]
fn a_broker_withholding_every_puback_bounds_the_agent_and_it_recovers_after() {
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let rss_before = rss_kib(a.proc.pid().expect("agent pid"));
    let connections = a.mqtt.accepted();

    a.mqtt.mqtt().withhold_pubacks(true);
    // The reconciler runs on: a new release is received (downstream works) and applied.
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    fleet.deploy(fleet.release("svc", "2", &v2, None), 1);
    eventually(60, "v2 running on the device", || {
        (a.running().first().map(|r| r.2.as_str()) == Some(v2.as_str())).then_some(())
    });
    // The stuck window is noticed: the agent connects again, more than once.
    eventually(60, "the agent connecting again twice", || {
        (a.mqtt.accepted() >= connections + 2 && a.mqtt.mqtt().pubacks_withheld() > 0).then_some(())
    });
    let rss_during = rss_kib(a.proc.pid().expect("agent pid"));
    eprintln!(
        "agent RSS {rss_before} KiB before, {rss_during} KiB with PUBACKs withheld; {} withheld",
        a.mqtt.mqtt().pubacks_withheld()
    );
    assert!(
        rss_during < rss_before + 32 * 1024,
        "agent memory grew from {rss_before} to {rss_during} KiB"
    );

    a.mqtt.mqtt().withhold_pubacks(false);
    fleet.wait_converged(120);
    eventually(
        60,
        "every event stored once, in order, the outbox empty",
        || {
            (seqs_contiguous_once(&fleet, &a.id)
                && local_status(&a.data)["outbox_events"].as_u64() == Some(0))
            .then_some(())
        },
    );
    let d = fleet.device(&a.id);
    assert_eq!(d["presence"]["state"], "online", "{}", d["presence"]);
}

/// C45: the device's subscribed topics are flooded (tens of thousands of messages injected into
/// its connection) while it publishes the events of an update: no deadlock — its statuses and
/// events keep flowing, the update converges, the flood is reported once, every event arrives.
#[test]
fn a_flood_on_the_devices_topics_while_it_publishes_does_not_stall_it() {
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    let r2 = fleet.release("svc", "2", &v2, None);
    let desired = format!("fleet/v1/dev/{}/desired", a.id);
    let ack = format!("fleet/v1/dev/{}/ack", a.id);
    let up_before = a.mqtt.mqtt().publishes_up();
    assert_eq!(
        a.mqtt
            .mqtt()
            .flood(&desired, b"{\"not\": \"an envelope\"}", 20_000),
        1
    );
    assert_eq!(a.mqtt.mqtt().flood(&ack, b"garbage", 20_000), 1);
    fleet.deploy(r2, 1);
    assert_eq!(
        a.mqtt
            .mqtt()
            .flood(&desired, b"{\"not\": \"an envelope\"}", 20_000),
        1
    );
    eventually(60, "the flood delivered", || {
        (a.mqtt.mqtt().injected() == 60_000).then_some(())
    });
    fleet.wait_converged(90);
    assert!(
        a.mqtt.mqtt().publishes_up() > up_before + 3,
        "the agent kept publishing"
    );
    eventually(30, "every event stored once, in order", || {
        seqs_contiguous_once(&fleet, &a.id).then_some(())
    });
    assert_eq!(
        count(&fleet, &a.id, "desired_rejected"),
        1,
        "the same flooded document is reported once"
    );
    assert!(a.proc.pid().is_some());
}

/// C49: every message from the broker is delivered twice (a retained copy and a queued one),
/// through an update and a reconnect: each state is accepted once, the update runs once.
#[test]
fn a_state_delivered_twice_is_applied_once() {
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    a.mqtt.mqtt().duplicate_publishes(true);
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    fleet.deploy(fleet.release("svc", "2", &v2, None), 1);
    fleet.wait_converged(90);
    // A reconnect delivers the retained state again, twice.
    let dup_before = a.mqtt.mqtt().publishes_duplicated();
    a.mqtt.cut();
    std::thread::sleep(Duration::from_millis(500));
    a.mqtt.heal();
    eventually(60, "the retained state delivered again", || {
        (a.mqtt.mqtt().publishes_duplicated() > dup_before + 1).then_some(())
    });
    fleet.wait_converged(60);
    std::thread::sleep(Duration::from_secs(2));
    let rev = fleet.device(&a.id)["desired_revision"].as_u64();
    let accepted: Vec<_> = fleet
        .events(&a.id)
        .into_iter()
        .filter(|e| e["body"]["type"] == "desired_accepted")
        .map(|e| e["body"]["revision"].as_u64())
        .collect();
    assert_eq!(
        accepted.len(),
        2,
        "each revision accepted once: {accepted:?}"
    );
    assert_eq!(accepted.last().copied().flatten(), rev);
    let started: Vec<_> = fleet
        .events(&a.id)
        .into_iter()
        .filter(|e| e["body"]["type"] == "workload_started")
        .collect();
    assert_eq!(started.len(), 2, "v1 and v2 started once each: {started:?}");
    assert_eq!(count(&fleet, &a.id, "desired_rejected"), 0);
    assert!(seqs_contiguous_once(&fleet, &a.id));
}

/// C50: the device is offline for longer than the broker keeps anything — a new release is
/// deployed meanwhile and mosquitto is restarted empty — and comes back on a fresh session:
/// every connect asks for a clean session, the retained trust and state reach it from the hub's
/// republish, it converges, and every event it queued arrives once.
#[test]
fn a_device_offline_past_its_session_gets_a_fresh_one_and_converges() {
    let mut fleet = Fleet::start_with_mosquitto(1);
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    fleet.agents[0].mqtt.cut();
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    fleet.deploy(fleet.release("svc", "2", &v2, None), 1);
    fleet.restart_broker();
    std::thread::sleep(Duration::from_secs(3));
    let a = &fleet.agents[0];
    a.mqtt.heal();
    fleet.wait_converged(120);
    let (connects, clean) = a.mqtt.mqtt().connects();
    assert!(connects >= 2, "{connects} connects");
    assert_eq!(clean, connects, "every connect asks for a fresh session");
    assert_eq!(a.running().first().map(|r| r.2.clone()), Some(v2));
    eventually(30, "every event stored once, in order", || {
        seqs_contiguous_once(&fleet, &a.id).then_some(())
    });
}

/// C54: an asymmetric partition: the device's packets reach the broker, nothing comes back. The
/// agent notices (no ping answered) and drops the connection; the hub shows the device offline
/// — not healthy, not converged on the release deployed meanwhile — until the heal.
#[test]
fn an_asymmetric_partition_is_detected_and_not_reported_healthy() {
    use fleet_test_kit::proxy::{Direction, Mode};
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    a.mqtt.set(Mode::Blackhole(Direction::Downstream));
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    fleet.deploy(fleet.release("svc", "2", &v2, None), 1);
    eventually(60, "the hub shows the device offline", || {
        (fleet.device(&a.id)["presence"]["state"] == "offline").then_some(())
    });
    // It stays so while the partition lasts: the agent reconnects, but never claims online.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        let d = fleet.device(&a.id);
        assert_eq!(d["presence"]["state"], "offline", "{}", d["presence"]);
        assert!(
            !fleet.converged(&a.id),
            "reported converged on a state it never got"
        );
    }
    assert_eq!(
        a.running().first().map(|r| r.2.clone()),
        Some(v1),
        "v1 keeps running"
    );
    a.mqtt.heal();
    fleet.wait_converged(120);
    assert_eq!(fleet.device(&a.id)["presence"]["state"], "online");
    assert_eq!(a.running().first().map(|r| r.2.clone()), Some(v2));
}
