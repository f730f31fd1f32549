//! One simulated device's protocol state, sans-IO: what it trusts, the revision floor, the
//! outbox, and its status. It verifies documents with `protocol` exactly as the agent does
//! (`accept_trust_update`, `accept_desired_state`), and instead of running workloads it pretends
//! each one started at once: `desired_accepted`, one `workload_started` per workload, then
//! `update_succeeded`, and a converged status.
//!
//! Invariant: nothing is accepted that `protocol` did not verify; a rejected document changes
//! nothing but the rejection report (one `desired_rejected` per distinct document, like the agent).

use protocol::{
    accept_desired_state, accept_trust_update, Ack, Arch, Convergence, DesiredOutcome,
    DesiredState, DeviceId, Digest, EventBody, RevisionFloor, RootKeys, RuntimeKind, StatusReport,
    TrustOutcome, TrustStore, WorkloadPhase, WorkloadStatus,
};
use serde::{Deserialize, Serialize};

use crate::outbox::Outbox;

/// What a simulated device keeps across runs (in the state file), besides its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Persisted {
    /// The sequence number of the next event.
    pub next_seq: u64,
    /// The revision floor.
    pub floor: RevisionFloor,
    /// The accepted trust, when any was accepted.
    pub trust: Option<TrustStore>,
    /// Process starts (the high half of the presence epoch).
    pub boot: u64,
}

/// What presenting a document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing new (a re-delivery of what the device holds, or a repeated rejection).
    Unchanged,
    /// A new desired state was accepted and "applied".
    AcceptedDesired {
        /// Its revision.
        revision: u64,
    },
    /// A new trust update was accepted.
    AcceptedTrust {
        /// Its version.
        version: u64,
    },
    /// The document was rejected (reported once per distinct document).
    Rejected {
        /// [`protocol::Rejection::code`].
        code: &'static str,
    },
}

/// The protocol state of one simulated device.
#[derive(Debug)]
pub struct Device {
    id: DeviceId,
    trust: TrustStore,
    floor: RevisionFloor,
    desired: Option<DesiredState>,
    last_desired: Option<Vec<u8>>,
    last_rejected: Option<Digest>,
    last_rejection: Option<String>,
    /// The outbox (public so the connection can publish and ack).
    pub outbox: Outbox,
    boot: u64,
}

impl Device {
    /// A device pinned to `root`, resuming from `saved`.
    pub fn new(id: DeviceId, root: RootKeys, saved: Persisted) -> Self {
        Self {
            id,
            trust: saved.trust.unwrap_or_else(|| TrustStore::pinned(root)),
            floor: saved.floor,
            desired: None,
            last_desired: None,
            last_rejected: None,
            last_rejection: None,
            outbox: Outbox::new(saved.next_seq),
            boot: saved.boot,
        }
    }

    /// Its id.
    pub fn id(&self) -> &DeviceId {
        &self.id
    }

    /// What to persist. Events still in the outbox are not persisted: a run ends with them
    /// acked, or they are counted as pending in the summary.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            next_seq: self.outbox.next_seq(),
            floor: self.floor,
            trust: (self.trust.version > 0).then(|| self.trust.clone()),
            boot: self.boot,
        }
    }

    /// The presence epoch of connection `conn` in this run (`boot << 32 | conn`), like the agent.
    pub fn epoch(&self, conn: u64) -> u64 {
        (self.boot << 32) | conn
    }

    /// The highest revision accepted (or the floor).
    pub fn revision(&self) -> u64 {
        self.floor.revision
    }

    fn reject(&mut self, bytes: &[u8], trust: bool, r: protocol::Rejection, now: u64) -> Outcome {
        let code = r.code();
        let digest = Digest::of(bytes);
        if self.last_rejected == Some(digest) {
            return Outcome::Unchanged;
        }
        self.last_rejected = Some(digest);
        self.last_rejection = Some(format!("{code}: {r}"));
        let (code_s, reason) = (code.to_string(), r.to_string());
        let body = if trust {
            EventBody::TrustRejected {
                code: code_s,
                reason,
            }
        } else {
            EventBody::DesiredRejected {
                code: code_s,
                reason,
            }
        };
        self.outbox.push(body, now);
        Outcome::Rejected { code }
    }

    /// A message on `desired`.
    pub fn on_desired(&mut self, bytes: &[u8], now: u64) -> Outcome {
        self.last_desired = Some(bytes.to_vec());
        match accept_desired_state(bytes, &self.trust, &self.id, &self.floor, now) {
            Ok(DesiredOutcome::AlreadyHave) => {
                if self.desired.is_none() {
                    // A second run: the retained state is the one accepted last time (its
                    // signature verified and its payload digest matches the floor), so it is
                    // what the device runs.
                    self.desired = protocol::Envelope::decode(bytes)
                        .ok()
                        .and_then(|e| serde_json::from_slice(&e.payload).ok());
                }
                Outcome::Unchanged
            }
            Ok(DesiredOutcome::Accepted(a)) => {
                let state = a.state;
                self.floor = RevisionFloor {
                    revision: state.revision,
                    payload_digest: Some(a.payload_digest),
                };
                let revision = state.revision;
                self.outbox
                    .push(EventBody::DesiredAccepted { revision }, now);
                for w in &state.workloads {
                    self.outbox.push(
                        EventBody::WorkloadStarted {
                            workload: w.name.clone(),
                            digest: w.image.digest,
                        },
                        now,
                    );
                }
                self.outbox
                    .push(EventBody::UpdateSucceeded { revision }, now);
                self.desired = Some(state);
                Outcome::AcceptedDesired { revision }
            }
            Err(r) => self.reject(bytes, false, r, now),
        }
    }

    /// A message on `trust`. An accepted update re-examines the last desired document, which
    /// may be signed by a key only the new trust lists.
    pub fn on_trust(&mut self, bytes: &[u8], now: u64) -> Vec<Outcome> {
        match accept_trust_update(bytes, &self.trust, now) {
            Ok(TrustOutcome::AlreadyHave) => vec![Outcome::Unchanged],
            Ok(TrustOutcome::Accepted(a)) => {
                self.trust = a.store;
                if let Some(f) = a.update.revision_floor {
                    self.floor = RevisionFloor {
                        revision: f,
                        payload_digest: None,
                    };
                }
                let version = a.update.version;
                self.outbox.push(EventBody::TrustAccepted { version }, now);
                let mut out = vec![Outcome::AcceptedTrust { version }];
                if let Some(d) = self.last_desired.take() {
                    self.last_rejected = None;
                    out.push(self.on_desired(&d, now));
                }
                out
            }
            Err(r) => vec![self.reject(bytes, true, r, now)],
        }
    }

    /// A message on `ack`; returns how many events it released, or `None` when malformed.
    pub fn on_ack(&mut self, bytes: &[u8]) -> Option<usize> {
        Ack::decode(bytes).ok().map(|a| self.outbox.ack(a.acked))
    }

    /// The status snapshot: converged on the accepted state, every workload running.
    pub fn status(&self, now: u64) -> StatusReport {
        let (convergence, workloads) = match &self.desired {
            None => (Convergence::Idle, Vec::new()),
            Some(d) => (
                Convergence::Converged,
                d.workloads
                    .iter()
                    .map(|w| WorkloadStatus {
                        name: w.name.clone(),
                        digest: w.image.digest,
                        phase: WorkloadPhase::Running,
                        restarts: 0,
                        unenforced: Vec::new(),
                    })
                    .collect(),
            ),
        };
        let revision = self.desired.as_ref().map(|d| d.revision);
        StatusReport {
            device: self.id.clone(),
            time: now,
            agent_version: concat!("fleet-sim/", env!("CARGO_PKG_VERSION")).into(),
            arch: Arch::host().unwrap_or(Arch::X86_64),
            runtimes: vec![RuntimeKind::Process],
            desired_revision: revision,
            applied_revision: revision,
            convergence,
            stale: self.desired.as_ref().is_some_and(|d| d.expires_at <= now),
            trust_version: self.trust.version,
            workloads,
            events_dropped: 0,
            last_rejection: self.last_rejection.clone(),
            functions: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protocol::{
        Envelope, ImageRef, KeyPair, Resources, RestartPolicy, SigningKeyEntry, TrustUpdate,
        Workload, WorkloadName, KIND_DESIRED_STATE, KIND_TRUST_UPDATE,
    };

    use super::*;

    const NOW: u64 = 1_795_478_400;
    const DAY: u64 = 86_400;

    fn key(seed: u8) -> KeyPair {
        KeyPair::from_seed([seed; 32])
    }

    fn sign<T: Serialize>(doc: &T, by: &KeyPair) -> Vec<u8> {
        let payload = serde_json::to_vec(doc).expect("json");
        Envelope::sign(payload, &[by]).encode()
    }

    /// Trust version 1 signed by root key 1, listing online key 2.
    fn trust_wire() -> Vec<u8> {
        sign(
            &TrustUpdate {
                kind: KIND_TRUST_UPDATE.into(),
                version: 1,
                issued_at: NOW - 60,
                expires_at: NOW + 365 * DAY,
                root: RootKeys::single(key(1).public()),
                signing_keys: vec![SigningKeyEntry {
                    kid: key(2).kid(),
                    public_key: key(2).public(),
                    not_after: NOW + 365 * DAY,
                }],
                revision_floor: None,
            },
            &key(1),
        )
    }

    fn desired_wire(device: &str, revision: u64, by: &KeyPair) -> Vec<u8> {
        let workload = Workload {
            name: WorkloadName::new("svc").expect("name"),
            image: ImageRef {
                digest: Digest::of(b"svc"),
                size: 10_240,
                arch: Arch::Aarch64,
            },
            runtime: RuntimeKind::Process,
            command: vec!["./run.sh".into()],
            env: BTreeMap::new(),
            resources: Resources {
                cpu_millis: None,
                memory_bytes: None,
                pids: None,
            },
            restart: RestartPolicy::Always,
            health: None,
            schedule: None,
            health_deadline_secs: 60,
            stability_window_secs: protocol::DEFAULT_STABILITY_WINDOW_SECS,
            function: None,
        };
        sign(
            &DesiredState {
                kind: KIND_DESIRED_STATE.into(),
                device: DeviceId::new(device).expect("id"),
                revision,
                issued_at: NOW - 60,
                expires_at: NOW + 30 * DAY,
                workloads: vec![workload],
                maintenance: None,
                rollout: None,
            },
            by,
        )
    }

    fn device() -> Device {
        let id = DeviceId::new("sim-0").expect("id");
        Device::new(id, RootKeys::single(key(1).public()), Persisted::default())
    }

    fn types(d: &Device) -> Vec<&'static str> {
        let batch = d
            .outbox
            .batch(d.id(), std::time::Instant::now(), std::time::Duration::ZERO);
        batch
            .map(|b| b.events.iter().map(|e| e.body.type_name()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_state_signed_by_a_listed_key_is_accepted_and_reported_as_converged() {
        let mut d = device();
        assert_eq!(
            d.on_trust(&trust_wire(), NOW),
            vec![Outcome::AcceptedTrust { version: 1 }]
        );
        let wire = desired_wire("sim-0", 5, &key(2));
        assert_eq!(
            d.on_desired(&wire, NOW),
            Outcome::AcceptedDesired { revision: 5 }
        );
        assert_eq!(d.on_desired(&wire, NOW), Outcome::Unchanged, "re-delivery");
        assert_eq!(
            types(&d),
            [
                "trust_accepted",
                "desired_accepted",
                "workload_started",
                "update_succeeded"
            ]
        );
        let s = d.status(NOW);
        assert_eq!(s.convergence, Convergence::Converged);
        assert_eq!((s.desired_revision, s.applied_revision), (Some(5), Some(5)));
        assert_eq!(s.workloads[0].phase, WorkloadPhase::Running);
    }

    #[test]
    fn a_state_before_its_trust_is_rejected_once_and_accepted_when_the_trust_arrives() {
        let mut d = device();
        let wire = desired_wire("sim-0", 5, &key(2));
        assert_eq!(
            d.on_desired(&wire, NOW),
            Outcome::Rejected {
                code: "unknown_key"
            }
        );
        assert_eq!(
            d.on_desired(&wire, NOW),
            Outcome::Unchanged,
            "reported once"
        );
        let out = d.on_trust(&trust_wire(), NOW);
        assert_eq!(out[1], Outcome::AcceptedDesired { revision: 5 });
    }

    #[test]
    fn forged_misaddressed_and_replayed_states_change_nothing_but_the_report() {
        let mut d = device();
        d.on_trust(&trust_wire(), NOW);
        d.on_desired(&desired_wire("sim-0", 5, &key(2)), NOW);
        for (wire, code) in [
            (desired_wire("sim-0", 6, &key(9)), "unknown_key"),
            (desired_wire("sim-1", 6, &key(2)), "wrong_device"),
            (desired_wire("sim-0", 4, &key(2)), "rollback"),
        ] {
            assert_eq!(d.on_desired(&wire, NOW), Outcome::Rejected { code });
            assert_eq!(d.revision(), 5);
        }
        assert_eq!(d.status(NOW).applied_revision, Some(5));
    }

    #[test]
    fn what_is_persisted_resumes_the_sequence_floor_trust_and_epoch() {
        let mut d = device();
        d.on_trust(&trust_wire(), NOW);
        d.on_desired(&desired_wire("sim-0", 5, &key(2)), NOW);
        let mut saved = d.persisted();
        saved.boot += 1;
        let wire = desired_wire("sim-0", 5, &key(2));
        let mut again = Device::new(d.id().clone(), RootKeys::single(key(1).public()), saved);
        assert_eq!(again.on_trust(&trust_wire(), NOW), vec![Outcome::Unchanged]);
        assert_eq!(again.on_desired(&wire, NOW), Outcome::Unchanged);
        assert_eq!(again.status(NOW).applied_revision, Some(5), "restored");
        assert_eq!(again.outbox.next_seq(), 5);
        assert!(again.epoch(1) > d.epoch(1));
    }
}
