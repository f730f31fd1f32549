//! The soak's short version (C80): two agents, a minute of faults combined at random from a
//! fixed seed, then the history checker. The full soak is the `soak` binary (docs/TESTING.md).
//! About two and a half minutes: a minute of faults, then the heal and convergence.

use std::time::Duration;

use fleet_tests::soak::{draw, run, SoakConfig, Step};
use rand::SeedableRng;

#[test]
fn the_fault_schedule_is_a_function_of_the_seed() {
    let steps = |seed| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..50).map(|_| draw(&mut rng, 3)).collect::<Vec<Step>>()
    };
    assert_eq!(steps(7), steps(7));
    assert_ne!(steps(7), steps(8));
}

#[test]
fn a_minute_of_combined_faults_loses_doubles_and_invents_nothing() {
    let seed = std::env::var("FLEET_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_125);
    let report = run(&SoakConfig {
        seed,
        duration: Duration::from_secs(60),
        agents: 2,
    });
    eprintln!(
        "seed {seed}: {} steps, {} events, {} published states",
        report.steps.len(),
        report.events,
        report.published
    );
    assert!(
        report.steps.len() > 20,
        "the schedule ran: {:?}",
        report.steps
    );
    assert!(report.published > 0 && report.events > 0);
    assert!(
        report.violations.is_empty(),
        "seed {seed} (replay with FLEET_SOAK_SEED={seed}): {:#?}\nsteps: {:?}",
        report.violations,
        report.steps
    );
}
