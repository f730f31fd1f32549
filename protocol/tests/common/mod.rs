//! Fixtures: keys from fixed seeds, a trust store, desired states, and signing helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;

use protocol::{
    Arch, DesiredState, DeviceId, Digest, Envelope, ImageRef, KeyPair, Resources, RestartPolicy,
    RevisionFloor, RootKeys, RuntimeKind, SigningKeyEntry, TrustStore, TrustUpdate, Workload,
    WorkloadName, KIND_DESIRED_STATE, KIND_TRUST_UPDATE,
};

/// "Now" for every test: 2026-11-24T00:00:00Z.
pub const NOW: u64 = 1_795_478_400;
pub const DAY: u64 = 86_400;

pub fn key(seed: u8) -> KeyPair {
    KeyPair::from_seed([seed; 32])
}

pub fn root() -> KeyPair {
    key(1)
}

pub fn online() -> KeyPair {
    key(2)
}

pub fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).expect("valid device id")
}

pub fn entry(k: &KeyPair, not_after: u64) -> SigningKeyEntry {
    SigningKeyEntry {
        kid: k.kid(),
        public_key: k.public(),
        not_after,
    }
}

/// Trust version 1: root key 1, online key 2 valid for a year.
pub fn trust() -> TrustStore {
    TrustStore {
        version: 1,
        root: RootKeys::single(root().public()),
        signing_keys: vec![entry(&online(), NOW + 365 * DAY)],
        payload_digest: None,
        expires_at: NOW + 365 * DAY,
    }
}

pub fn trust_update(
    version: u64,
    root_keys: RootKeys,
    signing: Vec<SigningKeyEntry>,
) -> TrustUpdate {
    TrustUpdate {
        kind: KIND_TRUST_UPDATE.into(),
        version,
        issued_at: NOW - 60,
        expires_at: NOW + 365 * DAY,
        root: root_keys,
        signing_keys: signing,
        revision_floor: None,
    }
}

pub fn workload(name: &str) -> Workload {
    Workload {
        name: WorkloadName::new(name).expect("valid name"),
        image: ImageRef {
            digest: Digest::of(name.as_bytes()),
            size: 10_240,
            arch: Arch::Aarch64,
        },
        runtime: RuntimeKind::Process,
        command: vec!["./run.sh".into()],
        env: BTreeMap::from([("MODE".to_string(), "edge".to_string())]),
        resources: Resources {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
            pids: Some(32),
        },
        restart: RestartPolicy::Always,
        health: None,
        schedule: None,
        health_deadline_secs: 60,
        stability_window_secs: protocol::DEFAULT_STABILITY_WINDOW_SECS,
        function: None,
    }
}

pub fn state(device: &str, revision: u64) -> DesiredState {
    DesiredState {
        kind: KIND_DESIRED_STATE.into(),
        device: dev(device),
        revision,
        issued_at: NOW - 60,
        expires_at: NOW + 30 * DAY,
        workloads: vec![workload("sensor")],
        maintenance: None,
        rollout: None,
    }
}

pub fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializable")
}

/// Signs arbitrary payload bytes and returns the wire envelope.
pub fn sign_bytes(payload: &[u8], signers: &[&KeyPair]) -> Vec<u8> {
    Envelope::sign(payload.to_vec(), signers).encode()
}

pub fn sign<T: serde::Serialize>(doc: &T, signers: &[&KeyPair]) -> Vec<u8> {
    sign_bytes(&to_json(doc), signers)
}

pub fn floor(revision: u64) -> RevisionFloor {
    RevisionFloor {
        revision,
        payload_digest: None,
    }
}

/// Rewrites a field of the wire envelope's JSON.
pub fn edit_envelope(wire: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(wire).expect("envelope json");
    f(&mut v);
    serde_json::to_vec(&v).expect("json")
}
