//! Cron expressions (job schedules and maintenance windows), evaluated with time as an argument.
//!
//! Expressions use the `cron` crate's syntax: six or seven fields, seconds first
//! (`sec min hour day-of-month month day-of-week [year]`), evaluated in UTC.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_DURATION_SECS, MAX_NAME_BYTES};

/// A validated cron expression.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CronExpr {
    text: String,
}

impl std::fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CronExpr({:?})", self.text)
    }
}

impl TryFrom<String> for CronExpr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text.len() > MAX_NAME_BYTES {
            return Err(format!(
                "cron expression longer than {MAX_NAME_BYTES} bytes"
            ));
        }
        cron::Schedule::from_str(&text)
            .map_err(|e| format!("bad cron expression {text:?}: {e}"))?;
        Ok(Self { text })
    }
}

impl From<CronExpr> for String {
    fn from(c: CronExpr) -> String {
        c.text
    }
}

impl CronExpr {
    /// Parses and validates.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::try_from(text.to_owned())
    }

    /// The expression text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn schedule(&self) -> Option<cron::Schedule> {
        cron::Schedule::from_str(&self.text).ok()
    }

    /// The first firing strictly after `after` (unix seconds), if any.
    pub fn next_after(&self, after: u64) -> Option<u64> {
        let start = to_dt(after)?;
        let next = self.schedule()?.after(&start).next()?;
        u64::try_from(next.timestamp()).ok()
    }
}

fn to_dt(secs: u64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, 0)
}

/// A maintenance window: it opens at each firing of `cron` and stays open `duration_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// When the window opens.
    pub cron: CronExpr,
    /// How long it stays open, in seconds (1 s to one week).
    pub duration_secs: u64,
}

impl MaintenanceWindow {
    /// Checks the duration bound.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration_secs == 0 || self.duration_secs > MAX_DURATION_SECS {
            return Err(format!(
                "maintenance window duration must be 1..={MAX_DURATION_SECS} s"
            ));
        }
        Ok(())
    }

    /// Whether the window is open at `now`: some firing `f` has `f <= now < f + duration`.
    pub fn is_open(&self, now: u64) -> bool {
        let from = now.saturating_sub(self.duration_secs);
        // The first firing after `from - 1` is the earliest that could still cover `now`.
        match self.cron.next_after(from.saturating_sub(1)) {
            Some(f) => f <= now && now < f.saturating_add(self.duration_secs),
            None => false,
        }
    }

    /// When the window next opens at or after `now` (`now` itself if open).
    pub fn next_open(&self, now: u64) -> Option<u64> {
        if self.is_open(now) {
            Some(now)
        } else {
            self.cron.next_after(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_cron_is_refused() {
        assert!(CronExpr::parse("not cron").is_err());
        assert!(CronExpr::parse("0 0 3 * * *").is_ok());
    }

    #[test]
    fn window_opens_at_each_firing_for_its_duration() {
        // Every day at 03:00:00 UTC for one hour.
        let w = MaintenanceWindow {
            cron: CronExpr::parse("0 0 3 * * *").expect("valid"),
            duration_secs: 3600,
        };
        let day = 86_400 * 20_000; // a midnight
        assert!(!w.is_open(day + 3 * 3600 - 1));
        assert!(w.is_open(day + 3 * 3600));
        assert!(w.is_open(day + 4 * 3600 - 1));
        assert!(!w.is_open(day + 4 * 3600));
        assert_eq!(w.next_open(day), Some(day + 3 * 3600));
        assert_eq!(w.next_open(day + 3 * 3600 + 5), Some(day + 3 * 3600 + 5));
    }
}
