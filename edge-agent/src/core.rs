//! The agent's one owner loop (DESIGN §3.8; STYLE practice 5): it alone touches the store and
//! the runtime, and `select!`s over a closed set of inputs — messages from the MQTT link, image
//! pulls finishing, health probe results, a timer, and shutdown. Pulls and probes run as
//! separate tasks, so the loop never waits on the network.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use protocol::{
    accept_desired_state, accept_trust_update, Ack, Channel, Convergence, DesiredOutcome,
    DesiredState, Digest, Envelope, EventBatch, EventBody, RevisionFloor, StatusReport,
    TrustOutcome, WorkloadName, WorkloadStatus,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{split_addr, Config};
use crate::image::{BlobSource, ImageError, ImageStore, PullReport};
use crate::link::{self, Link, LinkConfig, LinkMsg};
use crate::outbox;
use crate::reconcile::{self, Action, Observed, Record};
use crate::runtime::{unix_now, InstanceState, OciRuntime, ProcessRuntime, Runtime, WorkloadSpec};
use crate::store::{get_json, put_json, put_raw, Store, StoreError};

/// Inputs of the loop other than the link.
#[derive(Debug)]
enum Internal {
    PullDone(Digest, Result<PullReport, ImageError>),
    Probed(String, bool),
}

#[derive(Debug, Default)]
struct Health {
    /// Failures before this instant do not count (the check's start period).
    grace_until: u64,
    next_probe_at: u64,
    failures: u32,
    healthy: Option<bool>,
    in_flight: bool,
}

/// The running agent.
pub struct Agent {
    cfg: Config,
    store: Store,
    device: protocol::DeviceId,
    images: ImageStore,
    /// The runtimes this host has (process always; oci when runc or crun is found).
    runtimes: Vec<Arc<dyn Runtime>>,
    /// Which runtime owns each instance id, as last listed.
    owner: HashMap<String, usize>,
    blobs: BlobSource,
    desired: Option<DesiredState>,
    health: HashMap<String, Health>,
    pulls_in_flight: HashSet<Digest>,
    pull_retry_at: HashMap<Digest, (u64, u32)>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    connected: bool,
    inflight_upto: u64,
    last_send: Option<Instant>,
    last_status: Option<(StatusReport, Instant)>,
    last_rejected: Option<Digest>,
    last_rejection: Option<String>,
    convergence: Convergence,
    phases: BTreeMap<WorkloadName, (Digest, protocol::WorkloadPhase)>,
    holds_since: HashMap<WorkloadName, u64>,
    unenforced: HashMap<WorkloadName, Vec<String>>,
    /// The last desired document received, re-examined after a trust change (it may be signed
    /// by a key the new trust lists).
    last_desired: Option<Vec<u8>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({})", self.device)
    }
}

fn now() -> u64 {
    unix_now()
}

/// Directory layout under the data dir.
pub fn images_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("images")
}
/// Runtime instance records.
pub fn runtime_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("runtime")
}

/// OCI bundles, records and runc's own state.
pub fn oci_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("runtime-oci")
}

/// The runtimes available on this host: `process` always, `oci` when an OCI runtime CLI is found.
pub fn open_runtimes(cfg: &Config) -> anyhow::Result<Vec<Arc<dyn Runtime>>> {
    let mut out: Vec<Arc<dyn Runtime>> = vec![Arc::new(ProcessRuntime::new(
        &runtime_dir(cfg),
        &logs_dir(cfg),
        cfg.log_max_bytes,
    )?)];
    if let Some(runc) = OciRuntime::detect() {
        out.push(Arc::new(OciRuntime::new(
            runc,
            &oci_dir(cfg),
            &logs_dir(cfg),
        )?));
    }
    Ok(out)
}
/// Workload logs.
pub fn logs_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("logs")
}
/// Application update holds: a workload creates `holds/<name>` to defer its own swap.
pub fn holds_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("holds")
}

/// Loads the persisted per-workload records.
pub fn load_records(store: &Store) -> Result<BTreeMap<WorkloadName, Record>, StoreError> {
    let mut stmt = store.conn().prepare("SELECT name, state FROM workloads")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (name, state) = row?;
        let name = WorkloadName::new(name).map_err(|e| StoreError::Decode {
            key: "workloads".into(),
            detail: e.to_string(),
        })?;
        let rec: Record = serde_json::from_str(&state).map_err(|e| StoreError::Decode {
            key: "workloads".into(),
            detail: e.to_string(),
        })?;
        out.insert(name, rec);
    }
    Ok(out)
}

/// The accepted desired state, decoded from the stored envelope.
pub fn load_desired(store: &Store) -> Result<Option<DesiredState>, StoreError> {
    let Some(bytes) = store.desired_envelope()? else {
        return Ok(None);
    };
    let env = Envelope::decode(&bytes).map_err(|e| StoreError::Decode {
        key: "desired".into(),
        detail: e.to_string(),
    })?;
    serde_json::from_slice(&env.payload)
        .map(Some)
        .map_err(|e| StoreError::Decode {
            key: "desired".into(),
            detail: e.to_string(),
        })
}

impl Agent {
    /// Opens the store and the caches. Fails (before connecting anywhere) when the device is
    /// not enrolled or the store is damaged.
    pub fn open(cfg: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        let store = Store::open(&cfg.db_path())?;
        let identity = store.identity()?;
        let images = ImageStore::open(&images_dir(&cfg), cfg.image_cache_bytes)?;
        let runtimes = open_runtimes(&cfg)?;
        std::fs::create_dir_all(holds_dir(&cfg))?;
        let desired = load_desired(&store)?;
        let (internal_tx, internal_rx) = mpsc::channel(64);
        let blobs = BlobSource {
            base_url: cfg.hub_url.clone().unwrap_or(identity.hub_url.clone()),
            username: identity.mqtt_username.clone(),
            password: identity.mqtt_password.clone(),
        };
        Ok(Self {
            device: identity.device_id.clone(),
            cfg,
            store,
            images,
            runtimes,
            owner: HashMap::new(),
            blobs,
            desired,
            health: HashMap::new(),
            pulls_in_flight: HashSet::new(),
            pull_retry_at: HashMap::new(),
            internal_tx,
            internal_rx,
            connected: false,
            inflight_upto: 0,
            last_send: None,
            last_status: None,
            last_rejected: None,
            last_rejection: None,
            convergence: Convergence::Idle,
            phases: BTreeMap::new(),
            holds_since: HashMap::new(),
            unenforced: HashMap::new(),
            last_desired: None,
        })
    }

    /// Effective time: the clock, but never below the newest signed `issued_at` accepted, so a
    /// clock reset to 1970 cannot make expired documents look fresh.
    fn effective_now(&self) -> u64 {
        now().max(self.store.time_floor().unwrap_or(0))
    }

    fn event(&mut self, body: EventBody) -> Result<u64, StoreError> {
        let budget = self.cfg.outbox_budget_bytes;
        self.store.tx(|tx| outbox::append(tx, body, now(), budget))
    }

    /// Runs until `cancel` fires. Workloads keep running after it returns.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let identity = self.store.identity()?;
        let (host, port) = match &self.cfg.mqtt_addr {
            Some(a) => split_addr(a).map_err(anyhow::Error::msg)?,
            None => (identity.mqtt_host.clone(), identity.mqtt_port),
        };
        let boot: u64 = self.store.tx(|tx| {
            let b: u64 = get_json(tx, "boot")?.unwrap_or(0) + 1;
            put_json(tx, "boot", &b)?;
            Ok(b)
        })?;
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
        tracing::info!(device = %self.device, "agent running");
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.tick_millis));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                msg = link_rx.recv() => match msg {
                    Some(m) => self.on_link(m, &link)?,
                    None => break,
                },
                Some(i) = self.internal_rx.recv() => self.on_internal(i)?,
                _ = tick.tick() => self.pass(&link)?,
            }
        }
        link_cancel.cancel();
        tokio::time::sleep(Duration::from_millis(400)).await;
        tracing::info!("agent stopped; workloads keep running");
        Ok(())
    }

    fn on_link(&mut self, msg: LinkMsg, link: &Link) -> anyhow::Result<()> {
        match msg {
            LinkMsg::Connected => {
                tracing::info!("connected to broker");
                self.connected = true;
                self.inflight_upto = 0;
                self.last_send = None;
                self.last_status = None;
                self.flush_outbox(link)?;
            }
            LinkMsg::Disconnected(e) => {
                if self.connected {
                    tracing::warn!(error = %e, "broker connection lost");
                }
                self.connected = false;
            }
            LinkMsg::Desired(bytes) => self.on_desired(&bytes)?,
            LinkMsg::Trust(bytes) => self.on_trust(&bytes)?,
            LinkMsg::Ack(bytes) => match Ack::decode(&bytes) {
                Ok(a) => {
                    let budget = self.cfg.outbox_budget_bytes;
                    self.store.tx(|tx| {
                        outbox::ack(tx, a.acked)?;
                        outbox::report_drops(tx, now(), budget)
                    })?;
                    if a.acked >= self.inflight_upto {
                        self.inflight_upto = 0;
                        self.flush_outbox(link)?;
                    }
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
        let body = if trust {
            EventBody::TrustRejected {
                code: r.code().into(),
                reason: r.to_string(),
            }
        } else {
            EventBody::DesiredRejected {
                code: r.code().into(),
                reason: r.to_string(),
            }
        };
        self.event(body)?;
        Ok(())
    }

    fn on_desired(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.last_desired = Some(bytes.to_vec());
        let trust = self.store.trust()?;
        let floor = self.store.floor()?;
        let now_eff = self.effective_now();
        match accept_desired_state(bytes, &trust, &self.device, &floor, now_eff) {
            Ok(DesiredOutcome::AlreadyHave) => Ok(()),
            Ok(DesiredOutcome::Accepted(a)) => {
                let budget = self.cfg.outbox_budget_bytes;
                let state = a.state.clone();
                // Invariant: the new state, its floor and the event are one transaction.
                self.store.tx(|tx| {
                    put_raw(tx, "desired", bytes)?;
                    put_json(
                        tx,
                        "floor",
                        &RevisionFloor {
                            revision: state.revision,
                            payload_digest: Some(a.payload_digest),
                        },
                    )?;
                    let tf: u64 = get_json(tx, "time_floor")?.unwrap_or(0);
                    put_json(tx, "time_floor", &tf.max(state.issued_at))?;
                    outbox::append(
                        tx,
                        EventBody::DesiredAccepted {
                            revision: state.revision,
                        },
                        now(),
                        budget,
                    )?;
                    Ok(())
                })?;
                tracing::info!(revision = state.revision, "accepted desired state");
                self.desired = Some(state);
                Ok(())
            }
            Err(r) => self.reject(bytes, false, r),
        }
    }

    fn on_trust(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let trust = self.store.trust()?;
        match accept_trust_update(bytes, &trust, self.effective_now()) {
            Ok(TrustOutcome::AlreadyHave) => Ok(()),
            Ok(TrustOutcome::Accepted(a)) => {
                let budget = self.cfg.outbox_budget_bytes;
                self.store.tx(|tx| {
                    put_json(tx, "trust", &a.store)?;
                    if let Some(f) = a.update.revision_floor {
                        put_json(
                            tx,
                            "floor",
                            &RevisionFloor {
                                revision: f,
                                payload_digest: None,
                            },
                        )?;
                    }
                    let tf: u64 = get_json(tx, "time_floor")?.unwrap_or(0);
                    put_json(tx, "time_floor", &tf.max(a.update.issued_at))?;
                    outbox::append(
                        tx,
                        EventBody::TrustAccepted {
                            version: a.update.version,
                        },
                        now(),
                        budget,
                    )?;
                    Ok(())
                })?;
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
        match msg {
            Internal::PullDone(digest, res) => {
                self.pulls_in_flight.remove(&digest);
                match res {
                    Ok(rep) => {
                        self.pull_retry_at.remove(&digest);
                        self.event(EventBody::ImagePulled {
                            digest,
                            bytes_fetched: rep.bytes_fetched,
                            delta: false,
                        })?;
                    }
                    Err(e) => {
                        let (_, n) = self.pull_retry_at.get(&digest).copied().unwrap_or((0, 0));
                        let wait = (2u64 << n.min(8)).min(300);
                        self.pull_retry_at.insert(digest, (now() + wait, n + 1));
                        tracing::warn!(%digest, error = %e, class = e.class(), "image pull failed");
                        self.event(EventBody::ImagePullFailed {
                            digest,
                            error: format!("{}: {e}", e.class()),
                        })?;
                    }
                }
            }
            Internal::Probed(id, ok) => {
                let Some(w) = self.health_check_of(&id) else {
                    return Ok(());
                };
                if let Some(h) = self.health.get_mut(&id) {
                    h.in_flight = false;
                    h.next_probe_at = now() + w.interval_secs;
                    let before = h.healthy;
                    if ok {
                        h.failures = 0;
                        h.healthy = Some(true);
                    } else if now() < h.grace_until {
                        // Inside the start period a failure does not count.
                    } else {
                        h.failures += 1;
                        if h.failures >= w.retries {
                            h.healthy = Some(false);
                        }
                    }
                    let after = h.healthy;
                    if before != after && after.is_some() {
                        if let Some(name) = id
                            .rsplitn(3, '-')
                            .nth(2)
                            .and_then(|n| WorkloadName::new(n).ok())
                        {
                            self.event(EventBody::HealthChanged {
                                workload: name,
                                healthy: after == Some(true),
                            })?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn health_check_of(&self, instance_id: &str) -> Option<protocol::HealthCheck> {
        let desired = self.desired.as_ref()?;
        desired
            .workloads
            .iter()
            .find(|w| instance_id.starts_with(&format!("{}-", w.name)))
            .and_then(|w| w.health.clone())
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
            if holds_dir(&self.cfg).join(n.as_str()).exists() {
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

    fn observe(&mut self) -> anyhow::Result<Observed> {
        let mut instances = Vec::new();
        self.owner.clear();
        for (i, rt) in self.runtimes.iter().enumerate() {
            for inst in rt.list()? {
                self.owner.insert(inst.id.clone(), i);
                instances.push(inst);
            }
        }
        let records = load_records(&self.store)?;
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
            .filter(|d| self.images.rootfs(d).is_some())
            .collect();
        let t = now();
        // Health bookkeeping follows the running instances.
        let running: HashSet<String> = instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Running { .. }))
            .map(|i| i.id.clone())
            .collect();
        self.health.retain(|id, _| running.contains(id));
        for inst in &instances {
            let InstanceState::Running { started_at, .. } = inst.state else {
                continue;
            };
            let Some(check) = self.health_check_of(&inst.id) else {
                continue;
            };
            let h = self
                .health
                .entry(inst.id.clone())
                .or_insert_with(|| Health {
                    grace_until: started_at + check.start_period_secs,
                    next_probe_at: started_at,
                    ..Health::default()
                });
            if !h.in_flight && t >= h.next_probe_at {
                h.in_flight = true;
                let rootfs = self.images.rootfs(&inst.digest).unwrap_or_default();
                let exec = match (
                    &check.probe,
                    self.owner.get(&inst.id).and_then(|i| self.runtimes.get(*i)),
                ) {
                    (protocol::Probe::Exec { command }, Some(rt)) => {
                        Some(rt.exec_command(&inst.id, &rootfs, command))
                    }
                    _ => None,
                };
                let tx = self.internal_tx.clone();
                let id = inst.id.clone();
                tokio::spawn(async move {
                    let ok = crate::runtime::health::probe_with(&check, exec).await;
                    let _ = tx.send(Internal::Probed(id, ok)).await;
                });
            }
        }
        self.unenforced = instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Running { .. }))
            .map(|i| (i.name.clone(), i.unenforced.clone()))
            .collect();
        let health = self
            .health
            .iter()
            .map(|(k, v)| (k.clone(), v.healthy))
            .collect();
        let may_swap = self.may_swap(t);
        Ok(Observed {
            instances,
            images,
            health,
            records,
            may_swap,
        })
    }

    /// One reconciler pass: observe, plan, persist, act, report.
    fn pass(&mut self, link: &Link) -> anyhow::Result<()> {
        let obs = self.observe()?;
        let t = now();
        let plan = reconcile::plan(self.desired.as_ref(), &obs, t);
        let budget = self.cfg.outbox_budget_bytes;
        // Persist the intent and its events before acting on it.
        let records = plan.records.clone();
        let events = plan.events.clone();
        self.store.tx(|tx| {
            tx.execute("DELETE FROM workloads", [])?;
            for (name, rec) in &records {
                let json = serde_json::to_string(rec).map_err(|e| StoreError::Decode {
                    key: "workloads".into(),
                    detail: e.to_string(),
                })?;
                tx.execute(
                    "INSERT INTO workloads (name, state) VALUES (?1, ?2)",
                    rusqlite::params![name.as_str(), json],
                )?;
            }
            for e in events {
                outbox::append(tx, e, t, budget)?;
            }
            Ok(())
        })?;
        for action in plan.actions {
            self.execute(action)?;
        }
        self.convergence = plan.convergence;
        self.phases = plan.phases;
        self.after_pass(&obs, link)?;
        Ok(())
    }

    fn execute(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::Pull(image) => {
                let d = image.digest;
                let retry_ok = self
                    .pull_retry_at
                    .get(&d)
                    .is_none_or(|(at, _)| now() >= *at);
                if !self.pulls_in_flight.contains(&d) && retry_ok {
                    self.pulls_in_flight.insert(d);
                    let images = self.images.clone();
                    let src = self.blobs.clone();
                    let tx = self.internal_tx.clone();
                    tokio::spawn(async move {
                        let r = images.pull(&src, &image).await;
                        let _ = tx.send(Internal::PullDone(d, r)).await;
                    });
                }
            }
            Action::Start { workload, digest } => {
                let Some(rootfs) = self.images.rootfs(&digest) else {
                    return Ok(()); // not here yet: the next pass pulls it
                };
                // The workload learns where its update hold lives (DESIGN: application holds).
                let mut env = workload.env.clone();
                env.insert(
                    "FLEET_UPDATE_HOLD".into(),
                    holds_dir(&self.cfg)
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
                let Some(rt) = self
                    .runtimes
                    .iter()
                    .find(|r| r.kind() == workload.runtime)
                    .cloned()
                else {
                    self.event(EventBody::UpdateFailed {
                        revision: self.desired.as_ref().map(|d| d.revision).unwrap_or(0),
                        workload: Some(spec.name.clone()),
                        reason: format!(
                            "runtime {} is not available on this device",
                            workload.runtime.as_str()
                        ),
                    })?;
                    return Ok(());
                };
                match rt.start(&spec) {
                    Ok(inst) => {
                        tracing::info!(workload = %spec.name, %digest, id = %inst.id, "started");
                        self.event(EventBody::WorkloadStarted {
                            workload: spec.name.clone(),
                            digest,
                        })?;
                        for u in inst.unenforced {
                            self.event(EventBody::LimitUnenforced {
                                workload: spec.name.clone(),
                                detail: u,
                            })?;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "start failed");
                        self.event(EventBody::UpdateFailed {
                            revision: self.desired.as_ref().map(|d| d.revision).unwrap_or(0),
                            workload: Some(spec.name.clone()),
                            reason: e.to_string(),
                        })?;
                    }
                }
            }
            Action::Stop(id) => {
                if let Some(rt) = self.owner.get(&id).and_then(|i| self.runtimes.get(*i)) {
                    rt.stop(&id, Duration::from_secs(self.cfg.stop_grace_secs))?;
                }
            }
            Action::Remove(id) => {
                if let Some(rt) = self.owner.get(&id).and_then(|i| self.runtimes.get(*i)) {
                    rt.remove(&id)?;
                }
            }
        }
        Ok(())
    }

    fn after_pass(&mut self, obs: &Observed, link: &Link) -> anyhow::Result<()> {
        let t = now();
        if let Some(d) = self.desired.clone() {
            let applied: Option<u64> = get_json(self.store.conn(), "applied")?;
            if self.convergence == Convergence::Converged && applied != Some(d.revision) {
                let budget = self.cfg.outbox_budget_bytes;
                self.store.tx(|tx| {
                    put_json(tx, "applied", &d.revision)?;
                    outbox::append(
                        tx,
                        EventBody::UpdateSucceeded {
                            revision: d.revision,
                        },
                        t,
                        budget,
                    )?;
                    Ok(())
                })?;
                tracing::info!(revision = d.revision, "converged");
                // Keep only what the current state and a rollback need.
                let mut keep: BTreeSet<Digest> =
                    d.workloads.iter().map(|w| w.image.digest).collect();
                for r in obs.records.values() {
                    keep.extend(r.digest);
                    keep.extend(r.previous);
                }
                if let Err(e) = self.images.gc(&keep) {
                    tracing::warn!(error = %e, "image cache garbage collection failed");
                }
            }
            let stale_reported: Option<u64> = get_json(self.store.conn(), "stale_reported")?;
            if d.expires_at <= t && stale_reported != Some(d.revision) {
                let budget = self.cfg.outbox_budget_bytes;
                self.store.tx(|tx| {
                    put_json(tx, "stale_reported", &d.revision)?;
                    outbox::append(
                        tx,
                        EventBody::Stale {
                            revision: d.revision,
                        },
                        t,
                        budget,
                    )?;
                    Ok(())
                })?;
            }
        }
        if self.connected {
            self.publish_status(link)?;
            self.flush_outbox(link)?;
        }
        Ok(())
    }

    /// The status snapshot as it stands.
    pub fn status(&self) -> anyhow::Result<StatusReport> {
        let applied: Option<u64> = get_json(self.store.conn(), "applied")?;
        let trust = self.store.trust()?;
        let records = load_records(&self.store)?;
        let unenforced = &self.unenforced;
        let workloads = self
            .phases
            .iter()
            .map(|(name, (digest, phase))| WorkloadStatus {
                name: name.clone(),
                digest: *digest,
                phase: *phase,
                restarts: records.get(name).map(|r| r.restarts).unwrap_or(0),
                unenforced: unenforced.get(name).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(StatusReport {
            device: self.device.clone(),
            time: now(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            arch: protocol::Arch::host().unwrap_or(protocol::Arch::X86_64),
            runtimes: self.runtimes.iter().map(|r| r.kind()).collect(),
            desired_revision: self.desired.as_ref().map(|d| d.revision),
            applied_revision: applied,
            convergence: self.convergence,
            stale: self.desired.as_ref().is_some_and(|d| d.expires_at <= now()),
            trust_version: trust.version,
            workloads,
            events_dropped: outbox::dropped_total(self.store.conn())?,
            last_rejection: self.last_rejection.clone(),
        })
    }

    fn publish_status(&mut self, link: &Link) -> anyhow::Result<()> {
        let report = self.status()?;
        let due = match &self.last_status {
            None => true,
            Some((last, at)) => {
                let mut a = last.clone();
                a.time = report.time;
                a != report || at.elapsed() >= Duration::from_secs(self.cfg.status_interval_secs)
            }
        };
        if due && link.try_publish(Channel::Status, protocol::json::encode(&report)) {
            self.last_status = Some((report, Instant::now()));
        }
        Ok(())
    }

    /// Publishes the oldest unacked events when nothing is in flight, or again after
    /// `resend_secs` without an ack.
    fn flush_outbox(&mut self, link: &Link) -> anyhow::Result<()> {
        if !self.connected {
            return Ok(());
        }
        let resend = self
            .last_send
            .is_some_and(|at| at.elapsed() >= Duration::from_secs(self.cfg.resend_secs));
        if self.inflight_upto != 0 && !resend {
            return Ok(());
        }
        let events = outbox::pending(
            self.store.conn(),
            protocol::limits::MAX_EVENTS_PER_BATCH,
            protocol::limits::MAX_REPORT_BYTES - 4096,
        )?;
        let Some(last) = events.last().map(|e| e.seq) else {
            self.inflight_upto = 0;
            return Ok(());
        };
        let batch = EventBatch {
            device: self.device.clone(),
            events,
        };
        if link.try_publish(Channel::Events, protocol::json::encode(&batch)) {
            self.inflight_upto = last;
            self.last_send = Some(Instant::now());
        }
        Ok(())
    }
}
