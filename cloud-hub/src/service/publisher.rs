//! The signer and publisher, a background worker. A change marks the devices it may affect in
//! the store's durable work list, in the change's own transaction, and wakes the worker; the
//! request returns at once. The worker takes the marked devices in chunks: for each chunk it
//! computes every device's desired state, signs the changed ones on all cores with consecutive
//! fleet-wide revisions, stores them and clears the chunk's marks in one transaction, and only
//! then publishes them retained. So no device ever receives a state absent from the database,
//! the first chunk goes out while later ones are still being signed, and a crash in between
//! loses nothing: the marks left are worked off after the restart.
//!
//! Also: re-signing a state before it expires (a new revision, unchanged content), the trust
//! reload after a key rotation, and the republish of every retained message the hub owns on
//! each broker (re)connection (a broker may have lost them).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use protocol::{
    Ack, Channel, DesiredState, DeviceId, DeviceProfile, Envelope, KeyPair, RolloutRef, Topic,
    KIND_DESIRED_STATE,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::desired::{compute_gated, maintenance_for, state_digest};
use super::{blocking, Error, Result, SharedClock};
use crate::keys::KeyDir;
use crate::model::FleetSummary;
use crate::store::{DesiredWrite, PublishChunk, Store};
use crate::types::TrustReloaded;

/// Devices per chunk: one transaction (one fsync) and one burst of publishes each.
pub const DEFAULT_CHUNK: usize = 256;

/// Where retained messages go (the hub's MQTT client).
pub trait RetainedSink: Send + Sync + std::fmt::Debug {
    /// Publishes `payload` retained on `topic`; failures are the sink's to log (everything is
    /// republished on the next connection).
    fn publish_retained(&self, topic: String, payload: Vec<u8>) -> BoxFuture<'_, ()>;
}

/// The publisher. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    store: Store,
    clock: SharedClock,
    key: Arc<RwLock<Arc<KeyPair>>>,
    keys: KeyDir,
    profiles: Arc<BTreeMap<String, DeviceProfile>>,
    sink: Arc<dyn RetainedSink>,
    lifetime_secs: u64,
    chunk: usize,
    /// One pass over the work list at a time, so chunks are stored and published in order.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the worker; a wake while it works makes it look again.
    wake: Arc<Notify>,
}

impl Publisher {
    /// A publisher signing with `key` (the online key of `keys`).
    pub fn new(
        store: Store,
        clock: SharedClock,
        key: KeyPair,
        keys: KeyDir,
        profiles: Arc<BTreeMap<String, DeviceProfile>>,
        sink: Arc<dyn RetainedSink>,
        lifetime_secs: u64,
    ) -> Self {
        Self {
            store,
            clock,
            key: Arc::new(RwLock::new(Arc::new(key))),
            keys,
            profiles,
            sink,
            lifetime_secs,
            chunk: DEFAULT_CHUNK,
            gate: Arc::default(),
            wake: Arc::default(),
        }
    }

    /// The same publisher with `chunk` devices per chunk (at least 1).
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// Tells the worker that devices were marked.
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    /// How many devices wait for the worker.
    pub async fn pending(&self) -> Result<u64> {
        let store = self.store.clone();
        blocking(move || Ok(store.publish_pending()?)).await
    }

    /// The fleet's convergence at a glance.
    pub async fn summary(&self) -> Result<FleetSummary> {
        let store = self.store.clone();
        blocking(move || Ok(store.fleet_summary()?)).await
    }

    /// The worker: works off the marked devices whenever woken, and every `renew_every`
    /// re-signs the states that reach the second half of their lifetime. Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let renew_every = Duration::from_secs((self.lifetime_secs / 8).clamp(1, 3600));
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(e) = self.drain().await {
                tracing::error!(error = %e, "publishing failed; the marks stay, retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = renew.tick() => {
                    if let Err(e) = self.renew_expiring().await {
                        tracing::error!(error = %e, "cannot mark expiring states");
                    }
                }
            }
        }
    }

    /// Marks, to be signed again, every state whose second half of life has begun by the
    /// service clock, and wakes the worker. Returns how many were marked.
    pub async fn renew_expiring(&self) -> Result<u64> {
        let store = self.store.clone();
        let before = self.clock.now() + self.lifetime_secs / 2;
        let n = blocking(move || Ok(store.mark_expiring(before)?)).await?;
        if n > 0 {
            tracing::info!(devices = n, "re-signing states before they expire");
            self.kick();
        }
        Ok(n)
    }

    /// Works off every marked device, chunk by chunk: sign, store, then publish. A stored
    /// chunk goes to a publishing task while the next one is signed (in order, and never before
    /// it is stored). Returns, once all is published, `(device, revision)` of each state.
    pub async fn drain(&self) -> Result<Vec<(String, u64)>> {
        let _one = self.gate.lock().await;
        let (stored, mut to_publish) =
            tokio::sync::mpsc::channel::<(std::time::Instant, Vec<DesiredWrite>)>(2);
        let sink = self.sink.clone();
        let metrics = crate::metrics::hub();
        let publishing = tokio::spawn(async move {
            while let Some((started, writes)) = to_publish.recv().await {
                for w in writes {
                    // Ids in the store passed `DeviceId` at enrollment.
                    if let Ok(id) = DeviceId::new(w.device) {
                        let topic = Topic::device(&id, Channel::Desired).to_string();
                        sink.publish_retained(topic, w.envelope).await;
                        metrics.states_published.inc();
                    }
                }
                metrics
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
        });
        let mut out = Vec::new();
        let signed = loop {
            let (store, key, profiles, now, lifetime, chunk) = (
                self.store.clone(),
                self.key.clone(),
                self.profiles.clone(),
                self.clock.now(),
                self.lifetime_secs,
                self.chunk,
            );
            let started = std::time::Instant::now();
            let next = blocking(move || {
                Ok(store.publish_chunk(chunk, |c| {
                    // The key is read under the store's lock: a trust reload swaps the key
                    // before it marks every device, so a chunk that sees those marks signs
                    // with the new key.
                    let key = key.read().unwrap_or_else(|p| p.into_inner()).clone();
                    sign_chunk(c, &key, &profiles, now, lifetime)
                })?)
            })
            .await;
            let (taken, writes) = match next {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if taken == 0 {
                break Ok(());
            }
            out.extend(writes.iter().map(|w| (w.device.clone(), w.revision)));
            metrics
                .states_signed
                .inc_by(u64::try_from(writes.len()).unwrap_or(u64::MAX));
            if stored.send((started, writes)).await.is_err() {
                break Err(Error::Internal("the publishing task ended".into()));
            }
        };
        // What is stored is published even when a later chunk failed.
        drop(stored);
        publishing
            .await
            .map_err(|e| Error::Internal(format!("publishing task: {e}")))?;
        signed.map(|()| out)
    }

    /// The signed trust document served to devices, as text.
    pub fn trust_text(&self) -> Result<String> {
        std::fs::read_to_string(self.keys.trust())
            .map_err(|e| Error::Internal(format!("reading the trust document: {e}")))
    }

    /// Marks every device and works them all off now (at start, and in tests): returns
    /// `(device, revision)` of each new state, after publishing.
    pub async fn resync(&self) -> Result<Vec<(String, u64)>> {
        let store = self.store.clone();
        blocking(move || Ok(store.mark_all_dirty(false)?)).await?;
        self.drain().await
    }

    /// Clears a deleted device's retained state and ack on the broker (an empty retained
    /// message removes one), so nothing of it is handed to a later client with its id.
    pub async fn forget_device(&self, id: &protocol::DeviceId) {
        for channel in [Channel::Desired, Channel::Ack] {
            let topic = Topic::device(id, channel).to_string();
            self.sink.publish_retained(topic, Vec::new()).await;
        }
    }

    /// Republishes every retained message the hub owns (on each broker connection).
    pub async fn republish(&self) -> Result<usize> {
        let store = self.store.clone();
        let state = blocking(move || Ok(store.retained_state()?)).await?;
        let mut n = 0;
        if let Some(t) = state.trust {
            self.sink
                .publish_retained(protocol::topics::TRUST.to_string(), t)
                .await;
            n += 1;
        }
        for (d, env) in state.desired {
            let topic = Topic::device(&d, Channel::Desired).to_string();
            self.sink.publish_retained(topic, env).await;
            n += 1;
        }
        for (d, acked) in state.acks {
            let topic = Topic::device(&d, Channel::Ack).to_string();
            self.sink
                .publish_retained(topic, protocol::json::encode(&Ack { acked }))
                .await;
            n += 1;
        }
        Ok(n)
    }

    /// After `fleetctl keys rotate`, `recover` or `rotate-root`: loads the new online key and
    /// trust document, publishes the trust retained, and re-signs every device's state with
    /// the new key (fresh revisions; after a recovery, above the floor root set).
    pub async fn reload_trust(&self, actor: &str) -> Result<TrustReloaded> {
        let keys = self.keys.clone();
        let (update, env, key) = blocking(move || {
            let (update, env) = keys
                .current_trust()
                .map_err(|e| Error::Invalid(format!("{e:#}")))?;
            let key = crate::keys::read_key(&keys.online())
                .map_err(|e| Error::Invalid(format!("{e:#}")))?;
            if !update.signing_keys.iter().any(|k| k.kid == key.kid()) {
                return Err(Error::Invalid(
                    "online.key is not listed in trust.json".into(),
                ));
            }
            Ok((update, env, key))
        })
        .await?;
        let store = self.store.clone();
        let text = String::from_utf8_lossy(&env).into_owned();
        let floor = update.revision_floor;
        blocking(move || {
            store.set_meta("trust_envelope", &text)?;
            if let Some(f) = floor {
                store.raise_revision_counter(f)?;
            }
            Ok(())
        })
        .await?;
        // The new key first, then the marks: a pass in between signs with the new key.
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        self.sink
            .publish_retained(protocol::topics::TRUST.to_string(), env)
            .await;
        // Every state is signed again: one signed by a revoked key would be refused on
        // re-delivery.
        let store = self.store.clone();
        blocking(move || Ok(store.mark_all_dirty(true)?)).await?;
        let resigned = self.drain().await?;
        let store = self.store.clone();
        let (actor, version, n) = (actor.to_string(), update.version, resigned.len());
        blocking(move || {
            Ok(store.audit(
                &actor,
                "trust.reload",
                &version.to_string(),
                &serde_json::json!({ "resigned": n }).to_string(),
                "ok",
            )?)
        })
        .await?;
        Ok(TrustReloaded {
            version: update.version,
            resigned,
        })
    }
}

/// What one marked device gets: nothing, or a state to sign.
struct ToSign {
    device: DeviceId,
    digest: String,
    state: DesiredState,
}

/// The pure part of a chunk: each device's desired state against the chunk's snapshot, the
/// changed (or forced) ones numbered from `next_revision` and signed on all cores.
pub fn sign_chunk(
    chunk: PublishChunk,
    key: &KeyPair,
    profiles: &BTreeMap<String, DeviceProfile>,
    now: u64,
    lifetime_secs: u64,
) -> Vec<DesiredWrite> {
    let mut todo = Vec::new();
    let mut revision = chunk.next_revision;
    for dirty in &chunk.devices {
        let d = &dirty.row;
        let (workloads, rollout) = match compute_gated(
            d,
            &chunk.deployments,
            &chunk.releases,
            &chunk.groups,
            &chunk.gates,
        ) {
            Some((r, dep, phase)) => (
                r.workloads.clone(),
                Some(RolloutRef {
                    release: r.name.clone(),
                    version: r.version.clone(),
                    deployment: Some(dep),
                    phase,
                }),
            ),
            None => (Vec::new(), None),
        };
        // A device whose profile or runtimes do not fit is never sent the state (the API
        // refuses such deployments; this covers devices that enroll later).
        if let Some(p) = profiles.get(&d.profile) {
            if let Err(m) = p.check_fit(&workloads, Some(&d.runtimes)) {
                tracing::warn!(device = %d.id, reason = %m, "desired state does not fit the device; not sent");
                continue;
            }
        }
        let maintenance = maintenance_for(d, &chunk.groups);
        let digest = state_digest(&workloads, maintenance.as_ref());
        match &dirty.held_digest {
            Some(held) if *held == digest && !dirty.force => continue,
            None if workloads.is_empty() => continue, // nothing sent yet, nothing to run
            _ => {}
        }
        let Ok(device) = DeviceId::new(d.id.clone()) else {
            continue;
        };
        todo.push(ToSign {
            state: DesiredState {
                kind: KIND_DESIRED_STATE.into(),
                device: device.clone(),
                revision,
                issued_at: now,
                expires_at: now + lifetime_secs,
                workloads,
                maintenance,
                rollout,
            },
            device,
            digest,
        });
        revision += 1;
    }
    let sign = |t: &ToSign| DesiredWrite {
        device: t.device.to_string(),
        revision: t.state.revision,
        digest: t.digest.clone(),
        envelope: Envelope::sign(protocol::json::encode(&t.state), &[key]).encode(),
        issued_at: now,
        expires_at: t.state.expires_at,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = todo.len().div_ceil(cores).max(32);
    if todo.len() <= per {
        return todo.iter().map(sign).collect();
    }
    std::thread::scope(|s| {
        let parts: Vec<_> = todo
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(sign).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
