//! The soak's history checker: pure functions over what the hub stored and published, so the
//! checks themselves are tested with histories made by hand (`tests` below).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// Events waiting in an agent's outbox, from `edge-agent status --json` beside the agent.
pub fn outbox_events(data: &Path) -> Option<u64> {
    let out = std::process::Command::new(crate::fleet::bin("edge-agent"))
        .arg("--data-dir")
        .arg(data)
        .args(["status", "--json"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["outbox_events"].as_u64()
}

/// The violations in one device's history: `events` as the hub lists them, its last `status`,
/// and the revisions the hub published for it.
pub fn check(
    device: &str,
    events: &[Value],
    status: &Value,
    signed: &BTreeSet<u64>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_seq: BTreeMap<u64, usize> = BTreeMap::new();
    for e in events {
        match e["seq"].as_u64() {
            Some(s) => *by_seq.entry(s).or_default() += 1,
            None => out.push(format!("{device}: an event without a sequence number: {e}")),
        }
    }
    for (seq, n) in &by_seq {
        if *n > 1 {
            out.push(format!("{device}: event {seq} stored {n} times"));
        }
    }
    // Every number up to the last is stored, except those the device reported dropped.
    let dropped: u64 = events
        .iter()
        .filter(|e| e["body"]["type"] == "events_dropped")
        .filter_map(|e| e["body"]["count"].as_u64())
        .sum();
    let last = by_seq.keys().next_back().copied().unwrap_or(0);
    let missing: Vec<u64> = (1..=last).filter(|s| !by_seq.contains_key(s)).collect();
    if missing.len() as u64 > dropped {
        let shown: Vec<_> = missing.iter().take(10).collect();
        out.push(format!(
            "{device}: {} events lost ({dropped} reported dropped), first {shown:?}",
            missing.len()
        ));
    }
    // No revision the hub never signed.
    for e in events {
        if e["body"]["type"] == "desired_accepted" {
            let rev = e["body"]["revision"].as_u64().unwrap_or(0);
            if !signed.contains(&rev) {
                out.push(format!(
                    "{device}: accepted revision {rev}, never published"
                ));
            }
        }
    }
    for key in ["applied_revision", "desired_revision"] {
        if let Some(rev) = status[key].as_u64() {
            if !signed.contains(&rev) {
                out.push(format!("{device}: status {key} {rev}, never published"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(seq: u64, body: Value) -> Value {
        json!({"seq": seq, "body": body})
    }

    fn accepted(rev: u64) -> Value {
        json!({"type": "desired_accepted", "revision": rev})
    }

    #[test]
    fn a_clean_history_has_no_violations() {
        let events = [ev(1, accepted(3)), ev(2, accepted(5))];
        let status = json!({"applied_revision": 5, "desired_revision": 5});
        assert!(check("d", &events, &status, &BTreeSet::from([3, 5])).is_empty());
    }

    #[test]
    fn a_duplicate_a_gap_and_an_unsigned_revision_are_each_found() {
        let events = [ev(1, accepted(3)), ev(1, accepted(3)), ev(3, accepted(4))];
        let status = json!({"applied_revision": 9});
        let v = check("d", &events, &status, &BTreeSet::from([3]));
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v[0].contains("event 1 stored 2 times"), "{v:?}");
        assert!(v[1].contains("1 events lost"), "{v:?}");
        assert!(v[2].contains("accepted revision 4"), "{v:?}");
        assert!(v[3].contains("applied_revision 9"), "{v:?}");
    }

    #[test]
    fn gaps_the_device_reported_dropped_are_not_losses() {
        let events = [
            ev(1, accepted(3)),
            ev(4, json!({"type": "events_dropped", "count": 2})),
        ];
        assert!(check("d", &events, &json!({}), &BTreeSet::from([3])).is_empty());
    }
}
