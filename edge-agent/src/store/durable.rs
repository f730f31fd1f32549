//! What keeps the store's promises when the file system misbehaves (DESIGN §4.5): private file
//! modes, the checkpoint after a critical commit, detection of a lost WAL, the sequence-number
//! lease, and events held in memory while the disk is full.
//!
//! **A lost WAL.** SQLite in WAL mode keeps recent commits in `agent.db-wal` until a checkpoint
//! copies them into `agent.db`; deleting the WAL after a crash silently undoes them. So:
//! - every commit that changes identity, trust, the revision floor, the time floor or the boot
//!   counter is followed by `PRAGMA wal_checkpoint(TRUNCATE)`: these live in `agent.db` itself
//!   before the agent acts on them, and survive the loss of the WAL;
//! - a lost WAL is told apart from one SQLite removed: a clean close (the agent's, or any other
//!   client's) checkpoints every frame and removes both the WAL and its index (`agent.db-shm`);
//!   a WAL missing while the index says it held frames not yet checkpointed was lost
//!   ([`wal_lost`]). The store then reports it rather than pretend ([`recover_lost_wal`]);
//! - sequence numbers are leased in blocks of [`SEQ_LEASE`]: the lease lives in `agent.db`
//!   (checkpointed when it moves), and every number handed out is below it. After a lost WAL the
//!   next number jumps to the lease, so no number the hub may hold is ever reused.
//!
//! **A full disk.** SQLite rolls a transaction back when it gets `SQLITE_FULL`, so nothing is
//! half-written. An event that cannot be stored is held in memory (at most [`MAX_HELD`], the
//! rest counted as dropped) and written, in order, before anything else by the next transaction
//! that succeeds. An fsync error is different: it is not `SQLITE_FULL`, and it stays fatal.

use std::collections::VecDeque;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protocol::EventBody;
use rusqlite::Connection;

use super::{get_json, key, outbox, put_json, StoreError};

/// Sequence numbers leased at a time: the most a lost WAL can make the agent skip.
pub const SEQ_LEASE: u64 = 1024;

/// Events held in memory while the disk is full; more are counted as dropped.
pub const MAX_HELD: usize = 256;

/// The WAL file of the database at `db`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// The WAL index (shared memory) file of the database at `db`.
fn shm_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-shm");
    PathBuf::from(p)
}

/// Whether the WAL of `db` was lost with commits in it: the WAL is missing, but its index says
/// it held frames beyond those checkpointed into the database. Read before SQLite opens the
/// database (which rebuilds the index). The index layout is SQLite's documented wal-index
/// format (<https://www.sqlite.org/walformat.html>): two copies of a 48-byte header whose `mxFrame`
/// (the last valid frame) is at byte 16, then the checkpoint information whose `nBackfill` (the
/// frames copied into the database) is at byte 96, all in the host's byte order. Not detected:
/// the WAL and its index both deleted, or a WAL truncated rather than deleted.
pub fn wal_lost(db: &Path) -> bool {
    use std::io::Read;
    if wal_path(db).exists() {
        return false;
    }
    let mut head = [0u8; 100];
    let read = std::fs::File::open(shm_path(db)).and_then(|mut f| f.read_exact(&mut head));
    if read.is_err() {
        return false; // no index: SQLite's clean close removed both
    }
    let at = |o: usize| u32::from_ne_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    let initialised = head[12] != 0 || head[48 + 12] != 0;
    let frames = at(16).max(at(48 + 16));
    initialised && frames > at(96)
}

/// Creates the database file 0600 when it does not exist, and takes group and other access away
/// from it and its WAL and shared-memory files when an older install left them readable. SQLite
/// gives the WAL and shared-memory files the database file's mode.
pub fn make_private(db: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db)?;
    for p in [db.to_path_buf(), wal_path(db), shm_path(db)] {
        match std::fs::metadata(&p) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies the WAL into the database file and truncates it. Returns `false` when a reader kept
/// it from completing (it is tried again after the next commit).
pub fn checkpoint(conn: &Connection) -> Result<bool, StoreError> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    Ok(busy == 0)
}

/// At open, after a WAL found missing although this store keeps its WAL: the commits since the
/// last checkpoint are gone. Identity, trust and both floors were checkpointed when they
/// changed, so they stand; the next sequence number jumps to the lease, so none is reused, and
/// the numbers given up are counted and reported as dropped events. Returns how many.
pub fn recover_lost_wal(conn: &Connection, now: u64, budget: u64) -> Result<u64, StoreError> {
    let next: u64 = get_json(conn, key::NEXT_SEQ)?.unwrap_or(1);
    let lease: u64 = get_json(conn, key::SEQ_LEASE)?.unwrap_or(next);
    let skipped = lease.saturating_sub(next);
    if skipped > 0 {
        put_json(conn, key::NEXT_SEQ, &lease)?;
        outbox::count_dropped(conn, skipped)?;
        outbox::report_drops(conn, now, budget)?;
    }
    Ok(skipped)
}

/// Events that could not be stored because the disk was full, oldest first.
#[derive(Debug, Default)]
pub struct Held {
    /// The events and the times they happened.
    pub events: VecDeque<(EventBody, u64)>,
    /// Events not held because [`MAX_HELD`] were already waiting.
    pub dropped: u64,
}

impl Held {
    /// Holds one more event, or counts it as dropped.
    pub fn push(&mut self, body: EventBody, now: u64) {
        if self.events.len() < MAX_HELD {
            self.events.push_back((body, now));
        } else {
            self.dropped += 1;
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dropped == 0
    }

    /// Writes everything held into the caller's transaction, in order.
    pub fn write(&self, conn: &Connection, budget: u64) -> Result<(), StoreError> {
        for (body, at) in &self.events {
            outbox::append(conn, body.clone(), *at, budget)?;
        }
        if self.dropped > 0 {
            outbox::count_dropped(conn, self.dropped)?;
        }
        Ok(())
    }
}
