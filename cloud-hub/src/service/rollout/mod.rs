//! Staged rollouts (`docs/ROLLOUTS.md`): a deployment taken through phases with health gates,
//! a disruption budget, approvals, and automatic pause or rollback.
//!
//! - `plan.rs`: what the operator asks (phases, thresholds, budget, policy) and its checks;
//! - `controller.rs`: the enum state machine and its pure `step`; `command.rs`: the operator's
//!   commands; `assign.rs`: phases from a keyed hash of (rollout, device);
//! - `observe.rs`: the observations, built from the store's snapshot (pure);
//! - `explain.rs`: why a device runs what it runs (pure);
//! - `preview.rs`: what a rollout would change, per device class, before it exists (pure);
//! - `webhook.rs`: signed events to a rollout's webhook, queued with their step, retried;
//! - `wire.rs`: the API bodies;
//! - this file: the service — create, list, status, commands — and the driver task that ticks
//!   every rollout from the stored observations and the clock, persisting each step (state,
//!   marks for the publisher, audit entries: one transaction) before the publisher acts on it.

mod assign;
mod command;
pub mod controller;
pub mod explain;
pub mod observe;
pub mod plan;
pub mod preview;
pub mod webhook;
pub mod wire;

#[cfg(test)]
mod driver_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::controller::{command, step, Action, Command, RolloutState};
use self::plan::{preset, Plan};
use self::wire::{RolloutCreated, RolloutIn, RolloutStatus, RolloutSummary};
use super::deploy::Deploy;
use super::publisher::Publisher;
use super::{blocking, Error, Result, SharedClock};
use crate::model::{AuditEntry, TokenInfo};
use crate::store::{AuditLine, RolloutRow, RolloutSnapshot, RolloutStep, Store};
use crate::types::DeploymentIn;

/// How often the driver looks at every rollout under way.
pub const TICK: Duration = Duration::from_secs(1);

/// Ticks the driver waits after the hub's broker link comes back, so the devices' reports held
/// back by the partition arrive before anything is decided on them.
pub const SETTLE_TICKS: u32 = 3;

/// The hub's link to the broker, as the driver sees it. While it is down every device's
/// report is going stale, so the driver holds every rollout: nothing is issued or decided
/// (C55).
pub trait BrokerLink: Send + Sync + std::fmt::Debug {
    /// Connected now.
    fn is_up(&self) -> bool;
}

/// A link that is always up (tests without a broker).
#[derive(Debug, Clone, Copy)]
pub struct AlwaysUp;

impl BrokerLink for AlwaysUp {
    fn is_up(&self) -> bool {
        true
    }
}

/// The rollout service and its driver. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Rollouts {
    store: Store,
    clock: SharedClock,
    deploy: Deploy,
    publisher: Publisher,
    link: Arc<dyn BrokerLink>,
    /// Sends webhooks (bounded in time, no redirects).
    http: reqwest::Client,
    /// One step or command at a time, so each reads the state the previous one stored.
    one: Arc<tokio::sync::Mutex<()>>,
    /// The hub's delta cache, for the preview's download sizes.
    deltas: Option<crate::images::deltas::DeltaCache>,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, id: u64, s: &str) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| Error::Internal(format!("rollout {id}: stored {what}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The plan a create request asks for: the preset's or the custom phases, the overrides
/// applied to every phase, checked.
pub fn plan_of(r: &RolloutIn) -> Result<Plan> {
    let mut phases = match (&r.phases, &r.preset) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid("give a preset or phases, not both".into()))
        }
        (Some(p), None) => p.clone(),
        (None, name) => preset(name.as_deref().unwrap_or("canary")).map_err(Error::Invalid)?,
    };
    for (i, p) in phases.iter_mut().enumerate() {
        if let Some(v) = r.bake_secs {
            p.bake_secs = v;
        }
        if let Some(v) = r.success_pct {
            p.success_pct = v;
        }
        if let Some(v) = r.failure_pct {
            p.failure_pct = v;
        }
        if let Some(v) = r.min_finished {
            p.min_finished = v;
        }
        if r.max_concurrent.is_some() {
            p.max_concurrent = r.max_concurrent;
        }
        if let Some(v) = r.approval {
            p.approval = v && i > 0;
        }
    }
    let mut plan = Plan::new(phases);
    plan.budget = r.budget.clone();
    if let Some(v) = r.on_failure {
        plan.on_failure = v;
    }
    if let Some(v) = r.offline_deadline_secs {
        plan.offline_deadline_secs = v;
    }
    if let Some(v) = r.offline_after_deadline {
        plan.offline_after_deadline = v;
    }
    plan.validate().map_err(Error::Invalid)?;
    Ok(plan)
}

impl Rollouts {
    /// The service over `store`, holding while `link` is down.
    pub fn new(
        store: Store,
        clock: SharedClock,
        deploy: Deploy,
        publisher: Publisher,
        link: Arc<dyn BrokerLink>,
    ) -> Self {
        Self {
            store,
            clock,
            deploy,
            publisher,
            link,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            one: Arc::default(),
            deltas: None,
        }
    }

    /// Previews count the deltas `deltas` has already made.
    pub fn with_deltas(mut self, deltas: crate::images::deltas::DeltaCache) -> Self {
        self.deltas = Some(deltas);
        self
    }

    async fn snapshot(&self) -> Result<RolloutSnapshot> {
        let store = self.store.clone();
        blocking(move || Ok(store.rollout_snapshot()?)).await
    }

    /// Creates a deployment staged by a rollout; no device changes until the first tick
    /// admits the first phase's devices.
    pub async fn create(&self, who: &TokenInfo, r: RolloutIn) -> Result<RolloutCreated> {
        let plan = plan_of(&r)?;
        let d = DeploymentIn {
            release: r.release,
            group: r.group.clone(),
            selector: r.selector.clone(),
            devices: r.devices.clone(),
            priority: r.priority,
        };
        if let Some(url) = &r.webhook {
            webhook::check_url(url).map_err(Error::Invalid)?;
        }
        let target = self.deploy.check(who, &d, "rollout.create").await?;
        let (store, now, actor) = (self.store.clone(), self.clock.now(), who.name.clone());
        let (plan, state) = (encode(&plan), encode(&RolloutState::default()));
        let hook = r
            .webhook
            .clone()
            .map(|url| (url, crate::secrets::random_token()));
        let secret = hook.as_ref().map(|h| h.1.clone());
        let (id, deployment) = blocking(move || {
            let hook = hook.as_ref().map(|(u, s)| (u.as_str(), s.as_str()));
            Ok(store.create_rollout(
                d.release, &target, d.priority, &plan, &state, now, &actor, hook,
            )?)
        })
        .await?;
        Ok(RolloutCreated {
            id,
            deployment,
            webhook_secret: secret,
        })
    }

    fn summary(snap: &RolloutSnapshot, row: &RolloutRow) -> Result<RolloutSummary> {
        let state: RolloutState = decode("state", row.id, &row.state)?;
        let plan: Plan = decode("plan", row.id, &row.plan)?;
        let release = snap
            .deployments
            .iter()
            .find(|d| d.id == row.deployment)
            .map_or(0, |d| d.release_id);
        Ok(RolloutSummary {
            id: row.id,
            deployment: row.deployment,
            release,
            stage: state.stage,
            phases: plan.phases.len() as u32,
            admitted: state.admitted.len() as u64,
            created_at: row.created_at,
        })
    }

    /// Every rollout.
    pub async fn list(&self) -> Result<Vec<RolloutSummary>> {
        let snap = self.snapshot().await?;
        snap.rollouts
            .iter()
            .map(|r| Self::summary(&snap, r))
            .collect()
    }

    /// One rollout with per-phase counts and the devices behind them.
    pub async fn status(&self, id: u64) -> Result<RolloutStatus> {
        let snap = self.snapshot().await?;
        let row = snap
            .rollouts
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| Error::NotFound(format!("rollout {id}")))?;
        let state: RolloutState = decode("state", id, &row.state)?;
        let plan: Plan = decode("plan", id, &row.plan)?;
        let phases = observe::phase_status(&snap, row, &plan, &state, self.clock.now());
        Ok(RolloutStatus {
            rollout: Self::summary(&snap, row)?,
            plan,
            phases,
            phase_started_at: state.phase_started_at,
        })
    }

    /// Rollout `id`'s history (its `rollout.*` audit entries) after entry `after`, at most 100;
    /// `NotFound` for an unknown rollout.
    pub async fn history(&self, id: u64, after: u64) -> Result<Vec<AuditEntry>> {
        let store = self.store.clone();
        blocking(move || {
            store.rollout(id)?;
            Ok(store.rollout_history(id, after, 100)?)
        })
        .await
    }

    /// What a rollout would change, per device class, and the devices that cannot take it;
    /// nothing is stored.
    pub async fn preview(&self, r: RolloutIn) -> Result<wire::Preview> {
        let plan = plan_of(&r)?;
        let d = DeploymentIn {
            release: r.release,
            group: r.group.clone(),
            selector: r.selector.clone(),
            devices: r.devices.clone(),
            priority: r.priority,
        };
        let target = super::deploy::target_of(&d)?;
        let snap = self.snapshot().await?;
        let store = self.store.clone();
        let images = blocking(move || Ok(store.images()?)).await?;
        let release = snap
            .releases
            .iter()
            .find(|x| x.id == r.release)
            .ok_or_else(|| Error::Invalid(format!("unknown release {}", r.release)))?;
        if let crate::model::Target::Group(g) = &target {
            if !snap.groups.iter().any(|x| &x.name == g) {
                return Err(Error::Invalid(format!("unknown group {g}")));
            }
        }
        let seen = std::cell::RefCell::new(std::collections::HashMap::new());
        Ok(preview::preview(
            &snap,
            &images,
            self.deploy.profiles(),
            release,
            &target,
            r.priority,
            &plan,
            // A file under its final name is complete (the cache renames it into place);
            // looked up once per pair, not per device.
            &|base, target| {
                let d = self.deltas.as_ref()?;
                *seen
                    .borrow_mut()
                    .entry((*base, *target))
                    .or_insert_with(|| {
                        std::fs::metadata(d.path(base, target))
                            .ok()
                            .map(|m| m.len())
                    })
            },
        ))
    }

    /// Why `device` runs what it runs: the deployments targeting it, the winner, its rollout
    /// phase.
    pub async fn explain(&self, device: String) -> Result<wire::Explanation> {
        let snap = self.snapshot().await?;
        explain::explain(&snap, &device).ok_or_else(|| Error::NotFound(format!("device {device}")))
    }

    /// Sends the webhook deliveries due now; returns how many were delivered.
    pub async fn deliver(&self) -> usize {
        webhook::deliver_due(&self.store, &self.http, self.clock.now()).await
    }

    /// Rollout `id`'s webhook deliveries, every attempt counted.
    pub async fn deliveries(&self, id: u64) -> Result<Vec<crate::store::DeliveryRow>> {
        let store = self.store.clone();
        blocking(move || {
            store.rollout(id)?;
            Ok(store.deliveries(id, webhook::MAX_ATTEMPTS)?)
        })
        .await
    }

    /// An operator's pause, resume, approve, abort or rollback.
    pub async fn command(&self, who: &TokenInfo, id: u64, cmd: Command) -> Result<RolloutSummary> {
        let _one = self.one.lock().await;
        let snap = self.snapshot().await?;
        let row = snap
            .rollouts
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| Error::NotFound(format!("rollout {id}")))?;
        let state: RolloutState = decode("state", id, &row.state)?;
        let obs = observe::observe(&snap, row, &state).unwrap_or_default();
        let (next, actions) = command(&state, cmd, &obs, self.clock.now(), &who.name)
            .map_err(|e| Error::Conflict(e.to_string()))?;
        self.save(row, &next, &actions, &who.name).await?;
        let mut row = row.clone();
        row.state = encode(&next);
        Self::summary(&snap, &row)
    }

    /// Persists a step: state, gate, marks and audit entries in one transaction; then wakes
    /// the publisher.
    async fn save(
        &self,
        row: &RolloutRow,
        next: &RolloutState,
        actions: &[Action],
        actor: &str,
    ) -> Result<()> {
        let mut publish = Vec::new();
        let mut audit = Vec::new();
        let line = |action: &str, detail: serde_json::Value| AuditLine {
            actor: actor.to_string(),
            action: action.to_string(),
            detail: detail.to_string(),
        };
        for a in actions {
            match a {
                Action::Publish { devices } => publish.extend(devices.iter().cloned()),
                Action::Admitted { devices, phases } => audit.push(line(
                    "rollout.admit",
                    serde_json::json!({"devices": devices, "phases": phases}),
                )),
                Action::Outcome { device, health } => audit.push(line(
                    "rollout.outcome",
                    serde_json::json!({"device": device, "health": health}),
                )),
                Action::Transition { from, to, reason } => audit.push(line(
                    "rollout.transition",
                    serde_json::json!({"from": from, "to": to, "reason": reason}),
                )),
            }
        }
        for a in &audit {
            tracing::info!(rollout = row.id, action = %a.action, detail = %a.detail, "rollout");
        }
        let step = RolloutStep {
            state: encode(next),
            gate: next.gate(),
            publish,
            audit,
            notify: webhook::notifications(row.id, actions, self.clock.now()),
        };
        let (store, id, prev, now) = (
            self.store.clone(),
            row.id,
            row.state.clone(),
            self.clock.now(),
        );
        let marked = blocking(move || Ok(store.save_rollout(id, &prev, &step, now)?)).await?;
        if marked > 0 {
            self.publisher.kick();
        }
        Ok(())
    }

    /// One pass of the driver: steps every rollout under way against the stored observations
    /// and the clock. Returns how many rollouts changed (none while the broker link is down).
    pub async fn tick(&self) -> Result<usize> {
        if !self.link.is_up() {
            return Ok(0);
        }
        let _one = self.one.lock().await;
        // The snapshot reads every device: taken only while some rollout is under way, so an
        // idle driver costs one read of the (small) rollouts table a tick.
        let store = self.store.clone();
        if blocking(move || Ok(store.rollouts_under_way()?)).await? == 0 {
            return Ok(0);
        }
        let snap = self.snapshot().await?;
        let now = self.clock.now();
        let mut changed = 0;
        for row in &snap.rollouts {
            let state: RolloutState = decode("state", row.id, &row.state)?;
            if state.stage.is_terminal() {
                continue;
            }
            let plan: Plan = decode("plan", row.id, &row.plan)?;
            // A rollout whose deployment was deleted has nothing left to do.
            let Some(obs) = observe::observe(&snap, row, &state) else {
                continue;
            };
            let (next, actions) = step(&plan, row.id, &state, &obs, now);
            if next == state && actions.is_empty() {
                continue;
            }
            self.save(row, &next, &actions, "hub").await?;
            changed += 1;
        }
        Ok(changed)
    }

    /// The driver: ticks every [`TICK`] until `cancel`; holds while the broker link is down
    /// and for [`SETTLE_TICKS`] after it is back.
    pub async fn run(self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut settle = SETTLE_TICKS;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if !self.link.is_up() {
                if settle == 0 {
                    tracing::warn!("hub cut off from the broker: rollouts hold until it is back");
                }
                settle = SETTLE_TICKS;
                continue;
            }
            if settle > 0 {
                settle -= 1;
                continue;
            }
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "rollout tick failed; retrying on the next");
            }
            self.deliver().await;
        }
    }
}
