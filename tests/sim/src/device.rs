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
        }
    }
}
