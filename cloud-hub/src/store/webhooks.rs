//! Webhook deliveries of rollouts: each is queued in the transaction of the step whose
//! transition it reports (so none is lost or sent for a step that was not stored), then sent
//! and retried by the rollout driver, every attempt recorded.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Store, StoreError};

/// A delivery due to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    /// Id.
    pub id: u64,
    /// Rollout.
    pub rollout: u64,
    /// Where.
    pub url: String,
    /// The rollout's signing secret.
    pub secret: String,
    /// Event name (`rollout.paused`, …).
    pub event: String,
    /// The exact body to send (and sign).
    pub body: String,
    /// Attempts so far.
    pub attempts: u32,
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeliveryRow {
    /// Id (sent as `X-Fleet-Delivery`).
    pub id: u64,
    /// Event name.
    pub event: String,
    /// The body sent.
    pub body: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the receiver answered 2xx.
    pub delivered_at: Option<u64>,
    /// When the next attempt is due (none once delivered or given up).
    pub next_at: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
}

/// Queues `(event, body)` deliveries for rollout `id` inside the caller's transaction, if the
/// rollout has a webhook. Returns how many.
pub(super) fn queue(
    tx: &Connection,
    id: u64,
    notify: &[(String, String)],
    now: u64,
) -> Result<u64, StoreError> {
    let has: Option<String> = tx
        .query_row(
            "SELECT webhook_url FROM rollouts WHERE id = ?1",
            [id as i64],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    if has.is_none() {
        return Ok(0);
    }
    let mut put = tx.prepare_cached(
        "INSERT INTO webhook_deliveries (rollout, event, body, attempts, next_at, created_at)
         VALUES (?1, ?2, ?3, 0, ?4, ?4)",
    )?;
    for (event, body) in notify {
        put.execute(params![id as i64, event, body, now as i64])?;
    }
    Ok(notify.len() as u64)
}

impl Store {
    /// Deliveries due at `now` (not delivered, attempts left), oldest first.
    pub fn due_deliveries(
        &self,
        now: u64,
        max_attempts: u32,
        limit: u32,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT w.id, w.rollout, r.webhook_url, r.webhook_secret, w.event, w.body, w.attempts
             FROM webhook_deliveries w JOIN rollouts r ON r.id = w.rollout
             WHERE w.delivered_at IS NULL AND w.attempts < ?2 AND w.next_at <= ?1
               AND r.webhook_url IS NOT NULL
             ORDER BY w.id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![now as i64, max_attempts, limit], |r| {
            Ok(DueDelivery {
                id: r.get::<_, i64>(0)? as u64,
                rollout: r.get::<_, i64>(1)? as u64,
                url: r.get(2)?,
                secret: r.get(3)?,
                event: r.get(4)?,
                body: r.get(5)?,
                attempts: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records an attempt: delivered (`error` none) or failed, due again at `next_at`.
    pub fn record_delivery(
        &self,
        id: u64,
        now: u64,
        error: Option<&str>,
        next_at: u64,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        match error {
            None => conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, delivered_at = ?2,
                   last_error = NULL WHERE id = ?1",
                params![id as i64, now as i64],
            )?,
            Some(e) => conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, next_at = ?2,
                   last_error = ?3 WHERE id = ?1",
                params![id as i64, next_at as i64, e],
            )?,
        };
        Ok(())
    }

    /// Every delivery of rollout `id`, in order.
    pub fn deliveries(&self, id: u64, max_attempts: u32) -> Result<Vec<DeliveryRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, event, body, attempts, delivered_at, next_at, last_error
             FROM webhook_deliveries WHERE rollout = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([id as i64], |r| {
            let attempts: u32 = r.get(3)?;
            let delivered_at = r.get::<_, Option<i64>>(4)?.map(|v| v as u64);
            let next_at = r.get::<_, i64>(5)? as u64;
            Ok(DeliveryRow {
                id: r.get::<_, i64>(0)? as u64,
                event: r.get(1)?,
                body: r.get(2)?,
                attempts,
                delivered_at,
                next_at: (delivered_at.is_none() && attempts < max_attempts).then_some(next_at),
                last_error: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
