//! What devices report: events (idempotent by device and sequence) and their acks, status
//! snapshots, presence, stored a batch per transaction; and the retained set the hub
//! republishes.

use protocol::{DeviceId, Event, Presence};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{json, parse, unix_now, Store, StoreError};
use crate::model::{Inbound, RetainedState, Stored};

impl Store {
    /// Stores a batch of device reports in one transaction, in order, and returns what each
    /// did. On an error nothing of the batch is stored (the caller may retry them one by one).
    pub fn ingest_batch(&self, items: &[Inbound]) -> Result<Vec<Stored>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = unix_now() as i64;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let device = item.device().as_str();
            let exists = tx
                .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?
                .query_row([device], |_| Ok(()))
                .optional()?
                .is_some();
            out.push(match item {
                _ if !exists => Stored::UnknownDevice,
                Inbound::Status(_, s) => {
                    tx.prepare_cached(
                        "UPDATE devices SET status = ?2, last_seen = ?3 WHERE id = ?1",
                    )?
                    .execute(params![device, json(s), now])?;
                    Stored::Status
                }
                Inbound::Events(_, events) => {
                    super::pulls::record_pulls(&tx, device, events)?;
                    Stored::Events {
                        acked: insert_events(&tx, device, events, now)?,
                    }
                }
                Inbound::Presence(_, p) => Stored::Presence {
                    changed: set_presence(&tx, device, p, now)?,
                },
            });
        }
        tx.commit()?;
        Ok(out)
    }

    /// The highest contiguous event sequence stored for a device.
    pub fn acked(&self, device: &str) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .query_row("SELECT acked FROM acks WHERE device = ?1", [device], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// Events of a device, newest first, at most `limit`, below `before_seq` when given.
    pub fn events(
        &self,
        device: &str,
        limit: u32,
        before_seq: Option<u64>,
    ) -> Result<Vec<Event>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, time, body FROM events WHERE device = ?1 AND seq < ?2
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let before = before_seq.map(|b| b as i64).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![device, before, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time, body) = row?;
            out.push(Event {
                seq: seq as u64,
                time: time as u64,
                body: parse("event", &body)?,
            });
        }
        Ok(out)
    }

    /// Everything the hub publishes retained, to republish on start and on reconnect: trust,
    /// each device's desired state, each device's ack.
    pub fn retained_state(&self) -> Result<RetainedState, StoreError> {
        let trust = self.meta("trust_envelope")?.map(String::into_bytes);
        let conn = self.lock();
        let id = |what: &'static str, d: String| {
            DeviceId::new(d).map_err(|e| StoreError::Decode {
                what,
                detail: e.to_string(),
            })
        };
        let mut desired = Vec::new();
        let mut stmt = conn.prepare("SELECT device, envelope FROM desired ORDER BY device")?;
        for row in stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })? {
            let (d, env) = row?;
            desired.push((id("desired device", d)?, env));
        }
        let mut acks = Vec::new();
        let mut stmt = conn.prepare("SELECT device, acked FROM acks ORDER BY device")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (d, acked) = row?;
            acks.push((id("ack device", d)?, acked as u64));
        }
        Ok(RetainedState {
            trust,
            desired,
            acks,
        })
    }
}

/// Whether `device` has an event with sequence `seq`.
fn has_event(tx: &Transaction<'_>, device: &str, seq: i64) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM events WHERE device = ?1 AND seq = ?2")?
        .query_row(params![device, seq], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Stores events idempotently by (device, seq) and returns the highest contiguous sequence now
/// stored (what the hub acks).
fn insert_events(
    tx: &Transaction<'_>,
    device: &str,
    events: &[Event],
    now: i64,
) -> Result<u64, StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (device, seq, time, type, body, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for e in events {
        insert.execute(params![
            device,
            e.seq as i64,
            e.time as i64,
            e.body.type_name(),
            json(&e.body),
            now
        ])?;
    }
    let mut acked: i64 = tx
        .prepare_cached("SELECT acked FROM acks WHERE device = ?1")?
        .query_row([device], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    // Advance over the contiguous run. Events below the ack may have been deleted by the
    // agent-side budget, so only seqs above it matter.
    while has_event(tx, device, acked + 1)? {
        acked += 1;
    }
    // A gap left by events the agent dropped under its budget must not stall acks forever:
    // the agent publishes its outbox oldest first, so when a batch starts above the ack,
    // everything below its first seq is gone for good. Skip over it and keep counting.
    if let Some(first) = events.first() {
        let first = first.seq as i64;
        if first > acked + 1 {
            acked = first - 1;
            while has_event(tx, device, acked + 1)? {
                acked += 1;
            }
        }
    }
    tx.prepare_cached(
        "INSERT INTO acks (device, acked) VALUES (?1, ?2)
         ON CONFLICT(device) DO UPDATE SET acked = excluded.acked",
    )?
    .execute(params![device, acked])?;
    tx.prepare_cached("UPDATE devices SET last_seen = ?2 WHERE id = ?1")?
        .execute(params![device, now])?;
    Ok(acked as u64)
}

/// Stores presence if it supersedes what is held (higher epoch); returns whether it did.
fn set_presence(
    tx: &Transaction<'_>,
    device: &str,
    p: &Presence,
    now: i64,
) -> Result<bool, StoreError> {
    let held: Option<Option<String>> = tx
        .prepare_cached("SELECT presence FROM devices WHERE id = ?1")?
        .query_row([device], |r| r.get(0))
        .optional()?;
    let Some(held) = held else {
        return Ok(false);
    };
    let held: Option<Presence> = held.map(|h| parse("presence", &h)).transpose()?;
    if held.is_some_and(|h| !p.supersedes(&h)) {
        return Ok(false);
    }
    tx.prepare_cached("UPDATE devices SET presence = ?2, last_seen = ?3 WHERE id = ?1")?
        .execute(params![device, json(p), now])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use protocol::{EventBody, PresenceState};

    use super::*;
    use crate::model::NewDevice;

    fn enrolled(store: &Store, id: &str) -> DeviceId {
        let id = DeviceId::new(id).expect("id");
        let token = format!("token-{id}");
        store
            .insert_enroll_token(&token, &Default::default(), u64::MAX / 2)
            .expect("token");
        let dev = NewDevice {
            id: id.clone(),
            public_key: "k".into(),
            password_hash: "h".into(),
            password_salt: "s".into(),
            profile: "local-dev".into(),
            arch: protocol::Arch::X86_64,
            runtimes: vec![],
            agent_version: "0".into(),
            labels: Default::default(),
        };
        store.enroll_device(&token, &dev, 1).expect("enroll");
        id
    }

    fn events(seqs: std::ops::RangeInclusive<u64>) -> Vec<Event> {
        seqs.map(|seq| Event {
            seq,
            time: 1,
            body: EventBody::TrustAccepted { version: 1 },
        })
        .collect()
    }

    #[test]
    fn a_batch_stores_each_report_in_order_and_acks_each_devices_contiguous_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("hub.db")).expect("open");
        let (a, b) = (enrolled(&store, "a"), enrolled(&store, "b"));
        let stranger = DeviceId::new("stranger").expect("id");
        let online = |epoch| Presence {
            state: PresenceState::Online,
            epoch,
        };
        let batch = vec![
            Inbound::Events(a.clone(), events(1..=3)),
            Inbound::Presence(b.clone(), online(2)),
            Inbound::Events(b.clone(), events(1..=2)),
            Inbound::Events(stranger.clone(), events(1..=1)),
            // A duplicate and the next run of a: stored once, ack moves on.
            Inbound::Events(a.clone(), events(3..=5)),
            // An older epoch after a newer one is not kept.
            Inbound::Presence(b.clone(), online(1)),
        ];
        let stored = store.ingest_batch(&batch).expect("batch");
        assert_eq!(
            stored,
            vec![
                Stored::Events { acked: 3 },
                Stored::Presence { changed: true },
                Stored::Events { acked: 2 },
                Stored::UnknownDevice,
                Stored::Events { acked: 5 },
                Stored::Presence { changed: false },
            ]
        );
        assert_eq!(store.events("a", 100, None).expect("events").len(), 5);
        assert_eq!(store.acked("a").expect("acked"), 5);
        assert_eq!(store.acked("b").expect("acked"), 2);
        assert!(store
            .events("stranger", 100, None)
            .expect("events")
            .is_empty());
    }
}
