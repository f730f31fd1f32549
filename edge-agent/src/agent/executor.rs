//! The executor: carries out the planner's actions on the runtimes and the image cache, and
//! turns what happened into events for the owner loop to persist.
//!
//! Pulls run as separate tasks (the loop never waits on the network); their completion comes
//! back to the owner loop as [`Internal::PullDone`] and is turned into an event by
//! [`Executor::pull_done`], which also schedules the retry of a failed pull (2 s doubling to
//! 5 min).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::{Digest, EventBody, RuntimeKind};
use tokio::sync::mpsc;

use super::Internal;
use crate::image::{BlobSource, ImageError, ImageStore, PullReport};
use crate::layout::Layout;
use crate::reconcile::Action;
use crate::runtime::{Instance, Runtime, RuntimeError, WorkloadSpec};

/// Executor failures, each naming its subject.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The runtimes could not be opened.
    #[error("opening the runtimes: {0}")]
    Open(RuntimeError),
    /// A runtime could not list its instances.
    #[error("listing {kind} instances: {source}")]
    List {
        /// The runtime.
        kind: &'static str,
        /// Cause.
        source: RuntimeError,
    },
    /// An instance could not be stopped.
    #[error("stopping instance {id}: {source}")]
    Stop {
        /// The instance.
        id: String,
        /// Cause.
        source: RuntimeError,
    },
    /// An exited instance could not be forgotten.
    #[error("removing instance {id}: {source}")]
    Remove {
        /// The instance.
        id: String,
        /// Cause.
        source: RuntimeError,
    },
}

/// Runs actions. Owned by the owner loop.
pub struct Executor {
    /// The runtimes this host has (process always; oci when runc or crun is found).
    runtimes: Vec<Arc<dyn Runtime>>,
    /// Which runtime owns each instance id, as last listed.
    owner: HashMap<String, usize>,
    images: ImageStore,
    blobs: BlobSource,
    holds_dir: PathBuf,
    stop_grace: Duration,
    pulls_in_flight: HashSet<Digest>,
    /// Per digest: earliest retry (unix seconds) and failures so far.
    pull_retry_at: HashMap<Digest, (u64, u32)>,
    done_tx: mpsc::Sender<Internal>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("runtimes", &self.kinds())
            .field("pulls_in_flight", &self.pulls_in_flight)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// An executor over `runtimes`; completed pulls are sent to `done_tx`.
    pub fn new(
        runtimes: Vec<Arc<dyn Runtime>>,
        images: ImageStore,
        blobs: BlobSource,
        holds_dir: PathBuf,
        stop_grace: Duration,
        done_tx: mpsc::Sender<Internal>,
    ) -> Self {
        Self {
            runtimes,
            owner: HashMap::new(),
            images,
            blobs,
            holds_dir,
            stop_grace,
            pulls_in_flight: HashSet::new(),
            pull_retry_at: HashMap::new(),
            done_tx,
        }
    }

    /// The runtimes available.
    pub fn kinds(&self) -> Vec<RuntimeKind> {
        self.runtimes.iter().map(|r| r.kind()).collect()
    }

    /// The image cache.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Every instance of every runtime; remembers which runtime owns which.
    pub fn list(&mut self) -> Result<Vec<Instance>, ExecError> {
        let mut instances = Vec::new();
        self.owner.clear();
        for (i, rt) in self.runtimes.iter().enumerate() {
            let listed = rt.list().map_err(|source| ExecError::List {
                kind: rt.kind().as_str(),
                source,
            })?;
            for inst in listed {
                self.owner.insert(inst.id.clone(), i);
                instances.push(inst);
            }
        }
        Ok(instances)
    }

    fn runtime_of(&self, id: &str) -> Option<&Arc<dyn Runtime>> {
        self.owner.get(id).and_then(|i| self.runtimes.get(*i))
    }

    /// The command that runs an exec probe for instance `id` (inside its container for `oci`),
    /// or `None` when no runtime knows the instance.
    pub fn exec_command(
        &self,
        id: &str,
        digest: &Digest,
        argv: &[String],
    ) -> Option<std::process::Command> {
        let rootfs = self.images.rootfs(digest).unwrap_or_default();
        Some(self.runtime_of(id)?.exec_command(id, &rootfs, argv))
    }

    /// Carries out one action at `now`; returns the events it produced. `revision` is the
    /// desired state's, for failure reports.
    pub fn execute(
        &mut self,
        action: Action,
        now: u64,
        revision: u64,
    ) -> Result<Vec<EventBody>, ExecError> {
        let mut events = Vec::new();
        match action {
            Action::Pull { image, base } => {
                let d = image.digest;
                let retry_ok = self.pull_retry_at.get(&d).is_none_or(|(at, _)| now >= *at);
                if !self.pulls_in_flight.contains(&d) && retry_ok {
                    self.pulls_in_flight.insert(d);
                    let images = self.images.clone();
                    let src = self.blobs.clone();
                    let tx = self.done_tx.clone();
                    tokio::spawn(async move {
                        let r = images.pull(&src, &image, base.as_ref()).await;
                        let _ = tx.send(Internal::PullDone(d, r)).await;
                    });
                }
            }
            Action::Start { workload, digest } => {
                let Some(rootfs) = self.images.rootfs(&digest) else {
                    return Ok(events); // not here yet: the next pass pulls it
                };
                // The workload learns where its update hold lives (DESIGN: application holds).
                let mut env = workload.env.clone();
                env.insert(
                    "FLEET_UPDATE_HOLD".into(),
                    self.holds_dir
                        .join(workload.name.as_str())
                        .display()
                        .to_string(),
                );
                let spec = WorkloadSpec {
                    name: workload.name.clone(),
                    digest,
                    rootfs,
                    command: workload.command.clone(),
                    env,
                    resources: workload.resources,
                };
                let Some(rt) = self.runtimes.iter().find(|r| r.kind() == workload.runtime) else {
                    events.push(EventBody::UpdateFailed {
                        revision,
                        workload: Some(spec.name.clone()),
                        reason: format!(
                            "runtime {} is not available on this device",
                            workload.runtime.as_str()
                        ),
                    });
                    return Ok(events);
                };
                match rt.start(&spec) {
                    Ok(inst) => {
                        tracing::info!(workload = %spec.name, %digest, id = %inst.id, "started");
                        events.push(EventBody::WorkloadStarted {
                            workload: spec.name.clone(),
                            digest,
                        });
                        for u in inst.unenforced {
                            events.push(EventBody::LimitUnenforced {
                                workload: spec.name.clone(),
                                detail: u,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "start failed");
                        events.push(EventBody::UpdateFailed {
                            revision,
                            workload: Some(spec.name.clone()),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            Action::Stop(id) => {
                if let Some(rt) = self.runtime_of(&id) {
                    rt.stop(&id, self.stop_grace)
                        .map_err(|source| ExecError::Stop { id, source })?;
                }
            }
            Action::Remove(id) => {
                if let Some(rt) = self.runtime_of(&id) {
                    rt.remove(&id)
                        .map_err(|source| ExecError::Remove { id, source })?;
                }
            }
        }
        Ok(events)
    }

    /// A pull finished at `now`: the event to report, and on failure the next retry time.
    pub fn pull_done(
        &mut self,
        digest: Digest,
        res: Result<PullReport, ImageError>,
        now: u64,
    ) -> EventBody {
        self.pulls_in_flight.remove(&digest);
        match res {
            Ok(rep) => {
                self.pull_retry_at.remove(&digest);
                EventBody::ImagePulled {
                    digest,
                    bytes_fetched: rep.bytes_fetched,
                    delta: rep.delta,
                    base: rep.base,
                    bytes_saved: rep.bytes_saved,
                    fallback: rep.fallback,
                }
            }
            Err(e) => {
                let (_, n) = self.pull_retry_at.get(&digest).copied().unwrap_or((0, 0));
                let wait = (2u64 << n.min(8)).min(300);
                self.pull_retry_at.insert(digest, (now + wait, n + 1));
                tracing::warn!(%digest, error = %e, class = e.class(), "image pull failed");
                EventBody::ImagePullFailed {
                    digest,
                    error: format!("{}: {e}", e.class()),
                }
            }
        }
    }
}

/// What `run --stop-workloads-on-exit` does when the agent stops: stops and forgets every
/// workload instance under `layout`; returns how many.
pub fn stop_workloads_on_exit(
    layout: &Layout,
    log_max_bytes: u64,
    grace: Duration,
) -> Result<usize, ExecError> {
    // Every runtime the agent may have started workloads with, not only `process`.
    let runtimes = crate::runtime::open_all(layout, log_max_bytes).map_err(ExecError::Open)?;
    stop_all(&runtimes, grace)
}

/// Stops and forgets every instance of every runtime given.
pub fn stop_all(runtimes: &[Arc<dyn Runtime>], grace: Duration) -> Result<usize, ExecError> {
    let mut stopped = 0;
    for rt in runtimes {
        let listed = rt.list().map_err(|source| ExecError::List {
            kind: rt.kind().as_str(),
            source,
        })?;
        for i in listed {
            rt.stop(&i.id, grace).map_err(|source| ExecError::Stop {
                id: i.id.clone(),
                source,
            })?;
            rt.remove(&i.id).map_err(|source| ExecError::Remove {
                id: i.id.clone(),
                source,
            })?;
            stopped += 1;
        }
    }
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use protocol::{Resources, WorkloadName};

    use super::*;
    use crate::runtime::{InstanceState, OciRuntime, ProcessRuntime};

    /// A rootfs of busybox-static whose `run.sh` sleeps.
    fn sleeper_rootfs(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let root = dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        let bb = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static is installed (apt-get install busybox-static)");
        std::fs::copy(bb, root.join("bin/busybox")).expect("copy busybox");
        for tool in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(tool)).expect("link");
        }
        std::fs::write(root.join("run.sh"), "#!/bin/sh\nexec sleep 300\n").expect("script");
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
            env: BTreeMap::new(),
            resources: Resources::default(),
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn a_failed_pull_is_retried_only_after_its_backoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = ImageStore::open(&dir.path().join("images"), 1 << 20).expect("images");
        // Nothing listens on port 1: every pull fails to connect.
        let blobs = BlobSource {
            base_url: "http://127.0.0.1:1".into(),
            username: "gw-1".into(),
            password: "pw".into(),
        };
        let (tx, mut rx) = mpsc::channel(8);
        let mut ex = Executor::new(
            vec![],
            images,
            blobs,
            dir.path().join("holds"),
            Duration::from_secs(1),
            tx,
        );
        let image = protocol::ImageRef {
            digest: Digest::from_bytes([7; 32]),
            size: 10,
            arch: protocol::Arch::X86_64,
        };
        let pull = || Action::Pull {
            image: image.clone(),
            base: None,
        };
        ex.execute(pull(), 100, 1).expect("pull");
        ex.execute(pull(), 100, 1).expect("pull again");
        let Some(Internal::PullDone(d, res)) = rx.recv().await else {
            panic!("no pull result");
        };
        let ev = ex.pull_done(d, res, 100);
        assert!(matches!(ev, EventBody::ImagePullFailed { .. }), "{ev:?}");
        assert!(rx.try_recv().is_err(), "one pull in flight, not two");
        ex.execute(pull(), 101, 1).expect("pull inside the backoff");
        assert!(ex.pulls_in_flight.is_empty(), "retried inside the backoff");
        ex.execute(pull(), 102, 1).expect("pull after the backoff");
        assert!(ex.pulls_in_flight.contains(&d), "not retried after 2 s");
        assert!(rx.recv().await.is_some());
    }

    #[test]
    fn stopping_workloads_on_exit_stops_process_and_oci_workloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        let root = sleeper_rootfs(dir.path());
        let process = ProcessRuntime::new(&layout.runtime(), &layout.logs(), 1 << 20)
            .expect("process runtime");
        let runc = OciRuntime::detect().expect("runc is installed (apt-get install runc)");
        let oci = OciRuntime::new(runc, &layout.oci(), &layout.logs()).expect("oci runtime");
        let mut pids = Vec::new();
        for inst in [
            process.start(&spec(&root, "proc")).expect("start process"),
            oci.start(&spec(&root, "box")).expect("start container"),
        ] {
            let InstanceState::Running { pid, .. } = inst.state else {
                panic!("not running: {inst:?}");
            };
            pids.push(pid);
        }

        let stopped = stop_workloads_on_exit(&layout, 1 << 20, Duration::from_secs(2))
            .expect("stop workloads");

        let left: Vec<String> = [&process as &dyn Runtime, &oci]
            .iter()
            .flat_map(|rt| rt.list().expect("list"))
            .map(|i| i.id)
            .collect();
        // Clean up before asserting, so a failure leaves no container behind.
        let _ = stop_all(&[Arc::new(oci), Arc::new(process)], Duration::from_secs(1));
        assert_eq!(stopped, 2, "left running: {left:?}");
        assert!(left.is_empty(), "left running: {left:?}");
        assert!(
            pids.iter().all(|p| !alive(*p)),
            "a workload process survived"
        );
    }
}
