//! The `process` runtime: the entrypoint runs as a host process with the unpacked image as its
//! working directory (a relative `command[0]` resolves inside the image; an absolute one is the
//! host's — this is a process runtime, not a container).
//!
//! - Each instance gets its own process group, so `stop` reaches its children too.
//! - Limits: `prlimit(1)` sets RLIMIT_NPROC (pids) and RLIMIT_AS (memory) on exec, and cgroups
//!   enforce memory, pids and CPU where the host allows; what is not enforced is reported.
//! - stdout and stderr go to `<logs>/<name>.log` (O_APPEND), rotated by copy-truncate to
//!   `.log.1` when they pass the size bound.
//! - Instances outlive the agent. Each is recorded in `<state>/<id>.json` (pid plus the kernel's
//!   start time of that pid, so a reused pid is never mistaken for the workload); a new
//!   `ProcessRuntime` over the same directory re-adopts what still runs and reports the rest as
//!   exited — no duplicates, no orphans.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use protocol::RuntimeKind;
use serde::{Deserialize, Serialize};

use super::record::RecordDir;
use super::{cgroup, unix_now, Instance, InstanceState, Runtime, RuntimeError, WorkloadSpec};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    instance: Instance,
    /// Field 22 of /proc/<pid>/stat at start.
    proc_start: u64,
    cgroups: Vec<PathBuf>,
}

/// The process runtime.
#[derive(Debug)]
pub struct ProcessRuntime {
    records: RecordDir,
    logs_dir: PathBuf,
    log_max_bytes: u64,
    cgroup_group: String,
    /// Children started by this agent process, for reaping exit codes. A std Mutex: never held
    /// across an await (the trait is synchronous).
    children: Mutex<HashMap<String, Child>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The kernel's start time (clock ticks since boot) of `pid`, if it is alive.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); field 22 is index 19. A zombie counts as gone.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl ProcessRuntime {
    /// A runtime keeping instance records in `state_dir` and logs in `logs_dir`.
    pub fn new(
        state_dir: &Path,
        logs_dir: &Path,
        log_max_bytes: u64,
    ) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
        std::fs::create_dir_all(logs_dir).map_err(io(logs_dir))?;
        // One cgroup parent per agent data directory, so two agents on a host never collide.
        let tag = protocol::Digest::of(state_dir.to_string_lossy().as_bytes()).hex();
        Ok(Self {
            records: RecordDir::new(state_dir),
            logs_dir: logs_dir.to_path_buf(),
            log_max_bytes,
            cgroup_group: format!("fleet-{}", &tag[..12]),
            children: Mutex::new(HashMap::new()),
        })
    }

    fn save(&self, rec: &Record) -> Result<(), RuntimeError> {
        self.records.save(&rec.instance.id, rec)
    }

    fn load_all(&self) -> Result<Vec<Record>, RuntimeError> {
        let loaded = self.records.load_all::<Record>()?;
        for p in loaded.unreadable {
            tracing::warn!(path = %p.display(), "unreadable instance record removed");
            let _ = std::fs::remove_file(&p);
        }
        let mut out = loaded.records;
        out.sort_by(|a, b| a.instance.id.cmp(&b.instance.id));
        Ok(out)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs_dir.join(format!("{name}.log"))
    }

    fn rotate_log(&self, name: &str) {
        let path = self.log_path(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            return;
        };
        if meta.len() <= self.log_max_bytes {
            return;
        }
        let old = self.logs_dir.join(format!("{name}.log.1"));
        if std::fs::copy(&path, &old).is_ok() {
            if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                let _ = f.set_len(0);
            }
        }
    }

    /// Refreshes one record: reaps our child or checks /proc for an adopted process.
    fn refresh(&self, rec: &mut Record) -> bool {
        let InstanceState::Running { pid, .. } = rec.instance.state else {
            return false;
        };
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = children.get_mut(&rec.instance.id) {
            match child.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    children.remove(&rec.instance.id);
                    rec.instance.state = InstanceState::Exited {
                        code: status.code(),
                        signal: status.signal(),
                        at: unix_now(),
                    };
                    return true;
                }
                Ok(None) => return false,
                Err(_) => {}
            }
        }
        if proc_start_time(pid) != Some(rec.proc_start) {
            rec.instance.state = InstanceState::Exited {
                code: None,
                signal: None,
                at: unix_now(),
            };
            return true;
        }
        false
    }
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn start(&self, spec: &WorkloadSpec) -> Result<Instance, RuntimeError> {
        let fail = |detail: String| RuntimeError::Start {
            name: spec.name.to_string(),
            detail,
        };
        let Some(cmd0) = spec.command.first() else {
            return Err(fail("empty command".into()));
        };
        // The working directory changes to the rootfs, so a relative program path must be
        // made absolute first or it would resolve against the new directory.
        let rootfs =
            std::path::absolute(&spec.rootfs).map_err(|e| fail(format!("rootfs path: {e}")))?;
        let program = if Path::new(cmd0).is_absolute() {
            PathBuf::from(cmd0)
        } else {
            rootfs.join(cmd0)
        };
        let log = self.log_path(spec.name.as_str());
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        let mut limits = Vec::new();
        if let Some(p) = spec.resources.pids {
            limits.push(format!("--nproc={p}"));
        }
        if let Some(m) = spec.resources.memory_bytes {
            limits.push(format!("--as={m}"));
        }
        // prlimit(1) sets the rlimits and execs the program (same pid); without limits the
        // program runs directly.
        let mut cmd = if limits.is_empty() {
            Command::new(&program)
        } else {
            let mut c = Command::new("prlimit");
            c.args(&limits).arg("--").arg(&program);
            c
        };
        cmd.args(&spec.command[1..]);
        cmd.current_dir(&rootfs)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("FLEET_WORKLOAD", spec.name.as_str())
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .map_err(|e| fail(format!("spawn {}: {e}", program.display())))?;
        let pid = child.id();
        let id = super::new_instance_id(&spec.name, &spec.digest);
        let (cg, mut unenforced) = cgroup::apply(&self.cgroup_group, &id, &spec.resources, pid);
        if unenforced.is_empty() && (spec.resources.cpu_millis.is_some()) && cg.dirs().is_empty() {
            unenforced.push("cpu: no cgroup available".into());
        }
        // Retry briefly: /proc/<pid>/stat exists as soon as fork returns.
        let proc_start = proc_start_time(pid).unwrap_or(0);
        let instance = Instance {
            id: id.clone(),
            name: spec.name.clone(),
            digest: spec.digest,
            state: InstanceState::Running {
                pid,
                started_at: unix_now(),
            },
            unenforced,
        };
        self.save(&Record {
            instance: instance.clone(),
            proc_start,
            cgroups: cg.dirs().to_vec(),
        })?;
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, child);
        Ok(instance)
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let path = self.records.path(id);
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(()); // already gone: stop is idempotent
        };
        let mut rec: Record = serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        self.refresh(&mut rec);
        if let InstanceState::Running { pid, .. } = rec.instance.state {
            let pg = Pid::from_raw(pid as i32);
            let _ = killpg(pg, Signal::SIGTERM);
            let until = Instant::now() + grace;
            while Instant::now() < until {
                if self.refresh(&mut rec) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(rec.instance.state, InstanceState::Running { .. }) {
                let _ = killpg(pg, Signal::SIGKILL);
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until && !self.refresh(&mut rec) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // Children that left the group are still in the workload's cgroup; the group kill
            // above covers the common case.
            let _ = killpg(pg, Signal::SIGKILL);
        }
        cgroup::Cgroup::from_dirs(rec.cgroups.clone()).remove();
        self.save(&rec)
    }

    fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        let mut out = Vec::new();
        for mut rec in self.load_all()? {
            if self.refresh(&mut rec) {
                self.save(&rec)?;
            }
            self.rotate_log(rec.instance.name.as_str());
            out.push(rec.instance);
        }
        Ok(out)
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let path = self.records.path(id);
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(mut rec) = serde_json::from_slice::<Record>(&bytes) {
                self.refresh(&mut rec);
                if matches!(rec.instance.state, InstanceState::Running { .. }) {
                    self.stop(id, Duration::from_secs(1))?;
                }
                cgroup::Cgroup::from_dirs(rec.cgroups).remove();
            }
        }
        self.records.remove(id)
    }
}
