//! API tokens: stored by their salted hash only, with an optional expiry, a revocation time and a
//! scope. The id a token is listed and revoked by is its row id.

use rusqlite::{params, OptionalExtension};

use super::{json, parse, unix_now, Store, StoreError};
use crate::model::{ApiTokenRow, Role, TokenScope};

const COLUMNS: &str = "rowid, name, role, scope, created_at, expires_at, revoked_at";

type Raw = (
    i64,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

fn decode(r: Raw) -> Result<ApiTokenRow, StoreError> {
    let (id, name, role, scope, created, expires, revoked) = r;
    Ok(ApiTokenRow {
        id: id as u64,
        name,
        role: parse("role", &role)?,
        scope: scope
            .map(|s| parse::<TokenScope>("scope", &s))
            .transpose()?
            .unwrap_or_default(),
        created_at: created as u64,
        expires_at: expires.map(|e| e as u64),
        revoked_at: revoked.map(|r| r as u64),
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

impl Store {
    /// Records an API token by its hash; returns its id.
    pub fn insert_api_token(
        &self,
        token_hash: &str,
        name: &str,
        role: Role,
        scope: &TokenScope,
        expires_at: Option<u64>,
    ) -> Result<u64, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO api_tokens (token_hash, name, role, created_at, expires_at, scope)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                token_hash,
                name,
                json(&role),
                unix_now() as i64,
                expires_at.map(|e| e as i64),
                (!scope.is_whole()).then(|| json(scope)),
            ],
        )?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// The API token with this hash, revoked or expired ones included (the caller says why it
    /// refuses them).
    pub fn api_token(&self, token_hash: &str) -> Result<Option<ApiTokenRow>, StoreError> {
        let raw = self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_tokens WHERE token_hash = ?1"),
                [token_hash],
                row,
            )
            .optional()?;
        raw.map(decode).transpose()
    }

    /// Every API token, oldest first.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM api_tokens ORDER BY rowid"))?;
        let rows = stmt.query_map([], row)?;
        rows.map(|r| decode(r?)).collect()
    }

    /// Revokes a live token at `now`. Refuses to revoke the last live, unscoped admin token (the
    /// hub would have no one left to make tokens). Returns the token as it now is.
    pub fn revoke_api_token(&self, id: u64, now: u64) -> Result<ApiTokenRow, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let raw = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_tokens WHERE rowid = ?1"),
                [id as i64],
                row,
            )
            .optional()?;
        let Some(tok) = raw.map(decode).transpose()? else {
            return Err(StoreError::NotFound(format!("api token {id}")));
        };
        if tok.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "api token {id} ({}) is already revoked",
                tok.name
            )));
        }
        let live_admins: i64 = tx.query_row(
            "SELECT COUNT(*) FROM api_tokens WHERE role = ?1 AND revoked_at IS NULL
               AND scope IS NULL AND (expires_at IS NULL OR expires_at > ?2)",
            params![json(&Role::Admin), now as i64],
            |r| r.get(0),
        )?;
        let whole_admin = tok.role == Role::Admin
            && tok.scope.is_whole()
            && tok.expires_at.is_none_or(|e| e > now);
        if whole_admin && live_admins <= 1 {
            return Err(StoreError::Conflict(format!(
                "api token {id} ({}) is the last live admin token: make another admin token first",
                tok.name
            )));
        }
        tx.execute(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE rowid = ?1",
            params![id as i64, now as i64],
        )?;
        tx.commit()?;
        Ok(ApiTokenRow {
            revoked_at: Some(now),
            ..tok
        })
    }
}
