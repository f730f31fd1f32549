//! The `meta` table's key/value access: JSON values and raw bytes by key.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};

use super::{key, StoreError};

/// Raises the time floor to `issued_at` (it never goes down).
pub fn raise_time_floor(conn: &Connection, issued_at: u64) -> Result<(), StoreError> {
    let tf: u64 = get_json(conn, key::TIME_FLOOR)?.unwrap_or(0);
    put_json(conn, key::TIME_FLOOR, &tf.max(issued_at))
}

/// Reads a JSON value from `meta`.
pub fn get_json<T: DeserializeOwned>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let raw: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    raw.map(|b| {
        serde_json::from_slice(&b).map_err(|e| StoreError::Decode {
            key: key.into(),
            detail: e.to_string(),
        })
    })
    .transpose()
}

/// Writes a JSON value to `meta`.
pub fn put_json<T: Serialize>(conn: &Connection, key: &str, v: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(v).map_err(|e| StoreError::Decode {
        key: key.into(),
        detail: e.to_string(),
    })?;
    put_raw(conn, key, &bytes)
}

/// Writes raw bytes to `meta`.
pub fn put_raw(conn: &Connection, key: &str, v: &[u8]) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, v],
    )?;
    Ok(())
}
