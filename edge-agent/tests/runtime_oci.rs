//! The OCI runtime against Debian's runc, with a rootfs of busybox-static (both installed by
//! .ci/run). Containers get their own pid namespace and a read-only root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_agent::runtime::{InstanceState, OciRuntime, Runtime, WorkloadSpec};
use fleet_test_kit::eventually;
use protocol::{Digest, Resources, WorkloadName};

fn busybox_rootfs(dir: &Path, script: &str) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (apt-get install busybox-static)");
    std::fs::copy(bb, root.join("bin/busybox")).expect("copy busybox");
    for tool in ["sh", "sleep", "echo", "cat", "touch"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).expect("link");
    }
    std::fs::write(root.join("run.sh"), format!("#!/bin/sh\n{script}\n")).expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    root
}

fn spec(root: &Path, name: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: WorkloadName::new(name).expect("valid"),
        digest: Digest::of(name.as_bytes()),
        rootfs: root.to_path_buf(),
        command: vec!["./run.sh".into()],
        env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        resources: Resources {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
            pids: Some(32),
        },
    }
}

fn runtime(dir: &Path) -> OciRuntime {
    let runc = OciRuntime::detect().expect("runc is installed (apt-get install runc)");
    OciRuntime::new(runc, &dir.join("state"), &dir.join("logs")).expect("runtime")
}

#[test]
fn a_container_runs_in_its_own_pid_namespace_on_a_read_only_root_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = busybox_rootfs(dir.path(), "echo \"$GREETING pid $$\"\ntouch /written 2>/dev/null && echo root-writable || echo root-read-only\ntouch /tmp/ok && echo tmp-writable\nexec sleep 300");
    let rt = runtime(dir.path());
    let inst = rt.start(&spec(&root, "svc")).expect("start");
    assert!(
        matches!(inst.state, InstanceState::Running { pid, .. } if pid > 0),
        "{inst:?}"
    );
    let log = dir.path().join("logs/svc.log");
    let text = eventually(15, "output", || {
        let t = std::fs::read_to_string(&log).ok()?;
        t.contains("tmp-writable").then_some(t)
    });
    assert!(
        text.contains("hi pid 1"),
        "not in its own pid namespace: {text}"
    );
    assert!(text.contains("root-read-only"), "{text}");
    assert!(!root.join("written").exists());
    // A second runtime over the same directory (agent restart) sees the same container.
    let again = runtime(dir.path());
    let listed = again.list().expect("list");
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].state, InstanceState::Running { .. }));
    again.stop(&inst.id, Duration::from_secs(2)).expect("stop");
    let listed = again.list().expect("list");
    assert!(
        matches!(listed[0].state, InstanceState::Exited { .. }),
        "{listed:?}"
    );
    again.remove(&inst.id).expect("remove");
    assert!(again.list().expect("list").is_empty());
}

#[test]
fn a_container_that_exits_is_reported_exited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = busybox_rootfs(dir.path(), "echo bye\nexit 3");
    let rt = runtime(dir.path());
    let inst = rt.start(&spec(&root, "job")).expect("start");
    eventually(15, "exit", || {
        rt.list()
            .expect("list")
            .into_iter()
            .find(|i| i.id == inst.id && matches!(i.state, InstanceState::Exited { .. }))
    });
    rt.remove(&inst.id).expect("remove");
}

#[test]
fn the_bundle_carries_the_limits_and_host_networking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = spec(dir.path(), "svc");
    let cfg = OciRuntime::bundle_config(&s, dir.path());
    assert_eq!(cfg["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(cfg["linux"]["resources"]["pids"]["limit"], 32);
    assert_eq!(cfg["linux"]["resources"]["cpu"]["quota"], 50_000);
    assert_eq!(cfg["root"]["readonly"], true);
    assert_eq!(cfg["process"]["args"][0], "/run.sh");
    let ns: Vec<&str> = cfg["linux"]["namespaces"]
        .as_array()
        .expect("ns")
        .iter()
        .filter_map(|n| n["type"].as_str())
        .collect();
    assert!(ns.contains(&"pid") && !ns.contains(&"network"), "{ns:?}");
}
