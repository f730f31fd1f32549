//! The process runtime against real processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use edge_agent::runtime::{health, InstanceState, ProcessRuntime, Runtime, WorkloadSpec};
use fleet_test_kit::eventually;
use protocol::{Digest, HealthCheck, Probe, Resources, WorkloadName};

fn script(root: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn spec(root: &Path, name: &str, cmd: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: WorkloadName::new(name).expect("valid"),
        digest: Digest::of(name.as_bytes()),
        rootfs: root.to_path_buf(),
        command: vec![cmd.into()],
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        resources: Resources::default(),
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn starts_with_env_and_cwd_and_reports_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    script(&root, "run.sh", "echo \"$GREETING from $(pwd)\"; exit 3");
    let rt = ProcessRuntime::new(&dir.path().join("state"), &dir.path().join("logs"), 1 << 20)
        .expect("runtime");
    let inst = rt.start(&spec(&root, "crashy", "./run.sh")).expect("start");
    let state = eventually(10, "exit", || {
        rt.list()
            .expect("list")
            .into_iter()
            .find(|i| i.id == inst.id && matches!(i.state, InstanceState::Exited { .. }))
            .map(|i| i.state)
    });
    assert!(
        matches!(state, InstanceState::Exited { code: Some(3), .. }),
        "{state:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("logs/crashy.log")).expect("log");
    assert!(
        log.contains(&format!("hello from {}", root.display())),
        "{log}"
    );
    rt.remove(&inst.id).expect("remove");
    assert!(rt.list().expect("list").is_empty());
}

#[test]
fn stop_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    // The script starts a grandchild that ignores nothing and records its pid.
    script(&root, "run.sh", "sleep 300 & echo $! > child.pid; wait");
    let rt = ProcessRuntime::new(&dir.path().join("state"), &dir.path().join("logs"), 1 << 20)
        .expect("runtime");
    let inst = rt.start(&spec(&root, "svc", "./run.sh")).expect("start");
    let child: u32 = eventually(10, "grandchild pid", || {
        std::fs::read_to_string(root.join("child.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    assert!(pid_alive(child));
    rt.stop(&inst.id, Duration::from_secs(2)).expect("stop");
    eventually(10, "grandchild gone", || (!pid_alive(child)).then_some(()));
    let listed = rt.list().expect("list");
    assert!(matches!(listed[0].state, InstanceState::Exited { .. }));
    // Idempotent.
    rt.stop(&inst.id, Duration::from_secs(1))
        .expect("second stop");
}

#[test]
fn a_new_runtime_readopts_running_instances_without_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    script(&root, "run.sh", "exec sleep 300");
    let state = dir.path().join("state");
    let logs = dir.path().join("logs");
    let first = ProcessRuntime::new(&state, &logs, 1 << 20).expect("runtime");
    let inst = first.start(&spec(&root, "svc", "./run.sh")).expect("start");
    let InstanceState::Running { pid, .. } = inst.state else {
        panic!("not running");
    };
    // The agent "restarts": the old runtime (and its child handles) is gone.
    drop(first);
    let second = ProcessRuntime::new(&state, &logs, 1 << 20).expect("runtime");
    let listed = second.list().expect("list");
    assert_eq!(listed.len(), 1, "exactly one instance known");
    assert_eq!(listed[0].id, inst.id);
    assert!(matches!(listed[0].state, InstanceState::Running { pid: p, .. } if p == pid));
    second.stop(&inst.id, Duration::from_secs(2)).expect("stop");
    eventually(10, "adopted process gone", || {
        (!pid_alive(pid)).then_some(())
    });
    let listed = second.list().expect("list");
    assert!(matches!(listed[0].state, InstanceState::Exited { .. }));
}

#[test]
fn a_dead_adopted_instance_is_reported_exited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    script(&root, "run.sh", "exec sleep 300");
    let state = dir.path().join("state");
    let logs = dir.path().join("logs");
    let first = ProcessRuntime::new(&state, &logs, 1 << 20).expect("runtime");
    let inst = first.start(&spec(&root, "svc", "./run.sh")).expect("start");
    let InstanceState::Running { pid, .. } = inst.state else {
        panic!("not running");
    };
    drop(first); // the Child handle is dropped without waiting; the process lives on
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let second = ProcessRuntime::new(&state, &logs, 1 << 20).expect("runtime");
    eventually(10, "exited", || {
        let l = second.list().expect("list");
        matches!(l[0].state, InstanceState::Exited { code: None, .. }).then_some(())
    });
}

#[test]
fn logs_are_bounded_by_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    script(&root, "run.sh", "i=0; while [ $i -lt 2000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; sleep 300");
    let rt = ProcessRuntime::new(&dir.path().join("state"), &dir.path().join("logs"), 4096)
        .expect("runtime");
    let inst = rt.start(&spec(&root, "chatty", "./run.sh")).expect("start");
    let log = dir.path().join("logs/chatty.log");
    eventually(10, "output written", || {
        (std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("line-1999")
            || dir.path().join("logs/chatty.log.1").exists())
        .then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    rt.list().expect("list rotates");
    let size = std::fs::metadata(&log).expect("log").len();
    assert!(size <= 4096, "log is {size} bytes");
    assert!(dir.path().join("logs/chatty.log.1").exists());
    rt.stop(&inst.id, Duration::from_secs(1)).expect("stop");
}

#[tokio::test]
async fn health_probes_tell_healthy_from_unhealthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    script(root, "ok.sh", "exit 0");
    script(root, "bad.sh", "exit 1");
    script(root, "slow.sh", "sleep 5");
    let check = |probe| HealthCheck {
        probe,
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
        start_period_secs: 0,
    };
    assert!(
        health::probe(
            &check(Probe::Exec {
                command: vec!["./ok.sh".into()]
            }),
            root
        )
        .await
    );
    assert!(
        !health::probe(
            &check(Probe::Exec {
                command: vec!["./bad.sh".into()]
            }),
            root
        )
        .await
    );
    let t = Instant::now();
    assert!(
        !health::probe(
            &check(Probe::Exec {
                command: vec!["./slow.sh".into()]
            }),
            root
        )
        .await
    );
    assert!(t.elapsed() < Duration::from_secs(4), "timeout not applied");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let status = if req.starts_with("GET /healthz") {
                "200 OK"
            } else {
                "503 Unavailable"
            };
            let _ = s
                .write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes())
                .await;
        }
    });
    assert!(health::probe(&check(Probe::Tcp { port }), root).await);
    assert!(
        health::probe(
            &check(Probe::Http {
                port,
                path: "/healthz".into()
            }),
            root
        )
        .await
    );
    assert!(
        !health::probe(
            &check(Probe::Http {
                port,
                path: "/broken".into()
            }),
            root
        )
        .await
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    assert!(!health::probe(&check(Probe::Tcp { port: closed }), root).await);
}

#[test]
fn a_relative_rootfs_and_no_limits_still_start_the_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    script(&root, "run.sh", "echo ran > ran.txt");
    let rt = ProcessRuntime::new(&dir.path().join("state"), &dir.path().join("logs"), 1 << 20)
        .expect("runtime");
    // A rootfs given relative to the current directory (an agent started with a relative
    // --data-dir): the program must not be resolved against the workload's own cwd.
    let here = std::env::current_dir().expect("cwd");
    let rel = pathdiff(&root, &here);
    let mut s = spec(&rel, "rel", "./run.sh");
    s.rootfs = rel;
    let inst = rt.start(&s).expect("start");
    eventually(10, "exit", || {
        rt.list().expect("list").into_iter().find(|i| {
            i.id == inst.id && matches!(i.state, InstanceState::Exited { code: Some(0), .. })
        })
    });
    assert_eq!(
        std::fs::read_to_string(root.join("ran.txt")).expect("ran"),
        "ran\n"
    );
    let log = std::fs::read_to_string(dir.path().join("logs/rel.log")).unwrap_or_default();
    assert!(
        !log.contains("RESOURCE"),
        "prlimit printed its table: {log}"
    );
}

/// `to` relative to `from` (both absolute).
fn pathdiff(to: &Path, from: &Path) -> std::path::PathBuf {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out = std::path::PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}
