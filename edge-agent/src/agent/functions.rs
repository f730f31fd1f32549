//! The owner loop's side of the activator (`crate::functions`): after each pass it hands the
//! activator the functions to serve, and it records what the activator reports — a new
//! version that failed at start is marked failed (not served again while it stays the target)
//! and its rollback reported, as for a service that fails its probation.

use protocol::EventBody;

use super::Agent;
use crate::functions::{ActivatorEvent, Served, Version};
use crate::reconcile::FunctionRun;

impl Agent {
    /// The plan's functions, with their unpacked roots, to the activator.
    pub(super) fn serve_functions(&self, runs: &[FunctionRun]) {
        let images = self.executor.images();
        let version = |w: &protocol::Workload, d: &protocol::Digest| {
            images.rootfs(d).map(|rootfs| Version {
                workload: w.clone(),
                digest: *d,
                rootfs,
            })
        };
        let served = runs
            .iter()
            .filter_map(|r| {
                Some(Served {
                    current: version(&r.workload, &r.digest)?,
                    fallback: r.fallback.as_ref().and_then(|(w, d)| version(w, d)),
                })
            })
            .collect();
        self.functions.set(served);
    }

    /// Records what the activator reports.
    pub(super) fn on_function(&mut self, e: ActivatorEvent) -> anyhow::Result<()> {
        let ActivatorEvent::RolledBack {
            name,
            failed,
            restored,
            reason,
        } = e;
        let revision = self.desired.as_ref().map(|d| d.revision).unwrap_or(0);
        let mut records = self.store.records()?;
        if let Some(rec) = records.get_mut(&name) {
            if rec.digest == Some(failed) && rec.previous == Some(restored) {
                rec.failed = Some(failed);
                rec.digest = Some(restored);
                rec.spec = rec.previous_spec.take();
                rec.previous = None;
            }
        }
        let events = vec![
            EventBody::UpdateFailed {
                revision,
                workload: Some(name.clone()),
                reason: format!("function failed at start: {reason}"),
            },
            EventBody::RolledBack {
                revision,
                workload: name,
                digest: restored,
            },
        ];
        let now = self.now();
        self.store.save_pass(&records, events, now)?;
        Ok(())
    }
}
