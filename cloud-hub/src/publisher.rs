//! The signer and publisher: on any change, compute each device's desired state, and for every
//! device whose workload set changed, allocate the next fleet-wide revision, sign, store (one
//! transaction) and publish retained. Publishing happens only after the store holds the state,
//! so no device ever receives a state absent from the database.

use std::collections::BTreeMap;
use std::sync::Arc;

use protocol::{DesiredState, DeviceProfile, Envelope, KeyPair, RolloutRef, KIND_DESIRED_STATE};

use crate::mqtt::HubLink;
use crate::releases::{compute_desired, workloads_digest};
use crate::store::{unix_now, Store, StoreError};

/// Recomputes every device; returns `(device, revision)` for each new state, after publishing.
pub async fn sync_all(
    store: &Store,
    key: Arc<KeyPair>,
    profiles: Arc<BTreeMap<String, DeviceProfile>>,
    link: &HubLink,
    lifetime_secs: u64,
) -> Result<Vec<(String, u64)>, StoreError> {
    let s = store.clone();
    let changed =
        tokio::task::spawn_blocking(move || compute_and_sign(&s, &key, &profiles, lifetime_secs))
            .await
            .map_err(|e| StoreError::Conflict(e.to_string()))??;
    let mut out = Vec::new();
    for (device, revision, envelope) in changed {
        link.publish_retained(format!("fleet/v1/dev/{device}/desired"), envelope)
            .await;
        out.push((device, revision));
    }
    Ok(out)
}

/// The synchronous part: compute, sign and store. Returns what to publish.
pub fn compute_and_sign(
    store: &Store,
    key: &KeyPair,
    profiles: &BTreeMap<String, DeviceProfile>,
    lifetime_secs: u64,
) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
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
        let digest = workloads_digest(&workloads);
        let held = store.desired_row(&d.id)?;
        if held.as_ref().map(|(_, dg)| dg) == Some(&digest) {
            continue;
        }
        if held.is_none() && workloads.is_empty() {
            continue; // nothing was ever sent and nothing is to be run
        }
        let Ok(device) = protocol::DeviceId::new(d.id.clone()) else {
            continue;
        };
        let now = unix_now();
        let (revision, envelope) = store.store_desired(&d.id, &digest, |revision| {
            let state = DesiredState {
                kind: KIND_DESIRED_STATE.into(),
                device: device.clone(),
                revision,
                issued_at: now,
                expires_at: now + lifetime_secs,
                workloads: workloads.clone(),
                maintenance: None,
                rollout: rollout.clone(),
            };
            Envelope::sign(protocol::json::encode(&state), &[key]).encode()
        })?;
        tracing::info!(device = %d.id, revision, "signed new desired state");
        out.push((d.id.clone(), revision, envelope));
    }
    Ok(out)
}
