//! `fleetctl functions`: the function counters devices report in their status (invocations,
//! cold starts, errors, timeouts, queue drops, instances), per device and summed fleet-wide.
//! Read from the status reports the hub stores; counters restart from zero when an agent does.

use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Client, Out};

const COUNTERS: [&str; 6] = [
    "invocations",
    "cold_starts",
    "errors",
    "timeouts",
    "queue_drops",
    "instances",
];

/// One row per device and function, then one per function with device `*` summing them all.
pub fn summarize(devices: &Value, only: Option<&str>) -> Value {
    let mut rows = Vec::new();
    let mut fleet: std::collections::BTreeMap<String, Value> = Default::default();
    for d in devices.as_array().into_iter().flatten() {
        let id = d["id"].as_str().unwrap_or_default();
        if only.is_some_and(|o| o != id) {
            continue;
        }
        for f in d["status"]["functions"].as_array().into_iter().flatten() {
            let name = f["name"].as_str().unwrap_or_default().to_string();
            let mut row = json!({"device": id, "function": name});
            let total = fleet
                .entry(name.clone())
                .or_insert_with(|| json!({"device": "*", "function": name}));
            for c in COUNTERS {
                let n = f[c].as_u64().unwrap_or(0);
                row[c] = json!(n);
                total[c] = json!(total[c].as_u64().unwrap_or(0) + n);
            }
            rows.push(row);
        }
    }
    rows.extend(fleet.into_values());
    Value::Array(rows)
}

pub async fn run(c: &Client, out: &Out, device: Option<String>) -> anyhow::Result<()> {
    let v = c.call(Method::GET, "/api/v1/devices").await?;
    out.show(
        &summarize(&v, device.as_deref()),
        &[
            ("DEVICE", "device"),
            ("FUNCTION", "function"),
            ("INVOCATIONS", "invocations"),
            ("COLD", "cold_starts"),
            ("ERRORS", "errors"),
            ("TIMEOUTS", "timeouts"),
            ("DROPS", "queue_drops"),
            ("INSTANCES", "instances"),
        ],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_per_device_and_fleet_wide_sums() {
        let devices = json!([
            {"id": "a", "status": {"functions": [
                {"name": "f", "invocations": 3, "cold_starts": 1, "errors": 1, "timeouts": 0, "queue_drops": 2, "instances": 1}]}},
            {"id": "b", "status": {"functions": [
                {"name": "f", "invocations": 4, "cold_starts": 2, "errors": 0, "timeouts": 0, "queue_drops": 0, "instances": 0},
                {"name": "g", "invocations": 1, "cold_starts": 1, "errors": 0, "timeouts": 0, "queue_drops": 0, "instances": 0}]}},
            {"id": "c", "status": null}
        ]);
        let rows = summarize(&devices, None);
        let rows = rows.as_array().expect("rows");
        assert_eq!(rows.len(), 5);
        let f = rows
            .iter()
            .find(|r| r["device"] == "*" && r["function"] == "f")
            .expect("fleet row");
        assert_eq!(
            (f["invocations"].as_u64(), f["cold_starts"].as_u64()),
            (Some(7), Some(3))
        );
        assert_eq!(
            (f["errors"].as_u64(), f["queue_drops"].as_u64()),
            (Some(1), Some(2))
        );
        let only_b = summarize(&devices, Some("b"));
        assert_eq!(only_b.as_array().map(|a| a.len()), Some(4));
    }
}
