//! The real agent against a real broker (mosquitto), a real blob server and real processes.

mod common;

use std::time::Duration;

use common::*;
use protocol::*;

struct World {
    dir: tempfile::TempDir,
    broker: Broker,
    blobs: BlobServer,
    keys: Keys,
    hub: HubDouble,
    agent: Agent,
}

fn world(device: &str) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let blobs = BlobServer::start();
    let keys = Keys::new();
    let hub = HubDouble::connect(broker.port, device);
    hub.publish_retained(topics::TRUST, keys.trust_update(1));
    let mut agent = Agent::provision(dir.path(), device, broker.port, &blobs.url, &keys);
    agent.start();
    World {
        dir,
        broker,
        blobs,
        keys,
        hub,
        agent,
    }
}

fn deploy(w: &World, revision: u64, workloads: Vec<Workload>) {
    let s = state(&w.agent.device, revision, workloads);
    w.hub.publish_desired(w.keys.sign_state(&s));
}

fn wait_succeeded(w: &World, revision: u64) {
    eventually(
        40,
        &format!("update_succeeded for revision {revision}"),
        || {
            w.hub
                .has_event(
                    |e| matches!(e, EventBody::UpdateSucceeded { revision: r } if *r == revision),
                )
                .then_some(())
        },
    );
}

fn sleeper(tag: &str) -> Image {
    Image::with_script(&format!("echo {tag} >> started.log\nexec sleep 300"), &[])
}

#[test]
fn starts_a_workload_then_updates_it_and_reports_convergence() {
    let w = world("gw-start");
    let (v1, v2) = (sleeper("v1"), sleeper("v2"));
    w.blobs.add(&v1);
    w.blobs.add(&v2);
    deploy(&w, 1, vec![workload("svc", &v1)]);
    wait_succeeded(&w, 1);
    let first = w.agent.running_digests();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].2, v1.digest.to_string());
    assert_eq!(
        w.agent.rootfs_file(&v1.digest, "started.log").as_deref(),
        Some("v1\n")
    );

    deploy(&w, 2, vec![workload("svc", &v2)]);
    wait_succeeded(&w, 2);
    let second = eventually(10, "exactly the new version running", || {
        let r = w.agent.running_digests();
        (r.len() == 1 && r[0].2 == v2.digest.to_string()).then_some(r)
    });
    assert_ne!(first[0].1, second[0].1);
    let status = eventually(10, "status showing revision 2 applied", || {
        w.hub
            .last_status()
            .filter(|s| s.applied_revision == Some(2))
    });
    assert_eq!(status.convergence, Convergence::Converged);
    assert_eq!(status.desired_revision, Some(2));
    assert!(w
        .hub
        .has_event(|e| matches!(e, EventBody::ImagePulled { .. })));
    // `edge-agent status` reads the local store (it works with the agent stopped and offline).
    let out = std::process::Command::new(agent_bin())
        .arg("--data-dir")
        .arg(&w.agent.dir)
        .args(["status", "--json"])
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["device"], "gw-start");
    assert_eq!(v["desired_revision"], 2);
    assert_eq!(v["applied_revision"], 2);
    assert_eq!(v["revision_floor"], 2);
    assert_eq!(v["trust_version"], 1);
    let running = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["state"]["Running"].is_object())
        .count();
    assert_eq!(running, 1, "{v}");
}

#[test]
fn an_update_whose_health_check_fails_is_swapped_back() {
    let w = world("gw-rollback");
    let good = sleeper("good");
    let bad = sleeper("bad");
    w.blobs.add(&good);
    w.blobs.add(&bad);
    deploy(&w, 1, vec![workload("svc", &good)]);
    wait_succeeded(&w, 1);
    let mut failing = workload("svc", &bad);
    failing.health = Some(HealthCheck {
        probe: Probe::Exec {
            command: vec!["./no-such-probe".into()],
        },
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
        start_period_secs: 0,
    });
    failing.health_deadline_secs = 3;
    deploy(&w, 2, vec![failing]);
    eventually(40, "rolled_back event", || {
        w.hub
            .has_event(|e| matches!(e, EventBody::RolledBack { revision: 2, digest, .. } if *digest == good.digest))
            .then_some(())
    });
    assert!(w
        .hub
        .has_event(|e| matches!(e, EventBody::UpdateFailed { revision: 2, .. })));
    eventually(10, "the previous version running again", || {
        let r = w.agent.running_digests();
        (r.len() == 1 && r[0].2 == good.digest.to_string()).then_some(())
    });
    let status = eventually(10, "status failed", || {
        w.hub
            .last_status()
            .filter(|s| s.convergence == Convergence::Failed)
    });
    assert_eq!(status.applied_revision, Some(1));
}

#[test]
fn a_crashing_workload_is_restarted() {
    let w = world("gw-crash");
    let crashy = Image::with_script("echo run >> runs.log\nsleep 0.3\nexit 7", &[]);
    w.blobs.add(&crashy);
    deploy(&w, 1, vec![workload("svc", &crashy)]);
    eventually(40, "three runs", || {
        let runs = w
            .agent
            .rootfs_file(&crashy.digest, "runs.log")
            .unwrap_or_default();
        (runs.lines().count() >= 3).then_some(())
    });
    eventually(20, "exit events with code 7", || {
        w.hub
            .has_event(|e| matches!(e, EventBody::WorkloadExited { code: Some(7), .. }))
            .then_some(())
    });
}

#[test]
fn bad_documents_are_rejected_with_their_reason_and_change_nothing() {
    let w = world("gw-reject");
    let v1 = sleeper("v1");
    let v2 = sleeper("v2");
    w.blobs.add(&v1);
    w.blobs.add(&v2);
    deploy(&w, 5, vec![workload("svc", &v1)]);
    wait_succeeded(&w, 5);
    let before = w.agent.running();

    // Tampered: one payload bit flipped after signing.
    let s = state(&w.agent.device, 6, vec![workload("svc", &v2)]);
    let mut env = Envelope::decode(&w.keys.sign_state(&s)).expect("decodes");
    let last = env.payload.len() - 3;
    env.payload[last] ^= 1;
    w.hub.publish_desired(env.encode());
    // Another device's state.
    w.hub.publish_desired(
        w.keys
            .sign_state(&state("gw-other", 7, vec![workload("svc", &v2)])),
    );
    // Expired on arrival.
    let mut old = state(&w.agent.device, 8, vec![workload("svc", &v2)]);
    old.issued_at = now() - 3 * DAY;
    old.expires_at = now() - DAY;
    w.hub.publish_desired(w.keys.sign_state(&old));
    // A replayed older revision.
    w.hub.publish_desired(w.keys.sign_state(&state(
        &w.agent.device,
        4,
        vec![workload("svc", &v2)],
    )));
    // Signed by a key nobody trusts.
    let stranger = KeyPair::from_seed([99; 32]);
    let s = state(&w.agent.device, 9, vec![workload("svc", &v2)]);
    w.hub.publish_desired(
        Envelope::sign(serde_json::to_vec(&s).expect("json"), &[&stranger]).encode(),
    );

    for code in [
        "bad_signature",
        "wrong_device",
        "expired",
        "rollback",
        "unknown_key",
    ] {
        eventually(20, &format!("desired_rejected {code}"), || {
            w.hub
                .has_event(|e| matches!(e, EventBody::DesiredRejected { code: c, .. } if c == code))
                .then_some(())
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.agent.running(), before, "workloads were touched");
    assert!(!w
        .hub
        .has_event(|e| matches!(e, EventBody::DesiredAccepted { revision } if *revision > 5)));
    let status = eventually(10, "status with the rejection", || {
        w.hub.last_status().filter(|s| s.last_rejection.is_some())
    });
    assert_eq!(status.desired_revision, Some(5));
}

#[test]
fn keeps_running_while_the_broker_is_down_and_delivers_queued_events_after() {
    let mut w = world("gw-partition");
    let v1 = sleeper("v1");
    w.blobs.add(&v1);
    deploy(&w, 1, vec![workload("svc", &v1)]);
    wait_succeeded(&w, 1);
    let port = w.broker.port;
    w.broker.stop();
    // While offline: the workload is killed; the agent restarts it and queues the events.
    let (_, pid) = w.agent.running()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill workload");
    let restarted = eventually(20, "restart while offline", || {
        w.agent.running().into_iter().find(|(_, p)| *p != pid)
    });
    assert_ne!(restarted.1, pid);
    // The broker comes back (empty: it kept nothing), the hub republishes its retained state.
    w.broker = Broker::start_on(w.dir.path(), port);
    let events = w.hub.events.clone();
    let hub = HubDouble::connect_with(port, &w.agent.device, events);
    hub.publish_retained(topics::TRUST, w.keys.trust_update(1));
    hub.publish_desired(
        w.keys
            .sign_state(&state(&w.agent.device, 1, vec![workload("svc", &v1)])),
    );
    eventually(40, "the offline exit event delivered", || {
        hub.has_event(|e| {
            matches!(
                e,
                EventBody::WorkloadExited {
                    signal: Some(9),
                    ..
                } | EventBody::WorkloadExited { code: None, .. }
            )
        })
        .then_some(())
    });
    // Every seq from 1 up to the newest is stored, none twice with other content.
    eventually(20, "contiguous events", || {
        let m = hub.events.lock().expect("lock");
        let max = m.keys().max().copied().unwrap_or(0);
        (max > 0 && m.len() as u64 == max).then_some(())
    });
    // The same retained revision re-delivered does not restart anything.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.agent.running(), vec![restarted]);
}

#[test]
fn kill_9_during_an_update_then_restart_converges_without_duplicates() {
    let mut w = world("gw-kill");
    let (v1, v2) = (sleeper("v1"), sleeper("v2"));
    w.blobs.add(&v1);
    w.blobs.add(&v2);
    deploy(&w, 1, vec![workload("svc", &v1), workload("aux", &v1)]);
    wait_succeeded(&w, 1);
    deploy(&w, 2, vec![workload("svc", &v2), workload("aux", &v1)]);
    eventually(20, "the update under way", || {
        w.hub
            .has_event(|e| matches!(e, EventBody::DesiredAccepted { revision: 2 }))
            .then_some(())
    });
    w.agent.proc.kill9();
    w.agent.start();
    wait_succeeded(&w, 2);
    let running = eventually(10, "exactly the desired set", || {
        let r = w.agent.running_digests();
        (r.len() == 2).then_some(r)
    });
    let names: Vec<&str> = running.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, vec!["aux", "svc"]);
    let svc = running.iter().find(|(n, _, _)| n == "svc").expect("svc");
    assert_eq!(svc.2, v2.digest.to_string());
    w.agent.proc.kill9();
    let conn = rusqlite::Connection::open(w.agent.dir.join("agent.db")).expect("open db");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(check, "ok");
}

#[test]
fn restarted_with_hub_and_broker_unreachable_it_restores_workloads_from_its_store() {
    let mut w = world("gw-autonomy");
    let v1 = sleeper("v1");
    w.blobs.add(&v1);
    deploy(&w, 1, vec![workload("svc", &v1)]);
    wait_succeeded(&w, 1);
    w.agent.proc.kill9();
    w.agent.stop_workloads();
    w.broker.stop();
    eventually(10, "workloads gone", || {
        w.agent.running().is_empty().then_some(())
    });
    w.agent.start();
    let r = eventually(20, "workload restored offline", || {
        let r = w.agent.running_digests();
        (r.len() == 1).then_some(r)
    });
    assert_eq!(r[0].2, v1.digest.to_string());
}

#[test]
fn a_download_cut_halfway_resumes_where_it_stopped() {
    let w = world("gw-resume");
    // Incompressible content, so the compressed blob is large enough to cut.
    let noise = noise(400_000, 0x9e37_79b9_7f4a_7c15);
    let img = Image::with_script("exec sleep 300", &[("noise.bin", &noise)]);
    w.blobs.add(&img);
    let half = img.zst.len() / 2;
    w.blobs.set_mode(Mode::CutAfter(half));
    deploy(&w, 1, vec![workload("svc", &img)]);
    eventually(30, "first attempt cut", || {
        w.hub
            .has_event(|e| matches!(e, EventBody::ImagePullFailed { .. }))
            .then_some(())
    });
    w.blobs.set_mode(Mode::Normal);
    wait_succeeded(&w, 1);
    let fetched = w
        .hub
        .events
        .lock()
        .expect("lock")
        .values()
        .find_map(|e| match e.body {
            EventBody::ImagePulled { bytes_fetched, .. } => Some(bytes_fetched),
            _ => None,
        });
    let fetched = fetched.expect("image_pulled event");
    assert!(
        fetched < img.zst.len() as u64 && fetched >= (img.zst.len() - half) as u64 - 1,
        "resume fetched {fetched} of {} bytes (cut at {half})",
        img.zst.len()
    );
    let requests = w.blobs.state.lock().expect("lock").requests.clone();
    assert!(
        requests
            .iter()
            .any(|r| r.as_deref().is_some_and(|r| r.starts_with("bytes="))),
        "{requests:?}"
    );
    assert!(w.blobs.bytes_served() < 2 * img.zst.len() as u64);
}

#[test]
fn swaps_wait_for_the_maintenance_window_and_for_an_application_hold_up_to_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let blobs = BlobServer::start();
    let keys = Keys::new();
    let hub = HubDouble::connect(broker.port, "gw-window");
    hub.publish_retained(topics::TRUST, keys.trust_update(1));
    let mut agent = Agent::provision(dir.path(), "gw-window", broker.port, &blobs.url, &keys);
    agent.set_env("FLEET_AGENT_MAX_UPDATE_HOLD_SECS", "4");
    agent.start();
    // v1 takes an update hold as soon as it runs.
    let v1 = Image::with_script("touch \"$FLEET_UPDATE_HOLD\"\nexec sleep 300", &[]);
    let v2 = sleeper("v2");
    let v3 = sleeper("v3");
    for i in [&v1, &v2, &v3] {
        blobs.add(i);
    }
    hub.publish_desired(keys.sign_state(&state("gw-window", 1, vec![workload("svc", &v1)])));
    eventually(40, "v1 converged", || {
        hub.has_event(|e| matches!(e, EventBody::UpdateSucceeded { revision: 1 }))
            .then_some(())
    });
    eventually(10, "hold taken", || {
        agent.dir.join("holds/svc").exists().then_some(())
    });
    hub.publish_desired(keys.sign_state(&state("gw-window", 2, vec![workload("svc", &v2)])));
    let deferred = eventually(20, "deferred by the hold", || {
        hub.last_status()
            .filter(|s| s.desired_revision == Some(2) && s.convergence == Convergence::Deferred)
    });
    assert_eq!(deferred.applied_revision, Some(1));
    assert_eq!(
        agent.running_digests()[0].2,
        v1.digest.to_string(),
        "swapped despite the hold"
    );
    // The hold is honoured only up to max_update_hold_secs.
    eventually(40, "v2 after the hold expired", || {
        hub.has_event(|e| matches!(e, EventBody::UpdateSucceeded { revision: 2 }))
            .then_some(())
    });
    std::fs::remove_file(agent.dir.join("holds/svc")).ok();

    // A maintenance window that is not open now (one minute a year, long ago today) defers.
    let mut s3 = state("gw-window", 3, vec![workload("svc", &v3)]);
    s3.maintenance = Some(MaintenanceWindow {
        cron: CronExpr::parse("0 0 0 1 1 * 2000").expect("valid"),
        duration_secs: 60,
    });
    hub.publish_desired(keys.sign_state(&s3));
    eventually(20, "deferred by the window", || {
        hub.last_status()
            .filter(|s| s.desired_revision == Some(3) && s.convergence == Convergence::Deferred)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.running_digests()[0].2,
        v2.digest.to_string(),
        "swapped outside the window"
    );
    // Outside the window the new image is already pulled, so the swap is instant when it opens.
    assert!(agent.dir.join("images").join(v3.digest.hex()).exists());
    drop(hub);
}

#[test]
fn an_oci_workload_runs_under_runc_and_swaps_like_a_process() {
    let w = world("gw-oci");
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static is installed (apt-get install busybox-static)");
    let busybox = std::fs::read(bb).expect("read busybox");
    let image = |tag: &str| {
        Image::with_script(
            &format!("echo {tag} pid $$\nexec /bin/busybox sleep 300"),
            &[("bin/busybox", &busybox)],
        )
    };
    let (v1, v2) = (image("v1"), image("v2"));
    w.blobs.add(&v1);
    w.blobs.add(&v2);
    let oci = |img: &Image| {
        let mut wl = workload("box", img);
        wl.runtime = RuntimeKind::Oci;
        wl.command = vec!["/bin/busybox".into(), "sh".into(), "/run.sh".into()];
        wl.resources.memory_bytes = Some(64 << 20);
        // Passes only inside the container: the host has no /run.sh.
        wl.health = Some(HealthCheck {
            probe: Probe::Exec {
                command: vec![
                    "/bin/busybox".into(),
                    "test".into(),
                    "-f".into(),
                    "/run.sh".into(),
                ],
            },
            interval_secs: 1,
            timeout_secs: 2,
            retries: 1,
            start_period_secs: 0,
        });
        wl.health_deadline_secs = 10;
        wl
    };
    deploy(&w, 1, vec![oci(&v1)]);
    wait_succeeded(&w, 1);
    let log = w.agent.dir.join("logs/box.log");
    let text = eventually(10, "container output", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("v1"))
    });
    assert!(
        text.contains("v1 pid 1"),
        "not in its own pid namespace: {text}"
    );
    assert!(
        w.agent
            .dir
            .join("runtime-oci")
            .read_dir()
            .expect("oci records")
            .count()
            > 0
    );
    let status = eventually(10, "status lists oci", || {
        w.hub
            .last_status()
            .filter(|s| s.runtimes.contains(&RuntimeKind::Oci))
    });
    assert_eq!(status.convergence, Convergence::Converged);
    deploy(&w, 2, vec![oci(&v2)]);
    wait_succeeded(&w, 2);
    let running = eventually(10, "exactly the new container", || {
        let r = w.agent.running_digests();
        (r.len() == 1 && r[0].2 == v2.digest.to_string()).then_some(r)
    });
    assert_eq!(running[0].0, "box");
    assert!(
        !w.hub
            .has_event(|e| matches!(e, EventBody::RolledBack { .. })),
        "the in-container health check failed"
    );
}

#[test]
fn an_oversized_retained_state_is_reported_and_the_link_survives() {
    let w = world("gw-big");
    let v1 = sleeper("v1");
    w.blobs.add(&v1);
    // 600 KiB: over the envelope limit, under the broker's packet limit (C48).
    w.hub.publish_desired(vec![b'{'; 600 * 1024]);
    eventually(30, "too_large reported", || {
        w.hub
            .has_event(
                |e| matches!(e, EventBody::DesiredRejected { code, .. } if code == "too_large"),
            )
            .then_some(())
    });
    deploy(&w, 1, vec![workload("svc", &v1)]);
    wait_succeeded(&w, 1);
}

#[test]
fn sigterm_stops_the_agent_but_not_its_workloads_and_an_expired_state_is_reported_stale() {
    let mut w = world("gw-term");
    let v1 = sleeper("v1");
    w.blobs.add(&v1);
    let mut s = state(&w.agent.device, 1, vec![workload("svc", &v1)]);
    s.expires_at = now() + 4;
    w.hub.publish_desired(w.keys.sign_state(&s));
    wait_succeeded(&w, 1);
    let before = w.agent.running();
    assert_eq!(before.len(), 1);
    w.agent.proc.terminate(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.agent.running(), before, "SIGTERM took the workload down");
    w.agent.start();
    // The state expires while the device keeps running it: reported stale, not stopped.
    eventually(30, "stale event", || {
        w.hub
            .has_event(|e| matches!(e, EventBody::Stale { revision: 1 }))
            .then_some(())
    });
    let status = eventually(10, "stale status", || {
        w.hub.last_status().filter(|s| s.stale)
    });
    assert_eq!(status.applied_revision, Some(1));
    assert_eq!(
        w.agent.running(),
        before,
        "the restarted agent started a duplicate or lost the workload"
    );
}

/// #15, late crash: the new version runs about 2 s, then exits non-zero. It was healthy after
/// its first second (no health check), but the exit falls inside its stability window, so the
/// update fails: the previous release runs again, `update_failed` and `rolled_back` are
/// reported, the device shows failed, and the crashing version is not restarted.
#[test]
fn an_update_that_crashes_inside_its_stability_window_is_swapped_back() {
    let w = world("gw-late-crash");
    let good = sleeper("good");
    let late = Image::with_script("echo late >> runs.log\nsleep 2\nexit 3", &[]);
    w.blobs.add(&good);
    w.blobs.add(&late);
    deploy(&w, 1, vec![workload("svc", &good)]);
    wait_succeeded(&w, 1);
    let mut crashing = workload("svc", &late);
    crashing.stability_window_secs = 8;
    deploy(&w, 2, vec![crashing]);
    eventually(40, "rolled back to the previous release", || {
        w.hub
            .has_event(|e| matches!(e, EventBody::RolledBack { revision: 2, digest, .. } if *digest == good.digest))
            .then_some(())
    });
    assert!(w.hub.has_event(|e| matches!(
        e,
        EventBody::UpdateFailed { revision: 2, reason, .. } if reason.contains("stability window")
    )));
    assert!(
        !w.hub
            .has_event(|e| matches!(e, EventBody::UpdateSucceeded { revision: 2 })),
        "the late crash was reported as a success"
    );
    eventually(10, "the previous version running again", || {
        let r = w.agent.running_digests();
        (r.len() == 1 && r[0].2 == good.digest.to_string()).then_some(())
    });
    let status = eventually(10, "status failed", || {
        w.hub
            .last_status()
            .filter(|s| s.convergence == Convergence::Failed)
    });
    assert_eq!(status.applied_revision, Some(1));
    // Past the window and a few restart backoffs: the failed version never ran again.
    std::thread::sleep(Duration::from_secs(3));
    let runs = w.agent.rootfs_file(&late.digest, "runs.log");
    assert_eq!(runs.as_deref().map(|r| r.lines().count()), Some(1));
}

/// C19 (#15): kill -9 of the real agent at seeded offsets of a throttled download — 20 kills
/// here, `FLEET_C19_KILLS=100` for the full run (`FLEET_C19_SEED` picks the offsets). Every
/// restart asks for exactly the range after what the file on disk holds, the blob is never
/// fetched from zero again, each kill loses only what was in flight, and the image the agent
/// finally runs is the verified one, byte for byte.
#[test]
fn kill_9_at_seeded_download_offsets_resumes_each_time_and_verifies() {
    use rand::{Rng, SeedableRng};
    use std::time::Instant;
    let env = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (kills, seed) = (env("FLEET_C19_KILLS", 20), env("FLEET_C19_SEED", 19));
    let mut w = world("gw-c19");
    // Incompressible, about 48 KiB per kill; the slow blob server sends 8 KiB every 5 ms.
    let noise = noise(kills as usize * 48 * 1024 + 128 * 1024, seed);
    let img = Image::with_script("exec sleep 300", &[("noise.bin", &noise)]);
    w.blobs.add(&img);
    w.blobs.set_mode(Mode::Slow);
    deploy(&w, 1, vec![workload("svc", &img)]);
    let len = img.zst.len() as u64;
    let part = w
        .agent
        .dir
        .join("images/partial")
        .join(format!("{}.tar.zst", img.digest.hex()));
    let part_len = || std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let slice = len / (kills + 1);
    // Per run: (index of its first request, offset it must resume from, bytes it kept).
    let mut runs: Vec<(usize, u64, u64)> = Vec::new();
    let (mut first_request, mut resume_from) = (0, 0);
    let started = Instant::now();
    for i in 0..kills {
        // One seeded offset in each slice, and always past what the last run kept.
        let target = (i * slice + rng.gen_range(slice / 4..slice)).max(resume_from + 8192);
        let deadline = Instant::now() + Duration::from_secs(30);
        while part_len() < target {
            assert!(
                Instant::now() < deadline,
                "kill {i}: the download never reached {target} (at {})",
                part_len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        w.agent.proc.kill9();
        let kept = part_len();
        assert!(
            kept < len,
            "kill {i}: the download finished before its kill"
        );
        runs.push((first_request, resume_from, kept));
        first_request = w.blobs.state.lock().expect("lock").requests.len();
        resume_from = kept;
        w.agent.start();
    }
    eventually(120, "the image verified and its workload running", || {
        let r = w.agent.running_digests();
        (r.len() == 1 && r[0].2 == img.digest.to_string()).then_some(())
    });
    runs.push((first_request, resume_from, len));
    let (requests, served) = {
        let s = w.blobs.state.lock().expect("lock");
        (s.requests.clone(), s.served.clone())
    };
    let mut lost = Vec::new();
    for (r, &(first, from, kept)) in runs.iter().enumerate() {
        let want = (r > 0).then(|| format!("bytes={from}-"));
        assert_eq!(
            requests.get(first),
            Some(&want),
            "run {r} did not resume from the {from} bytes on disk: {requests:?}"
        );
        let end = runs.get(r + 1).map_or(requests.len(), |n| n.0);
        let sent: u64 = served[first..end].iter().sum();
        lost.push(sent.saturating_sub(kept - from));
    }
    // What a kill loses is what was between the server and the file: socket buffers and one
    // chunk or two, never a restart from zero (which would lose everything kept so far).
    let worst = lost.iter().copied().max().unwrap_or(0);
    assert!(
        worst <= 256 * 1024,
        "a kill lost {worst} bytes: {lost:?} (blob {len} bytes)"
    );
    eprintln!(
        "{kills} kills over a {len}-byte blob in {:.1}s: {} bytes lost in flight in total, at most {worst} per kill",
        started.elapsed().as_secs_f64(),
        lost.iter().sum::<u64>()
    );
    let digest = img.digest;
    assert_eq!(
        std::fs::read(
            w.agent
                .dir
                .join("images")
                .join(digest.hex())
                .join("rootfs/noise.bin")
        )
        .expect("the unpacked image"),
        noise
    );
}
