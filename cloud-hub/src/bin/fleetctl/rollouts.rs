//! `fleetctl rollouts`: create a staged rollout, list, status (per-phase counts and the devices
//! behind them, with last seen), and pause / resume / approve / abort / rollback.

use clap::{Args, Subcommand, ValueEnum};
use cloud_hub::service::rollout::plan::{Amount, Budget, OnFailure, PhaseSpec, Select};
use cloud_hub::service::rollout::wire::RolloutIn;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, Out};

#[derive(Clone, Copy, ValueEnum)]
pub enum Policy {
    /// Stop issuing; an operator decides.
    Pause,
    /// Give every device the previous release.
    Rollback,
}

// Parsed once per process; the size of `Create` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Rollouts {
    /// List rollouts.
    List,
    /// Stage a release over a group, a selector or devices.
    Create {
        #[command(flatten)]
        spec: Spec,
    },
    /// What a rollout would change, per device class, before creating it (nothing is stored).
    Preview {
        #[command(flatten)]
        spec: Spec,
    },
    /// A rollout's stage, per-phase counts and devices.
    Status { id: u64 },
    /// Stop issuing.
    Pause { id: u64 },
    /// Issue again (failures so far are accepted).
    Resume { id: u64 },
    /// Start the phase waiting for approval.
    Approve { id: u64 },
    /// Stop for good; devices already updated keep the release.
    Abort { id: u64 },
    /// Give every device its previous release again.
    Rollback { id: u64 },
    /// A rollout's webhook deliveries.
    Webhooks { id: u64 },
}

/// What `create` and `preview` take.
#[derive(Args)]
pub struct Spec {
    /// Release id.
    #[arg(long)]
    release: u64,
    /// Target group.
    #[arg(long)]
    group: Option<String>,
    /// Target label selector k=v,...
    #[arg(long)]
    selector: Option<String>,
    /// Target device (repeatable).
    #[arg(long = "device")]
    devices: Vec<String>,
    /// Deployment priority (highest matching wins).
    #[arg(long, default_value_t = 0)]
    priority: i64,
    /// `canary` (1, 10 %, 50 %, 100 %) or `all`.
    #[arg(long, conflicts_with = "phase")]
    preset: Option<String>,
    /// A custom phase, in order (repeatable): a count `3`, a cumulative percentage `25%`,
    /// or a label selector `canary=true`.
    #[arg(long)]
    phase: Vec<String>,
    /// Bake time of every phase, seconds.
    #[arg(long)]
    bake: Option<u64>,
    /// Success threshold of every phase, percent.
    #[arg(long)]
    success_pct: Option<u8>,
    /// Failure threshold of every phase, percent.
    #[arg(long)]
    failure_pct: Option<u8>,
    /// Devices finished before the failure threshold applies.
    #[arg(long)]
    min_finished: Option<u32>,
    /// Devices updating at once.
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Every phase after the first waits for `approve`.
    #[arg(long)]
    approval: bool,
    /// Disruption budget groups: label keys (repeatable).
    #[arg(long = "group-by")]
    group_by: Vec<String>,
    /// Most devices of a budget group updating or unhealthy at once (`1` or `10%`).
    #[arg(long)]
    max_unavailable: Option<String>,
    /// Fewest devices of a budget group healthy (`3` or `50%`).
    #[arg(long)]
    min_available: Option<String>,
    /// What a tripped failure threshold does.
    #[arg(long, value_enum)]
    on_failure: Option<Policy>,
    /// Seconds offline devices of a phase count as pending.
    #[arg(long)]
    offline_deadline: Option<u64>,
    /// A URL that receives a signed JSON event when the rollout pauses, rolls back, waits for
    /// approval or completes (the signing secret is printed once, at creation).
    #[arg(long)]
    webhook: Option<String>,
}

fn phase(s: &str) -> anyhow::Result<PhaseSpec> {
    let select = if let Some(p) = s.strip_suffix('%') {
        Select::Percent(
            p.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("phase {s:?}: bad percentage"))?,
        )
    } else if s.contains('=') {
        Select::Labels(
            cloud_hub::model::parse_selector(s).map_err(|e| anyhow::anyhow!("phase {s:?}: {e}"))?,
        )
    } else {
        Select::Count(s.trim().parse().map_err(|_| {
            anyhow::anyhow!("phase {s:?} is neither a count, a percentage nor a selector")
        })?)
    };
    Ok(PhaseSpec::new(select))
}

fn amount(s: Option<String>) -> anyhow::Result<Option<Amount>> {
    s.map(|s| Amount::try_from(s).map_err(|e| anyhow::anyhow!(e)))
        .transpose()
}

fn status_text(v: &Value) {
    let r = &v["rollout"];
    println!(
        "rollout {}  deployment {}  release {}  stage {}  phase {}",
        r["id"],
        r["deployment"],
        r["release"],
        r["stage"]["stage"].as_str().unwrap_or("-"),
        r["stage"]["phase"]
            .as_u64()
            .map_or("-".into(), |p| p.to_string())
    );
    if let Some(reason) = r["stage"]["reason"].as_str() {
        println!("reason: {reason}");
    }
    let plain = Out {
        json: false,
        field: None,
    };
    plain.show(
        &v["phases"],
        &[
            ("PHASE", "phase"),
            ("DEVICES", "devices"),
            ("PENDING", "pending"),
            ("UPDATING", "updating"),
            ("SUCCEEDED", "succeeded"),
            ("FAILED", "failed"),
            ("OFFLINE", "offline"),
        ],
    );
    let members: Vec<Value> = v["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p["members"].as_array().into_iter().flatten().map(|m| {
                let mut m = m.clone();
                m["phase"] = p["phase"].clone();
                m
            })
        })
        .collect();
    println!();
    plain.show(
        &Value::Array(members),
        &[
            ("DEVICE", "id"),
            ("PHASE", "phase"),
            ("HEALTH", "health"),
            ("ONLINE", "online"),
            ("LAST SEEN", "last_seen"),
            ("WINDOW", "deferred"),
        ],
    );
}

/// The request a `Spec` makes.
fn body(spec: Spec) -> anyhow::Result<RolloutIn> {
    let Spec {
        release,
        group,
        selector,
        devices,
        priority,
        preset,
        phase: phases,
        bake,
        success_pct,
        failure_pct,
        min_finished,
        max_concurrent,
        approval,
        group_by,
        max_unavailable,
        min_available,
        on_failure,
        offline_deadline,
        webhook,
    } = spec;
    let phases = (!phases.is_empty())
        .then(|| {
            phases
                .iter()
                .map(|p| phase(p))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?;
    let (max_unavailable, min_available) = (amount(max_unavailable)?, amount(min_available)?);
    let budget = (max_unavailable.is_some() || min_available.is_some()).then_some(Budget {
        group_by,
        max_unavailable,
        min_available,
    });
    let body = RolloutIn {
        release,
        group,
        selector,
        devices: (!devices.is_empty()).then_some(devices),
        priority,
        preset,
        phases,
        bake_secs: bake,
        success_pct,
        failure_pct,
        min_finished,
        max_concurrent,
        approval: approval.then_some(true),
        budget,
        on_failure: on_failure.map(|p| match p {
            Policy::Pause => OnFailure::Pause,
            Policy::Rollback => OnFailure::Rollback,
        }),
        offline_deadline_secs: offline_deadline,
        offline_after_deadline: None,
        webhook,
    };
    Ok(body)
}

fn preview_text(v: &Value) {
    println!("devices {}  phases {}", v["devices"], v["phases"]);
    let plain = Out {
        json: false,
        field: None,
    };
    plain.show(
        &v["classes"],
        &[
            ("CLASS", "profile"),
            ("DEVICES", "devices"),
            ("UNCHANGED", "unchanged"),
            ("WORKLOADS CHANGED", "workloads_changed"),
            ("DOWNLOAD BYTES", "download_bytes"),
        ],
    );
    if v["unfit"].as_array().is_some_and(|a| !a.is_empty()) {
        println!();
        plain.show(
            &v["unfit"],
            &[("CANNOT TAKE IT", "device"), ("WHY", "reason")],
        );
    }
}

pub async fn run(cmd: Rollouts, c: &Client, out: &Out) -> anyhow::Result<()> {
    let verb = |id: u64, v: &str| format!("/api/v1/rollouts/{id}/{v}");
    let answer = match cmd {
        Rollouts::List => {
            out.show(
                &c.call(Method::GET, "/api/v1/rollouts").await?,
                &[
                    ("ID", "id"),
                    ("DEPLOYMENT", "deployment"),
                    ("RELEASE", "release"),
                    ("STAGE", "stage.stage"),
                    ("PHASE", "stage.phase"),
                    ("PHASES", "phases"),
                    ("ADMITTED", "admitted"),
                ],
            );
            return Ok(());
        }
        Rollouts::Status { id } => {
            let v = c
                .call(Method::GET, &format!("/api/v1/rollouts/{id}"))
                .await?;
            if out.json || out.field.is_some() {
                out.show(&v, &[]);
            } else {
                status_text(&v);
            }
            return Ok(());
        }
        Rollouts::Create { spec } => {
            c.call_with(Method::POST, "/api/v1/rollouts", &body(spec)?)
                .await?
        }
        Rollouts::Preview { spec } => {
            let v = c
                .call_with(Method::POST, "/api/v1/rollouts/preview", &body(spec)?)
                .await?;
            if out.json || out.field.is_some() {
                out.show(&v, &[]);
            } else {
                preview_text(&v);
            }
            return Ok(());
        }
        Rollouts::Webhooks { id } => {
            out.show(
                &c.call(Method::GET, &format!("/api/v1/rollouts/{id}/webhooks"))
                    .await?,
                &[
                    ("ID", "id"),
                    ("EVENT", "event"),
                    ("ATTEMPTS", "attempts"),
                    ("DELIVERED", "delivered_at"),
                    ("NEXT", "next_at"),
                    ("ERROR", "last_error"),
                ],
            );
            return Ok(());
        }
        Rollouts::Pause { id } => c.call(Method::POST, &verb(id, "pause")).await?,
        Rollouts::Resume { id } => c.call(Method::POST, &verb(id, "resume")).await?,
        Rollouts::Approve { id } => c.call(Method::POST, &verb(id, "approve")).await?,
        Rollouts::Abort { id } => c.call(Method::POST, &verb(id, "abort")).await?,
        Rollouts::Rollback { id } => c.call(Method::POST, &verb(id, "rollback")).await?,
    };
    out.show(&answer, &[]);
    Ok(())
}

/// `fleetctl devices explain DEVICE`.
pub async fn explain(c: &Client, out: &Out, id: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/devices/{}/explain", crate::client::segment(id));
    let v = c.call(Method::GET, &path).await?;
    if out.json || out.field.is_some() {
        out.show(&v, &[]);
        return Ok(());
    }
    let show = |k: &str| match &v[k] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "device {}  runs {} (deployment {}, phase {})  desired revision {}  applied {}",
        show("device"),
        show("release"),
        show("deployment"),
        show("phase"),
        show("desired_revision"),
        show("applied_revision")
    );
    println!("maintenance window: {}", show("maintenance_window"));
    out.show(
        &v["candidates"],
        &[
            ("DEPLOYMENT", "deployment"),
            ("RELEASE", "release_name"),
            ("PRIORITY", "priority"),
            ("TARGET", "target"),
            ("ROLLOUT", "rollout"),
            ("PHASE", "phase"),
            ("WHY", "verdict"),
        ],
    );
    Ok(())
}
