//! Table tests of the planner: each case is desired state plus observations in, a plan out.

use std::collections::HashMap;

use protocol::{
    Convergence, DesiredState, Digest, EventBody, RestartPolicy, Workload, WorkloadName,
};

use super::plan::backoff;
use super::*;
use crate::runtime::{Instance, InstanceState};
use protocol::{Arch, HealthCheck, ImageRef, Probe, Resources, RuntimeKind, KIND_DESIRED_STATE};

pub(super) fn name(s: &str) -> WorkloadName {
    WorkloadName::new(s).expect("valid")
}

pub(super) fn d(n: u8) -> Digest {
    Digest::from_bytes([n; 32])
}

pub(super) fn wl(n: &str, digest: Digest) -> Workload {
    Workload {
        name: name(n),
        image: ImageRef {
            digest,
            size: 100,
            arch: Arch::X86_64,
        },
        runtime: RuntimeKind::Process,
        command: vec!["./run.sh".into()],
        env: Default::default(),
        resources: Resources::default(),
        restart: RestartPolicy::Always,
        health: None,
        schedule: None,
        health_deadline_secs: 30,
        // No watch after becoming healthy: these cases are about the deadline; the window has
        // its own table (`window_tests`).
        stability_window_secs: 0,
        function: None,
    }
}

pub(super) fn state(ws: Vec<Workload>) -> DesiredState {
    DesiredState {
        kind: KIND_DESIRED_STATE.into(),
        device: protocol::DeviceId::new("gw").expect("valid"),
        revision: 7,
        issued_at: 0,
        expires_at: 10,
        workloads: ws,
        maintenance: None,
        rollout: None,
    }
}

pub(super) fn running(id: &str, n: &str, digest: Digest, started_at: u64) -> Instance {
    Instance {
        id: id.into(),
        name: name(n),
        digest,
        state: InstanceState::Running { pid: 1, started_at },
        unenforced: vec![],
    }
}

pub(super) fn exited(id: &str, n: &str, digest: Digest, code: i32, at: u64) -> Instance {
    Instance {
        id: id.into(),
        name: name(n),
        digest,
        state: InstanceState::Exited {
            code: Some(code),
            signal: None,
            at,
        },
        unenforced: vec![],
    }
}

pub(super) fn obs(
    instances: Vec<Instance>,
    images: &[Digest],
    records: Vec<(&str, Record)>,
) -> Observed {
    Observed {
        instances,
        images: images.iter().copied().collect(),
        health: HashMap::new(),
        records: records.into_iter().map(|(n, r)| (name(n), r)).collect(),
        may_swap: true,
    }
}

pub(super) fn starts(p: &Plan) -> Vec<Digest> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Start { digest, .. } => Some(*digest),
            _ => None,
        })
        .collect()
}

pub(super) fn stops(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_desired_is_idle_and_stops_everything() {
    let p = plan(
        None,
        &obs(vec![running("a", "svc", d(1), 0)], &[d(1)], vec![]),
        100,
    );
    assert_eq!(p.convergence, Convergence::Idle);
    assert_eq!(stops(&p), vec!["a".to_string()]);
}

#[test]
fn missing_image_is_pulled_and_nothing_starts() {
    let s = state(vec![wl("svc", d(1))]);
    let p = plan(Some(&s), &obs(vec![], &[], vec![]), 100);
    assert!(matches!(p.actions.as_slice(), [Action::Pull { image: i, .. }] if i.digest == d(1)));
    assert_eq!(p.convergence, Convergence::Converging);
}

#[test]
fn present_image_starts_then_converges() {
    let s = state(vec![wl("svc", d(1))]);
    let p = plan(Some(&s), &obs(vec![], &[d(1)], vec![]), 100);
    assert_eq!(starts(&p), vec![d(1)]);
    let rec = p.records[&name("svc")].clone();
    let p = plan(
        Some(&s),
        &obs(
            vec![running("a", "svc", d(1), 100)],
            &[d(1)],
            vec![("svc", rec)],
        ),
        102,
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.convergence, Convergence::Converged);
}

#[test]
fn update_pulls_while_old_runs_then_swaps_on_probation() {
    let s = state(vec![wl("svc", d(2))]);
    let rec = Record {
        digest: Some(d(1)),
        ..Record::default()
    };
    let p = plan(
        Some(&s),
        &obs(
            vec![running("a", "svc", d(1), 0)],
            &[d(1)],
            vec![("svc", rec.clone())],
        ),
        100,
    );
    assert!(stops(&p).is_empty(), "old keeps running while pulling");
    assert!(p
        .actions
        .iter()
        .any(|a| matches!(a, Action::Pull { image: i, .. } if i.digest == d(2))));
    let p = plan(
        Some(&s),
        &obs(
            vec![running("a", "svc", d(1), 0)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        ),
        101,
    );
    assert_eq!(stops(&p), vec!["a".to_string()]);
    assert_eq!(starts(&p), vec![d(2)]);
    let r = &p.records[&name("svc")];
    assert_eq!(
        (r.digest, r.previous, r.probation_until),
        (Some(d(2)), Some(d(1)), Some(131))
    );
}

#[test]
fn swap_waits_while_swaps_are_not_allowed() {
    let s = state(vec![wl("svc", d(2))]);
    let rec = Record {
        digest: Some(d(1)),
        ..Record::default()
    };
    let mut o = obs(
        vec![running("a", "svc", d(1), 0)],
        &[d(1), d(2)],
        vec![("svc", rec)],
    );
    o.may_swap = false;
    let p = plan(Some(&s), &o, 100);
    assert!(p.actions.is_empty());
    assert_eq!(p.convergence, Convergence::Deferred);
}

#[test]
fn unhealthy_past_the_deadline_swaps_back_and_reports() {
    let mut w = wl("svc", d(2));
    w.health = Some(HealthCheck {
        probe: Probe::Tcp { port: 1 },
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
        start_period_secs: 0,
    });
    let s = state(vec![w]);
    let rec = Record {
        digest: Some(d(2)),
        previous: Some(d(1)),
        probation_until: Some(130),
        ..Record::default()
    };
    let mut o = obs(
        vec![running("b", "svc", d(2), 100)],
        &[d(1), d(2)],
        vec![("svc", rec)],
    );
    o.health.insert("b".into(), Some(false));
    let p = plan(Some(&s), &o, 120);
    assert!(p.actions.is_empty(), "still inside the deadline");
    let p = plan(Some(&s), &o, 130);
    assert_eq!(stops(&p), vec!["b".to_string()]);
    assert_eq!(starts(&p), vec![d(1)]);
    assert!(p.events.iter().any(
        |e| matches!(e, EventBody::RolledBack { digest, revision: 7, .. } if *digest == d(1))
    ));
    assert!(p
        .events
        .iter()
        .any(|e| matches!(e, EventBody::UpdateFailed { revision: 7, .. })));
    assert_eq!(p.convergence, Convergence::Failed);
    // Next pass: the old one runs, the failed target is not retried.
    let rec = p.records[&name("svc")].clone();
    let p = plan(
        Some(&s),
        &obs(
            vec![running("c", "svc", d(1), 131)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        ),
        140,
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.convergence, Convergence::Failed);
}

#[test]
fn healthy_within_the_deadline_ends_probation() {
    let mut w = wl("svc", d(2));
    w.health = Some(HealthCheck {
        probe: Probe::Tcp { port: 1 },
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
        start_period_secs: 0,
    });
    let s = state(vec![w]);
    let rec = Record {
        digest: Some(d(2)),
        previous: Some(d(1)),
        probation_until: Some(130),
        ..Record::default()
    };
    let mut o = obs(
        vec![running("b", "svc", d(2), 100)],
        &[d(1), d(2)],
        vec![("svc", rec)],
    );
    o.health.insert("b".into(), Some(true));
    let p = plan(Some(&s), &o, 110);
    assert!(p.actions.is_empty());
    assert_eq!(p.records[&name("svc")].probation_until, None);
    assert_eq!(p.convergence, Convergence::Converged);
}

#[test]
fn swapping_back_restores_the_previous_definition_not_just_its_image() {
    let mut old = wl("svc", d(1));
    old.command = vec!["./old.sh".into()];
    let s1 = state(vec![old.clone()]);
    let p = plan(Some(&s1), &obs(vec![], &[d(1)], vec![]), 100);
    let rec = p.records[&name("svc")].clone();
    // Release 2 changes the image and the command.
    let mut new = wl("svc", d(2));
    new.command = vec!["./new.sh".into()];
    new.health = Some(HealthCheck {
        probe: Probe::Tcp { port: 1 },
        interval_secs: 1,
        timeout_secs: 1,
        retries: 1,
        start_period_secs: 0,
    });
    let s2 = state(vec![new]);
    let p = plan(
        Some(&s2),
        &obs(
            vec![running("a", "svc", d(1), 100)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        ),
        110,
    );
    let rec = p.records[&name("svc")].clone();
    let mut o = obs(
        vec![running("b", "svc", d(2), 110)],
        &[d(1), d(2)],
        vec![("svc", rec)],
    );
    o.health.insert("b".into(), Some(false));
    let p = plan(Some(&s2), &o, 200);
    let back = p.actions.iter().find_map(|a| match a {
        Action::Start { workload, digest } if *digest == d(1) => Some(workload.command.clone()),
        _ => None,
    });
    assert_eq!(back, Some(vec!["./old.sh".to_string()]), "{:?}", p.actions);
    // And a later restart of the old version keeps the old definition.
    let rec = p.records[&name("svc")].clone();
    let p = plan(
        Some(&s2),
        &obs(
            vec![exited("c", "svc", d(1), 1, 201)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        ),
        201,
    );
    let rec = p.records[&name("svc")].clone();
    let p = plan(
        Some(&s2),
        &obs(vec![], &[d(1), d(2)], vec![("svc", rec)]),
        300,
    );
    let again = p.actions.iter().find_map(|a| match a {
        Action::Start { workload, .. } => Some(workload.command.clone()),
        _ => None,
    });
    assert_eq!(again, Some(vec!["./old.sh".to_string()]));
}

#[test]
fn exit_during_probation_swaps_back() {
    let s = state(vec![wl("svc", d(2))]);
    let rec = Record {
        digest: Some(d(2)),
        previous: Some(d(1)),
        probation_until: Some(130),
        ..Record::default()
    };
    let p = plan(
        Some(&s),
        &obs(
            vec![exited("b", "svc", d(2), 1, 105)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        ),
        106,
    );
    assert_eq!(starts(&p), vec![d(1)]);
    assert!(p
        .events
        .iter()
        .any(|e| matches!(e, EventBody::RolledBack { .. })));
    assert_eq!(p.records[&name("svc")].failed, Some(d(2)));
}

#[test]
fn crashes_restart_with_backoff_and_a_loop_is_reported_once() {
    let s = state(vec![wl("svc", d(1))]);
    let mut rec = Record {
        digest: Some(d(1)),
        ..Record::default()
    };
    let mut t = 100;
    let mut loops = 0;
    for i in 0..7u32 {
        let p = plan(
            Some(&s),
            &obs(
                vec![exited(&format!("x{i}"), "svc", d(1), 1, t)],
                &[d(1)],
                vec![("svc", rec.clone())],
            ),
            t,
        );
        rec = p.records[&name("svc")].clone();
        assert_eq!(rec.restarts, i + 1);
        assert_eq!(rec.next_start_at, t + backoff(i));
        assert!(
            starts(&p).is_empty() || backoff(i) == 0,
            "restarted before its backoff"
        );
        loops += p
            .events
            .iter()
            .filter(|e| matches!(e, EventBody::CrashLoop { .. }))
            .count();
        t = rec.next_start_at;
        let p = plan(
            Some(&s),
            &obs(vec![], &[d(1)], vec![("svc", rec.clone())]),
            t,
        );
        assert_eq!(starts(&p), vec![d(1)]);
        rec = p.records[&name("svc")].clone();
    }
    assert_eq!(loops, 1);
}

#[test]
fn restart_policies_are_honoured() {
    for (policy, code, restarts) in [
        (RestartPolicy::Never, 1, false),
        (RestartPolicy::OnFailure, 0, false),
        (RestartPolicy::OnFailure, 2, true),
        (RestartPolicy::Always, 0, true),
    ] {
        let mut w = wl("svc", d(1));
        w.restart = policy;
        let s = state(vec![w]);
        let rec = Record {
            digest: Some(d(1)),
            ..Record::default()
        };
        let p = plan(
            Some(&s),
            &obs(
                vec![exited("a", "svc", d(1), code, 100)],
                &[d(1)],
                vec![("svc", rec)],
            ),
            100,
        );
        let rec = p.records[&name("svc")].clone();
        let p = plan(Some(&s), &obs(vec![], &[d(1)], vec![("svc", rec)]), 500);
        assert_eq!(!starts(&p).is_empty(), restarts, "{policy:?} exit {code}");
    }
}

#[test]
fn duplicate_instances_are_reduced_to_one() {
    let s = state(vec![wl("svc", d(1))]);
    let rec = Record {
        digest: Some(d(1)),
        ..Record::default()
    };
    let p = plan(
        Some(&s),
        &obs(
            vec![running("a", "svc", d(1), 0), running("b", "svc", d(1), 0)],
            &[d(1)],
            vec![("svc", rec)],
        ),
        100,
    );
    assert_eq!(stops(&p).len(), 1);
    assert!(starts(&p).is_empty());
}

#[test]
fn jobs_start_at_their_firing_and_not_before() {
    let mut w = wl("job", d(1));
    w.schedule = Some(protocol::CronExpr::parse("0 * * * * *").expect("every minute"));
    let s = state(vec![w]);
    let p = plan(Some(&s), &obs(vec![], &[d(1)], vec![]), 1_000_010);
    assert!(starts(&p).is_empty());
    let rec = p.records[&name("job")].clone();
    assert_eq!(rec.next_start_at, 1_000_020);
    let p = plan(
        Some(&s),
        &obs(vec![], &[d(1)], vec![("job", rec)]),
        1_000_020,
    );
    assert_eq!(starts(&p), vec![d(1)]);
}

/// The transition function, pair by pair: allowed pairs change the record as listed, the
/// others are refused and change nothing.
#[test]
fn the_transition_function_allows_the_listed_pairs_and_refuses_the_others() {
    let w = wl("svc", d(2));
    let n = name("svc");
    let steady = Record {
        digest: Some(d(1)),
        spec: Some(wl("svc", d(1))),
        ..Record::default()
    };
    assert_eq!(steady.stage(), Stage::Steady);

    // (swap, steady) → probation, with the old version to go back to.
    let mut r = steady.clone();
    let fx = r
        .transition(
            &n,
            UpdateEvent::Swap {
                from: d(1),
                to: d(2),
                workload: &w,
                until: 130,
                stable_until: None,
            },
        )
        .expect("swap from steady");
    assert_eq!(fx, Effects::default());
    assert_eq!(
        r.stage(),
        Stage::Probation {
            until: 130,
            previous: Some(d(1))
        }
    );
    let on_probation = r.clone();

    // (proven, probation) → steady, the old version forgotten.
    let mut r = on_probation.clone();
    r.transition(&n, UpdateEvent::Proven { now: 120 })
        .expect("proven");
    assert_eq!((r.stage(), r.previous), (Stage::Steady, None));

    // (probation_failed, probation) → steady on the previous digest, started with its own
    // definition, the failed digest remembered.
    let mut r = on_probation.clone();
    let fx = r
        .transition(
            &n,
            UpdateEvent::ProbationFailed {
                workload: &w,
                reason: "exited during probation",
                revision: 7,
                now: 140,
            },
        )
        .expect("failed on probation");
    assert_eq!(
        (r.stage(), r.digest, r.failed, r.next_start_at),
        (Stage::Steady, Some(d(1)), Some(d(2)), 140)
    );
    assert!(matches!(
        fx.events.as_slice(),
        [
            EventBody::UpdateFailed { revision: 7, .. },
            EventBody::RolledBack { digest, .. }
        ] if *digest == d(1)
    ));
    assert!(matches!(fx.start, Some(Action::Start { digest, .. }) if digest == d(1)));

    // (restart, steady) → probation; (install, probation) → steady.
    let mut r = steady.clone();
    r.transition(
        &n,
        UpdateEvent::Restart {
            until: 150,
            stable_until: None,
        },
    )
    .expect("restart");
    assert!(matches!(r.stage(), Stage::Probation { until: 150, .. }));
    r.transition(
        &n,
        UpdateEvent::Install {
            digest: d(3),
            previous: None,
            next_start_at: 160,
            scheduled: false,
        },
    )
    .expect("install");
    assert_eq!((r.stage(), r.digest), (Stage::Steady, Some(d(3))));

    // Disallowed: nothing to prove, nothing to fail, and the record is unchanged.
    for event in [
        UpdateEvent::Proven { now: 1 },
        UpdateEvent::Settled,
        UpdateEvent::ProbationFailed {
            workload: &w,
            reason: "x",
            revision: 7,
            now: 1,
        },
    ] {
        let mut r = steady.clone();
        let err = r.transition(&n, event).expect_err("refused");
        assert_eq!(err.stage, Stage::Steady);
        assert_eq!(r, steady);
    }
}
