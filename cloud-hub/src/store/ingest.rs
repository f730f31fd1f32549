//! What devices report: events (idempotent by device and sequence) and their acks, status
//! snapshots, presence; and the retained set the hub republishes.

use protocol::{DeviceId, Event, Presence, StatusReport};
use rusqlite::{params, OptionalExtension};

use super::{json, parse, unix_now, Store, StoreError};
use crate::model::RetainedState;

impl Store {
    /// Stores events idempotently by (device, seq) in one transaction and returns the highest
    /// contiguous sequence now stored (what the hub acks).
    pub fn insert_events(&self, device: &DeviceId, events: &[Event]) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = unix_now() as i64;
        for e in events {
            tx.execute(
                "INSERT OR IGNORE INTO events (device, seq, time, type, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    device.as_str(),
                    e.seq as i64,
                    e.time as i64,
                    e.body.type_name(),
                    json(&e.body),
                    now
                ],
            )?;
        }
        let mut acked: i64 = tx
            .query_row(
                "SELECT acked FROM acks WHERE device = ?1",
                [device.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        // Advance over the contiguous run. Events below the ack may have been deleted by the
        // agent-side budget, so only seqs above it matter.
        loop {
            let next: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM events WHERE device = ?1 AND seq = ?2",
                    params![device.as_str(), acked + 1],
                    |r| r.get(0),
                )
                .optional()?;
            match next {
                Some(_) => acked += 1,
                None => break,
            }
        }
        // A gap left by events the agent dropped under its budget must not stall acks forever:
        // the agent publishes its outbox oldest first, so when a batch starts above the ack,
        // everything below its first seq is gone for good. Skip over it and keep counting.
        if let Some(first) = events.first() {
            let first = first.seq as i64;
            if first > acked + 1 {
                acked = first - 1;
                loop {
                    let has: bool = tx
                        .query_row(
                            "SELECT 1 FROM events WHERE device = ?1 AND seq = ?2",
                            params![device.as_str(), acked + 1],
                            |_| Ok(true),
                        )
                        .optional()?
                        .unwrap_or(false);
                    if !has {
                        break;
                    }
                    acked += 1;
                }
            }
        }
        tx.execute(
            "INSERT INTO acks (device, acked) VALUES (?1, ?2)
             ON CONFLICT(device) DO UPDATE SET acked = excluded.acked",
            params![device.as_str(), acked],
        )?;
        tx.execute(
            "UPDATE devices SET last_seen = ?2 WHERE id = ?1",
            params![device.as_str(), now],
        )?;
        tx.commit()?;
        Ok(acked as u64)
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

    /// Stores the latest status snapshot.
    pub fn set_status(&self, device: &DeviceId, status: &StatusReport) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE devices SET status = ?2, last_seen = ?3 WHERE id = ?1",
            params![device.as_str(), json(status), unix_now() as i64],
        )?;
        Ok(())
    }

    /// Stores presence if it supersedes what is held (higher epoch); returns whether it did.
    pub fn set_presence(&self, device: &DeviceId, p: Presence) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let held: Option<Option<String>> = tx
            .query_row(
                "SELECT presence FROM devices WHERE id = ?1",
                [device.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(held) = held else {
            return Ok(false);
        };
        let held: Option<Presence> = held.map(|h| parse("presence", &h)).transpose()?;
        if held.is_some_and(|h| !p.supersedes(&h)) {
            return Ok(false);
        }
        tx.execute(
            "UPDATE devices SET presence = ?2, last_seen = ?3 WHERE id = ?1",
            params![device.as_str(), json(&p), unix_now() as i64],
        )?;
        tx.commit()?;
        Ok(true)
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
