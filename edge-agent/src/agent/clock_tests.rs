//! The time policy of DESIGN §3.3 against a clock set by hand (C9, C58): a device booted at
//! 1970, one running ten years ahead, a clock stepped mid-run, and a day of skew either way
//! between hub and device. Real store, real signatures; only the clock is not the host's.

use std::sync::Arc;

use protocol::{
    DesiredState, DeviceId, Envelope, EventBody, KeyPair, RootKeys, SigningKeyEntry, TrustUpdate,
    KIND_DESIRED_STATE, KIND_TRUST_UPDATE,
};

use super::*;
use crate::clock::ManualClock;
use crate::store::Identity;

/// The hub's "now" in every case: 2026-11-24T00:00:00Z.
const HUB: u64 = 1_795_478_400;
const DAY: u64 = 86_400;
const YEAR: u64 = 365 * DAY;

fn root() -> KeyPair {
    KeyPair::from_seed([9; 32])
}

fn online() -> KeyPair {
    KeyPair::from_seed([2; 32])
}

/// The hub's trust document, signed by root a month before `HUB`, its online key valid a year.
fn trust_doc() -> Vec<u8> {
    let t = TrustUpdate {
        kind: KIND_TRUST_UPDATE.into(),
        version: 1,
        issued_at: HUB - 30 * DAY,
        expires_at: HUB + YEAR,
        root: RootKeys::single(root().public()),
        signing_keys: vec![SigningKeyEntry {
            kid: online().kid(),
            public_key: online().public(),
            not_after: HUB + YEAR,
        }],
        revision_floor: None,
    };
    let payload = serde_json::to_vec(&t).expect("trust json");
    Envelope::sign(payload, &[&root()]).encode()
}

/// A state for `gw-1` with no workloads, signed by the online key.
fn state(revision: u64, issued_at: u64, expires_at: u64) -> Vec<u8> {
    let s = DesiredState {
        kind: KIND_DESIRED_STATE.into(),
        device: DeviceId::new("gw-1").expect("valid"),
        revision,
        issued_at,
        expires_at,
        workloads: vec![],
        maintenance: None,
        rollout: None,
    };
    let payload = serde_json::to_vec(&s).expect("state json");
    Envelope::sign(payload, &[&online()]).encode()
}

/// A provisioned agent on `dir` whose wall clock is `clock`.
fn agent(dir: &tempfile::TempDir, clock: &ManualClock) -> Agent {
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    if !cfg.db_path().exists() {
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
            .provision(&identity, RootKeys::single(root().public()))
            .expect("provision");
    }
    Agent::open_with_clock(cfg, Arc::new(clock.clone())).expect("open agent")
}

/// Records nothing: these cases read the outbox itself.
struct Offline;

impl Publisher for Offline {
    fn try_publish(&self, _: Channel, _: Vec<u8>) -> bool {
        false
    }
}

use protocol::Channel;

/// Every event in the outbox, oldest first.
fn events(a: &Agent) -> Vec<EventBody> {
    let all = a.store.pending_events(10_000, usize::MAX).expect("events");
    all.into_iter().map(|e| e.body).collect()
}

/// The code of the newest `desired_rejected` event, if the newest event is one.
fn last_outcome(a: &Agent) -> String {
    match events(a).last() {
        Some(EventBody::DesiredAccepted { revision }) => format!("accepted {revision}"),
        Some(EventBody::DesiredRejected { code, .. }) => format!("rejected {code}"),
        Some(EventBody::TrustAccepted { version }) => format!("trust accepted {version}"),
        Some(EventBody::TrustRejected { code, .. }) => format!("trust rejected {code}"),
        other => format!("{other:?}"),
    }
}

fn deliver(a: &mut Agent, doc: Vec<u8>) -> String {
    a.on_link(LinkMsg::Desired(doc), &Offline).expect("desired");
    last_outcome(a)
}

fn deliver_trust(a: &mut Agent, doc: Vec<u8>) -> String {
    a.on_link(LinkMsg::Trust(doc), &Offline).expect("trust");
    last_outcome(a)
}

/// C9: a device whose clock reads 1970 (no RTC battery, no NTP yet) is not locked out — fresh
/// states are accepted — but its expiry checks run at the time floor, the newest `issued_at`
/// it has accepted, so nothing that expired before a signed time it has seen looks fresh, also
/// after a restart at 1970 again.
#[tokio::test]
async fn c9_a_clock_at_1970_accepts_fresh_states_but_nothing_expired_before_its_time_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at(0);
    let mut a = agent(&dir, &clock);
    assert_eq!(deliver_trust(&mut a, trust_doc()), "trust accepted 1");
    assert_eq!(a.store.time_floor().expect("floor"), HUB - 30 * DAY);
    // Expired before the trust document was signed: refused although the clock says 1970.
    let expired_long_ago = state(4, HUB - 90 * DAY, HUB - 31 * DAY);
    assert_eq!(deliver(&mut a, expired_long_ago), "rejected expired");
    // No lock-out: the hub's fresh state is accepted, and raises the floor to its issue time.
    assert_eq!(deliver(&mut a, state(5, HUB, HUB + 30 * DAY)), "accepted 5");
    assert_eq!(a.store.time_floor().expect("floor"), HUB);
    // A higher revision that expired a second before the floor: refused.
    let just_expired = state(6, HUB - 20 * DAY, HUB - 1);
    assert_eq!(deliver(&mut a, just_expired.clone()), "rejected expired");
    assert!(!a.status().expect("status").stale, "the state runs fresh");
    // The floor is durable: restarted with the clock at 1970 again, the same refusal.
    drop(a);
    let mut a = agent(&dir, &clock);
    assert_eq!(a.store.time_floor().expect("floor"), HUB);
    let before = events(&a).len();
    a.on_link(LinkMsg::Desired(just_expired), &Offline)
        .expect("desired");
    assert_eq!(last_outcome(&a), "rejected expired");
    assert_eq!(events(&a).len(), before + 1);
    assert_eq!(a.store.floor().expect("floor").revision, 5);
}

/// C9: a clock ten years ahead makes every fresh document look expired (the online key is past
/// its `not_after`, the trust document past its expiry): refused, and reported. The clock never
/// raises the time floor, so once it is corrected the same documents are accepted — no
/// permanent lock-out.
#[tokio::test]
async fn c9_a_clock_ten_years_ahead_refuses_fresh_documents_until_it_is_corrected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at(HUB + 10 * YEAR);
    let mut a = agent(&dir, &clock);
    assert_eq!(deliver_trust(&mut a, trust_doc()), "trust rejected expired");
    let fresh = state(5, HUB, HUB + 30 * DAY);
    assert_eq!(deliver(&mut a, fresh.clone()), "rejected unknown_key");
    assert_eq!(
        a.store.time_floor().expect("floor"),
        0,
        "the clock set no floor"
    );
    assert_eq!(a.store.floor().expect("floor").revision, 0);
    // NTP corrects the clock: the retained trust, delivered again, is accepted, and the
    // state held back is examined again under it and accepted.
    clock.set(HUB + 60);
    assert_eq!(deliver_trust(&mut a, trust_doc()), "accepted 5");
    assert!(events(&a).contains(&EventBody::TrustAccepted { version: 1 }));
    assert_eq!(deliver(&mut a, fresh), "accepted 5", "a no-op again");
    assert_eq!(a.store.time_floor().expect("floor"), HUB);
}

/// C9: the clock stepped ten years ahead mid-run and back. The running state keeps running and
/// is reported stale while the clock is ahead; a fresh state signed meanwhile is refused as
/// expired (its key is past `not_after` by that clock); stepped back, the same document is
/// accepted and the device is no longer stale.
#[tokio::test]
async fn c9_a_clock_stepped_mid_run_reports_stale_and_recovers_when_stepped_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::at(HUB);
    let mut a = agent(&dir, &clock);
    assert_eq!(deliver_trust(&mut a, trust_doc()), "trust accepted 1");
    assert_eq!(deliver(&mut a, state(5, HUB, HUB + 30 * DAY)), "accepted 5");
    a.pass(&Offline).expect("pass");
    assert!(!a.status().expect("status").stale);

    clock.set(HUB + 10 * YEAR);
    a.pass(&Offline).expect("pass");
    assert!(a.status().expect("status").stale, "ahead: stale");
    assert!(
        events(&a)
            .iter()
            .any(|e| matches!(e, EventBody::Stale { revision, .. } if *revision == 5)),
        "a stale event is reported: {:?}",
        events(&a)
    );
    let renewed = state(6, HUB + 3_600, HUB + 30 * DAY + 3_600);
    assert_eq!(deliver(&mut a, renewed.clone()), "rejected expired_key");
    assert_eq!(
        a.desired.as_ref().map(|d| d.revision),
        Some(5),
        "still running"
    );
    assert_eq!(
        a.store.time_floor().expect("floor"),
        HUB,
        "the step set no floor"
    );

    clock.set(HUB + 7_200);
    assert_eq!(deliver(&mut a, renewed), "accepted 6");
    a.pass(&Offline).expect("pass");
    assert!(!a.status().expect("status").stale, "stepped back: fresh");
}

/// C58: a day of skew either way between hub and device. Behind, the time floor (the state's
/// `issued_at`, the hub's clock) decides expiry; ahead, a state is acceptable while its
/// `expires_at` is after the device's clock. There is no margin at acceptance: a device a day
/// ahead refuses a state with less than a day left, which the hub never sends (it re-signs
/// every state at half its 30-day lifetime, so up to 15 days of skew never show; DESIGN §3.3).
#[tokio::test]
async fn c58_a_day_of_skew_either_way_accepts_the_hubs_states_with_no_margin_at_expiry() {
    for (skew, short_lived) in [
        (-(DAY as i64), "accepted 6"),
        (DAY as i64, "rejected expired"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::at(HUB.saturating_add_signed(skew));
        let mut a = agent(&dir, &clock);
        assert_eq!(deliver_trust(&mut a, trust_doc()), "trust accepted 1");
        assert_eq!(
            deliver(&mut a, state(5, HUB, HUB + 30 * DAY)),
            "accepted 5",
            "skew {skew}"
        );
        assert_eq!(
            deliver(&mut a, state(6, HUB, HUB + DAY / 2)),
            short_lived,
            "skew {skew}: half a day left by the hub's clock"
        );
        // The state re-signed at half its lifetime, received when the device's clock is
        // halfway plus the skew: accepted, and the device is never stale.
        clock.set((HUB + 15 * DAY).saturating_add_signed(skew));
        assert_eq!(
            deliver(&mut a, state(7, HUB + 15 * DAY, HUB + 45 * DAY)),
            "accepted 7",
            "skew {skew}"
        );
        a.pass(&Offline).expect("pass");
        assert!(!a.status().expect("status").stale, "skew {skew}");
    }
}
