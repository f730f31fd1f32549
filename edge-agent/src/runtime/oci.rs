//! The `oci` runtime (DESIGN §3.7): the agent writes an OCI bundle (`config.json`) for the
//! workload and drives the standard OCI runtime CLI (`runc`, or `crun` with the same verbs):
//! `run --detach`, `state`, `kill`, `delete`. No container daemon runs on the device.
//!
//! - The image tree is the container's root, read-only; `/tmp` is a private tmpfs.
//! - Namespaces: pid, mount, ipc, uts. The network namespace is the host's, so a workload's
//!   ports and its HTTP/TCP health checks are on the device's 127.0.0.1 as with `process`.
//! - Limits go into `linux.resources` (memory, pids, CPU quota), enforced by runc's cgroups.
//! - Containers outlive the agent like processes do: each is recorded in `<state>/<id>.json`
//!   and the runtime's own state lives under `<state>/runc` (`runc --root`), so a restarted
//!   agent finds exactly the containers it started, and two agents on one host never collide.
//! - runc does not keep a stopped container's exit code, so exits are reported without one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protocol::RuntimeKind;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::record::{write_atomic, RecordDir};
use super::{unix_now, Instance, InstanceState, Runtime, RuntimeError, WorkloadSpec};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    instance: Instance,
    bundle: PathBuf,
}

/// The OCI runtime.
#[derive(Debug)]
pub struct OciRuntime {
    runc: PathBuf,
    state_dir: PathBuf,
    records: RecordDir,
    logs_dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl OciRuntime {
    /// Finds the OCI runtime binary (`runc`, then `crun`) that answers `--version`.
    pub fn detect() -> Option<PathBuf> {
        ["runc", "crun"].into_iter().map(PathBuf::from).find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// A runtime driving `runc` with its records in `state_dir` and logs in `logs_dir`.
    pub fn new(runc: PathBuf, state_dir: &Path, logs_dir: &Path) -> Result<Self, RuntimeError> {
        let state_dir = std::path::absolute(state_dir).map_err(io(state_dir))?;
        std::fs::create_dir_all(state_dir.join("bundles")).map_err(io(&state_dir))?;
        std::fs::create_dir_all(state_dir.join("runc")).map_err(io(&state_dir))?;
        std::fs::create_dir_all(logs_dir).map_err(io(logs_dir))?;
        Ok(Self {
            runc,
            records: RecordDir::new(&state_dir),
            state_dir,
            logs_dir: logs_dir.to_path_buf(),
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.runc);
        c.arg("--root").arg(self.state_dir.join("runc"));
        c
    }

    fn save(&self, rec: &Record) -> Result<(), RuntimeError> {
        self.records.save(&rec.instance.id, rec)
    }

    fn load(&self, id: &str) -> Option<Record> {
        self.records.load(id)
    }

    /// `(status, pid)` as runc reports them; `None` when runc does not know the container.
    fn state(&self, id: &str) -> Option<(String, u32)> {
        let out = self
            .cmd()
            .args(["state", id])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some((
            v["status"].as_str().unwrap_or_default().to_string(),
            v["pid"].as_u64().unwrap_or(0) as u32,
        ))
    }

    fn refresh(&self, rec: &mut Record) -> bool {
        if !matches!(rec.instance.state, InstanceState::Running { .. }) {
            return false;
        }
        match self.state(&rec.instance.id) {
            Some((s, _)) if s == "running" || s == "created" || s == "paused" => false,
            _ => {
                rec.instance.state = InstanceState::Exited {
                    code: None,
                    signal: None,
                    at: unix_now(),
                };
                true
            }
        }
    }

    /// The bundle's `config.json` for a workload.
    pub fn bundle_config(spec: &WorkloadSpec, rootfs: &Path) -> serde_json::Value {
        let mut args = spec.command.clone();
        if let Some(first) = args.first_mut() {
            if !first.starts_with('/') {
                *first = format!("/{}", first.trim_start_matches("./"));
            }
        }
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("FLEET_WORKLOAD={}", spec.name),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
        if let Some(m) = spec.resources.memory_bytes {
            resources["memory"] = json!({"limit": m});
        }
        if let Some(p) = spec.resources.pids {
            resources["pids"] = json!({"limit": p});
        }
        if let Some(c) = spec.resources.cpu_millis {
            resources["cpu"] = json!({"quota": u64::from(c) * 100, "period": 100_000});
        }
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": env,
                "cwd": "/",
                "noNewPrivileges": true,
                "capabilities": {
                    "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                    "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                    "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
            },
            "root": {"path": rootfs, "readonly": true},
            "hostname": spec.name.as_str(),
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "resources": resources,
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        })
    }
}

impl Runtime for OciRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Oci
    }

    /// Exec health checks run inside the container (`runc exec`).
    fn exec_command(&self, id: &str, _rootfs: &Path, argv: &[String]) -> Command {
        let mut c = self.cmd();
        c.args(["exec", id]).args(argv);
        c
    }

    fn start(&self, spec: &WorkloadSpec) -> Result<Instance, RuntimeError> {
        let fail = |detail: String| RuntimeError::Start {
            name: spec.name.to_string(),
            detail,
        };
        let rootfs = std::path::absolute(&spec.rootfs).map_err(|e| fail(format!("rootfs: {e}")))?;
        let id = super::new_instance_id(&spec.name, &spec.digest);
        let bundle = self.state_dir.join("bundles").join(&id);
        std::fs::create_dir_all(&bundle).map_err(io(&bundle))?;
        let config =
            serde_json::to_vec_pretty(&Self::bundle_config(spec, &rootfs)).unwrap_or_default();
        write_atomic(&bundle.join("config.json"), &config).map_err(io(&bundle))?;
        let log = self.logs_dir.join(format!("{}.log", spec.name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        // Record first: a crash right after `run` must not leave a container nobody knows.
        let mut rec = Record {
            instance: Instance {
                id: id.clone(),
                name: spec.name.clone(),
                digest: spec.digest,
                state: InstanceState::Running {
                    pid: 0,
                    started_at: unix_now(),
                },
                unenforced: Vec::new(),
            },
            bundle: bundle.clone(),
        };
        self.save(&rec)?;
        let status = self
            .cmd()
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| fail(format!("{}: {e}", self.runc.display())))?;
        if !status.success() {
            rec.instance.state = InstanceState::Exited {
                code: None,
                signal: None,
                at: unix_now(),
            };
            self.save(&rec)?;
            return Err(fail(format!(
                "{} run exited with {status}; see {}",
                self.runc.display(),
                log.display()
            )));
        }
        let pid = self.state(&id).map(|(_, p)| p).unwrap_or(0);
        rec.instance.state = InstanceState::Running {
            pid,
            started_at: unix_now(),
        };
        self.save(&rec)?;
        Ok(rec.instance)
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some(mut rec) = self.load(id) else {
            return Ok(());
        };
        if !self.refresh(&mut rec) {
            let _ = self
                .cmd()
                .args(["kill", id, "TERM"])
                .stderr(Stdio::null())
                .status();
            let until = Instant::now() + grace;
            while Instant::now() < until && !self.refresh(&mut rec) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(rec.instance.state, InstanceState::Running { .. }) {
                let _ = self
                    .cmd()
                    .args(["kill", "--all", id, "KILL"])
                    .stderr(Stdio::null())
                    .status();
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until && !self.refresh(&mut rec) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = self
            .cmd()
            .args(["delete", "--force", id])
            .stderr(Stdio::null())
            .status();
        self.save(&rec)
    }

    fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        let mut out = Vec::new();
        // An unreadable record is skipped: its container, if any, is not this agent's to judge.
        for mut rec in self.records.load_all::<Record>()?.records {
            if self.refresh(&mut rec) {
                let _ = self
                    .cmd()
                    .args(["delete", "--force", &rec.instance.id])
                    .stderr(Stdio::null())
                    .status();
                self.save(&rec)?;
            }
            out.push(rec.instance);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(rec) = self.load(id) {
            if matches!(rec.instance.state, InstanceState::Running { .. }) {
                self.stop(id, Duration::from_secs(1))?;
            }
            let _ = self
                .cmd()
                .args(["delete", "--force", id])
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&rec.bundle);
        }
        self.records.remove(id)
    }
}
