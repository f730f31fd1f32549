//! Resource limits through cgroups, v2 (unified) or v1 (per-controller hierarchies), whichever
//! the host mounts writable. Anything that cannot be enforced is named, never silently skipped.

use std::path::{Path, PathBuf};

use protocol::Resources;

/// A created cgroup (one directory per controller on v1).
#[derive(Debug, Clone, Default)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

const ROOT: &str = "/sys/fs/cgroup";

fn writable_dir(p: &Path) -> bool {
    p.join("cgroup.procs").exists()
        && std::fs::metadata(p)
            .map(|m| !m.permissions().readonly())
            .unwrap_or(false)
}

fn write(dir: &Path, file: &str, value: &str, unenforced: &mut Vec<String>, what: &str) -> bool {
    match std::fs::write(dir.join(file), value) {
        Ok(()) => true,
        Err(e) => {
            unenforced.push(format!(
                "{what}: cannot write {}/{file}: {e}",
                dir.display()
            ));
            false
        }
    }
}

/// Creates `<root>/<group>/<instance>` cgroups, applies the limits and moves `pid` in.
/// Returns the cgroup and the list of limits that could not be enforced, with reasons.
pub fn apply(group: &str, instance: &str, res: &Resources, pid: u32) -> (Cgroup, Vec<String>) {
    let mut unenforced = Vec::new();
    if res.cpu_millis.is_none() && res.memory_bytes.is_none() && res.pids.is_none() {
        return (Cgroup::default(), unenforced);
    }
    let root = Path::new(ROOT);
    let unified = root.join("cgroup.controllers").exists();
    let mut cg = Cgroup::default();
    let mut make = |base: PathBuf, unenforced: &mut Vec<String>, what: &str| -> Option<PathBuf> {
        if !writable_dir(&base) {
            unenforced.push(format!("{what}: no writable cgroup at {}", base.display()));
            return None;
        }
        let dir = base.join(group).join(instance);
        match std::fs::create_dir_all(&dir) {
            Ok(()) => {
                cg.dirs.push(dir.clone());
                Some(dir)
            }
            Err(e) => {
                unenforced.push(format!("{what}: cannot create {}: {e}", dir.display()));
                None
            }
        }
    };
    if unified {
        if let Some(d) = make(root.to_path_buf(), &mut unenforced, "cgroup v2") {
            let _ = std::fs::write(
                root.join(group).join("cgroup.subtree_control"),
                "+memory +pids +cpu",
            );
            if let Some(m) = res.memory_bytes {
                write(&d, "memory.max", &m.to_string(), &mut unenforced, "memory");
            }
            if let Some(p) = res.pids {
                write(&d, "pids.max", &p.to_string(), &mut unenforced, "pids");
            }
            if let Some(c) = res.cpu_millis {
                let quota = u64::from(c) * 100;
                write(
                    &d,
                    "cpu.max",
                    &format!("{quota} 100000"),
                    &mut unenforced,
                    "cpu",
                );
            }
            write(
                &d,
                "cgroup.procs",
                &pid.to_string(),
                &mut unenforced,
                "cgroup v2",
            );
        }
    } else {
        let v1 = [
            (
                "memory",
                res.memory_bytes
                    .map(|m| vec![("memory.limit_in_bytes", m.to_string())]),
            ),
            ("pids", res.pids.map(|p| vec![("pids.max", p.to_string())])),
            (
                "cpu",
                res.cpu_millis.map(|c| {
                    vec![
                        ("cpu.cfs_period_us", "100000".to_string()),
                        ("cpu.cfs_quota_us", (u64::from(c) * 100).to_string()),
                    ]
                }),
            ),
        ];
        for (ctrl, settings) in v1 {
            let Some(settings) = settings else { continue };
            if let Some(d) = make(root.join(ctrl), &mut unenforced, ctrl) {
                let mut ok = true;
                for (file, value) in settings {
                    ok &= write(&d, file, &value, &mut unenforced, ctrl);
                }
                if ok {
                    write(&d, "cgroup.procs", &pid.to_string(), &mut unenforced, ctrl);
                }
            }
        }
    }
    (cg, unenforced)
}

impl Cgroup {
    /// Removes the cgroup directories (they must be empty: call after the processes are gone).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Directories (for tests and diagnostics).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Rebuilds the handle from known directories (after an agent restart).
    pub fn from_dirs(dirs: Vec<PathBuf>) -> Self {
        Self { dirs }
    }
}
