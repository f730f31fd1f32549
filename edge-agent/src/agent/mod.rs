//! The agent's one owner loop (DESIGN §3.8; STYLE practice 5). It alone touches the store, and
//! it `select!`s over a closed set of inputs, [`Input`]: messages from the MQTT link, image
//! pulls finishing, health-probe results, a timer tick, and shutdown. Pulls and probes run as
//! separate tasks, so the loop never waits on the network.
//!
//! - `executor`: carries out the planner's actions on the runtimes and the image cache.
//! - `health`: which instance is due for a probe, and what a result does to its health.
//! - `report`: the outbox sender and the status report.
//! - `functions`: what the plan hands the function activator, and what it reports back.
//!
//! Time comes from a [`Clock`] passed in, so the timer logic is testable with paused time.

#[cfg(test)]
mod clock_tests;
mod executor;
mod functions;
mod health;
mod report;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use protocol::{
    accept_desired_state, accept_trust_update, Ack, Convergence, DesiredOutcome, DesiredState,
    Digest, EventBody, RevisionFloor, StatusReport, TrustOutcome, WorkloadName, WorkloadPhase,
    WorkloadStatus,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use executor::{stop_all, stop_workloads_on_exit, ExecError, Executor};
pub use health::{check_of, HealthScheduler, ProbeRequest, ProbeResult};
pub use report::{Publisher, Reporter};

use crate::clock::{SharedClock, SystemClock};
use crate::config::{split_addr, Config};
use crate::functions::{Activator, ActivatorEvent};
use crate::image::{BlobSource, ImageError, ImageStore, PullReport};
use crate::layout::Layout;
use crate::link::{self, LinkConfig, LinkMsg};
use crate::reconcile::{self, Observed};
use crate::runtime::{self, InstanceState};
use crate::store::{Store, StoreError};

/// Results of the loop's own tasks.
#[derive(Debug)]
pub enum Internal {
    /// An image pull finished.
    PullDone(Digest, Result<PullReport, ImageError>),
    /// A health probe finished.
    Probed(ProbeResult),
}

/// Everything the owner loop reacts to: a closed set.
#[derive(Debug)]
enum Input {
    /// A message from the MQTT link.
    Link(LinkMsg),
    /// A pull or probe task finished.
    Internal(Internal),
    /// The function activator reports.
    Function(ActivatorEvent),
    /// Time for a reconciler pass.
    Tick,
    /// Cancelled, or the link task ended.
    Shutdown,
}

/// The running agent.
pub struct Agent {
    cfg: Config,
    layout: Layout,
    clock: SharedClock,
    store: Store,
    device: protocol::DeviceId,
    executor: Executor,
    health: HealthScheduler,
    reporter: Reporter,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    desired: Option<DesiredState>,
    last_rejected: Option<Digest>,
    last_rejection: Option<String>,
    convergence: Convergence,
    phases: BTreeMap<WorkloadName, (Digest, WorkloadPhase)>,
    holds_since: HashMap<WorkloadName, u64>,
    unenforced: HashMap<WorkloadName, Vec<String>>,
    /// The last desired document received if it was rejected, re-examined after a trust change
    /// (it may be signed by a key the new trust lists); never the state held.
    last_desired: Option<Vec<u8>>,
    /// An accepted desired state, and trust update, that could not be stored (a full disk):
    /// examined again at each tick until they are stored or superseded.
    unstored_desired: Option<Vec<u8>>,
    unstored_trust: Option<Vec<u8>>,
    /// A store write was refused for a full disk (logged once, until a tick stores everything).
    disk_full: bool,
    /// Starts function instances on demand (`crate::functions`).
    functions: Activator,
    function_rx: mpsc::UnboundedReceiver<ActivatorEvent>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({})", self.device)
    }
}

impl Agent {
    /// Opens the store and the caches with the host's clock. Fails (before connecting
    /// anywhere) when the device is not enrolled or the store is damaged.
    pub fn open(cfg: Config) -> anyhow::Result<Self> {
        Self::open_with_clock(cfg, Arc::new(SystemClock))
    }

    /// [`Agent::open`] with the given clock.
    pub fn open_with_clock(cfg: Config, clock: SharedClock) -> anyhow::Result<Self> {
        let layout = Layout::new(&cfg.data_dir);
        layout
            .create_private()
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        let mut store = Store::open(&layout.db())?;
        store.set_outbox_budget(cfg.outbox_budget_bytes);
        let identity = store.identity()?;
        let images = ImageStore::open(&layout.images(), cfg.image_cache_bytes)?
            .with_delta_wait(Duration::from_secs(cfg.delta_wait_secs));
        let runtimes = runtime::open_all(&layout, cfg.log_max_bytes)?;
        std::fs::create_dir_all(layout.holds())
            .with_context(|| format!("creating {}", layout.holds().display()))?;
        let desired = store.desired_state()?;
        let (functions, function_rx) = Activator::open(&layout, cfg.log_max_bytes)?;
        let (internal_tx, internal_rx) = mpsc::channel(64);
        let blobs = BlobSource {
            base_url: cfg.hub_url.clone().unwrap_or(identity.hub_url.clone()),
            username: identity.mqtt_username.clone(),
            password: identity.mqtt_password.clone(),
        };
        let executor = Executor::new(
            runtimes,
            images,
            blobs,
            layout.holds(),
            Duration::from_secs(cfg.stop_grace_secs),
            internal_tx.clone(),
        );
        let reporter = Reporter::new(
            identity.device_id.clone(),
            Duration::from_secs(cfg.resend_secs),
            Duration::from_secs(cfg.status_interval_secs),
        );
        Ok(Self {
            device: identity.device_id.clone(),
            cfg,
            layout,
            clock,
            store,
            executor,
            health: HealthScheduler::default(),
            reporter,
            internal_tx,
            internal_rx,
            desired,
            last_rejected: None,
            last_rejection: None,
            convergence: Convergence::Idle,
            phases: BTreeMap::new(),
            holds_since: HashMap::new(),
            unenforced: HashMap::new(),
            last_desired: None,
            unstored_desired: None,
            unstored_trust: None,
            disk_full: false,
            functions,
            function_rx,
        })
    }

    fn now(&self) -> u64 {
        self.clock.unix_now()
    }

    /// Effective time: the clock, but never below the newest signed `issued_at` accepted, so a
    /// clock reset to 1970 cannot make expired documents look fresh.
    fn effective_now(&self) -> u64 {
        self.now().max(self.store.time_floor().unwrap_or(0))
    }

    fn event(&mut self, body: EventBody) -> Result<(), StoreError> {
        let now = self.now();
        self.store.event(body, now)
    }

    /// Runs until `cancel` fires. Workloads keep running after it returns.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let identity = self.store.identity()?;
        let (host, port) = match &self.cfg.mqtt_addr {
            Some(a) => split_addr(a).map_err(anyhow::Error::msg)?,
            None => (identity.mqtt_host.clone(), identity.mqtt_port),
        };
        // Presence epochs must only grow, so a start that cannot store its count (a full disk)
        // fails here, and systemd starts the agent again later.
        let boot = self
            .store
            .next_boot()
            .context("storing this start's boot counter")?;
        let link_cancel = cancel.child_token();
        let (link, mut link_rx) = link::spawn(
            LinkConfig {
                device: self.device.clone(),
                host,
                port,
                password: identity.mqtt_password.clone(),
                keep_alive: Duration::from_secs(self.cfg.keep_alive_secs),
                boot,
            },
            link_cancel.clone(),
        );
        self.functions
            .spawn(
                self.cfg.functions_listen.as_deref(),
                self.cfg.functions_bus.as_deref(),
                self.device.as_str(),
                cancel.child_token(),
            )
            .await?;
        tracing::info!(device = %self.device, "agent running");
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.tick_millis));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let input = tokio::select! {
                _ = cancel.cancelled() => Input::Shutdown,
                msg = link_rx.recv() => msg.map_or(Input::Shutdown, Input::Link),
                Some(i) = self.internal_rx.recv() => Input::Internal(i),
                Some(e) = self.function_rx.recv() => Input::Function(e),
                _ = tick.tick() => Input::Tick,
            };
            let handled = match input {
                Input::Link(m) => self.on_link(m, &link),
                Input::Internal(i) => self.on_internal(i),
                Input::Function(e) => self.on_function(e),
                Input::Tick => self.tick(&link),
                Input::Shutdown => break,
            };
            self.survive_a_full_disk(handled)?;
        }
        link_cancel.cancel();
        tokio::time::sleep(Duration::from_millis(400)).await;
        tracing::info!("agent stopped; workloads keep running");
        Ok(())
    }

    /// A store write refused for a full disk changed nothing (SQLite rolled it back): the agent
    /// carries on with what it runs, and what it could not store is done again at the next tick
    /// (passes are re-planned, documents re-examined, events held by the store). Any other
    /// error, an fsync's included, ends the loop (DESIGN §4.5).
    fn survive_a_full_disk(&mut self, handled: anyhow::Result<()>) -> anyhow::Result<()> {
        let Err(e) = handled else { return Ok(()) };
        let full = e.chain().any(|c| {
            c.downcast_ref::<StoreError>()
                .is_some_and(StoreError::is_disk_full)
        });
        if !full {
            return Err(e);
        }
        if !std::mem::replace(&mut self.disk_full, true) {
            tracing::error!(error = %e, "disk full: nothing new is stored or acted on until there is room; workloads keep running");
        }
        Ok(())
    }

    /// A timer tick: documents accepted but not stored (a full disk) are examined again; then
    /// one reconciler pass.
    fn tick(&mut self, link: &impl Publisher) -> anyhow::Result<()> {
        if let Some(t) = self.unstored_trust.take() {
            self.on_trust(&t)?;
        }
        if let Some(d) = self.unstored_desired.take() {
            self.on_desired(&d)?;
        }
        let started = std::time::Instant::now();
        self.pass(link)?;
        crate::metrics::pass(started.elapsed().as_secs_f64());
        if crate::metrics::enabled() {
            let (events, bytes) = self.store.outbox_depth()?;
            crate::metrics::outbox(events, bytes);
        }
        if std::mem::replace(&mut self.disk_full, false) {
            tracing::info!("the store accepts writes again");
        }
        Ok(())
    }

    fn on_link(&mut self, msg: LinkMsg, link: &impl Publisher) -> anyhow::Result<()> {
        match msg {
            LinkMsg::Connected => {
                tracing::info!("connected to broker");
                self.reporter.connected(&self.store, link)?;
            }
            LinkMsg::Disconnected(e) => {
                if self.reporter.disconnected() {
                    tracing::warn!(error = %e, "broker connection lost");
                }
            }
            LinkMsg::Desired(bytes) => self.on_desired(&bytes)?,
            LinkMsg::Trust(bytes) => self.on_trust(&bytes)?,
            LinkMsg::Ack(bytes) => match Ack::decode(&bytes) {
                Ok(a) => {
                    let now = self.now();
                    self.reporter.on_ack(&mut self.store, a.acked, now, link)?;
                }
                Err(e) => tracing::warn!(error = %e, "ignoring malformed ack"),
            },
        }
        Ok(())
    }

    fn reject(&mut self, bytes: &[u8], trust: bool, r: protocol::Rejection) -> anyhow::Result<()> {
        let digest = Digest::of(bytes);
        if self.last_rejected == Some(digest) {
            return Ok(()); // the same document again (retained re-delivery): reported once
        }
        self.last_rejected = Some(digest);
        tracing::warn!(code = r.code(), reason = %r, trust, "rejected a signed document");
        self.last_rejection = Some(format!("{}: {r}", r.code()));
        let (code, reason) = (r.code().into(), r.to_string());
        let body = if trust {
            EventBody::TrustRejected { code, reason }
        } else {
            EventBody::DesiredRejected { code, reason }
        };
        self.event(body)?;
        Ok(())
    }

    fn on_desired(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        // Only a rejected document is kept for a second look under the next trust: the state
        // held, signed by a key a rotation then drops, is not re-checked (it would be reported
        // `unknown_key` on every device before its re-signed copy arrives).
        self.last_desired = None;
        let trust = self.store.trust()?;
        let floor = self.store.floor()?;
        let now_eff = self.effective_now();
        match accept_desired_state(bytes, &trust, &self.device, &floor, now_eff) {
            Ok(DesiredOutcome::AlreadyHave) => Ok(()),
            Ok(DesiredOutcome::Accepted(a)) => {
                let state = a.state;
                let floor = RevisionFloor {
                    revision: state.revision,
                    payload_digest: Some(a.payload_digest),
                };
                // Invariant: the new state, its floor and the event are one transaction.
                let now = self.now();
                self.unstored_desired = Some(bytes.to_vec());
                self.store
                    .accept_desired(bytes, &floor, state.issued_at, now)?;
                self.unstored_desired = None;
                tracing::info!(revision = state.revision, "accepted desired state");
                self.desired = Some(state);
                Ok(())
            }
            Err(r) => {
                self.last_desired = Some(bytes.to_vec());
                self.reject(bytes, false, r)
            }
        }
    }

    fn on_trust(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let trust = self.store.trust()?;
        match accept_trust_update(bytes, &trust, self.effective_now()) {
            Ok(TrustOutcome::AlreadyHave) => Ok(()),
            Ok(TrustOutcome::Accepted(a)) => {
                let now = self.now();
                self.unstored_trust = Some(bytes.to_vec());
                self.store.accept_trust(
                    &a.store,
                    a.update.revision_floor,
                    a.update.issued_at,
                    now,
                )?;
                self.unstored_trust = None;
                tracing::info!(version = a.update.version, "accepted trust update");
                if let Some(d) = self.last_desired.take() {
                    self.last_rejected = None;
                    self.on_desired(&d)?;
                }
                Ok(())
            }
            Err(r) => self.reject(bytes, true, r),
        }
    }

    fn on_internal(&mut self, msg: Internal) -> anyhow::Result<()> {
        let now = self.now();
        let event = match msg {
            Internal::PullDone(digest, res) => Some(self.executor.pull_done(digest, res, now)),
            Internal::Probed(r) => self.health.on_result(&r, self.desired.as_ref(), now),
        };
        if let Some(e) = event {
            self.event(e)?;
        }
        Ok(())
    }

    /// Swaps are allowed inside the maintenance window, unless an application holds its update
    /// (a file `holds/<workload>`), for at most `max_update_hold_secs`.
    fn may_swap(&mut self, t: u64) -> bool {
        let Some(d) = &self.desired else { return true };
        if !d.may_swap_at(t) {
            return false;
        }
        let names: Vec<WorkloadName> = d.workloads.iter().map(|w| w.name.clone()).collect();
        let mut held = false;
        for n in names {
            if self.layout.holds().join(n.as_str()).exists() {
                let since = *self.holds_since.entry(n).or_insert(t);
                if t.saturating_sub(since) < self.cfg.max_update_hold_secs {
                    held = true;
                }
            } else {
                self.holds_since.remove(&n);
            }
        }
        !held
    }

    /// Starts the probes that are due as separate tasks; results come back as `Probed`.
    fn start_probes(&self, due: Vec<ProbeRequest>) {
        for req in due {
            let exec = match &req.check.probe {
                protocol::Probe::Exec { command } => {
                    self.executor
                        .exec_command(&req.instance, &req.digest, command)
                }
                _ => None,
            };
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let healthy = runtime::health::probe_with(&req.check, exec).await;
                let result = ProbeResult {
                    instance: req.instance,
                    healthy,
                };
                let _ = tx.send(Internal::Probed(result)).await;
            });
        }
    }

    fn observe(&mut self) -> anyhow::Result<Observed> {
        let instances = self.executor.list()?;
        let records = self.store.records()?;
        let mut digests: BTreeSet<Digest> = BTreeSet::new();
        if let Some(d) = &self.desired {
            digests.extend(d.workloads.iter().map(|w| w.image.digest));
        }
        for r in records.values() {
            digests.extend(r.digest);
            digests.extend(r.previous);
        }
        let images = digests
            .into_iter()
            .filter(|d| self.executor.images().rootfs(d).is_some())
            .collect();
        let t = self.now();
        // Health bookkeeping follows the running instances.
        let due = self.health.due(&instances, self.desired.as_ref(), t);
        self.start_probes(due);
        self.unenforced = instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Running { .. }))
            .map(|i| (i.name.clone(), i.unenforced.clone()))
            .collect();
        let may_swap = self.may_swap(t);
        Ok(Observed {
            instances,
            images,
            health: self.health.health(),
            records,
            may_swap,
        })
    }

    /// One reconciler pass: observe, plan, persist, act, report.
    fn pass(&mut self, link: &impl Publisher) -> anyhow::Result<()> {
        let obs = self.observe()?;
        let t = self.now();
        let plan = reconcile::plan(self.desired.as_ref(), &obs, t);
        let restarts: u32 = plan
            .records
            .iter()
            .map(|(name, r)| {
                let before = obs.records.get(name).map_or(0, |o| o.restarts);
                r.restarts.saturating_sub(before)
            })
            .sum();
        crate::metrics::restarts(u64::from(restarts));
        for d in &plan.disallowed {
            tracing::warn!(error = %d, "planner asked for a disallowed transition");
        }
        // Persist the intent and its events before acting on it.
        self.store.save_pass(&plan.records, plan.events, t)?;
        let revision = self.desired.as_ref().map(|d| d.revision).unwrap_or(0);
        for action in plan.actions {
            let now = self.now();
            for e in self.executor.execute(action, now, revision)? {
                self.event(e)?;
            }
        }
        self.serve_functions(&plan.functions);
        self.convergence = plan.convergence;
        self.phases = plan.phases;
        self.after_pass(&obs, link)?;
        Ok(())
    }

    fn after_pass(&mut self, obs: &Observed, link: &impl Publisher) -> anyhow::Result<()> {
        let t = self.now();
        if let Some(d) = self.desired.clone() {
            let applied = self.store.applied()?;
            if self.convergence == Convergence::Converged && applied != Some(d.revision) {
                self.store.mark_applied(d.revision, t)?;
                tracing::info!(revision = d.revision, "converged");
                // Keep only what the current state and a rollback need.
                let mut keep: BTreeSet<Digest> =
                    d.workloads.iter().map(|w| w.image.digest).collect();
                for r in obs.records.values() {
                    keep.extend(r.digest);
                    keep.extend(r.previous);
                }
                if let Err(e) = self.executor.images().gc(&keep) {
                    tracing::warn!(error = %e, "image cache garbage collection failed");
                }
            }
            if d.expires_at <= t && self.store.stale_reported()? != Some(d.revision) {
                self.store.mark_stale(d.revision, t)?;
            }
        }
        if self.reporter.is_connected() {
            let report = self.status()?;
            self.reporter.publish_status(report, link);
            self.reporter.flush(&self.store, link)?;
        }
        Ok(())
    }

    /// The status snapshot as it stands.
    pub fn status(&self) -> anyhow::Result<StatusReport> {
        let records = self.store.records()?;
        let workloads = self
            .phases
            .iter()
            .map(|(name, (digest, phase))| WorkloadStatus {
                name: name.clone(),
                digest: *digest,
                phase: *phase,
                restarts: records.get(name).map(|r| r.restarts).unwrap_or(0),
                unenforced: self.unenforced.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        let now = self.now();
        Ok(StatusReport {
            device: self.device.clone(),
            time: now,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            arch: protocol::Arch::host().unwrap_or(protocol::Arch::X86_64),
            runtimes: self.executor.kinds(),
            desired_revision: self.desired.as_ref().map(|d| d.revision),
            applied_revision: self.store.applied()?,
            convergence: self.convergence,
            stale: self.desired.as_ref().is_some_and(|d| d.expires_at <= now),
            trust_version: self.store.trust()?.version,
            workloads,
            events_dropped: self.store.events_dropped_total()?,
            last_rejection: self.last_rejection.clone(),
            functions: self.functions.stats(),
        })
    }
}
