//! The agent at rest and on a bad day for its disk: no writes while idle, private secrets, a
//! revision floor that survives a lost WAL, and a full disk that is survived and reported
//! (DESIGN §4.5; docs/CHECKLIST.md C7, C24, C35, C36). The real agent binary, a real broker,
//! real SQLite on a real file system.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use protocol::*;

struct World {
    dir: tempfile::TempDir,
    _broker: Broker,
    blobs: BlobServer,
    keys: Keys,
    hub: HubDouble,
    broker_port: u16,
}

fn world(device: &str) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let blobs = BlobServer::start();
    let keys = Keys::new();
    let hub = HubDouble::connect(broker.port, device);
    hub.publish_retained(topics::TRUST, keys.trust_update(1));
    World {
        broker_port: broker.port,
        dir,
        _broker: broker,
        blobs,
        keys,
        hub,
    }
}

impl World {
    fn provision(&self, device: &str) -> Agent {
        Agent::provision(
            self.dir.path(),
            device,
            self.broker_port,
            &self.blobs.url,
            &self.keys,
        )
    }

    /// Signs and publishes a state; returns the exact bytes sent (for a replay).
    fn deploy(&self, device: &str, revision: u64, workloads: Vec<Workload>) -> Vec<u8> {
        let wire = self.keys.sign_state(&state(device, revision, workloads));
        self.hub.publish_desired(wire.clone());
        wire
    }

    fn wait_succeeded(&self, revision: u64) {
        eventually(
            40,
            &format!("update_succeeded for revision {revision}"),
            || {
                self.hub
                    .has_event(
                        |e| matches!(e, EventBody::UpdateSucceeded { revision: r } if *r == revision),
                    )
                    .then_some(())
            },
        );
    }
}

fn sleeper(tag: &str) -> Image {
    Image::with_script(&format!("echo {tag} >> started.log\nexec sleep 300"), &[])
}

/// Size, modification and change time (nanoseconds) of every file under `root`, except the
/// workloads' own output (`logs/`, the rootfs files they write) and the test's capture of the
/// agent's stderr (`agent.log`): those are not the agent's state.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u64, i64, i64)> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, (u64, i64, i64)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            let first = rel.components().next().map(|c| c.as_os_str().to_owned());
            if first.as_deref() == Some("logs".as_ref())
                || rel == Path::new("agent.log")
                || rel.ends_with("started.log")
            {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ns = |s: i64, n: i64| s * 1_000_000_000 + n;
            out.insert(
                rel,
                (
                    m.len(),
                    ns(m.mtime(), m.mtime_nsec()),
                    ns(m.ctime(), m.ctime_nsec()),
                ),
            );
            if m.is_dir() {
                walk(&p, root, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `write_bytes` of `/proc/<pid>/io`: bytes this process caused to be written to storage.
fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/<pid>/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes in /proc/<pid>/io")
}

/// The differences between two snapshots, for the failure message.
fn changes(
    a: &BTreeMap<PathBuf, (u64, i64, i64)>,
    b: &BTreeMap<PathBuf, (u64, i64, i64)>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (p, v) in b {
        match a.get(p) {
            None => out.push(format!("created {}", p.display())),
            Some(old) if old != v => out.push(format!(
                "changed {} (size {} -> {})",
                p.display(),
                old.0,
                v.0
            )),
            _ => {}
        }
    }
    for p in a.keys().filter(|p| !b.contains_key(*p)) {
        out.push(format!("removed {}", p.display()));
    }
    out
}

/// Issue #16: an idle agent committed a transaction with fsync on every tick. Over a minute of
/// idling with converged workloads (one with an exec health check every second) it must write
/// nothing: no file in its data directory changes, and the kernel counts no bytes written by the
/// agent process (its stderr, which would also count, logs nothing at rest). A minute, as the
/// issue asks: it runs in parallel with the other tests.
#[test]
fn an_idle_agent_with_converged_workloads_writes_nothing() {
    let w = world("gw-idle");
    let mut agent = w.provision("gw-idle");
    agent.start();
    let plain = sleeper("plain");
    let checked = Image::with_script("exec sleep 300", &[("probe.sh", b"#!/bin/sh\nexit 0\n")]);
    w.blobs.add(&plain);
    w.blobs.add(&checked);
    let mut probed = workload("checked", &checked);
    probed.health = Some(HealthCheck {
        probe: Probe::Exec {
            command: vec!["./probe.sh".into()],
        },
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
        start_period_secs: 0,
    });
    w.deploy("gw-idle", 1, vec![workload("plain", &plain), probed]);
    w.wait_succeeded(1);
    // Settle: every event acked (the acks delete them from the outbox).
    eventually(20, "every event acked", || {
        let s = w.hub.last_status()?;
        (s.convergence == Convergence::Converged).then_some(())?;
        let out = std::process::Command::new(agent_bin())
            .arg("--data-dir")
            .arg(&agent.dir)
            .args(["status", "--json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["outbox_events"] == 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.proc.pid().expect("agent running");
    let (before, bytes_before) = (snapshot(&agent.dir), write_bytes(pid));
    let statuses_before = w.hub.statuses.lock().expect("lock").len();
    std::thread::sleep(Duration::from_secs(60));
    let (after, bytes_after) = (snapshot(&agent.dir), write_bytes(pid));
    assert!(agent.proc.running(), "the agent died while idle");
    assert!(
        w.hub.statuses.lock().expect("lock").len() > statuses_before + 10,
        "the agent stopped reporting, so it was not idling but stuck"
    );
    let changed = changes(&before, &after);
    assert!(
        changed.is_empty(),
        "an idle minute changed the data directory: {changed:#?}"
    );
    assert_eq!(
        bytes_after - bytes_before,
        0,
        "an idle minute wrote {} bytes",
        bytes_after - bytes_before
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Issue #15: `agent.db` holds the device's private key and broker password. The data directory
/// is 0700 and the database files 0600, from provisioning on, and an install made with looser
/// modes is tightened when the agent starts.
#[test]
fn secrets_are_readable_by_the_agent_only() {
    let w = world("gw-private");
    let mut agent = w.provision("gw-private");
    let db = agent.dir.join("agent.db");
    assert_eq!(mode(&agent.dir), 0o700, "data directory after provisioning");
    assert_eq!(mode(&db), 0o600, "agent.db after provisioning");
    // An install from before: world-readable.
    std::fs::set_permissions(&agent.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    agent.start();
    let v1 = sleeper("v1");
    w.blobs.add(&v1);
    w.deploy("gw-private", 1, vec![workload("svc", &v1)]);
    w.wait_succeeded(1);
    assert_eq!(mode(&agent.dir), 0o700, "data directory after a start");
    for f in ["agent.db", "agent.db-wal", "agent.db-shm"] {
        let p = agent.dir.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f} after a start");
        }
    }
}

/// Issue #15, C7, C35: kill -9 the agent after it accepted revision 4, delete `agent.db-wal`,
/// start it again. The floor must still be 4: the exact bytes of revision 3, replayed, are
/// refused as a rollback, the workload of revision 4 keeps running, and the loss is reported.
#[test]
fn a_wal_deleted_after_kill_9_does_not_roll_the_revision_floor_back() {
    let w = world("gw-wal");
    let mut agent = w.provision("gw-wal");
    agent.start();
    let (v3, v4) = (sleeper("v3"), sleeper("v4"));
    w.blobs.add(&v3);
    w.blobs.add(&v4);
    let rev3 = w.deploy("gw-wal", 3, vec![workload("svc", &v3)]);
    w.wait_succeeded(3);
    w.deploy("gw-wal", 4, vec![workload("svc", &v4)]);
    w.wait_succeeded(4);
    let running = agent.running_digests();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].2, v4.digest.to_string());

    agent.proc.kill9();
    let wal = agent.dir.join("agent.db-wal");
    assert!(wal.exists(), "a killed agent leaves its WAL");
    std::fs::remove_file(&wal).expect("delete the WAL");
    let out = std::process::Command::new(agent_bin())
        .arg("--data-dir")
        .arg(&agent.dir)
        .args(["status", "--json"])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        v["revision_floor"], 4,
        "floor after the WAL was deleted: {v}"
    );

    agent.start();
    w.hub.publish_desired(rev3);
    eventually(30, "the replayed revision 3 refused as a rollback", || {
        w.hub
            .has_event(
                |e| matches!(e, EventBody::DesiredRejected { code, .. } if code == "rollback"),
            )
            .then_some(())
    });
    eventually(20, "the loss reported", || {
        w.hub
            .has_event(|e| matches!(e, EventBody::EventsDropped { .. }))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let running = agent.running_digests();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].2, v4.digest.to_string(), "revision 3 came back");
    assert!(agent.proc.running(), "the agent died");
}

/// The agent running in its own mount namespace with its whole data directory on a small tmpfs
/// the test made (we run as root here and in CI), so the disk can really fill up. From outside
/// the namespace the data directory is reached through `/proc/<agent pid>/root`.
struct SmallDisk {
    agent: Agent,
}

impl SmallDisk {
    /// The data directory on a tmpfs of `size`.
    fn start(w: &World, device: &str, size: &str) -> SmallDisk {
        Self::start_with(
            w,
            device,
            &format!("mount -t tmpfs -o size={size},mode=0700 fleet-test {{data}}"),
        )
    }

    /// The data directory mounted by `mount` (a shell command; `{data}` stands for the data
    /// directory, `{back}` for a scratch directory beside it).
    fn start_with(w: &World, device: &str, mount: &str) -> SmallDisk {
        let data = w.dir.path().join(format!("agent-{device}"));
        let back = w.dir.path().join(format!("back-{device}"));
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::create_dir_all(&back).expect("mkdir");
        let mount = mount
            .replace("{data}", &data.display().to_string())
            .replace("{back}", &back.display().to_string());
        let bin = agent_bin();
        let script = format!(
            "{mount} && \
             {bin} --data-dir {d} provision --device-id {device} --mqtt 127.0.0.1:{port} \
               --password pw --hub-url {url} --root-key {root} && \
             exec {bin} --data-dir {d} run",
            d = data.display(),
            port = w.broker_port,
            url = w.blobs.url,
            root = w.keys.root.public().to_base64(),
        );
        let env: Vec<(String, String)> = fleet_test_kit::AGENT_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut proc = Proc::new(
            "unshare",
            [
                "--mount".to_string(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                "-c".into(),
                script,
            ],
            &env,
            w.dir.path().join(format!("{device}.log")),
        );
        proc.start().expect("spawn unshare");
        let pid = proc.pid().expect("pid");
        let inside = PathBuf::from(format!("/proc/{pid}/root")).join(
            data.strip_prefix("/")
                .expect("the temp dir is an absolute path"),
        );
        let db = inside.join("agent.db");
        let started = Instant::now();
        while !db.exists() {
            if !proc.running() {
                let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
                if !log.contains("provisioned") {
                    panic!(
                        "the test's file system could not be mounted in a private mount \
                         namespace (it needs root, tmpfs, and for the EIO test loop devices and \
                         mkfs.ext4): {log}"
                    );
                }
                panic!("the agent did not start: {log}");
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no agent.db");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmallDisk {
            agent: Agent {
                dir: inside,
                proc,
                device: device.into(),
            },
        }
    }

    /// Writes a file into the data directory until its file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        fill(&self.agent.dir.join("filler"))
    }
}

/// Writes the file at `p` until its file system is full.
fn fill(p: &Path) -> PathBuf {
    use std::io::Write;
    {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("filler");
        let chunk = vec![0x5au8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = f.sync_all();
    }
    p.to_path_buf()
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // The workloads are found through the agent's namespace: stop them while it lives.
        self.agent.stop_workloads();
    }
}

/// Issue #15, C24, C36: the disk fills up during a download, and then while the agent must
/// store an event and a new desired state. The agent stays alive and its workload untouched; the
/// partial download is removed and the failure reported; what it could not store is stored and
/// reported once there is room again, and it converges on the state that arrived meanwhile.
#[test]
fn a_full_disk_is_reported_and_survived() {
    let w = world("gw-full");
    let mut disk = SmallDisk::start(&w, "gw-full", "16m");
    let v1 = sleeper("v1");
    w.blobs.add(&v1);
    w.deploy("gw-full", 1, vec![workload("svc", &v1)]);
    w.wait_succeeded(1);
    let before = disk.agent.running();
    assert_eq!(before.len(), 1, "{before:?}");

    // A 4 MiB image served slowly; the disk fills up while it downloads.
    let big = Image::with_script("exec sleep 300", &[("blob.bin", &noise(4 << 20, 15))]);
    w.blobs.add(&big);
    w.blobs.set_mode(Mode::Slow);
    w.deploy("gw-full", 2, vec![workload("svc", &big)]);
    let part = disk
        .agent
        .dir
        .join("images/partial")
        .join(format!("{}.tar.zst", big.digest.hex()));
    eventually(20, "the download under way", || {
        std::fs::metadata(&part)
            .ok()
            .filter(|m| m.len() > 256 << 10)
    });
    let filler = disk.fill();
    let failed = eventually(20, "image_pull_failed reported", || {
        w.hub
            .events
            .lock()
            .expect("lock")
            .values()
            .find_map(|e| match &e.body {
                EventBody::ImagePullFailed { digest, error } if *digest == big.digest => {
                    Some(error.clone())
                }
                _ => None,
            })
    });
    assert!(
        failed.starts_with("space:"),
        "reported as another fault class: {failed}"
    );
    assert!(!part.exists(), "the partial download was left behind");
    assert_eq!(disk.agent.running(), before, "the workload was touched");

    // Full again: now the agent cannot store anything. A valid new state arrives, then a forged
    // document (its rejection is an event) after it.
    disk.fill();
    w.deploy("gw-full", 3, vec![workload("svc", &big)]);
    std::thread::sleep(Duration::from_secs(1));
    let s = state("gw-full", 9, vec![workload("svc", &v1)]);
    let forged = Envelope::sign(
        serde_json::to_vec(&s).expect("json"),
        &[&KeyPair::from_seed([99; 32])],
    );
    w.hub.publish_desired(forged.encode());
    std::thread::sleep(Duration::from_secs(3));
    assert!(disk.agent.proc.running(), "the agent died on a full disk");
    assert_eq!(disk.agent.running(), before, "the workload was touched");
    let log = std::fs::read_to_string(&disk.agent.proc.log).expect("agent log");
    assert!(
        log.contains("disk full"),
        "the store was never refused a write: the disk was not full"
    );
    assert!(
        !w.hub
            .has_event(|e| matches!(e, EventBody::DesiredAccepted { revision: 3 })),
        "revision 3 was stored on a full disk"
    );

    // Room again: everything held back is stored and reported, and the new state converges.
    w.blobs.set_mode(Mode::Normal);
    std::fs::remove_file(&filler).expect("remove filler");
    w.wait_succeeded(3);
    assert!(w.hub.has_event(
        |e| matches!(e, EventBody::DesiredRejected { code, .. } if code == "unknown_key")
    ));
    assert!(w
        .hub
        .has_event(|e| matches!(e, EventBody::DesiredAccepted { revision: 3 })));
    let running = disk.agent.running_digests();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].2, big.digest.to_string());
    assert!(disk.agent.proc.running(), "the agent died");
    eventually(20, "contiguous events at the hub", || {
        let m = w.hub.events.lock().expect("lock");
        let max = m.keys().max().copied().unwrap_or(0);
        (max > 0 && m.len() as u64 == max).then_some(())
    });
}

/// C36: the disk under the agent's data directory fails writes (EIO). An ext4 file system on a
/// loop device whose sparse backing file lives on a small tmpfs: once the tmpfs is full, the
/// ext4 above still takes writes into its page cache but the fsync that follows fails with EIO
/// (no device-mapper or FUSE is needed). The agent must treat the failed commit as fatal: it
/// exits with the error, never reports the state it could not store, and its workload runs on.
/// (The recovery half — a restart from what is durable — is `kill_9` territory, tried in
/// `agent_e2e.rs`; this file system stays broken, its journal aborted.)
#[test]
fn an_fsync_that_fails_with_eio_stops_the_agent_and_nothing_goes_on_as_if_written() {
    let w = world("gw-eio");
    let mut disk = SmallDisk::start_with(
        &w,
        "gw-eio",
        "mount -t tmpfs -o size=24m fleet-test {back} && \
         truncate -s 256m {back}/disk.img && mkfs.ext4 -q -F {back}/disk.img && \
         mount -o loop {back}/disk.img {data} && chmod 0700 {data}",
    );
    let v1 = sleeper("v1");
    let v2 = sleeper("v2");
    w.blobs.add(&v1);
    w.blobs.add(&v2);
    w.deploy("gw-eio", 1, vec![workload("svc", &v1)]);
    w.wait_succeeded(1);
    let before = disk.agent.running();
    assert_eq!(before.len(), 1, "{before:?}");
    let pid = disk.agent.proc.pid().expect("pid");
    let back = PathBuf::from(format!("/proc/{pid}/root")).join(
        w.dir
            .path()
            .join("back-gw-eio")
            .strip_prefix("/")
            .expect("absolute"),
    );
    fill(&back.join("filler"));

    w.deploy("gw-eio", 2, vec![workload("svc", &v2)]);
    eventually(30, "the agent to stop on the failed write", || {
        (!disk.agent.proc.running()).then_some(())
    });
    let log = std::fs::read_to_string(&disk.agent.proc.log).expect("agent log");
    assert!(
        log.contains("Error:") && (log.contains("I/O error") || log.contains("readonly")),
        "the agent did not stop on the failed write with its error"
    );
    assert!(
        !w.hub
            .has_event(|e| matches!(e, EventBody::DesiredAccepted { revision: 2 })),
        "a state that was not stored was reported accepted"
    );
    let (_, wpid) = before[0];
    let alive =
        std::fs::read_to_string(format!("/proc/{wpid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    // The agent is gone, so its workload is killed here, not by the harness.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(wpid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(alive, "the workload died with the agent");
}
