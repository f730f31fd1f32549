//! The hub and its agents together: real `cloud-hub`, real `edge-agent` processes, the real
//! embedded broker, and a fault-injecting proxy in front of every agent. Each scenario asserts
//! a promise of DESIGN §4, not merely "no crash".

use std::time::Duration;

use fleet_test_kit::eventually;
use fleet_tests::fleet::Fleet;
use serde_json::json;

fn update_succeeded(fleet: &Fleet, id: &str, revision: u64) -> bool {
    fleet
        .events(id)
        .iter()
        .any(|e| e["body"]["type"] == "update_succeeded" && e["body"]["revision"] == revision)
}

fn seqs_contiguous_once(fleet: &Fleet, id: &str) -> bool {
    let ev = fleet.events(id);
    !ev.is_empty()
        && ev
            .iter()
            .enumerate()
            .all(|(i, e)| e["seq"].as_u64() == Some(i as u64 + 1))
}

/// Scenarios 1 and 2: a group deployment converges on every device; a new release converges;
/// a release whose health check fails is swapped back everywhere and reported by every device.
#[test]
fn five_agents_converge_update_and_swap_back_a_failing_release() {
    let fleet = Fleet::start(5);
    let v1 = fleet.image("app", "echo v1 >> started.log\nexec sleep 100000", &[]);
    let r1 = fleet.release("app", "1", &v1, None);
    fleet.deploy(r1, 0);
    fleet.wait_converged(90);
    for a in &fleet.agents {
        let running = a.running();
        assert_eq!(running.len(), 1, "{}: {running:?}", a.id);
        assert_eq!(running[0].2, v1, "{} runs the release", a.id);
    }

    let v2 = fleet.image("app", "echo v2 >> started.log\nexec sleep 100001", &[]);
    let r2 = fleet.release("app", "2", &v2, None);
    fleet.deploy(r2, 1);
    fleet.wait_converged(90);
    for a in &fleet.agents {
        assert_eq!(a.running().first().map(|r| r.2.clone()), Some(v2.clone()));
    }

    let v3 = fleet.image("app", "exec sleep 100002", &[]);
    let failing = json!({"probe": {"type": "exec", "command": ["./missing-probe"]}, "interval_secs": 1, "timeout_secs": 1, "retries": 1});
    let r3 = fleet.release("app", "3", &v3, Some(failing));
    fleet.deploy(r3, 2);
    for a in &fleet.agents {
        eventually(90, &format!("{} rolled back", a.id), || {
            fleet
                .events(&a.id)
                .iter()
                .any(|e| e["body"]["type"] == "rolled_back" && e["body"]["digest"] == v2.as_str())
                .then_some(())
        });
        eventually(30, &format!("{} runs v2 again", a.id), || {
            (a.running().first().map(|r| r.2.as_str()) == Some(v2.as_str())).then_some(())
        });
        assert!(fleet
            .events(&a.id)
            .iter()
            .any(|e| e["body"]["type"] == "update_failed"));
        let d = fleet.device(&a.id);
        eventually(20, "status failed", || {
            (fleet.device(&a.id)["status"]["convergence"] == "failed").then_some(())
        });
        assert_ne!(d["status"]["applied_revision"], d["desired_revision"]);
    }
}

/// Scenario 3: a partition of two devices during a deployment: their workloads never stop, they
/// converge after the heal, and every event they queued is stored exactly once.
#[test]
fn partitioned_devices_keep_running_and_converge_after_the_heal() {
    let fleet = Fleet::start(5);
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let (cut, kept) = fleet.agents.split_at(2);
    let pids_before: Vec<_> = cut.iter().map(|a| a.running()).collect();
    for a in cut {
        a.mqtt.cut();
    }
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    let r2 = fleet.release("svc", "2", &v2, None);
    fleet.deploy(r2, 1);
    for a in kept {
        eventually(90, &format!("{} converged", a.id), || {
            fleet.converged(&a.id).then_some(())
        });
    }
    // Keep the partition a while; the cut devices run their old workloads untouched.
    std::thread::sleep(Duration::from_secs(3));
    for (a, before) in cut.iter().zip(&pids_before) {
        assert_eq!(
            &a.running(),
            before,
            "{} touched its workloads while partitioned",
            a.id
        );
        assert!(!fleet.converged(&a.id));
    }
    for a in cut {
        a.mqtt.heal();
    }
    for a in cut {
        eventually(90, &format!("{} converged after heal", a.id), || {
            fleet.converged(&a.id).then_some(())
        });
        eventually(
            30,
            &format!("{} events stored once, in order", a.id),
            || seqs_contiguous_once(&fleet, &a.id).then_some(()),
        );
        assert_eq!(a.running().first().map(|r| r.2.clone()), Some(v2.clone()));
    }
}

/// Scenario 4: a partition during an image download; the download resumes after the heal
/// without fetching again what it had, and the device converges.
#[test]
fn a_download_cut_by_a_partition_resumes_after_the_heal() {
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    // About 1.5 MB of incompressible data.
    let noise = fleet_test_kit::noise(1_500_000, 0x2545_f491_4f6c_dd1d);
    let big = fleet.image("big", "exec sleep 100000", &[("noise.bin", noise)]);
    a.http.set(fleet_test_kit::proxy::Mode::Throttle(200_000));
    let down_before = a.http.bytes_down();
    fleet.deploy(fleet.release("big", "1", &big, None), 0);
    eventually(60, "download under way", || {
        (a.http.bytes_down() > down_before + 400_000).then_some(())
    });
    a.http.cut();
    std::thread::sleep(Duration::from_secs(2));
    let fetched_before_cut = a.http.bytes_down() - down_before;
    a.http.heal();
    fleet.wait_converged(120);
    let total = a.http.bytes_down() - down_before;
    let pulled = fleet
        .events(&a.id)
        .iter()
        .find(|e| e["body"]["type"] == "image_pulled")
        .and_then(|e| e["body"]["bytes_fetched"].as_u64())
        .expect("image_pulled event");
    assert!(
        pulled < 1_400_000,
        "the resumed pull fetched {pulled} bytes: it started over"
    );
    assert!(
        total < 1_500_000 + fetched_before_cut / 2,
        "{total} bytes crossed the proxy for a 1.5 MB image"
    );
}

/// Scenario 5: the hub (and with it the embedded broker) is killed mid-flow and restarted:
/// retained state is republished, devices converge, no event is lost or doubled.
#[test]
fn a_hub_restart_mid_flow_loses_and_doubles_nothing() {
    let mut fleet = Fleet::start(3);
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    let r2 = fleet.release("svc", "2", &v2, None);
    fleet.deploy(r2, 1);
    fleet.restart_hub();
    fleet.wait_converged(120);
    for a in &fleet.agents {
        eventually(30, &format!("{} events contiguous", a.id), || {
            seqs_contiguous_once(&fleet, &a.id).then_some(())
        });
        let d = fleet.device(&a.id);
        let rev = d["desired_revision"].as_u64().expect("revision");
        assert!(
            update_succeeded(&fleet, &a.id, rev),
            "{} has no update_succeeded for {rev}",
            a.id
        );
        assert_eq!(a.running().first().map(|r| r.2.clone()), Some(v2.clone()));
    }
}

/// Scenario 6: kill -9 an agent at seeded moments of an update; after each restart exactly the
/// desired set runs, the store passes integrity_check, and events are intact.
#[test]
fn kill_9_at_seeded_points_of_an_update_leaves_exactly_the_desired_set() {
    use rand::{Rng, SeedableRng};
    let seed = 20261124;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut fleet = Fleet::start(1);
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    for round in 2..5u64 {
        let img = fleet.image("svc", &format!("exec sleep {}", 100000 + round), &[]);
        let r = fleet.release("svc", &round.to_string(), &img, None);
        fleet.deploy(r, round as i64);
        let delay = rng.gen_range(0..1500);
        std::thread::sleep(Duration::from_millis(delay));
        let a = &mut fleet.agents[0];
        a.proc.kill9();
        let db = rusqlite::Connection::open(a.data.join("agent.db")).expect("open store");
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(check, "ok", "seed {seed} round {round}");
        drop(db);
        a.proc.start().expect("restart agent");
        fleet.wait_converged(90);
        let a = &fleet.agents[0];
        let running = a.running();
        assert_eq!(
            running.len(),
            1,
            "seed {seed} round {round} (killed after {delay} ms): {running:?}"
        );
        assert_eq!(running[0].2, img);
        eventually(30, "events intact", || {
            seqs_contiguous_once(&fleet, &a.id).then_some(())
        });
    }
}

/// Scenario 7 (and the broker half of 5): on a broker anyone can write to, a plain MQTT client
/// without the signing key publishes a bad signature, a replayed older revision and another
/// device's state. Each is rejected, the reason reaches the hub, workloads are untouched. Then
/// the broker is killed and comes back empty: the hub republishes and the fleet converges.
#[test]
fn forged_states_from_a_plain_mqtt_client_are_rejected_and_reported() {
    let mut fleet = Fleet::start_with_mosquitto(2);
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    fleet.deploy(fleet.release("svc", "2", &v2, None), 1);
    fleet.wait_converged(90);
    let a = &fleet.agents[0];
    let b = &fleet.agents[1];
    let port = fleet.mqtt.port().to_string();
    let publish = |topic: &str, payload: &[u8]| {
        let f = fleet.dir.path().join("payload.bin");
        std::fs::write(&f, payload).expect("write");
        let st = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                topic,
                "-r",
                "-q",
                "1",
                "-f",
            ])
            .arg(&f)
            .status()
            .expect("mosquitto_pub (apt-get install mosquitto-clients)");
        assert!(st.success());
    };
    // The hub's own signed states, as retained on the broker.
    let take = |topic: &str| {
        let out = std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                topic,
                "-C",
                "1",
                "-W",
                "5",
                "-N",
            ])
            .output()
            .expect("mosquitto_sub");
        assert!(out.status.success(), "no retained message on {topic}");
        out.stdout
    };
    let a_topic = format!("fleet/v1/dev/{}/desired", a.id);
    let b_topic = format!("fleet/v1/dev/{}/desired", b.id);
    let a_state = take(&a_topic);
    let b_state = take(&b_topic);
    let untouched = a.running();
    // 1. Bad signature: flip a byte inside the signed payload.
    let mut env: serde_json::Value = serde_json::from_slice(&a_state).expect("envelope json");
    let payload = env["payload"].as_str().expect("payload").to_string();
    let mut chars: Vec<char> = payload.chars().collect();
    chars[20] = if chars[20] == 'A' { 'B' } else { 'A' };
    env["payload"] = json!(chars.into_iter().collect::<String>());
    publish(&a_topic, &serde_json::to_vec(&env).expect("json"));
    eventually(30, "bad_signature reported", || {
        fleet
            .events(&a.id)
            .iter()
            .any(|e| {
                e["body"]["type"] == "desired_rejected" && e["body"]["code"] == "bad_signature"
            })
            .then_some(())
    });
    // 2. Another device's (validly signed) state.
    publish(&a_topic, &b_state);
    eventually(30, "wrong_device reported", || {
        fleet
            .events(&a.id)
            .iter()
            .any(|e| e["body"]["type"] == "desired_rejected" && e["body"]["code"] == "wrong_device")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.running(),
        untouched,
        "a rejected document touched the workloads"
    );
    // 3. A replayed older revision: the state captured above, once a newer one is accepted.
    let v3 = fleet.image("svc", "exec sleep 100002", &[]);
    fleet.deploy(fleet.release("svc", "3", &v3, None), 2);
    fleet.wait_converged(90);
    let before = a.running();
    publish(&a_topic, &a_state);
    eventually(30, "rollback reported", || {
        fleet
            .events(&a.id)
            .iter()
            .any(|e| e["body"]["type"] == "desired_rejected" && e["body"]["code"] == "rollback")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.running(),
        before,
        "a rejected document touched the workloads"
    );
    let status = fleet.device(&a.id)["status"].clone();
    assert!(
        status["last_rejection"]
            .as_str()
            .unwrap_or("")
            .starts_with("rollback"),
        "{status}"
    );

    // The broker dies and comes back empty; the hub republishes; a new release converges.
    fleet.restart_broker();
    let v4 = fleet.image("svc", "exec sleep 100003", &[]);
    fleet.deploy(fleet.release("svc", "4", &v4, None), 3);
    fleet.wait_converged(120);
    for n in &fleet.agents {
        assert_eq!(n.running().first().map(|r| r.2.clone()), Some(v4.clone()));
        eventually(30, "events contiguous", || {
            seqs_contiguous_once(&fleet, &n.id).then_some(())
        });
    }
}

/// C10 and C13 end to end: a thief with the online key locks a device out with an absurd
/// revision; the operator revokes the key and resets the revision floor with root
/// (`fleetctl keys recover` + `fleetctl reload-trust`); the device takes the new trust, the
/// re-signed state and the next release, and refuses everything the stolen key signs.
#[test]
fn root_recovers_the_fleet_from_a_stolen_online_key() {
    use protocol::{DesiredState, Envelope, KeyPair};
    let fleet = Fleet::start_with_mosquitto(2);
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let keys = fleet.dir.path().join("hub/keys");
    let stolen = KeyPair::from_secret_base64(
        &std::fs::read_to_string(keys.join("online.key")).expect("key"),
    )
    .expect("parse");
    let victim = &fleet.agents[0];
    let port = fleet.mqtt.port().to_string();
    let publish = |topic: &str, payload: &[u8]| {
        let f = fleet.dir.path().join("thief.bin");
        std::fs::write(&f, payload).expect("write");
        let st = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                topic,
                "-r",
                "-q",
                "1",
                "-f",
            ])
            .arg(&f)
            .status()
            .expect("mosquitto_pub");
        assert!(st.success());
    };
    let forged = |revision: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let s = DesiredState {
            kind: protocol::KIND_DESIRED_STATE.into(),
            device: protocol::DeviceId::new(victim.id.clone()).expect("id"),
            revision,
            issued_at: now,
            expires_at: now + 3600,
            workloads: vec![],
            maintenance: None,
            rollout: None,
        };
        Envelope::sign(serde_json::to_vec(&s).expect("json"), &[&stolen]).encode()
    };
    let topic = format!("fleet/v1/dev/{}/desired", victim.id);
    // The thief's absurd revision is accepted (the key was valid) and locks the device out.
    publish(&topic, &forged(1 << 62));
    eventually(30, "the forged state accepted", || {
        fleet
            .events(&victim.id)
            .iter()
            .any(|e| {
                e["body"]["type"] == "desired_accepted" && e["body"]["revision"] == (1u64 << 62)
            })
            .then_some(())
    });
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    fleet.deploy(fleet.release("svc", "2", &v2, None), 1);
    eventually(30, "the real next state refused as rollback", || {
        fleet
            .events(&victim.id)
            .iter()
            .any(|e| e["body"]["code"] == "rollback")
            .then_some(())
    });
    // Recovery with the root key: revoke every online key, new key, floor above the thief's.
    let floor = (1u64 << 62) + 1000;
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(fleet_tests::fleet::bin("fleetctl"))
            .args(["--hub", &fleet.http, "--token", &fleet.token])
            .args(args)
            .output()
            .expect("fleetctl");
        assert!(
            out.status.success(),
            "fleetctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir = keys.display().to_string();
    let root = keys.join("root.key").display().to_string();
    ctl(&[
        "keys",
        "recover",
        "--dir",
        &dir,
        "--root",
        &root,
        "--floor",
        &floor.to_string(),
    ]);
    ctl(&["reload-trust"]);
    eventually(60, "the victim accepted trust v2", || {
        fleet
            .events(&victim.id)
            .iter()
            .any(|e| e["body"]["type"] == "trust_accepted" && e["body"]["version"] == 2)
            .then_some(())
    });
    fleet.wait_converged(90);
    let d = fleet.device(&victim.id);
    assert!(d["desired_revision"].as_u64().expect("rev") > floor, "{d}");
    assert_eq!(
        victim.running().first().map(|r| r.2.clone()),
        Some(v2.clone()),
        "the victim runs the real release"
    );
    // The stolen key is dead, whatever the revision.
    publish(&topic, &forged(u64::MAX - 1));
    eventually(30, "the stolen key refused", || {
        fleet
            .events(&victim.id)
            .iter()
            .any(|e| e["body"]["type"] == "desired_rejected" && e["body"]["code"] == "unknown_key")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(victim.running().first().map(|r| r.2.clone()), Some(v2));
}

/// A routine key rotation (`fleetctl keys rotate` + `reload-trust`) reaches every device: each
/// takes trust v2 and its re-signed state, and none reports the state it held, signed by the
/// dropped key, as `desired_rejected unknown_key` on the way.
#[test]
fn a_key_rotation_reaches_every_device_without_a_rejection() {
    let fleet = Fleet::start(3);
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let held: Vec<u64> = fleet
        .agents
        .iter()
        .map(|a| {
            fleet.device(&a.id)["desired_revision"]
                .as_u64()
                .expect("rev")
        })
        .collect();
    let keys = fleet.dir.path().join("hub/keys");
    let (dir, root) = (
        keys.display().to_string(),
        keys.join("root.key").display().to_string(),
    );
    for args in [
        &["keys", "rotate", "--dir", &dir, "--root", &root][..],
        &["reload-trust"],
    ] {
        let out = std::process::Command::new(fleet_tests::fleet::bin("fleetctl"))
            .args(["--hub", &fleet.http, "--token", &fleet.token])
            .args(args)
            .output()
            .expect("fleetctl");
        assert!(
            out.status.success(),
            "fleetctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (a, held) in fleet.agents.iter().zip(held) {
        // Events arrive in order: once the re-signed state's acceptance is stored, so is
        // anything the device reported before it.
        eventually(
            60,
            &format!("{} took trust v2 and the re-signed state", a.id),
            || {
                let ev = fleet.events(&a.id);
                let trust = ev
                    .iter()
                    .any(|e| e["body"]["type"] == "trust_accepted" && e["body"]["version"] == 2);
                let state = ev.iter().any(|e| {
                    e["body"]["type"] == "desired_accepted"
                        && e["body"]["revision"].as_u64().is_some_and(|r| r > held)
                });
                (trust && state).then_some(())
            },
        );
        let rejected: Vec<_> = fleet
            .events(&a.id)
            .into_iter()
            .filter(|e| e["body"]["type"] == "desired_rejected")
            .collect();
        assert!(rejected.is_empty(), "{}: {rejected:?}", a.id);
    }
    fleet.wait_converged(90);
}

/// C41 and C46: a connection that silently stops carrying bytes is detected by keep-alive and
/// replaced after the heal; a link that flaps ten times ends with the device `online` at the hub,
/// under its newest connection epoch (a late will from an old connection never wins).
#[test]
fn a_blackholed_link_is_detected_and_a_flapping_link_ends_online() {
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    let v1 = fleet.image("svc", "exec sleep 100000", &[]);
    fleet.deploy(fleet.release("svc", "1", &v1, None), 0);
    fleet.wait_converged(90);
    let epoch0 = fleet.device(&a.id)["presence"]["epoch"]
        .as_u64()
        .expect("epoch");
    let accepted_before = a.mqtt.accepted();
    // Silence both ways for longer than 1.5 keep-alives (5 s in the harness).
    a.mqtt.blackhole();
    std::thread::sleep(Duration::from_secs(9));
    a.mqtt.heal();
    eventually(30, "a new connection after the blackhole", || {
        (a.mqtt.accepted() > accepted_before).then_some(())
    });
    let v2 = fleet.image("svc", "exec sleep 100001", &[]);
    fleet.deploy(fleet.release("svc", "2", &v2, None), 1);
    fleet.wait_converged(60);
    for _ in 0..10 {
        a.mqtt.cut();
        std::thread::sleep(Duration::from_millis(150));
        a.mqtt.heal();
        std::thread::sleep(Duration::from_millis(400));
    }
    let p = eventually(60, "presence online after the flapping", || {
        let d = fleet.device(&a.id);
        (d["presence"]["state"] == "online" && d["presence"]["epoch"].as_u64() > Some(epoch0))
            .then(|| d["presence"].clone())
    });
    // It stays online: no stale will arrives later to overwrite it.
    std::thread::sleep(Duration::from_secs(3));
    let d = fleet.device(&a.id);
    assert_eq!(
        d["presence"]["state"], "online",
        "{p} then {}",
        d["presence"]
    );
    assert!(fleet.converged(&a.id));
}
