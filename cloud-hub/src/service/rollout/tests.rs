//! The controller's tables and properties: no store, no clock, no network.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::controller::{
    command, phase_counts, step, Action, Command, DeviceObs, Health, RolloutState, Stage,
};
use super::plan::{preset, Amount, Budget, OnFailure, PhaseSpec, Plan, Select};
use super::plan_of;
use super::wire::RolloutIn;

const R: u64 = 7;
const T: u64 = 1_000;

fn fleet(n: usize, sites: usize) -> Vec<DeviceObs> {
    (0..n)
        .map(|i| DeviceObs {
            id: format!("dev-{i:02}"),
            labels: BTreeMap::from([("site".to_string(), format!("s{}", i % sites))]),
            online: true,
            health: Health::Pending,
        })
        .collect()
}

/// The observations after the driver carried out the admissions: admitted devices report
/// `h`, the others stay pending.
fn with_admitted(obs: &[DeviceObs], s: &RolloutState, h: Health) -> Vec<DeviceObs> {
    obs.iter()
        .map(|d| DeviceObs {
            health: if s.admitted.contains_key(&d.id) {
                h
            } else {
                Health::Pending
            },
            ..d.clone()
        })
        .collect()
}

fn canary() -> Plan {
    Plan::new(preset("canary").expect("preset"))
}

fn admitted_in(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Admitted { devices, .. } => Some(devices.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn the_canary_preset_splits_twenty_devices_one_one_eight_ten_and_never_reshuffles() {
    let obs = fleet(20, 3);
    let (s, _) = step(&canary(), R, &RolloutState::default(), &obs, T);
    let mut sizes = [0; 4];
    for p in s.assignment.values() {
        sizes[*p as usize] += 1;
    }
    assert_eq!(sizes, [1, 1, 8, 10]);
    let (again, _) = step(&canary(), R, &RolloutState::default(), &obs, T + 99);
    assert_eq!(again.assignment, s.assignment, "same ids, same phases");
    let (other, _) = step(&canary(), R + 1, &RolloutState::default(), &obs, T);
    assert_ne!(
        other.assignment, s.assignment,
        "another rollout, another order"
    );
}

#[test]
fn a_good_release_goes_through_every_phase_to_completion() {
    let plan = canary();
    let obs = fleet(20, 3);
    let mut s = RolloutState::default();
    let mut phases_seen = vec![];
    for i in 0..20 {
        let o = with_admitted(&obs, &s, Health::Succeeded);
        let (next, _) = step(&plan, R, &s, &o, T + i);
        s = next;
        phases_seen.push(s.stage.phase());
        if s.stage == Stage::Completed {
            break;
        }
    }
    assert_eq!(s.stage, Stage::Completed, "{phases_seen:?}");
    assert_eq!(s.admitted.len(), 20);
    assert_eq!(s.gate(), crate::model::RolloutGate::Open);
}

#[test]
fn a_failing_canary_pauses_and_nothing_more_is_issued() {
    let plan = canary();
    let obs = fleet(20, 3);
    let (s, a) = step(&plan, R, &RolloutState::default(), &obs, T);
    assert_eq!(admitted_in(&a).len(), 1, "the canary alone");
    let o = with_admitted(&obs, &s, Health::Failed);
    let (s, a) = step(&plan, R, &s, &o, T + 1);
    assert!(
        matches!(s.stage, Stage::Paused { phase: 0, .. }),
        "{:?}",
        s.stage
    );
    assert!(admitted_in(&a).is_empty());
    let (s2, a) = step(&plan, R, &s, &o, T + 100);
    assert_eq!(s2, s);
    assert!(a.is_empty(), "a paused rollout issues nothing: {a:?}");
    // Resuming accepts the failure; the next phase goes on.
    let (s, _) = command(&s, Command::Resume, &o, T + 101, "op").expect("resume");
    assert_eq!(s.stage, Stage::Running { phase: 0 });
    assert!(s.excused.len() == 1);
}

#[test]
fn a_failing_canary_with_the_rollback_policy_releases_every_admitted_device() {
    let mut plan = canary();
    plan.on_failure = OnFailure::Rollback;
    let obs = fleet(20, 3);
    let (s, _) = step(&plan, R, &RolloutState::default(), &obs, T);
    let canary: Vec<String> = s.admitted.keys().cloned().collect();
    let (s, a) = step(
        &plan,
        R,
        &s,
        &with_admitted(&obs, &s, Health::Failed),
        T + 1,
    );
    assert!(matches!(s.stage, Stage::RolledBack { .. }));
    assert!(a.contains(&Action::Publish { devices: canary }), "{a:?}");
    assert_eq!(s.gate(), crate::model::RolloutGate::Closed);
}

#[test]
fn the_failure_threshold_waits_for_the_minimum_finished() {
    let mut spec = PhaseSpec::new(Select::Percent(100));
    spec.failure_pct = 10;
    spec.min_finished = 5;
    let plan = Plan::new(vec![spec]);
    let obs = fleet(20, 1);
    let (mut s, _) = step(&plan, R, &RolloutState::default(), &obs, T);
    assert_eq!(s.admitted.len(), 20);
    let ids: Vec<String> = obs.iter().map(|d| d.id.clone()).collect();
    let mut o = with_admitted(&obs, &s, Health::Updating);
    o[0].health = Health::Failed;
    o[1].health = Health::Succeeded;
    (s, _) = step(&plan, R, &s, &o, T + 1);
    assert_eq!(
        s.stage,
        Stage::Running { phase: 0 },
        "1 of 2 finished: not yet"
    );
    for d in o.iter_mut().take(5).skip(2) {
        d.health = Health::Succeeded;
    }
    (s, _) = step(&plan, R, &s, &o, T + 2);
    assert!(
        matches!(s.stage, Stage::Paused { .. }),
        "1 of 5 = 20 % > 10 %: {:?} {ids:?}",
        s.stage
    );
}

#[test]
fn a_budget_of_one_per_site_admits_one_device_per_site_at_a_time() {
    let mut plan = Plan::new(vec![PhaseSpec::new(Select::Percent(100))]);
    plan.budget = Some(Budget {
        group_by: vec!["site".into()],
        max_unavailable: Some(Amount::Count(1)),
        min_available: None,
    });
    let obs = fleet(12, 3);
    let (s, a) = step(&plan, R, &RolloutState::default(), &obs, T);
    let got = admitted_in(&a);
    assert_eq!(got.len(), 3, "{got:?}");
    let sites: std::collections::BTreeSet<_> = got
        .iter()
        .map(|id| &obs.iter().find(|d| &d.id == id).expect("dev").labels["site"])
        .collect();
    assert_eq!(sites.len(), 3, "one per site");
    let (_, a) = step(
        &plan,
        R,
        &s,
        &with_admitted(&obs, &s, Health::Updating),
        T + 1,
    );
    assert!(admitted_in(&a).is_empty(), "still updating: {a:?}");
    let (_, a) = step(
        &plan,
        R,
        &s,
        &with_admitted(&obs, &s, Health::Succeeded),
        T + 2,
    );
    assert_eq!(admitted_in(&a).len(), 3);
}

#[test]
fn an_approval_gate_holds_until_approved() {
    let mut plan = canary();
    plan.phases[1].approval = true;
    let obs = fleet(20, 3);
    let (s, _) = step(&plan, R, &RolloutState::default(), &obs, T);
    let (s, _) = step(
        &plan,
        R,
        &s,
        &with_admitted(&obs, &s, Health::Succeeded),
        T + 1,
    );
    assert_eq!(s.stage, Stage::AwaitingApproval { phase: 1 });
    let (s2, a) = step(
        &plan,
        R,
        &s,
        &with_admitted(&obs, &s, Health::Succeeded),
        T + 500,
    );
    assert_eq!(s2, s);
    assert!(a.is_empty());
    assert!(
        command(&s, Command::Resume, &obs, T, "op").is_err(),
        "not paused"
    );
    let (s, _) = command(&s, Command::Approve, &obs, T + 501, "op").expect("approve");
    let (_, a) = step(
        &plan,
        R,
        &s,
        &with_admitted(&obs, &s, Health::Succeeded),
        T + 502,
    );
    assert_eq!(admitted_in(&a).len(), 1, "phase 1's one device");
}

#[test]
fn offline_devices_are_pending_until_the_deadline_and_then_skipped() {
    let mut plan = Plan::new(vec![PhaseSpec::new(Select::Percent(100))]);
    plan.offline_deadline_secs = 60;
    let mut obs = fleet(4, 1);
    obs[3].online = false;
    let (s, a) = step(&plan, R, &RolloutState::default(), &obs, T);
    assert_eq!(admitted_in(&a).len(), 3, "the offline device is not issued");
    let o = with_admitted(&obs, &s, Health::Succeeded);
    let (s1, _) = step(&plan, R, &s, &o, T + 59);
    assert_eq!(s1.stage, Stage::Running { phase: 0 }, "pending, not failed");
    assert_eq!(phase_counts(&plan, &s1, &o, 0, T + 59).failed, 0);
    let (s2, a) = step(&plan, R, &s1, &o, T + 60);
    assert_eq!(s2.stage, Stage::Completed);
    assert!(a.contains(&Action::Publish {
        devices: vec![obs[3].id.clone()]
    }));
}

#[test]
fn a_device_joining_mid_rollout_gets_a_phase_and_is_issued_once_its_phase_is_open() {
    let plan = canary();
    let mut obs = fleet(20, 3);
    let (s, _) = step(&plan, R, &RolloutState::default(), &obs, T);
    obs.push(DeviceObs {
        id: "late".into(),
        labels: BTreeMap::new(),
        online: true,
        health: Health::Pending,
    });
    let (s, _) = step(
        &plan,
        R,
        &s,
        &with_admitted(&obs, &s, Health::Updating),
        T + 1,
    );
    let p = s.assignment["late"];
    assert!(p >= 1, "the canary count is full");
    assert!(!s.admitted.contains_key("late"));
}

#[test]
fn commands_outside_their_stages_are_refused() {
    let s = RolloutState::default();
    assert!(command(&s, Command::Approve, &[], T, "op").is_err());
    assert!(command(&s, Command::Resume, &[], T, "op").is_err());
    let (s, _) = command(&s, Command::Abort, &[], T, "op").expect("abort");
    assert!(command(&s, Command::Abort, &[], T, "op").is_err());
    let (s, _) = command(&s, Command::Rollback, &[], T, "op").expect("rollback");
    assert!(command(&s, Command::Rollback, &[], T, "op").is_err());
}

#[test]
fn bad_plans_are_refused_with_a_reason() {
    let bad = |r: RolloutIn| plan_of(&r).expect_err("refused").to_string();
    assert!(bad(RolloutIn {
        preset: Some("fast".into()),
        ..Default::default()
    })
    .contains("unknown preset"));
    assert!(bad(RolloutIn {
        phases: Some(vec![
            PhaseSpec::new(Select::Percent(50)),
            PhaseSpec::new(Select::Percent(10))
        ]),
        ..Default::default()
    })
    .contains("cumulative"));
    assert!(bad(RolloutIn {
        max_concurrent: Some(0),
        ..Default::default()
    })
    .contains("max_concurrent"));
    assert!(serde_json::from_str::<Amount>("\"101%\"").is_err());
    assert_eq!(
        serde_json::from_str::<Amount>("\"25%\"").expect("amount"),
        Amount::Percent(25)
    );
}

fn arb_plan() -> impl Strategy<Value = Plan> {
    (
        prop::option::of(1u32..4),
        prop::option::of(1u32..3),
        prop::bool::ANY,
        0u64..3,
    )
        .prop_map(|(cap, budget, rollback, bake)| {
            let mut phases = preset("canary").expect("preset");
            for p in &mut phases {
                p.max_concurrent = cap;
                p.bake_secs = bake;
                p.min_finished = 2;
            }
            let mut plan = Plan::new(phases);
            plan.budget = budget.map(|n| Budget {
                group_by: vec!["site".into()],
                max_unavailable: Some(Amount::Count(n)),
                min_available: None,
            });
            if rollback {
                plan.on_failure = OnFailure::Rollback;
            }
            plan
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Over random fleets and random device reports: a device's phase never changes; after an
    /// admission, the devices updating never exceed the cap nor any site's budget; a paused
    /// rollout issues nothing; the same observations give the same step.
    #[test]
    fn the_controller_keeps_its_invariants(
        plan in arb_plan(),
        n in 1usize..30,
        sites in 1usize..4,
        rounds in prop::collection::vec((prop::collection::vec(0u8..10, 30), 0u8..4), 1..25),
    ) {
        let mut obs = fleet(n, sites);
        let mut s = RolloutState::default();
        for (now, (healths, cmd)) in (T..).zip(rounds) {
            for (i, d) in obs.iter_mut().enumerate() {
                d.online = healths[i] != 9;
                d.health = if !s.admitted.contains_key(&d.id) {
                    Health::Pending
                } else {
                    match healths[i] { 0 => Health::Failed, 1..=4 => Health::Updating, _ => Health::Succeeded }
                };
            }
            if cmd == 3 {
                if let Ok((next, _)) = command(&s, Command::Pause, &obs, now, "op") { s = next; }
            }
            if cmd == 2 {
                if let Ok((next, _)) = command(&s, Command::Resume, &obs, now, "op") { s = next; }
            }
            if cmd == 1 {
                if let Ok((next, _)) = command(&s, Command::Approve, &obs, now, "op") { s = next; }
            }
            let (next, actions) = step(&plan, R, &s, &obs, now);
            prop_assert_eq!((next.clone(), actions.clone()), step(&plan, R, &s, &obs, now));
            for (id, p) in &s.assignment {
                prop_assert_eq!(next.assignment.get(id), Some(p), "phase of {} changed", id);
            }
            let newly = admitted_in(&actions);
            if matches!(s.stage, Stage::Paused { .. }) {
                prop_assert!(newly.is_empty(), "paused but issued {:?}", newly);
            }
            if !newly.is_empty() {
                let busy = |d: &&DeviceObs| next.admitted.contains_key(&d.id)
                    && matches!(d.health, Health::Pending | Health::Updating);
                let updating = obs.iter().filter(busy).count() as u32;
                let phase = s.stage.phase().or(next.stage.phase()).unwrap_or(0) as usize;
                if let Some(cap) = plan.phases[phase].max_concurrent.or(plan.phases[0].max_concurrent) {
                    prop_assert!(updating <= cap, "{} updating, cap {}", updating, cap);
                }
                if let Some(b) = &plan.budget {
                    let Some(Amount::Count(max)) = b.max_unavailable else { unreachable!() };
                    let mut down: BTreeMap<&str, u32> = BTreeMap::new();
                    for d in &obs {
                        let unavailable = !d.online
                            || (next.admitted.contains_key(&d.id) && d.health != Health::Succeeded);
                        if unavailable { *down.entry(&d.labels["site"]).or_default() += 1; }
                    }
                    for id in &newly {
                        let site = &obs.iter().find(|d| &d.id == id).expect("dev").labels["site"];
                        prop_assert!(down[site.as_str()] <= max, "site {} has {} down, budget {}", site, down[site.as_str()], max);
                    }
                }
            }
            s = next;
        }
    }
}

/// The controller's cost on a large fleet, printed, not asserted (run with
/// `cargo test -p cloud-hub --release --lib step_cost -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a test"]
fn step_cost_at_ten_thousand_devices() {
    let mut plan = canary();
    plan.budget = Some(Budget {
        group_by: vec!["site".into()],
        max_unavailable: Some(Amount::Percent(10)),
        min_available: None,
    });
    let obs = fleet(10_000, 50);
    let t = std::time::Instant::now();
    let (s, _) = step(&plan, R, &RolloutState::default(), &obs, T);
    let first = t.elapsed();
    let o = with_admitted(&obs, &s, Health::Succeeded);
    let t = std::time::Instant::now();
    let rounds = 20;
    let mut st = s;
    for i in 0..rounds {
        st = step(&plan, R, &st, &o, T + 1 + i).0;
    }
    let each = t.elapsed() / rounds as u32;
    let bytes = serde_json::to_vec(&st).map_or(0, |v| v.len());
    println!("10,000 devices, 50 sites: first step (assignment) {first:?}, later steps {each:?} each, state {bytes} bytes as JSON");
}
