//! C52 end to end: a partition long enough to exhaust the agent's outbox budget (set small),
//! with a real agent behind a cut proxy. Snapshots go first, outcomes are kept longest, and
//! the drop count is reported after the heal — matching exactly the sequence numbers the hub
//! never received.
//!
//! About a minute long: the partition has to last until eight flapping health checks have
//! produced about twice the budget in events.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use fleet_test_kit::eventually;
use fleet_tests::fleet::{bin, Fleet};
use serde_json::{json, Value};

const WORKLOADS: usize = 8;

fn local_revision(data: &Path) -> Option<u64> {
    let out = std::process::Command::new(bin("edge-agent"))
        .arg("--data-dir")
        .arg(data)
        .args(["status", "--json"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["desired_revision"].as_u64()
}

/// A release of `WORKLOADS` workloads on `digest`, each with an exec health check that fails
/// on every other second once `flag` exists.
fn release(fleet: &Fleet, version: &str, digest: &str, flag: &Path, window: u64) -> u64 {
    let probe = format!(
        "[ ! -e {} ] || [ $(( $(date +%s) % 2 )) = 0 ]",
        flag.display()
    );
    let workloads: Vec<Value> = (0..WORKLOADS)
        .map(|i| {
            json!({"name": format!("w{i}"), "image": digest, "command": ["./run.sh"],
                "health": {"probe": {"type": "exec", "command": ["/bin/sh", "-c", probe]},
                           "interval_secs": 1, "timeout_secs": 1, "retries": 1},
                "health_deadline_secs": 20, "stability_window_secs": window})
        })
        .collect();
    fleet.api(
        "POST",
        "/api/v1/releases",
        Some(json!({"name": "flappy", "version": version, "workloads": workloads})),
    )["id"]
        .as_u64()
        .expect("release id")
}

#[test]
fn a_partition_exhausting_the_outbox_drops_snapshots_first_keeps_outcomes_and_reports_the_drops() {
    let mut fleet = Fleet::start(1);
    let flag = fleet.dir.path().join("flap");
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(release(&fleet, "1", &v1, &flag, 1), 0);
    fleet.wait_converged(120);
    // The smallest budget the agent takes: 16 KiB, about a hundred events.
    {
        let a = &mut fleet.agents[0];
        a.proc.kill9();
        a.proc.set_env("FLEET_AGENT_OUTBOX_BUDGET_BYTES", "16384");
        a.proc.start().expect("restart agent");
    }
    fleet.wait_converged(60);

    // The new release reaches the device; the link is cut before its updates are proven, so
    // every `update_succeeded` is an outcome made during the partition.
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    fleet.deploy(release(&fleet, "2", &v2, &flag, 4), 1);
    let rev2 = fleet.device(&fleet.agents[0].id)["desired_revision"]
        .as_u64()
        .expect("revision");
    let a = &fleet.agents[0];
    eventually(30, "the device accepted revision 2", || {
        (local_revision(&a.data) == Some(rev2)).then_some(())
    });
    a.mqtt.cut();
    let seen_before_cut = fleet.events(&a.id).last().and_then(|e| e["seq"].as_u64());
    // Let the updates be proven, then flap every health check for long enough to produce
    // about twice the budget in `health_changed` snapshots.
    std::thread::sleep(Duration::from_secs(8));
    std::fs::write(&flag, b"").expect("flag");
    std::thread::sleep(Duration::from_secs(30));
    std::fs::remove_file(&flag).expect("unflag");
    std::thread::sleep(Duration::from_secs(3));
    a.mqtt.heal();

    let dropped: u64 = eventually(60, "an events_dropped report", || {
        let n: u64 = fleet
            .events(&a.id)
            .iter()
            .filter(|e| e["body"]["type"] == "events_dropped")
            .filter_map(|e| e["body"]["count"].as_u64())
            .sum();
        (n > 0).then_some(n)
    });
    fleet.wait_converged(60);
    // Every number the hub never got is one the agent reports dropped; nothing else is missing,
    // and no number is stored twice.
    let events = eventually(30, "the outbox delivered", || {
        let ev = fleet.events(&a.id);
        let reported: u64 = ev
            .iter()
            .filter(|e| e["body"]["type"] == "events_dropped")
            .filter_map(|e| e["body"]["count"].as_u64())
            .sum();
        let seqs: BTreeSet<u64> = ev.iter().filter_map(|e| e["seq"].as_u64()).collect();
        let last = *seqs.last()?;
        let missing = last - seqs.len() as u64;
        // A dropped event may have reached the hub before the cut, its ack lost with the link:
        // the count may exceed what is missing, never fall short of it.
        (seqs.len() == ev.len() && missing > 0 && missing <= reported && reported >= dropped)
            .then_some(ev)
    });
    let seqs: BTreeSet<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let newest_dropped = (1..*seqs.last().expect("events"))
        .filter(|s| !seqs.contains(s))
        .max()
        .expect("something was dropped");
    let of = |kind: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["body"]["type"] == kind)
            .filter_map(|e| e["seq"].as_u64())
            .filter(|s| Some(*s) > seen_before_cut)
            .collect()
    };
    // The outcome made early in the partition outlived the many snapshots made after it.
    let succeeded = of("update_succeeded");
    assert_eq!(succeeded.len(), 1, "the update's outcome is kept");
    assert!(
        succeeded[0] < newest_dropped,
        "the outcome {} was older than dropped events (newest {newest_dropped})",
        succeeded[0]
    );
    // Snapshots went oldest first: none older than a dropped event survived.
    let snapshots = of("health_changed");
    assert!(
        snapshots.iter().all(|s| *s > newest_dropped),
        "a snapshot older than a dropped event was kept: {snapshots:?}, newest dropped {newest_dropped}"
    );
    let lost: u64 = events
        .iter()
        .filter(|e| e["body"]["type"] == "events_dropped")
        .filter_map(|e| e["body"]["count"].as_u64())
        .sum();
    eprintln!(
        "{lost} events dropped, {} snapshots kept after the cut",
        snapshots.len()
    );
    assert!(
        lost >= 50,
        "the partition overflowed the budget: {lost} dropped"
    );
    assert_eq!(
        fleet.device(&a.id)["status"]["events_dropped"].as_u64(),
        Some(lost),
        "the status carries the total"
    );
}
