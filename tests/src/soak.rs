//! The soak (docs/CHECKLIST.md C80): the real hub on mosquitto and N real agents, with faults
//! combined at random from a recorded seed — proxy cuts and blackholes of an agent's broker and
//! HTTP links, kill -9 of agents and of the hub, deployments of new releases — for a given time;
//! then every fault is healed and a history checker reads the hub's event log and what the hub
//! published:
//! - no event lost or stored twice: each device's events at the hub carry the sequence numbers
//!   1..=n exactly once (or the gaps the device reports dropped), and its outbox is empty;
//! - no device ever on a revision the hub never signed: every `desired_accepted` revision and
//!   the applied revision in each status are revisions the hub published for that device
//!   (recorded by an independent MQTT subscriber on the broker, which sees every signed state);
//! - in the end every device converges on the hub's last state.
//!
//! The fault schedule is a function of the seed alone, so a failure is replayed by running the
//! same seed again (timing differs from run to run; the sequence of faults does not).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_test_kit::eventually;
use fleet_test_kit::proxy::{Direction, Mode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::fleet::Fleet;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Seed of the fault schedule.
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// Number of agents.
    pub agents: usize,
}

/// One fault or change, as the schedule drew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Cut agent `i`'s broker link for `secs`.
    CutMqtt(usize, u64),
    /// Drop everything from the broker to agent `i` for `secs`.
    OneWay(usize, u64),
    /// Cut agent `i`'s HTTP link for `secs`.
    CutHttp(usize, u64),
    /// Kill agent `i` with SIGKILL; start it again after `secs`.
    KillAgent(usize, u64),
    /// Kill the hub with SIGKILL and start it again.
    KillHub,
    /// Deploy a new release.
    Deploy,
    /// Let things run for `millis`.
    Pause(u64),
}

/// The schedule's next step: a function of the generator alone.
pub fn draw(rng: &mut StdRng, agents: usize) -> Step {
    let i = rng.gen_range(0..agents);
    let secs = rng.gen_range(1..=8);
    match rng.gen_range(0..100) {
        0..=19 => Step::CutMqtt(i, secs),
        20..=29 => Step::OneWay(i, secs),
        30..=39 => Step::CutHttp(i, secs),
        40..=54 => Step::KillAgent(i, rng.gen_range(0..=3)),
        55..=61 => Step::KillHub,
        62..=79 => Step::Deploy,
        _ => Step::Pause(rng.gen_range(200..=2_000)),
    }
}

/// What the soak found.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// The steps run, in order.
    pub steps: Vec<Step>,
    /// Invariant violations (empty when the run held).
    pub violations: Vec<String>,
    /// Events checked at the hub, over all devices.
    pub events: usize,
    /// Signed states seen published.
    pub published: usize,
}

/// Revisions the hub published per device, as an independent subscriber saw them.
type Published = Arc<Mutex<BTreeMap<String, BTreeSet<u64>>>>;

/// Subscribes to every device's `desired` topic on the broker at `port` and records the
/// revision of each signed state that goes by (retained ones included).
fn watch_published(port: u16, stop: Stop) -> Published {
    let seen: Published = Arc::default();
    let out = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut opts = rumqttc::MqttOptions::new("soak-observer", "127.0.0.1", port);
            opts.set_max_packet_size(1 << 21, 1 << 16);
            opts.set_keep_alive(Duration::from_secs(5));
            let (client, mut el) = rumqttc::AsyncClient::new(opts, 16);
            loop {
                if stop.stopped() {
                    return;
                }
                let ev = tokio::time::timeout(Duration::from_millis(500), el.poll()).await;
                match ev {
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                        let _ = client
                            .subscribe("fleet/v1/dev/+/desired", rumqttc::QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                        if let Some((dev, rev)) = revision_of(&p.topic, &p.payload) {
                            let mut s = out.lock().unwrap_or_else(|e| e.into_inner());
                            s.entry(dev).or_default().insert(rev);
                        }
                    }
                    Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                    _ => {}
                }
            }
        });
    });
    seen
}

/// The device and revision of a signed desired state published on `topic`.
fn revision_of(topic: &str, payload: &[u8]) -> Option<(String, u64)> {
    let dev = topic
        .strip_prefix("fleet/v1/dev/")?
        .strip_suffix("/desired")?;
    let env = protocol::Envelope::decode(payload).ok()?;
    let state: Value = serde_json::from_slice(&env.payload).ok()?;
    Some((dev.to_string(), state["revision"].as_u64()?))
}

/// Tells the observer thread to stop.
#[derive(Debug, Clone, Default)]
struct Stop(Arc<AtomicBool>);

impl Stop {
    fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Pending heals and restarts, by when they are due.
#[derive(Default)]
struct Due {
    heal_mqtt: BTreeMap<usize, Instant>,
    heal_http: BTreeMap<usize, Instant>,
    start_agent: BTreeMap<usize, Instant>,
}

impl Due {
    /// Carries out what is due by `now` (everything, with `all`).
    fn run(&mut self, fleet: &mut Fleet, now: Instant, all: bool) {
        let due = |m: &mut BTreeMap<usize, Instant>| -> Vec<usize> {
            let ready: Vec<usize> = m
                .iter()
                .filter(|(_, t)| all || **t <= now)
                .map(|(i, _)| *i)
                .collect();
            for i in &ready {
                m.remove(i);
            }
            ready
        };
        for i in due(&mut self.heal_mqtt) {
            fleet.agents[i].mqtt.heal();
        }
        for i in due(&mut self.heal_http) {
            fleet.agents[i].http.heal();
        }
        for i in due(&mut self.start_agent) {
            fleet.agents[i].proc.start().expect("start agent");
        }
    }
}

/// Runs the soak; the report lists every violation found.
pub fn run(cfg: &SoakConfig) -> SoakReport {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut fleet = Fleet::start_with_mosquitto(cfg.agents);
    let port = fleet.mosquitto.as_ref().expect("mosquitto").port;
    let stop = Stop::default();
    let published = watch_published(port, stop.clone());
    let images: Vec<String> = (0..3)
        .map(|v| fleet.image("soak", &format!("exec sleep {}", 100_000 + v), &[]))
        .collect();
    let mut version = 0u64;
    let mut deploy = |fleet: &Fleet| {
        version += 1;
        let digest = &images[version as usize % images.len()];
        let r = fleet.release("soak", &version.to_string(), digest, None);
        fleet.deploy(r, version as i64);
    };
    deploy(&fleet);
    let mut report = SoakReport::default();
    let mut due = Due::default();
    let until = Instant::now() + cfg.duration;
    while Instant::now() < until {
        due.run(&mut fleet, Instant::now(), false);
        let step = draw(&mut rng, cfg.agents);
        let later = |s: u64| Instant::now() + Duration::from_secs(s);
        match step {
            Step::CutMqtt(i, s) => {
                fleet.agents[i].mqtt.cut();
                due.heal_mqtt.insert(i, later(s));
            }
            Step::OneWay(i, s) => {
                fleet.agents[i]
                    .mqtt
                    .set(Mode::Blackhole(Direction::Downstream));
                due.heal_mqtt.insert(i, later(s));
            }
            Step::CutHttp(i, s) => {
                fleet.agents[i].http.cut();
                due.heal_http.insert(i, later(s));
            }
            Step::KillAgent(i, s) => {
                if let std::collections::btree_map::Entry::Vacant(e) = due.start_agent.entry(i) {
                    fleet.agents[i].proc.kill9();
                    e.insert(later(s));
                }
            }
            Step::KillHub => fleet.restart_hub(),
            Step::Deploy => deploy(&fleet),
            Step::Pause(ms) => std::thread::sleep(Duration::from_millis(ms)),
        }
        report.steps.push(step);
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..=600)));
    }
    due.run(&mut fleet, Instant::now(), true);
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fleet.wait_converged(180);
    }));
    if converged.is_err() {
        report
            .violations
            .push("not every device converged within 180 s after the heal".into());
    }
    // Let the last events and statuses arrive.
    for a in &fleet.agents {
        let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eventually(60, "the outbox empty", || {
                (crate::soak_check::outbox_events(&a.data) == Some(0)).then_some(())
            })
        }));
        if settled.is_err() {
            report
                .violations
                .push(format!("{}: events still waiting in its outbox", a.id));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.stop();
    let published = published.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.published = published.values().map(BTreeSet::len).sum();
    for a in &fleet.agents {
        let events = fleet.events(&a.id);
        report.events += events.len();
        let status = fleet.device(&a.id)["status"].clone();
        let signed = published.get(&a.id).cloned().unwrap_or_default();
        report
            .violations
            .extend(crate::soak_check::check(&a.id, &events, &status, &signed));
    }
    report
}
