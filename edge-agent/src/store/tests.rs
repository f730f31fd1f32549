//! The store's unit tests.

use std::path::Path;

use super::*;
use protocol::{DeviceId, KeyPair};

fn ident() -> Identity {
    Identity {
        device_id: DeviceId::new("gw-1").expect("valid"),
        secret_key: KeyPair::from_seed([1; 32]).to_secret_base64(),
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: 1883,
        mqtt_username: "gw-1".into(),
        mqtt_password: "pw".into(),
        hub_url: "http://127.0.0.1:1".into(),
        profile: "local-dev".into(),
    }
}

#[test]
fn provisioning_is_durable_and_not_repeatable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    let root = RootKeys::single(KeyPair::from_seed([9; 32]).public());
    {
        let mut s = Store::open(&path).expect("open");
        assert!(matches!(s.identity(), Err(StoreError::NotEnrolled)));
        s.provision(&ident(), root.clone()).expect("provision");
        assert!(s.provision(&ident(), root.clone()).is_err());
    }
    let s = Store::open(&path).expect("reopen");
    assert_eq!(s.identity().expect("id").device_id.as_str(), "gw-1");
    assert_eq!(s.trust().expect("trust").root, root);
    assert_eq!(s.floor().expect("floor"), RevisionFloor::default());
}

#[test]
fn a_damaged_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    std::fs::write(&path, b"this is not a database, but it is long enough to look like one......................................................").expect("write");
    assert!(Store::open(&path).is_err());
}

fn provisioned(path: &Path) -> Store {
    let mut s = Store::open(path).expect("open");
    s.provision(
        &ident(),
        RootKeys::single(KeyPair::from_seed([9; 32]).public()),
    )
    .expect("provision");
    s
}

fn wal_len(path: &Path) -> u64 {
    std::fs::metadata(durable::wal_path(path))
        .expect("the WAL exists")
        .len()
}

#[test]
fn a_pass_that_changes_nothing_commits_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    let mut s = provisioned(&path);
    let mut records = BTreeMap::new();
    let rec = Record {
        restarts: 1,
        ..Record::default()
    };
    records.insert(WorkloadName::new("w").expect("valid"), rec);
    let before = wal_len(&path);
    s.save_pass(&records, vec![], 1).expect("save");
    let changed = wal_len(&path);
    assert!(changed > before, "a changed record is committed");
    for _ in 0..20 {
        s.save_pass(&records, vec![], 2).expect("save");
    }
    assert_eq!(
        wal_len(&path),
        changed,
        "an unchanged pass wrote to the WAL"
    );
    s.save_pass(&BTreeMap::new(), vec![], 3).expect("save");
    assert!(
        s.records().expect("records").is_empty(),
        "a removal is saved"
    );
}

#[test]
fn a_lost_wal_keeps_identity_trust_and_floor_and_never_reuses_a_sequence_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    let mut s = provisioned(&path);
    let floor = RevisionFloor {
        revision: 4,
        payload_digest: None,
    };
    s.accept_desired(b"envelope", &floor, 100, 1)
        .expect("accept");
    for revision in 10..15 {
        s.event(EventBody::DesiredAccepted { revision }, 2)
            .expect("event");
    }
    let sent = s.pending_events(100, usize::MAX).expect("pending");
    let last_sent = sent.last().map(|e| e.seq).expect("events");
    assert_eq!(s.lost_wal(), 0);
    // A kill -9 leaves the database, its WAL and the WAL index as they are on disk; then the
    // WAL is lost: the database and its index, without the WAL.
    let lost = dir.path().join("lost");
    std::fs::create_dir(&lost).expect("mkdir");
    std::fs::copy(&path, lost.join("agent.db")).expect("copy db");
    let mut shm = path.clone().into_os_string();
    shm.push("-shm");
    std::fs::copy(&shm, lost.join("agent.db-shm")).expect("copy the WAL index");
    // A clean close checkpoints everything and removes WAL and index: nothing is lost.
    drop(s);
    assert!(!durable::wal_path(&path).exists());
    let s = Store::open(&path).expect("reopen after a clean close");
    assert_eq!(s.lost_wal(), 0, "a clean close taken for a lost WAL");
    assert_eq!(
        s.pending_events(100, usize::MAX).expect("pending").len(),
        sent.len()
    );
    drop(s);

    let path = lost.join("agent.db");
    let mut s = Store::open(&path).expect("reopen");
    assert!(s.lost_wal() > 0, "the lost WAL went unnoticed");
    assert_eq!(s.floor().expect("floor"), floor, "the floor rolled back");
    assert_eq!(s.identity().expect("identity").device_id.as_str(), "gw-1");
    assert_eq!(s.time_floor().expect("time floor"), 100);
    s.event(EventBody::DesiredAccepted { revision: 99 }, 3)
        .expect("event");
    let now = s.pending_events(100, usize::MAX).expect("pending");
    let after: Vec<&Event> = now.iter().filter(|e| e.seq > 1).collect();
    assert!(
        after.iter().all(|e| e.seq > last_sent),
        "a sequence number the hub may hold was reused: {now:?}"
    );
    assert!(
        now.iter()
            .any(|e| matches!(e.body, EventBody::EventsDropped { count } if count == s.lost_wal())),
        "the loss is not reported: {now:?}"
    );
    assert!(s.events_dropped_total().expect("total") > 0);
    // A second open finds the WAL and recovers nothing more.
    drop(s);
    let s = Store::open(&path).expect("reopen");
    assert_eq!(s.lost_wal(), 0);
}

#[test]
fn events_are_held_while_the_disk_is_full_and_stored_in_order_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    let mut s = provisioned(&path);
    // A database that may not grow stands for a full disk: SQLite answers SQLITE_FULL.
    let pages: i64 = s
        .conn()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("pages");
    s.conn()
        .pragma_update(None, "max_page_count", pages)
        .expect("limit");
    let rejected = |n: usize| EventBody::DesiredRejected {
        code: format!("c{n}"),
        reason: "x".repeat(3000),
    };
    for n in 0..10 {
        s.event(rejected(n), 1)
            .expect("a full disk is not an error");
    }
    let stored = s.pending_events(100, usize::MAX).expect("pending").len();
    assert!(stored < 10, "the disk never filled up");
    assert!(!s.held.is_empty(), "nothing was held");
    let full = s.tx(|tx| {
        outbox::append(tx, rejected(99), 1, u64::MAX)?;
        Ok(())
    });
    assert!(
        full.is_err_and(|e| e.is_disk_full()),
        "SQLITE_FULL is told apart"
    );

    s.conn()
        .pragma_update(None, "max_page_count", 1_000_000)
        .expect("room again");
    s.event(rejected(10), 2).expect("event");
    let all = s.pending_events(100, usize::MAX).expect("pending");
    let codes: Vec<String> = all
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::DesiredRejected { code, .. } => Some(code.clone()),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (0..=10).map(|n| format!("c{n}")).collect();
    assert_eq!(codes, want, "held events lost or out of order");
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(s.held.is_empty());
}
