//! Image pulls as devices report them (`image_pulled` events): full blob or delta, the bytes
//! fetched and saved, a delta given up. One row per event, stored with it (idempotent by device
//! and sequence); summed per device and per (device, image) for the API.

use std::collections::HashMap;

use protocol::{Event, EventBody};
use rusqlite::{params, Transaction};

use super::{Store, StoreError};
use crate::model::PullTotals;

const TOTALS: &str = "SUM(delta = 0), SUM(delta), SUM(fallback IS NOT NULL), SUM(bytes_fetched),
                      SUM(bytes_saved)";

fn totals(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<PullTotals> {
    let n = |i: usize| -> rusqlite::Result<u64> {
        Ok(r.get::<_, Option<i64>>(at + i)?.unwrap_or(0).max(0) as u64)
    };
    Ok(PullTotals {
        full: n(0)?,
        delta: n(1)?,
        fallbacks: n(2)?,
        bytes_fetched: n(3)?,
        bytes_saved: n(4)?,
    })
}

impl Store {
    /// Every device's pull totals (devices that reported none are absent).
    pub fn pull_totals(&self) -> Result<HashMap<String, PullTotals>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT device, {TOTALS} FROM image_pulls GROUP BY device"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, totals(r, 1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One device's pull totals.
    pub fn device_pull_totals(&self, device: &str) -> Result<PullTotals, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TOTALS} FROM image_pulls WHERE device = ?1"
        ))?;
        Ok(stmt.query_row([device], |r| totals(r, 0))?)
    }

    /// Pull totals per (device, image digest), for the per-deployment sums.
    pub fn pull_totals_by_image(&self) -> Result<Vec<(String, String, PullTotals)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT device, digest, {TOTALS} FROM image_pulls GROUP BY device, digest"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                totals(r, 2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Records the pulls among `events` (an event already stored is not counted twice).
pub(super) fn record_pulls(
    tx: &Transaction<'_>,
    device: &str,
    events: &[Event],
) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO image_pulls
           (device, seq, digest, delta, base, bytes_fetched, bytes_saved, fallback, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for e in events {
        if let EventBody::ImagePulled {
            digest,
            bytes_fetched,
            delta,
            base,
            bytes_saved,
            fallback,
        } = &e.body
        {
            // Stored as SQLite integers: a device's claim beyond i64 is clamped, not wrapped.
            let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
            insert.execute(params![
                device,
                clamp(e.seq),
                digest.to_string(),
                *delta,
                base.map(|b| b.to_string()),
                clamp(*bytes_fetched),
                clamp(*bytes_saved),
                fallback,
                clamp(e.time),
            ])?;
        }
    }
    Ok(())
}
