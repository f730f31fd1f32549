//! The outbox (DESIGN §3.5): every event gets the next per-device sequence number and is written
//! in the same transaction as the state change it reports; it stays until the hub acks it.
//!
//! The outbox has a byte budget. When an append pushes it over, events are dropped in priority
//! order — `Snapshot` first, then `Info`, `Outcome` last — oldest first within a priority. Drops
//! are counted (`dropped_total`, reported in every status snapshot) and, once the outbox has room
//! again, reported by one `EventsDropped` event.
//!
//! Invariant: a sequence number is never reused, even after its event was acked or dropped
//! (`next_seq` lives in `meta` and only grows, under `synchronous=FULL`), or after a lost WAL
//! (every number handed out is below the lease, `durable.rs`).

use protocol::{Event, EventBody, Priority};
use rusqlite::{params, Connection};

use super::durable::SEQ_LEASE;
use super::{get_json, key, put_json, StoreError};

fn prio(p: Priority) -> i64 {
    match p {
        Priority::Snapshot => 0,
        Priority::Info => 1,
        Priority::Outcome => 2,
    }
}

/// Appends an event inside the caller's transaction; returns its sequence number.
pub fn append(
    conn: &Connection,
    body: EventBody,
    now: u64,
    budget: u64,
) -> Result<u64, StoreError> {
    let seq: u64 = get_json(conn, key::NEXT_SEQ)?.unwrap_or(1);
    put_json(conn, key::NEXT_SEQ, &(seq + 1))?;
    // The store checkpoints after a commit that moved the lease (`durable.rs`).
    let lease: u64 = get_json(conn, key::SEQ_LEASE)?.unwrap_or(0);
    if seq >= lease {
        put_json(conn, key::SEQ_LEASE, &(seq + SEQ_LEASE))?;
    }
    let event = Event {
        seq,
        time: now,
        body,
    };
    let text = serde_json::to_string(&event).map_err(|e| StoreError::Decode {
        key: "outbox".into(),
        detail: e.to_string(),
    })?;
    conn.execute(
        "INSERT INTO outbox (seq, priority, size, body) VALUES (?1, ?2, ?3, ?4)",
        params![
            seq as i64,
            prio(event.body.priority()),
            text.len() as i64,
            text
        ],
    )?;
    enforce_budget(conn, budget, seq)?;
    Ok(seq)
}

fn total_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT COALESCE(SUM(size), 0) FROM outbox", [], |r| {
        r.get(0)
    })?;
    Ok(n as u64)
}

/// Drops events until the outbox fits `budget`, never the one just appended (`keep`).
fn enforce_budget(conn: &Connection, budget: u64, keep: u64) -> Result<(), StoreError> {
    let mut dropped = 0u64;
    while total_bytes(conn)? > budget {
        let victim: Option<i64> = conn
            .query_row(
                "SELECT seq FROM outbox WHERE seq != ?1 ORDER BY priority ASC, seq ASC LIMIT 1",
                [keep as i64],
                |r| r.get(0),
            )
            .ok();
        let Some(victim) = victim else { break };
        conn.execute("DELETE FROM outbox WHERE seq = ?1", [victim])?;
        dropped += 1;
    }
    if dropped > 0 {
        count_dropped(conn, dropped)?;
        tracing::warn!(dropped, budget, "outbox over budget: dropped events");
    }
    Ok(())
}

/// Counts `n` events as dropped: in the total every status report carries, and in the count the
/// next `EventsDropped` event reports.
pub fn count_dropped(conn: &Connection, n: u64) -> Result<(), StoreError> {
    crate::metrics::outbox_dropped(n);
    let total: u64 = get_json(conn, key::DROPPED_TOTAL)?.unwrap_or(0);
    let unreported: u64 = get_json(conn, key::DROPPED_UNREPORTED)?.unwrap_or(0);
    put_json(conn, key::DROPPED_TOTAL, &(total + n))?;
    put_json(conn, key::DROPPED_UNREPORTED, &(unreported + n))
}

/// When events were dropped and the outbox has room for the report, appends one
/// `EventsDropped` event. Call after acks shrink the outbox.
pub fn report_drops(conn: &Connection, now: u64, budget: u64) -> Result<(), StoreError> {
    let unreported: u64 = get_json(conn, key::DROPPED_UNREPORTED)?.unwrap_or(0);
    if unreported == 0 || total_bytes(conn)? + 256 > budget {
        return Ok(());
    }
    put_json(conn, key::DROPPED_UNREPORTED, &0u64)?;
    append(
        conn,
        EventBody::EventsDropped { count: unreported },
        now,
        budget,
    )?;
    Ok(())
}

/// Events dropped since the device was provisioned.
pub fn dropped_total(conn: &Connection) -> Result<u64, StoreError> {
    Ok(get_json(conn, key::DROPPED_TOTAL)?.unwrap_or(0))
}

/// The oldest unacked events, in order, at most `max_events` and about `max_bytes`.
pub fn pending(
    conn: &Connection,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT body, size FROM outbox ORDER BY seq ASC LIMIT ?1")?;
    let rows = stmt.query_map([max_events as i64], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let (text, size) = row?;
        if !out.is_empty() && bytes + size as usize > max_bytes {
            break;
        }
        bytes += size as usize;
        let e: Event = serde_json::from_str(&text).map_err(|e| StoreError::Decode {
            key: "outbox".into(),
            detail: e.to_string(),
        })?;
        out.push(e);
    }
    Ok(out)
}

/// Deletes every event with `seq <= acked`; returns how many went.
pub fn ack(conn: &Connection, acked: u64) -> Result<usize, StoreError> {
    Ok(conn.execute("DELETE FROM outbox WHERE seq <= ?1", [acked as i64])?)
}

/// Events waiting and their bytes.
pub fn depth(conn: &Connection) -> Result<(u64, u64), StoreError> {
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
    Ok((n as u64, total_bytes(conn)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use proptest::prelude::*;
    use protocol::WorkloadName;

    fn body(kind: u8, n: u64) -> EventBody {
        match kind % 3 {
            0 => EventBody::HealthChanged {
                workload: WorkloadName::new("w").expect("valid"),
                healthy: n.is_multiple_of(2),
            },
            1 => EventBody::WorkloadExited {
                workload: WorkloadName::new("w").expect("valid"),
                code: Some(n as i32),
                signal: None,
            },
            _ => EventBody::DesiredAccepted { revision: n },
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Append(u8),
        Ack(u8),
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => any::<u8>().prop_map(Step::Append),
            1 => any::<u8>().prop_map(Step::Ack),
            1 => Just(Step::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Against a plain model: seqs strictly increase and are never reused across reopen,
        /// acked events go, unacked ones stay in order, and with an ample budget nothing drops.
        #[test]
        fn outbox_matches_a_plain_model(steps in prop::collection::vec(step(), 1..60)) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("a.db");
            let mut store = Store::open(&path).expect("open");
            let mut model: Vec<(u64, EventBody)> = Vec::new();
            let mut last_seq = 0u64;
            let mut acked = 0u64;
            for (i, s) in steps.into_iter().enumerate() {
                match s {
                    Step::Append(k) => {
                        let b = body(k, i as u64);
                        let seq = store.tx(|tx| append(tx, b.clone(), 1, u64::MAX)).expect("append");
                        prop_assert!(seq > last_seq);
                        last_seq = seq;
                        model.push((seq, b));
                    }
                    Step::Ack(k) => {
                        let upto = acked + u64::from(k % 4);
                        acked = upto.min(last_seq);
                        store.tx(|tx| ack(tx, acked)).expect("ack");
                        model.retain(|(s, _)| *s > acked);
                    }
                    Step::Reopen => {
                        drop(store);
                        store = Store::open(&path).expect("reopen");
                    }
                }
                let got = pending(store.conn(), 10_000, usize::MAX).expect("pending");
                let got: Vec<(u64, EventBody)> = got.into_iter().map(|e| (e.seq, e.body)).collect();
                prop_assert_eq!(&got, &model);
            }
            prop_assert_eq!(dropped_total(store.conn()).expect("dropped"), 0);
        }
    }

    #[test]
    fn over_budget_drops_snapshots_first_and_outcomes_last_and_reports_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("a.db")).expect("open");
        let budget = 2_000;
        for i in 0..60u64 {
            store
                .tx(|tx| append(tx, body(i as u8, i), 1, budget))
                .expect("append");
        }
        let (_, bytes) = depth(store.conn()).expect("depth");
        assert!(bytes <= budget, "outbox {bytes} bytes over budget {budget}");
        let left = pending(store.conn(), 1000, usize::MAX).expect("pending");
        let outcomes = left
            .iter()
            .filter(|e| e.body.priority() == Priority::Outcome)
            .count();
        let snapshots = left
            .iter()
            .filter(|e| e.body.priority() == Priority::Snapshot)
            .count();
        assert!(outcomes > 0);
        assert_eq!(snapshots, 0, "snapshots must go before anything else");
        // The newest outcome is always kept.
        assert!(left.iter().any(|e| e.body == body(59, 59)));
        let dropped = dropped_total(store.conn()).expect("total");
        assert!(dropped > 0);
        // Once acks make room, one EventsDropped reports the count.
        let last = left.last().map(|e| e.seq).expect("some");
        store.tx(|tx| ack(tx, last)).expect("ack");
        store.tx(|tx| report_drops(tx, 2, budget)).expect("report");
        let left = pending(store.conn(), 1000, usize::MAX).expect("pending");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].body, EventBody::EventsDropped { count: dropped });
        assert!(left[0].seq > last, "seq never reused");
    }
}
