//! The harness cleans up after itself: workloads outlive their agent by design, so a dropped
//! `Fleet` must stop them, or every test and benchmark run leaves its processes behind (issue
//! 16: the convergence benchmark leaked every workload it started).

use fleet_test_kit::eventually;
use fleet_tests::fleet::Fleet;

/// Whether `pid` is a live process (a zombie waiting for its parent does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn dropping_a_fleet_stops_every_workload_its_agents_started() {
    let mut fleet = Fleet::start(0);
    for i in 0..2 {
        fleet.add_agent(i);
    }
    let image = fleet.image("teardown", "exec sleep 100000", &[]);
    let release = fleet.release("teardown", "1", &image, None);
    fleet.deploy(release, 0);
    fleet.wait_converged(120);
    let pids: Vec<u32> = fleet
        .agents
        .iter()
        .flat_map(|a| a.running())
        .map(|(_, pid, _)| pid)
        .collect();
    assert_eq!(pids.len(), 2, "one workload per agent");
    assert!(pids.iter().all(|p| alive(*p)));
    drop(fleet);
    eventually(10, "every workload stopped with its fleet", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}
