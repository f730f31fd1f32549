//! Table tests of the stability window (DESIGN §3.8): after an update, the new version is
//! watched for `stability_window_secs`; an exit or a failed health check inside the window fails
//! the update and swaps back, after it the restart policy applies as to any version.

use protocol::{Convergence, EventBody, HealthCheck, Probe, Workload};

use super::tests::{d, exited, name, obs, running, starts, state, stops, wl};
use super::*;

/// `svc` on image 2, watched for 60 s after an update (deadline 30 s).
fn watched(health: bool) -> Workload {
    let mut w = wl("svc", d(2));
    w.stability_window_secs = 60;
    if health {
        w.health = Some(HealthCheck {
            probe: Probe::Tcp { port: 1 },
            interval_secs: 1,
            timeout_secs: 1,
            retries: 1,
            start_period_secs: 0,
        });
    }
    w
}

/// Swaps image 1 for image 2 at t=100 and lets the new instance `b` prove healthy at t=102;
/// returns the record then (watched until 160).
fn swapped_and_healthy(w: &Workload) -> Record {
    let s = state(vec![w.clone()]);
    let steady = Record {
        digest: Some(d(1)),
        spec: Some(wl("svc", d(1))),
        ..Record::default()
    };
    let p = plan(
        Some(&s),
        &obs(
            vec![running("a", "svc", d(1), 0)],
            &[d(1), d(2)],
            vec![("svc", steady)],
        ),
        100,
    );
    assert_eq!(starts(&p), vec![d(2)]);
    let r = &p.records[&name("svc")];
    assert_eq!((r.probation_until, r.stable_until), (Some(130), Some(160)));
    let mut o = obs(
        vec![running("b", "svc", d(2), 100)],
        &[d(1), d(2)],
        vec![("svc", r.clone())],
    );
    o.health.insert("b".into(), Some(true));
    let p = plan(Some(&s), &o, 102);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let r = p.records[&name("svc")].clone();
    assert_eq!(
        r.stage(),
        Stage::Watching {
            until: 160,
            previous: Some(d(1))
        }
    );
    // Healthy but still watched: not converged yet, so no `update_succeeded`.
    assert_eq!(p.convergence, Convergence::Converging);
    r
}

fn update_failed_reason(p: &Plan) -> Option<String> {
    p.events.iter().find_map(|e| match e {
        EventBody::UpdateFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn an_exit_inside_the_window_swaps_back_and_reports_the_failed_update() {
    let w = watched(false);
    let rec = swapped_and_healthy(&w);
    let s = state(vec![w]);
    let p = plan(
        Some(&s),
        &obs(
            vec![exited("b", "svc", d(2), 1, 109)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        ),
        110,
    );
    assert_eq!(starts(&p), vec![d(1)], "swapped back");
    assert_eq!(
        update_failed_reason(&p).as_deref(),
        Some("exited within its stability window")
    );
    assert!(p.events.iter().any(
        |e| matches!(e, EventBody::RolledBack { digest, revision: 7, .. } if *digest == d(1))
    ));
    let r = &p.records[&name("svc")];
    assert_eq!(
        (r.stage(), r.digest, r.failed),
        (Stage::Steady, Some(d(1)), Some(d(2)))
    );
    assert_eq!(p.convergence, Convergence::Failed);
    // The failed version is not started again while it stays the target.
    let p = plan(
        Some(&s),
        &obs(
            vec![running("c", "svc", d(1), 110)],
            &[d(1), d(2)],
            vec![("svc", r.clone())],
        ),
        200,
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.convergence, Convergence::Failed);
}

#[test]
fn an_exit_after_the_window_follows_the_restart_policy() {
    let w = watched(false);
    let s = state(vec![w.clone()]);
    // Running through the window keeps the update: converged, the old version forgotten.
    let rec = swapped_and_healthy(&w);
    let p = plan(
        Some(&s),
        &obs(
            vec![running("b", "svc", d(2), 100)],
            &[d(1), d(2)],
            vec![("svc", rec.clone())],
        ),
        160,
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.convergence, Convergence::Converged);
    let settled = p.records[&name("svc")].clone();
    assert_eq!((settled.stage(), settled.previous), (Stage::Steady, None));
    // A later exit is an ordinary crash: restarted after its backoff, no swap back.
    let p = plan(
        Some(&s),
        &obs(
            vec![exited("b", "svc", d(2), 1, 170)],
            &[d(1), d(2)],
            vec![("svc", settled)],
        ),
        170,
    );
    assert_eq!(update_failed_reason(&p), None);
    assert!(starts(&p).is_empty(), "restarted before its backoff");
    let r = &p.records[&name("svc")];
    assert_eq!(
        (r.digest, r.restarts, r.next_start_at),
        (Some(d(2)), 1, 171)
    );
    // The same when the agent first sees the exit late, still holding the watched record: the
    // exit's own time is after the window, so the update held.
    let p = plan(
        Some(&s),
        &obs(
            vec![exited("b", "svc", d(2), 1, 165)],
            &[d(1), d(2)],
            vec![("svc", rec)],
        ),
        170,
    );
    assert_eq!(update_failed_reason(&p), None);
    let r = &p.records[&name("svc")];
    assert_eq!(
        (r.stage(), r.digest, r.failed, r.restarts),
        (Stage::Steady, Some(d(2)), None, 1)
    );
}

#[test]
fn a_failing_health_check_inside_the_window_swaps_back() {
    let w = watched(true);
    let rec = swapped_and_healthy(&w);
    let s = state(vec![w]);
    let mut o = obs(
        vec![running("b", "svc", d(2), 100)],
        &[d(1), d(2)],
        vec![("svc", rec)],
    );
    o.health.insert("b".into(), Some(false));
    let p = plan(Some(&s), &o, 140);
    assert_eq!(stops(&p), vec!["b".to_string()]);
    assert_eq!(starts(&p), vec![d(1)]);
    assert_eq!(
        update_failed_reason(&p).as_deref(),
        Some("unhealthy within its stability window")
    );
    assert_eq!(p.records[&name("svc")].failed, Some(d(2)));
    assert_eq!(p.convergence, Convergence::Failed);
    // After the window the same failed check is only a health state, not a failed update.
    let settled = Record {
        digest: Some(d(2)),
        spec: Some(watched(true)),
        ..Record::default()
    };
    let mut o = obs(
        vec![running("b", "svc", d(2), 100)],
        &[d(1), d(2)],
        vec![("svc", settled)],
    );
    o.health.insert("b".into(), Some(false));
    let p = plan(Some(&s), &o, 200);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(update_failed_reason(&p), None);
}

#[test]
fn a_record_written_before_the_window_existed_loads_and_is_proven_at_once() {
    let old = serde_json::json!({
        "digest": d(2), "previous": d(1), "probation_until": 130, "failed": null,
        "restarts": 0, "recent_exits": [], "next_start_at": 100, "done": false,
        "crash_loop_reported": false
    });
    let mut r: Record = serde_json::from_value(old).expect("an old record loads");
    assert_eq!(r.stable_until, None);
    r.transition(&name("svc"), UpdateEvent::Proven { now: 110 })
        .expect("proven");
    assert_eq!((r.stage(), r.previous), (Stage::Steady, None));
}

/// The window's pairs of the transition function.
#[test]
fn the_window_transitions_are_the_listed_pairs() {
    let w = watched(false);
    let n = name("svc");
    let mut r = Record {
        digest: Some(d(1)),
        ..Record::default()
    };
    r.transition(
        &n,
        UpdateEvent::Swap {
            from: d(1),
            to: d(2),
            workload: &w,
            until: 130,
            stable_until: Some(160),
        },
    )
    .expect("swap");
    let probation = r.clone();
    // (proven, probation) inside the window → watching; after it → steady.
    r.transition(&n, UpdateEvent::Proven { now: 110 })
        .expect("proven");
    let watching = r.clone();
    assert!(matches!(
        watching.stage(),
        Stage::Watching { until: 160, .. }
    ));
    let mut late = probation.clone();
    late.transition(&n, UpdateEvent::Proven { now: 160 })
        .expect("proven late");
    assert_eq!((late.stage(), late.previous), (Stage::Steady, None));
    // (settled, watching) → steady; (probation_failed, watching) → swap back.
    let mut s = watching.clone();
    s.transition(&n, UpdateEvent::Settled).expect("settled");
    assert_eq!((s.stage(), s.previous), (Stage::Steady, None));
    let mut f = watching.clone();
    let fx = f
        .transition(
            &n,
            UpdateEvent::ProbationFailed {
                workload: &w,
                reason: "exited within its stability window",
                revision: 7,
                now: 120,
            },
        )
        .expect("failed in the window");
    assert!(matches!(fx.start, Some(Action::Start { digest, .. }) if digest == d(1)));
    assert_eq!((f.stage(), f.failed), (Stage::Steady, Some(d(2))));
    // (swap, watching) → probation of the newer target.
    let mut sw = watching.clone();
    sw.transition(
        &n,
        UpdateEvent::Swap {
            from: d(2),
            to: d(3),
            workload: &wl("svc", d(3)),
            until: 200,
            stable_until: None,
        },
    )
    .expect("swap from watching");
    assert!(matches!(sw.stage(), Stage::Probation { until: 200, previous: Some(p) } if p == d(2)));
    // Disallowed, and nothing changes: proving twice, settling what is not watched.
    for (rec, event) in [
        (watching.clone(), UpdateEvent::Proven { now: 120 }),
        (probation.clone(), UpdateEvent::Settled),
    ] {
        let mut r = rec.clone();
        r.transition(&n, event).expect_err("refused");
        assert_eq!(r, rec);
    }
}
