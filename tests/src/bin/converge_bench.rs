//! Convergence benchmark: time from deploy to all-converged for N local agents, and from a
//! partition heal to converged-and-all-events-stored for the partitioned devices.
//!
//!   cargo build --release --bins && target/release/converge-bench 5 50 200
//!
//! Figures are written to stdout as a Markdown table (docs/BENCHMARKS.md has the last run).

use std::time::{Duration, Instant};

use fleet_test_kit::eventually;
use fleet_tests::fleet::Fleet;

fn run(n: usize) -> (Duration, Duration, Duration) {
    let started = Instant::now();
    let mut fleet = Fleet::start(0);
    for i in 0..n {
        fleet.add_agent(i);
    }
    let setup = started.elapsed();
    let v1 = fleet.image("bench", "exec sleep 100000", &[]);
    let r1 = fleet.release("bench", "1", &v1, None);
    let t = Instant::now();
    fleet.deploy(r1, 0);
    fleet.wait_converged(600);
    let deploy = t.elapsed();
    // Partition a fifth of the fleet, deploy again, heal.
    let cut: Vec<usize> = (0..n).step_by(5).collect();
    for &i in &cut {
        fleet.agents[i].mqtt.cut();
    }
    let v2 = fleet.image("bench", "exec sleep 100001", &[]);
    let r2 = fleet.release("bench", "2", &v2, None);
    fleet.deploy(r2, 1);
    for (i, a) in fleet.agents.iter().enumerate() {
        if !cut.contains(&i) {
            eventually(600, "others converged", || {
                fleet.converged(&a.id).then_some(())
            });
        }
    }
    let t = Instant::now();
    for &i in &cut {
        fleet.agents[i].mqtt.heal();
    }
    for &i in &cut {
        let a = &fleet.agents[i];
        eventually(600, "partitioned converged", || {
            let events = fleet.events(&a.id);
            let contiguous = events
                .iter()
                .enumerate()
                .all(|(k, e)| e["seq"].as_u64() == Some(k as u64 + 1));
            let succeeded = events
                .iter()
                .filter(|e| e["body"]["type"] == "update_succeeded")
                .count()
                >= 2;
            (fleet.converged(&a.id) && contiguous && succeeded).then_some(())
        });
    }
    (setup, deploy, t.elapsed())
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![5, 50] } else { sizes };
    println!(
        "| agents | start + enroll | deploy → all converged | heal → converged + events stored |"
    );
    println!("| --- | --- | --- | --- |");
    for n in sizes {
        let (setup, deploy, heal) = run(n);
        println!(
            "| {n} | {:.1} s | {:.2} s | {:.2} s |",
            setup.as_secs_f64(),
            deploy.as_secs_f64(),
            heal.as_secs_f64()
        );
    }
}
