//! The soak command (not in CI; docs/CHECKLIST.md C80, docs/TESTING.md): the real hub on
//! mosquitto and N agents under faults drawn at random from a seed, then the history checker.
//!
//!   cargo build --bins && target/debug/soak [--seed N] [--minutes M] [--agents N]
//!
//! Without `--seed` a seed is drawn and printed first; a failing run is replayed with the same
//! seed. Exits 1 when an invariant was violated.

use std::process::ExitCode;
use std::time::Duration;

use fleet_tests::soak::{run, SoakConfig};

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    let v = args.get(i + 1)?;
    Some(v.parse().unwrap_or_else(|e| {
        eprintln!("{name} {v}: {e}");
        std::process::exit(2)
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let seed = arg(&args, "--seed").unwrap_or_else(rand::random);
    let minutes = arg(&args, "--minutes").unwrap_or(10);
    let agents = arg(&args, "--agents").unwrap_or(3) as usize;
    println!("soak: seed {seed}, {minutes} min, {agents} agents (replay: --seed {seed})");
    let report = run(&SoakConfig {
        seed,
        duration: Duration::from_secs(minutes * 60),
        agents: agents.max(1),
    });
    let mut counts = std::collections::BTreeMap::new();
    for s in &report.steps {
        let name = format!("{s:?}");
        let kind = name.split('(').next().unwrap_or("").to_string();
        *counts.entry(kind).or_insert(0) += 1;
    }
    println!(
        "soak: {} steps {counts:?}; {} events and {} published states checked",
        report.steps.len(),
        report.events,
        report.published
    );
    if report.violations.is_empty() {
        println!("soak: no violation (seed {seed})");
        ExitCode::SUCCESS
    } else {
        for v in &report.violations {
            println!("VIOLATION {v}");
        }
        println!(
            "soak: {} violations; replay with --seed {seed}",
            report.violations.len()
        );
        ExitCode::FAILURE
    }
}
