//! The signer and publisher. On any change, compute each device's desired state, and for every
//! device whose state changed, allocate the next fleet-wide revision, sign, store (one
//! transaction) and publish retained. Publishing happens only after the store holds the state,
//! so no device ever receives a state absent from the database.
//!
//! Also: the trust reload after a key rotation, and the republish of every retained message
//! the hub owns on each broker (re)connection (a broker may have lost them).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;
use protocol::{
    Ack, Channel, DesiredState, DeviceId, DeviceProfile, Envelope, KeyPair, RolloutRef, Topic,
    KIND_DESIRED_STATE,
};

use super::desired::{compute_desired, maintenance_for, state_digest};
use super::{blocking, Error, Result, SharedClock};
use crate::keys::KeyDir;
use crate::store::Store;
use crate::types::TrustReloaded;

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
    /// One resync at a time: two concurrent ones would compute from the same snapshot.
    gate: Arc<tokio::sync::Mutex<()>>,
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
            gate: Arc::default(),
        }
    }

    /// The signed trust document served to devices, as text.
    pub fn trust_text(&self) -> Result<String> {
        std::fs::read_to_string(self.keys.trust())
            .map_err(|e| Error::Internal(format!("reading the trust document: {e}")))
    }

    /// Recomputes every device; returns `(device, revision)` for each new state, after
    /// publishing.
    pub async fn resync(&self) -> Result<Vec<(String, u64)>> {
        let _one = self.gate.lock().await;
        // Take the key out of the lock before awaiting: the guard must not cross an await.
        let key = self.key.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (store, profiles, clock, lifetime) = (
            self.store.clone(),
            self.profiles.clone(),
            self.clock.clone(),
            self.lifetime_secs,
        );
        let changed = blocking(move || {
            Ok(compute_and_sign(
                &store,
                &key,
                &profiles,
                clock.now(),
                lifetime,
            )?)
        })
        .await?;
        let mut out = Vec::new();
        for (device, revision, envelope) in changed {
            let topic = Topic::device(&device, Channel::Desired).to_string();
            self.sink.publish_retained(topic, envelope).await;
            out.push((device.to_string(), revision));
        }
        Ok(out)
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
            // Every state is signed again: one signed by a revoked key would be refused on
            // re-delivery.
            store.forget_desired_digests()?;
            if let Some(f) = floor {
                store.raise_revision_counter(f)?;
            }
            Ok(())
        })
        .await?;
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        self.sink
            .publish_retained(protocol::topics::TRUST.to_string(), env)
            .await;
        let resigned = self.resync().await?;
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

/// The synchronous part: compute, sign and store. Returns what to publish.
pub fn compute_and_sign(
    store: &Store,
    key: &KeyPair,
    profiles: &BTreeMap<String, DeviceProfile>,
    now: u64,
    lifetime_secs: u64,
) -> Result<Vec<(DeviceId, u64, Vec<u8>)>, crate::store::StoreError> {
    let devices = store.devices()?;
    let deployments = store.deployments()?;
    let releases = store.releases()?;
    let groups = store.groups()?;
    let mut out = Vec::new();
    for d in &devices {
        let (workloads, rollout) = match compute_desired(d, &deployments, &releases, &groups) {
            Some((r, dep)) => (
                r.workloads.clone(),
                Some(RolloutRef {
                    release: r.name.clone(),
                    version: r.version.clone(),
                    deployment: Some(dep),
                    phase: None,
                }),
            ),
            None => (Vec::new(), None),
        };
        // A device whose profile or runtimes do not fit is never sent the state (the API refuses
        // such deployments; this covers devices that enroll later).
        if let Some(p) = profiles.get(&d.profile) {
            if let Err(m) = p.check_fit(&workloads, Some(&d.runtimes)) {
                tracing::warn!(device = %d.id, reason = %m, "desired state does not fit the device; not sent");
                continue;
            }
        }
        let maintenance = maintenance_for(d, &groups);
        let digest = state_digest(&workloads, maintenance.as_ref());
        let held = store.desired_row(&d.id)?;
        if held.as_ref().map(|(_, dg)| dg) == Some(&digest) {
            continue;
        }
        if held.is_none() && workloads.is_empty() {
            continue; // nothing was ever sent and nothing is to be run
        }
        let Ok(device) = DeviceId::new(d.id.clone()) else {
            continue;
        };
        let (revision, envelope) = store.store_desired(&d.id, &digest, |revision| {
            let state = DesiredState {
                kind: KIND_DESIRED_STATE.into(),
                device: device.clone(),
                revision,
                issued_at: now,
                expires_at: now + lifetime_secs,
                workloads: workloads.clone(),
                maintenance: maintenance.clone(),
                rollout: rollout.clone(),
            };
            Envelope::sign(protocol::json::encode(&state), &[key]).encode()
        })?;
        tracing::info!(device = %d.id, revision, "signed new desired state");
        out.push((device, revision, envelope));
    }
    Ok(out)
}
