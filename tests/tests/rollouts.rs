//! Staged rollouts end to end: the real hub and real agents on loopback, devices labelled over
//! three sites. A good release walks every phase inside a budget of one device per site,
//! through an approval gate and a hub kill -9 mid-phase (C37); a release that fails its health
//! check on the canary pauses, or rolls back by policy, and no device outside the canary ever
//! receives it (C61, C62).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleet_test_kit::eventually;
use fleet_tests::fleet::Fleet;
use serde_json::{json, Value};

const SITES: [&str; 3] = ["north", "south", "east"];

/// Labels every agent `tier=edge` and one of three sites; returns each device's site.
fn spread_over_sites(fleet: &Fleet) -> BTreeMap<String, String> {
    let mut sites = BTreeMap::new();
    for (i, a) in fleet.agents.iter().enumerate() {
        let site = SITES[i % 3];
        fleet.api(
            "PUT",
            &format!("/api/v1/devices/{}/labels", a.id),
            Some(json!({"tier": "edge", "site": site})),
        );
        sites.insert(a.id.clone(), site.to_string());
    }
    sites
}

/// Deploys `release` to every edge device at once and waits until all converged on it.
fn deploy_everywhere(fleet: &Fleet, release: u64) {
    fleet.api(
        "POST",
        "/api/v1/deployments",
        Some(json!({"release": release, "selector": "tier=edge"})),
    );
    eventually(30, "states published", || {
        let s = fleet.api("GET", "/api/v1/fleet/summary", None);
        (s["publish_pending"] == 0).then_some(())
    });
    fleet.wait_converged(120);
}

fn status(fleet: &Fleet, id: u64) -> Value {
    fleet.api("GET", &format!("/api/v1/rollouts/{id}"), None)
}

fn wait_stage(fleet: &Fleet, id: u64, secs: u64, stage: &str) -> Value {
    eventually(secs, &format!("rollout {id} {stage}"), || {
        let s = status(fleet, id);
        (s["rollout"]["stage"]["stage"] == stage).then_some(s)
    })
}

/// Device → phase, as the hub shows it.
fn phases(s: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for p in s["phases"].as_array().into_iter().flatten() {
        for m in p["members"].as_array().into_iter().flatten() {
            out.insert(
                m["id"].as_str().unwrap_or_default().to_string(),
                p["phase"].as_u64().unwrap_or(u64::MAX),
            );
        }
    }
    out
}

/// The whole audit log.
fn audit(fleet: &Fleet) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let after = all
            .last()
            .map_or(0, |e: &Value| e["id"].as_u64().unwrap_or(0));
        let page = fleet.api(
            "GET",
            &format!("/api/v1/audit?after={after}&limit=1000"),
            None,
        );
        let page = page.as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

fn detail(e: &Value) -> Value {
    serde_json::from_str(e["detail"].as_str().unwrap_or("{}")).unwrap_or(Value::Null)
}

/// Devices named by the rollout's `rollout.admit` entries, each as often as it was admitted.
fn admissions(log: &[Value], rollout: u64) -> Vec<String> {
    log.iter()
        .filter(|e| {
            e["action"] == "rollout.admit" && e["target"].as_str() == Some(&*rollout.to_string())
        })
        .flat_map(|e| {
            detail(e)["devices"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
        })
        .collect()
}

/// Replays the hub's history of a rollout (admissions, outcomes) and returns the most devices
/// of one site that were updating or unhealthy at once.
fn most_unavailable_per_site(log: &[Value], rollout: u64, sites: &BTreeMap<String, String>) -> u64 {
    let mut down: BTreeMap<&str, u64> = BTreeMap::new();
    let mut most = 0;
    for e in log
        .iter()
        .filter(|e| e["target"].as_str() == Some(&*rollout.to_string()))
    {
        let d = detail(e);
        if e["action"] == "rollout.admit" {
            for dev in d["devices"].as_array().into_iter().flatten() {
                let site = sites[dev.as_str().unwrap_or_default()].as_str();
                let n = down.entry(site).or_default();
                *n += 1;
                most = most.max(*n);
            }
        }
        if e["action"] == "rollout.outcome" && d["health"] == "succeeded" {
            let site = sites[d["device"].as_str().unwrap_or_default()].as_str();
            let n = down.entry(site).or_default();
            *n = n.saturating_sub(1);
        }
    }
    most
}

fn runs(fleet: &Fleet, id: &str) -> Option<String> {
    let a = fleet.agents.iter().find(|a| a.id == id)?;
    a.running().first().map(|r| r.2.clone())
}

#[test]
fn a_good_release_walks_every_phase_in_budget_through_an_approval_and_a_hub_kill_9() {
    let mut fleet = Fleet::start(12);
    let sites = spread_over_sites(&fleet);
    let v1 = fleet.image("app", "exec sleep 200001", &[]);
    let r1 = fleet.release("app", "1", &v1, None);
    deploy_everywhere(&fleet, r1);

    let v2 = fleet.image("app", "exec sleep 200002", &[]);
    let r2 = fleet.release("app", "2", &v2, None);
    let id = fleet.api(
        "POST",
        "/api/v1/rollouts",
        Some(json!({
            "release": r2, "selector": "tier=edge", "priority": 1,
            "phases": [
                {"select": {"count": 1}},
                {"select": {"percent": 50}, "approval": true},
                {"select": {"percent": 100}}
            ],
            "budget": {"group_by": ["site"], "max_unavailable": "1"}
        })),
    )["id"]
        .as_u64()
        .expect("id");

    // The canary updates, then the approval gate holds.
    let held = wait_stage(&fleet, id, 120, "awaiting_approval");
    assert_eq!(held["rollout"]["admitted"], 1, "{held}");
    let canary: Vec<String> = phases(&held)
        .into_iter()
        .filter(|(_, p)| *p == 0)
        .map(|(d, _)| d)
        .collect();
    assert_eq!(canary.len(), 1);
    eventually(30, "the canary runs v2", || {
        (runs(&fleet, &canary[0]).as_deref() == Some(v2.as_str())).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let still = status(&fleet, id);
    assert_eq!(still["rollout"]["stage"]["stage"], "awaiting_approval");
    assert_eq!(still["rollout"]["admitted"], 1, "nothing issued while held");
    for a in fleet.agents.iter().filter(|a| a.id != canary[0]) {
        assert_eq!(
            runs(&fleet, &a.id).as_deref(),
            Some(v1.as_str()),
            "{}",
            a.id
        );
    }

    // Approved: phase 1 starts; the hub is killed mid-phase and resumes.
    fleet.api("POST", &format!("/api/v1/rollouts/{id}/approve"), None);
    let before = eventually(60, "phase 1 under way", || {
        let s = status(&fleet, id);
        (s["rollout"]["admitted"].as_u64() >= Some(2)).then_some(s)
    });
    assert_eq!(
        before["rollout"]["stage"],
        json!({"stage": "running", "phase": 1})
    );
    assert!(
        before["rollout"]["admitted"].as_u64() < Some(6),
        "mid-phase: {before}"
    );
    fleet.restart_hub();
    let done = wait_stage(&fleet, id, 240, "completed");
    assert_eq!(phases(&done), phases(&before), "no device changed phase");
    fleet.wait_converged(120);
    for a in &fleet.agents {
        assert_eq!(
            runs(&fleet, &a.id).as_deref(),
            Some(v2.as_str()),
            "{}",
            a.id
        );
    }

    let log = audit(&fleet);
    let admitted = admissions(&log, id);
    let once: BTreeSet<&String> = admitted.iter().collect();
    assert_eq!(
        once.len(),
        admitted.len(),
        "a device was issued twice: {admitted:?}"
    );
    assert_eq!(once.len(), 12);
    let most = most_unavailable_per_site(&log, id, &sites);
    assert_eq!(most, 1, "the budget of one per site");
    let verified = fleet.api("GET", "/api/v1/audit/verify", None);
    assert_eq!(verified["ok"], true, "{verified}");
}

#[test]
fn a_failing_canary_pauses_or_rolls_back_and_no_other_device_ever_receives_the_release() {
    let fleet = Fleet::start(6);
    spread_over_sites(&fleet);
    let v1 = fleet.image("app", "exec sleep 300001", &[]);
    let r1 = fleet.release("app", "1", &v1, None);
    deploy_everywhere(&fleet, r1);
    let failing = json!({"probe": {"type": "exec", "command": ["./missing-probe"]},
        "interval_secs": 1, "timeout_secs": 1, "retries": 1});
    let rollout = |version: &str, priority: i64, policy: &str| -> (u64, String) {
        let digest = fleet.image("app", &format!("exec sleep 30000{version}"), &[]);
        let release = fleet.release("app", version, &digest, Some(failing.clone()));
        let id = fleet.api(
            "POST",
            "/api/v1/rollouts",
            Some(
                json!({"release": release, "selector": "tier=edge", "priority": priority,
                "preset": "canary", "on_failure": policy}),
            ),
        )["id"]
            .as_u64()
            .expect("id");
        (id, digest)
    };

    // Pause by policy: the canary failed, nothing more is issued, until the operator rolls
    // back (a new, higher revision of the previous release).
    let (paused, v3) = rollout("3", 1, "pause");
    let s = wait_stage(&fleet, paused, 120, "paused");
    assert!(
        s["rollout"]["stage"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("phase 0"),
        "{s}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        status(&fleet, paused)["rollout"]["admitted"],
        1,
        "a paused rollout issues nothing"
    );
    let log = audit(&fleet);
    let canary3 = admissions(&log, paused);
    assert_eq!(canary3.len(), 1);
    let failed_revision = fleet.device(&canary3[0])["desired_revision"]
        .as_u64()
        .expect("rev");
    fleet.api("POST", &format!("/api/v1/rollouts/{paused}/rollback"), None);
    eventually(60, "the canary back on release 1", || {
        let d = fleet.device(&canary3[0]);
        (d["desired_revision"].as_u64() > Some(failed_revision) && fleet.converged(&canary3[0]))
            .then_some(())
    });

    // Rollback by policy.
    let (rolled, v4) = rollout("4", 2, "rollback");
    wait_stage(&fleet, rolled, 120, "rolled_back");
    fleet.wait_converged(120);
    let log = audit(&fleet);
    let canary4 = admissions(&log, rolled);
    assert_eq!(canary4.len(), 1);
    for a in &fleet.agents {
        assert_eq!(
            runs(&fleet, &a.id).as_deref(),
            Some(v1.as_str()),
            "{}",
            a.id
        );
        for (canary, digest) in [(&canary3, &v3), (&canary4, &v4)] {
            if canary.contains(&a.id) {
                continue;
            }
            let touched = fleet
                .events(&a.id)
                .into_iter()
                .find(|e| e["body"]["digest"] == digest.as_str());
            assert!(
                touched.is_none(),
                "{} outside the canary received it: {touched:?}",
                a.id
            );
        }
    }
    assert!(log.iter().any(|e| e["action"] == "rollout.transition"
        && detail(e)["to"] == "rolled_back"
        && e["actor"] == "hub"));
}

/// C53: a device partitioned during a rollout is neither healthy nor failed: it stays pending
/// until its phase's offline deadline, is then left out of the counts, and takes the release
/// after the heal.
#[test]
fn a_partitioned_device_stays_pending_until_its_deadline_and_updates_after_the_heal() {
    let fleet = Fleet::start(6);
    spread_over_sites(&fleet);
    let v1 = fleet.image("app", "exec sleep 400001", &[]);
    let r1 = fleet.release("app", "1", &v1, None);
    deploy_everywhere(&fleet, r1);
    let cut = &fleet.agents[0];
    cut.mqtt.cut();
    eventually(60, "the hub sees the device offline", || {
        (fleet.device(&cut.id)["presence"]["state"] == "offline").then_some(())
    });

    let v2 = fleet.image("app", "exec sleep 400002", &[]);
    let r2 = fleet.release("app", "2", &v2, None);
    let id = fleet.api(
        "POST",
        "/api/v1/rollouts",
        Some(
            json!({"release": r2, "selector": "tier=edge", "priority": 1, "preset": "all",
            "offline_deadline_secs": 8}),
        ),
    )["id"]
        .as_u64()
        .expect("id");
    let pending = eventually(90, "every online device updated", || {
        let s = status(&fleet, id);
        (s["phases"][0]["succeeded"] == 5).then_some(s)
    });
    let member = pending["phases"][0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == cut.id.as_str())
        .cloned()
        .expect("the partitioned device is in the phase");
    assert_eq!(member["online"], false, "{member}");
    assert_eq!(member["admitted"], false, "{member}");
    assert!(member["last_seen"].is_u64(), "freshness shown: {member}");
    assert_eq!(pending["phases"][0]["failed"], 0, "never a failure");

    let done = wait_stage(&fleet, id, 60, "completed");
    let started = done["phase_started_at"].as_u64().expect("started");
    let log = audit(&fleet);
    let completed_at = log
        .iter()
        .find(|e| {
            e["target"].as_str() == Some(&*id.to_string())
                && e["action"] == "rollout.transition"
                && detail(e)["to"] == "completed"
        })
        .and_then(|e| e["time"].as_u64())
        .expect("completion audited");
    assert!(completed_at >= started + 8, "completed before the deadline");
    assert!(
        !admissions(&log, id).contains(&cut.id),
        "not issued while partitioned"
    );

    cut.mqtt.heal();
    eventually(90, "the healed device runs release 2", || {
        (runs(&fleet, &cut.id).as_deref() == Some(v2.as_str()) && fleet.converged(&cut.id))
            .then_some(())
    });
}

/// C54: an asymmetric partition (the device's messages reach the broker, nothing comes back)
/// during a rollout: the device never counts as healthy and the rollout does not complete
/// without it; after the heal it converges and the rollout completes.
#[test]
fn a_device_that_can_send_but_not_receive_is_never_counted_healthy() {
    use fleet_test_kit::proxy::{Direction, Mode};

    let fleet = Fleet::start(3);
    spread_over_sites(&fleet);
    let v1 = fleet.image("app", "exec sleep 500001", &[]);
    let r1 = fleet.release("app", "1", &v1, None);
    deploy_everywhere(&fleet, r1);
    let deaf = &fleet.agents[0];
    deaf.mqtt.set(Mode::Blackhole(Direction::Downstream));

    let v2 = fleet.image("app", "exec sleep 500002", &[]);
    let r2 = fleet.release("app", "2", &v2, None);
    let id = fleet.api(
        "POST",
        "/api/v1/rollouts",
        Some(json!({"release": r2, "selector": "tier=edge", "priority": 1, "preset": "all"})),
    )["id"]
        .as_u64()
        .expect("id");
    eventually(90, "the two others updated", || {
        let s = status(&fleet, id);
        (s["phases"][0]["succeeded"] == 2).then_some(())
    });
    // Long enough for a delivered state to be applied and reported several times over.
    for _ in 0..10 {
        let s = status(&fleet, id);
        let member = s["phases"][0]["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == deaf.id.as_str()).cloned())
            .expect("the deaf device is in the phase");
        assert_ne!(member["health"], "succeeded", "{member}");
        assert_eq!(s["rollout"]["stage"]["stage"], "running", "{s}");
        assert_eq!(runs(&fleet, &deaf.id).as_deref(), Some(v1.as_str()));
        std::thread::sleep(Duration::from_millis(500));
    }
    deaf.mqtt.heal();
    wait_stage(&fleet, id, 120, "completed");
    eventually(60, "the healed device runs release 2", || {
        (runs(&fleet, &deaf.id).as_deref() == Some(v2.as_str())).then_some(())
    });
}
