//! What an operator asks of a rollout: the phases (by count, percentage or label selector),
//! each phase's gates, the disruption budget, and what a failure or an offline device does.
//! Plain data with its validation; the controller reads it and never changes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most phases a plan may have.
pub const MAX_PHASES: usize = 32;

/// Which devices a phase takes, among those no earlier phase took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// The next `n` devices by position.
    Count(u32),
    /// Devices by position up to this cumulative percentage of the rollout's devices.
    Percent(u8),
    /// Every device carrying all these labels.
    Labels(BTreeMap<String, String>),
}

/// A count, or a percentage of a group (`"2"` or `"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Amount {
    /// So many devices.
    Count(u32),
    /// This percentage of the group.
    Percent(u8),
}

impl TryFrom<String> for Amount {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("{s:?} is neither a count nor a percentage like \"25%\"");
        match t.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Amount::Percent(p)),
                _ => Err(bad()),
            },
            None => t.parse().map(Amount::Count).map_err(|_| bad()),
        }
    }
}

impl From<Amount> for String {
    fn from(a: Amount) -> String {
        match a {
            Amount::Count(n) => n.to_string(),
            Amount::Percent(p) => format!("{p}%"),
        }
    }
}

impl Amount {
    /// The amount of a group of `size`, rounded down (how many may be unavailable).
    pub fn floor_of(self, size: u64) -> u64 {
        match self {
            Amount::Count(n) => u64::from(n),
            Amount::Percent(p) => size * u64::from(p) / 100,
        }
    }

    /// The amount of a group of `size`, rounded up (how many must stay available).
    pub fn ceil_of(self, size: u64) -> u64 {
        match self {
            Amount::Count(n) => u64::from(n),
            Amount::Percent(p) => (size * u64::from(p)).div_ceil(100),
        }
    }
}

/// One phase and its gates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// Which devices it takes.
    pub select: Select,
    /// How long to watch the phase after it met its success threshold before the next starts.
    #[serde(default)]
    pub bake_secs: u64,
    /// Percentage of the phase's devices (those skipped offline aside) that must have updated
    /// and stayed healthy for the phase to be done.
    #[serde(default = "default_success_pct")]
    pub success_pct: u8,
    /// Failures above this percentage of the devices that finished trip the rollout's policy.
    #[serde(default = "default_failure_pct")]
    pub failure_pct: u8,
    /// The failure threshold applies once this many devices finished (or the whole phase did,
    /// if it is smaller), so one failure out of two does not trip a 10 % threshold.
    #[serde(default = "default_min_finished")]
    pub min_finished: u32,
    /// At most this many of the rollout's devices updating at once while this phase runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// The phase waits for an operator's approval before it starts.
    #[serde(default)]
    pub approval: bool,
}

fn default_success_pct() -> u8 {
    100
}
fn default_failure_pct() -> u8 {
    10
}
fn default_min_finished() -> u32 {
    5
}

impl PhaseSpec {
    /// A phase with the default gates.
    pub fn new(select: Select) -> Self {
        Self {
            select,
            bake_secs: 0,
            success_pct: default_success_pct(),
            failure_pct: default_failure_pct(),
            min_finished: default_min_finished(),
            max_concurrent: None,
            approval: false,
        }
    }
}

/// The disruption budget: within each group of the rollout's devices sharing the values of
/// `group_by` (a missing label counts as the empty value), at most `max_unavailable` updating
/// or unhealthy at once, and at least `min_available` healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    /// Label keys; no keys means the whole rollout is one group.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Most devices of a group updating or unhealthy at once (a percentage rounds down, but
    /// never below one, so a rollout can always move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "1")]
    pub max_unavailable: Option<Amount>,
    /// Fewest devices of a group online and healthy (a percentage rounds up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "50%")]
    pub min_available: Option<Amount>,
}

/// What a tripped failure threshold does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop issuing; an operator resumes, aborts or rolls back.
    #[default]
    Pause,
    /// Give every device the previous release again.
    Rollback,
}

/// What an offline device of a phase counts as once the phase's offline deadline passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfflineAfterDeadline {
    /// Left out of the phase's counts (it updates whenever it comes back).
    #[default]
    Skip,
    /// A failure.
    Fail,
}

/// The whole plan of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Phases in order; the last one also takes every device no phase took.
    pub phases: Vec<PhaseSpec>,
    /// Disruption budget across the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// What a tripped failure threshold does.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Offline devices count as pending for this long after their phase started.
    #[serde(default = "default_offline_deadline")]
    pub offline_deadline_secs: u64,
    /// And then as this.
    #[serde(default)]
    pub offline_after_deadline: OfflineAfterDeadline,
}

fn default_offline_deadline() -> u64 {
    3600
}

/// The named plans: `canary` is one device, then 10 %, 50 % and 100 %; `all` is one phase.
pub fn preset(name: &str) -> Result<Vec<PhaseSpec>, String> {
    let phases = match name {
        "canary" => vec![
            Select::Count(1),
            Select::Percent(10),
            Select::Percent(50),
            Select::Percent(100),
        ],
        "all" => vec![Select::Percent(100)],
        other => return Err(format!("unknown preset {other:?} (canary, all)")),
    };
    Ok(phases.into_iter().map(PhaseSpec::new).collect())
}

impl Plan {
    /// A plan of `phases` with the default policy and deadline.
    pub fn new(phases: Vec<PhaseSpec>) -> Self {
        Self {
            phases,
            budget: None,
            on_failure: OnFailure::default(),
            offline_deadline_secs: default_offline_deadline(),
            offline_after_deadline: OfflineAfterDeadline::default(),
        }
    }

    /// Refuses a plan the controller could not follow, naming what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.phases.is_empty() || self.phases.len() > MAX_PHASES {
            return Err(format!("a plan has 1 to {MAX_PHASES} phases"));
        }
        let mut last_pct = 0;
        for (i, p) in self.phases.iter().enumerate() {
            let at = format!("phase {i}");
            match &p.select {
                Select::Count(0) => return Err(format!("{at}: a count of 0 devices")),
                Select::Percent(pct) if *pct == 0 || *pct > 100 => {
                    return Err(format!("{at}: percentage {pct} is not 1-100"))
                }
                Select::Percent(pct) if *pct < last_pct => {
                    return Err(format!(
                    "{at}: percentages are cumulative and may not shrink ({pct} after {last_pct})"
                ))
                }
                Select::Percent(pct) => last_pct = *pct,
                Select::Labels(sel) if sel.is_empty() => {
                    return Err(format!("{at}: an empty label selector"))
                }
                Select::Labels(sel) => {
                    crate::model::check_labels(sel).map_err(|e| format!("{at}: {e}"))?
                }
                Select::Count(_) => {}
            }
            if p.success_pct > 100 || p.failure_pct > 100 {
                return Err(format!("{at}: thresholds are percentages (0-100)"));
            }
            if p.max_concurrent == Some(0) {
                return Err(format!(
                    "{at}: max_concurrent 0 would never update anything"
                ));
            }
        }
        if let Some(b) = &self.budget {
            if b.max_unavailable.is_none() && b.min_available.is_none() {
                return Err("a budget needs max_unavailable or min_available".into());
            }
            if b.max_unavailable == Some(Amount::Count(0))
                || b.max_unavailable == Some(Amount::Percent(0))
            {
                return Err("max_unavailable 0 would never update anything".into());
            }
            if b.group_by.len() > 8 || b.group_by.iter().any(|k| k.is_empty()) {
                return Err("group_by takes 0 to 8 non-empty label keys".into());
            }
        }
        Ok(())
    }
}
