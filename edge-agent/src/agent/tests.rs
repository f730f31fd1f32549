//! The owner loop's handlers against a real store, real runtimes and a recording publisher,
//! with the wall clock following paused tokio time.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use protocol::{Channel, DeviceId, EventBatch, EventBody, KeyPair, RootKeys, StatusReport};

use super::*;
use crate::clock::TokioClock;
use crate::store::Identity;

const START: u64 = 1_700_000_000;

/// Records what was published.
#[derive(Default)]
struct Recorder(RefCell<Vec<(Channel, Vec<u8>)>>);

impl Publisher for Recorder {
    fn try_publish(&self, channel: Channel, payload: Vec<u8>) -> bool {
        self.0.borrow_mut().push((channel, payload));
        true
    }
}

impl Recorder {
    fn events(&self) -> Vec<EventBody> {
        self.on(Channel::Events)
            .into_iter()
            .flat_map(|p| {
                let b: EventBatch = serde_json::from_slice(&p).expect("batch");
                b.events.into_iter().map(|e| e.body)
            })
            .collect()
    }
    fn statuses(&self) -> Vec<StatusReport> {
        self.on(Channel::Status)
            .iter()
            .map(|p| serde_json::from_slice(p).expect("status"))
            .collect()
    }
    fn on(&self, channel: Channel) -> Vec<Vec<u8>> {
        self.0
            .borrow()
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// An agent on a provisioned data directory in `dir`, its clock at `START` in paused time.
fn agent(dir: &tempfile::TempDir) -> Agent {
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let mut store = Store::open(&cfg.db_path()).expect("open store");
    let identity = Identity {
        device_id: DeviceId::new("gw-1").expect("valid"),
        secret_key: KeyPair::from_seed([1; 32]).to_secret_base64(),
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: 1,
        mqtt_username: "gw-1".into(),
        mqtt_password: "pw".into(),
        hub_url: "http://127.0.0.1:1".into(),
        profile: "local-dev".into(),
    };
    store
        .provision(
            &identity,
            RootKeys::single(KeyPair::from_seed([9; 32]).public()),
        )
        .expect("provision");
    drop(store);
    Agent::open_with_clock(cfg, Arc::new(TokioClock::starting_at(START))).expect("open agent")
}

#[tokio::test(start_paused = true)]
async fn a_rejected_desired_document_is_reported_once_and_sent_on_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = agent(&dir);
    let link = Recorder::default();
    for _ in 0..2 {
        // A retained document is delivered again on every reconnect.
        a.on_link(LinkMsg::Desired(b"not an envelope".to_vec()), &link)
            .expect("desired");
    }
    assert!(link.events().is_empty(), "nothing is sent while offline");
    a.on_link(LinkMsg::Connected, &link).expect("connected");
    let events = link.events();
    assert!(
        matches!(events.as_slice(), [EventBody::DesiredRejected { .. }]),
        "{events:?}"
    );
    assert!(a.status().expect("status").last_rejection.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_pass_reports_status_only_when_connected_with_the_clock_it_was_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = agent(&dir);
    let link = Recorder::default();
    a.pass(&link).expect("pass");
    assert!(link.statuses().is_empty(), "offline");
    a.on_link(LinkMsg::Connected, &link).expect("connected");
    tokio::time::advance(Duration::from_secs(5)).await;
    a.pass(&link).expect("pass");
    let statuses = link.statuses();
    let [s] = statuses.as_slice() else {
        panic!("one status expected: {statuses:?}");
    };
    assert_eq!(s.time, START + 5);
    assert_eq!(s.convergence, Convergence::Idle);
    assert_eq!(s.desired_revision, None);
    // A pass with nothing changed sends nothing until the status interval passes.
    a.pass(&link).expect("pass");
    assert_eq!(link.statuses().len(), 1);
    tokio::time::advance(Duration::from_secs(a.cfg.status_interval_secs)).await;
    a.pass(&link).expect("pass");
    assert_eq!(link.statuses().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_stops_sending_until_the_next_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = agent(&dir);
    let link = Recorder::default();
    a.on_link(LinkMsg::Connected, &link).expect("connected");
    a.on_link(LinkMsg::Disconnected("gone".into()), &link)
        .expect("disconnected");
    a.on_link(LinkMsg::Desired(b"bad".to_vec()), &link)
        .expect("desired");
    a.pass(&link).expect("pass");
    assert!(link.events().is_empty() && link.statuses().is_empty());
    a.on_link(LinkMsg::Connected, &link).expect("connected");
    assert_eq!(link.events().len(), 1);
}

/// DESIGN §4.5: a write refused for a full disk changed nothing and is survived; any other
/// store error — an fsync's, a read-only file — ends the loop, and with it the process, so
/// nothing goes on as if the write had happened (C36).
#[tokio::test(start_paused = true)]
async fn a_full_disk_is_survived_but_any_other_store_error_ends_the_loop() {
    use rusqlite::ffi;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = agent(&dir);
    let sql = |code: i32| -> anyhow::Error {
        let e = StoreError::Sql(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None));
        anyhow::Error::new(e).context("persisting a reconciler pass")
    };
    assert!(a.survive_a_full_disk(Err(sql(ffi::SQLITE_FULL))).is_ok());
    assert!(a.disk_full, "the full disk is remembered (and logged once)");
    for fatal in [
        ffi::SQLITE_IOERR_FSYNC,
        ffi::SQLITE_IOERR_WRITE,
        ffi::SQLITE_READONLY,
        ffi::SQLITE_CORRUPT,
    ] {
        assert!(
            a.survive_a_full_disk(Err(sql(fatal))).is_err(),
            "error code {fatal} was survived"
        );
    }
    let link = Recorder::default();
    a.tick(&link).expect("tick");
    assert!(
        !a.disk_full,
        "a tick that stored everything ends the full-disk state"
    );
}

/// Trust version `v` from root seed 9 listing only `online`.
fn trust_doc(v: u64, online: &KeyPair) -> Vec<u8> {
    let u = protocol::TrustUpdate {
        kind: protocol::KIND_TRUST_UPDATE.into(),
        version: v,
        issued_at: START - 60,
        expires_at: START + 365 * 86_400,
        root: RootKeys::single(KeyPair::from_seed([9; 32]).public()),
        signing_keys: vec![protocol::SigningKeyEntry {
            kid: online.kid(),
            public_key: online.public(),
            not_after: START + 365 * 86_400,
        }],
        revision_floor: None,
    };
    protocol::Envelope::sign(
        serde_json::to_vec(&u).expect("json"),
        &[&KeyPair::from_seed([9; 32])],
    )
    .encode()
}

/// An empty desired state at `revision`, signed by `key`.
fn state_doc(revision: u64, key: &KeyPair) -> Vec<u8> {
    let s = protocol::DesiredState {
        kind: protocol::KIND_DESIRED_STATE.into(),
        device: DeviceId::new("gw-1").expect("valid"),
        revision,
        issued_at: START - 10,
        expires_at: START + 86_400,
        workloads: vec![],
        maintenance: None,
        rollout: None,
    };
    protocol::Envelope::sign(serde_json::to_vec(&s).expect("json"), &[key]).encode()
}

/// A key rotation (trust v2 drops the old online key) must not make the agent re-check the
/// state it already holds against the new trust and report it `unknown_key`: that is one
/// `desired_rejected` per device across the fleet for a routine rotation. The re-signed state
/// that follows is taken as usual.
#[tokio::test(start_paused = true)]
async fn a_key_rotation_does_not_reject_the_state_already_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = agent(&dir);
    let link = Recorder::default();
    let (old, new) = (KeyPair::from_seed([20; 32]), KeyPair::from_seed([21; 32]));
    a.on_link(LinkMsg::Connected, &link).expect("connected");
    a.on_link(LinkMsg::Trust(trust_doc(1, &old)), &link)
        .expect("trust v1");
    a.on_link(LinkMsg::Desired(state_doc(1, &old)), &link)
        .expect("state 1");
    a.on_link(LinkMsg::Trust(trust_doc(2, &new)), &link)
        .expect("trust v2");
    a.on_link(LinkMsg::Desired(state_doc(2, &new)), &link)
        .expect("state 2");
    let events = link.events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, EventBody::DesiredRejected { .. })),
        "{events:?}"
    );
    assert_eq!(
        a.desired.as_ref().map(|d| d.revision),
        Some(2),
        "{events:?}"
    );
    assert!(a.status().expect("status").last_rejection.is_none());
}

/// The case the re-check is for: a state signed by a key the agent learns of only from a trust
/// update that arrives after it is rejected first, then taken once the trust is.
#[tokio::test(start_paused = true)]
async fn a_state_signed_by_a_key_not_yet_trusted_is_taken_when_the_trust_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = agent(&dir);
    let link = Recorder::default();
    let (old, new) = (KeyPair::from_seed([20; 32]), KeyPair::from_seed([21; 32]));
    a.on_link(LinkMsg::Trust(trust_doc(1, &old)), &link)
        .expect("trust v1");
    a.on_link(LinkMsg::Desired(state_doc(1, &new)), &link)
        .expect("state 1");
    assert_eq!(a.desired.as_ref().map(|d| d.revision), None);
    a.on_link(LinkMsg::Trust(trust_doc(2, &new)), &link)
        .expect("trust v2");
    assert_eq!(a.desired.as_ref().map(|d| d.revision), Some(1));
}
