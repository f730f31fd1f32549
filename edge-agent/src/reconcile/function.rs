//! The planner's part for functions: their images are pulled, kept and swapped like any
//! workload's, but nothing is started here. The plan names, per function, the version the
//! activator (`crate::functions`) serves and the one a crash at start falls back to.

use protocol::{Workload, WorkloadPhase};

use super::record::{spec_for, Record};
use super::{Action, FunctionRun, Observed, Plan};

/// What one function's pass decided, for the plan's convergence.
pub(super) struct FunctionOutcome {
    pub phase: WorkloadPhase,
    pub converged: bool,
    pub failed: bool,
}

/// Plans one function. A new target that is in the cache becomes the version served at once
/// (new events go to it, events in flight finish on the old one); the version before stays as
/// the fallback until the next update. A target that failed at start is not served again
/// while it stays the target.
pub(super) fn plan_function(
    p: &mut Plan,
    rec: &mut Record,
    w: &Workload,
    obs: &Observed,
    target_failed: bool,
) -> FunctionOutcome {
    let target = w.image.digest;
    let have_target = obs.images.contains(&target);
    if !have_target && !target_failed {
        // Through a delta from the version served now, as for services.
        let base = rec
            .spec
            .as_ref()
            .map(|s| s.image.clone())
            .filter(|i| Some(i.digest) == rec.digest && i.digest != target);
        p.actions.push(Action::Pull {
            image: w.image.clone(),
            base,
        });
    }
    if have_target && !target_failed && rec.digest != Some(target) {
        if rec.digest.is_some() {
            rec.previous = rec.digest;
            rec.previous_spec = rec.spec.take();
        }
        rec.digest = Some(target);
    }
    if rec.digest == Some(target) && !target_failed {
        rec.spec = Some(w.clone());
    }
    let serving = rec.digest.filter(|d| obs.images.contains(d));
    if let Some(d) = serving {
        let fallback = rec
            .previous
            .filter(|prev| *prev != d && obs.images.contains(prev))
            .map(|prev| (spec_for(rec, w, prev), prev));
        p.functions.push(FunctionRun {
            workload: spec_for(rec, w, d),
            digest: d,
            fallback,
        });
    }
    let converged = serving == Some(target) && !target_failed;
    FunctionOutcome {
        phase: if serving.is_none() || (!have_target && !target_failed) {
            WorkloadPhase::Pulling
        } else {
            WorkloadPhase::Running
        },
        converged,
        failed: target_failed,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use protocol::{Convergence, Workload, WorkloadPhase};

    use super::super::tests::{d, name, running, state, wl};
    use super::super::{plan, Action, Observed};

    fn func(digest: protocol::Digest) -> Workload {
        let mut w = wl("f", digest);
        w.function = Some(
            serde_json::from_value(serde_json::json!({
                "triggers": [{"type": "http", "route": "/f"}]
            }))
            .expect("function"),
        );
        w
    }

    fn obs(images: &[u8]) -> Observed {
        Observed {
            images: images.iter().map(|n| d(*n)).collect::<BTreeSet<_>>(),
            may_swap: true,
            ..Observed::default()
        }
    }

    #[test]
    fn a_function_is_pulled_then_served_and_never_started_by_the_planner() {
        let s = state(vec![func(d(1))]);
        let p = plan(Some(&s), &obs(&[]), 100);
        assert!(p.actions.iter().any(|a| matches!(a, Action::Pull { .. })));
        assert!(p.functions.is_empty());
        assert_eq!(p.phases[&name("f")].1, WorkloadPhase::Pulling);
        assert_eq!(p.convergence, Convergence::Converging);

        let mut o = obs(&[1]);
        let p = plan(Some(&s), &o, 100);
        assert!(!p.actions.iter().any(|a| matches!(a, Action::Start { .. })));
        assert_eq!(p.functions.len(), 1);
        assert_eq!(
            (p.functions[0].digest, &p.functions[0].fallback),
            (d(1), &None)
        );
        assert_eq!(p.convergence, Convergence::Converged);

        // An update: served at once with the old version as the fallback.
        o.records = p.records;
        o.images.insert(d(2));
        let p = plan(Some(&state(vec![func(d(2))])), &o, 101);
        assert_eq!(p.functions[0].digest, d(2));
        assert_eq!(
            p.functions[0].fallback.as_ref().map(|(_, d)| *d),
            Some(d(1))
        );
        assert_eq!(p.records[&name("f")].previous, Some(d(1)));
    }

    #[test]
    fn the_old_version_serves_while_the_new_one_is_pulled_and_a_failed_one_is_not_served() {
        let mut o = obs(&[1]);
        o.records = plan(Some(&state(vec![func(d(1))])), &o, 100).records;
        let s2 = state(vec![func(d(2))]);
        let p = plan(Some(&s2), &o, 101);
        assert_eq!(p.functions[0].digest, d(1), "served while pulling");
        assert_eq!(p.phases[&name("f")].1, WorkloadPhase::Pulling);

        // The activator reported d(2) failed at start: the previous serves, the device fails.
        let rec = o.records.get_mut(&name("f")).expect("record");
        rec.failed = Some(d(2));
        o.images.insert(d(2));
        let p = plan(Some(&s2), &o, 102);
        assert_eq!(p.functions[0].digest, d(1));
        assert!(!p.actions.iter().any(|a| matches!(a, Action::Pull { .. })));
        assert_eq!(p.convergence, Convergence::Failed);
    }

    #[test]
    fn a_service_instance_of_a_workload_that_became_a_function_is_stopped() {
        let mut o = obs(&[1]);
        o.instances = vec![running("svc-1", "f", d(1), 10)];
        let p = plan(Some(&state(vec![func(d(1))])), &o, 100);
        assert_eq!(p.actions, vec![Action::Stop("svc-1".into())]);
    }
}
