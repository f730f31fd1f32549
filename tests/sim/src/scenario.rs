//! The runs the binary offers. Each one enrolls (or reuses) the devices, connects them all, does
//! its one thing, waits until the fleet has settled or the timeout passes, and reports.
//!
//! - `enroll`: only enroll (into the state file) and exit; later runs with `--state` use them.
//! - `connect`: only enroll and connect (capacity: how many connections, how much memory).
//! - `deploy`: upload an image, release it and deploy it to the simulated devices; measure from
//!   the deploy call until every device has verified its new desired state and every event
//!   it reported is acked.
//! - `burst`: every device reports at once; wait until every event is acked.
//! - `partition`: cut a share of the connections, hold, heal; wait until all are back and every
//!   event is acked.
//! - `restart`: deploy as `deploy` does, then run the broker's restart command (checklist C57:
//!   with mosquitto, restart mosquitto); every device appends an event while the broker is
//!   away, and the run waits until every device has reconnected (each after its own jittered
//!   back-off) with every event acked, and the hub lists all of them online and converged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fleet::{Fleet, Settings, Summary};
use crate::hub::{HubClient, HubError};
use crate::identity::{self, EnrollPlan, StateError, StateFile};

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Enroll only (into the state file), connect nothing.
    Enroll,
    /// Enroll and connect.
    Connect,
    /// Deploy a release to every simulated device.
    Deploy,
    /// Every device reports at once.
    Burst,
    /// Cut a share of the connections, then heal.
    Partition,
    /// Deploy, then restart the broker (`--restart-cmd`) and wait until all are back.
    Restart,
}

/// A run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenario.
    pub kind: Kind,
    /// Enrollment.
    pub enroll: EnrollPlan,
    /// Connections.
    pub settings: Settings,
    /// State file (identities reused across runs), if any.
    pub state: Option<PathBuf>,
    /// Percentage of devices the partition cuts.
    pub cut_percent: f64,
    /// How long the partition holds.
    pub hold: Duration,
    /// Events per device in a burst.
    pub burst_events: usize,
    /// Patience for each phase.
    pub timeout: Duration,
    /// The shell command that restarts the broker (`restart`).
    pub restart_cmd: Option<String>,
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// State file or enrollment.
    #[error(transparent)]
    State(#[from] StateError),
    /// The hub's API.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The broker's restart command failed or is missing.
    #[error("restart command: {0}")]
    Restart(String),
}

/// Seconds each phase took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Enrolling the new devices.
    pub enroll_s: f64,
    /// Until every device was connected.
    pub connect_s: f64,
    /// The scenario itself, until settled.
    pub scenario_s: f64,
    /// `restart`: from the restart command's start until every device was back with nothing
    /// pending and the hub listed all of them online and converged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_s: Option<f64>,
}

/// What a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario.
    pub scenario: Kind,
    /// Whether every phase settled before its timeout.
    pub ok: bool,
    /// Why the scenario failed, when a call to the hub did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The phase that timed out, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<&'static str>,
    /// Phase durations.
    pub phases: Phases,
    /// The fleet at the end.
    pub summary: Summary,
}

fn settled(s: &Summary) -> bool {
    s.connected == s.devices && s.events.pending == 0
}

/// Runs `plan` against `hub`.
pub async fn run(hub: &HubClient, plan: &Plan) -> Result<Report, RunError> {
    let mut phases = Phases::default();
    let state = match &plan.state {
        Some(p) => StateFile::load(p)?,
        None => StateFile::default(),
    };
    let t = Instant::now();
    let identity::Enrolled {
        devices,
        enrolled,
        unused,
    } = identity::enroll_missing(hub, &plan.enroll, state.devices).await?;
    phases.enroll_s = t.elapsed().as_secs_f64();
    // Saved before connecting, so an interrupted run still knows whom it enrolled.
    if let Some(p) = &plan.state {
        let all = devices.iter().chain(&unused).cloned().collect();
        StateFile { devices: all }.save(p)?;
    }
    let n = devices.len();
    if plan.kind == Kind::Enroll {
        let fleet = Fleet::start(Vec::new(), plan.settings.clone(), 0);
        let mut summary = fleet.summary();
        fleet.stop().await;
        (summary.devices, summary.enrolled, summary.reused) = (n, enrolled, n - enrolled);
        return Ok(Report {
            scenario: plan.kind,
            ok: true,
            error: None,
            timed_out: None,
            phases,
            summary,
        });
    }
    let t = Instant::now();
    let fleet = Fleet::start(devices, plan.settings.clone(), enrolled);
    let mut timed_out = None;
    match fleet.wait_for(plan.timeout, |s| s.connected == n).await {
        Ok(_) => phases.connect_s = t.elapsed().as_secs_f64(),
        Err(_) => timed_out = Some("connect"),
    }
    let mut error = None;
    if timed_out.is_none() {
        let t = Instant::now();
        match scenario(hub, plan, &fleet, &mut phases).await {
            Ok(true) => phases.scenario_s = t.elapsed().as_secs_f64(),
            Ok(false) => timed_out = Some("scenario"),
            // The devices' state is saved all the same: their event sequences moved on.
            Err(e) => error = Some(e.to_string()),
        }
    }
    let summary = fleet.summary();
    let mut devices = fleet.stop().await;
    if let Some(p) = &plan.state {
        devices.extend(unused);
        StateFile { devices }.save(p)?;
    }
    Ok(Report {
        scenario: plan.kind,
        ok: timed_out.is_none() && error.is_none(),
        error,
        timed_out,
        phases,
        summary,
    })
}

/// The labels every simulated device of `prefix` gets through its enrollment token.
pub fn labels(prefix: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("sim".to_string(), prefix.to_string())])
}

/// The scenario itself, once every device is connected; `false` when it did not settle in time.
async fn scenario(
    hub: &HubClient,
    plan: &Plan,
    fleet: &Fleet,
    phases: &mut Phases,
) -> Result<bool, RunError> {
    let done = match plan.kind {
        Kind::Enroll | Kind::Connect => return Ok(true),
        Kind::Restart => {
            let cmd = plan
                .restart_cmd
                .as_deref()
                .ok_or_else(|| RunError::Restart("--restart-cmd is required".into()))?;
            if !deploy(hub, plan, fleet).await? {
                return Ok(false);
            }
            let t = Instant::now();
            let back = restart_broker(hub, plan, fleet, cmd).await?;
            if back {
                phases.restart_s = Some(t.elapsed().as_secs_f64());
            }
            return Ok(back);
        }
        Kind::Deploy => return deploy(hub, plan, fleet).await,
        Kind::Burst => {
            fleet.burst(plan.burst_events);
            // Give every task the moment to append before "nothing pending" can hold.
            tokio::time::sleep(Duration::from_millis(200)).await;
            fleet.wait_for(plan.timeout, settled).await
        }
        Kind::Partition => {
            fleet.cut(plan.cut_percent);
            tokio::time::sleep(plan.hold).await;
            fleet.heal();
            tokio::time::sleep(Duration::from_millis(200)).await;
            fleet.wait_for(plan.timeout, settled).await
        }
    };
    Ok(done.is_ok())
}

/// Uploads an image, releases it, deploys it to the simulated devices and waits until every
/// device verified its new state and every event is acked.
async fn deploy(hub: &HubClient, plan: &Plan, fleet: &Fleet) -> Result<bool, RunError> {
    let n = fleet.ids().len();
    let version = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        .to_string();
    let name = format!("{}-app", plan.enroll.prefix);
    let digest = hub.upload_image(&name, &version).await?;
    let release = hub.release(&name, &version, &digest).await?;
    fleet.mark();
    hub.deploy(release, &format!("sim={}", plan.enroll.prefix))
        .await?;
    let done = fleet
        .wait_for(plan.timeout, |s| s.delivered_since_mark == n && settled(s))
        .await;
    Ok(done.is_ok())
}

/// Runs `cmd` (through `sh -c`) to restart the broker, and waits until every device has come
/// back: reconnected, one event appended while it was away acked, and the hub listing at least
/// as many devices online and converged as the simulator runs.
async fn restart_broker(
    hub: &HubClient,
    plan: &Plan,
    fleet: &Fleet,
    cmd: &str,
) -> Result<bool, RunError> {
    let n = fleet.ids().len();
    let before = fleet.summary().connects;
    let status = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .await
        .map_err(|e| RunError::Restart(format!("{cmd:?}: {e}")))?;
    if !status.success() {
        return Err(RunError::Restart(format!("{cmd:?} exited with {status}")));
    }
    // An event each while the broker is away (or just back): it must be acked once.
    fleet.burst(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let back = fleet
        .wait_for(plan.timeout, |s| {
            s.connects >= before + n as u64 && settled(s)
        })
        .await;
    if back.is_err() {
        return Ok(false);
    }
    Ok(hub_lists_all(hub, n as u64, plan.timeout).await?)
}

/// Polls the hub's fleet summary until at least `n` devices are online and converged.
pub async fn hub_lists_all(hub: &HubClient, n: u64, timeout: Duration) -> Result<bool, HubError> {
    let until = Instant::now() + timeout;
    loop {
        let s = hub
            .admin(reqwest::Method::GET, "/api/v1/fleet/summary", None)
            .await?;
        let at_least = |k: &str| s[k].as_u64().is_some_and(|v| v >= n);
        if at_least("online") && at_least("converged") {
            return Ok(true);
        }
        if Instant::now() >= until {
            tracing::warn!(summary = %s, "the hub does not list every device online and converged");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
