//! The services over a real store and key directory, with a test clock and a sink that records
//! what would go to the broker.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use protocol::enroll::EnrollRequest;
use protocol::{Arch, DesiredState, DeviceId, KeyPair, RuntimeKind};

use super::publisher::{Publisher, RetainedSink};
use super::registry::{DeviceEndpoints, MaintenanceScope, Registry};
use super::{Error, SharedClock, TestClock};
use crate::keys::KeyDir;
use crate::model::{Role, TokenInfo};
use crate::store::Store;
use crate::types::TokenIn;

/// Records what would go to the broker and checks, at the moment of publishing, that the
/// store already holds exactly the desired state being published.
#[derive(Debug)]
pub(super) struct Recorder {
    store: Store,
    sent: Mutex<Vec<(String, Vec<u8>)>>,
    not_stored: Mutex<Vec<String>>,
}

impl RetainedSink for Recorder {
    fn publish_retained(&self, topic: String, payload: Vec<u8>) -> BoxFuture<'_, ()> {
        if let Some(device) = topic
            .strip_prefix("fleet/v1/dev/")
            .and_then(|t| t.strip_suffix("/desired"))
        {
            if self.store.desired_envelope(device).ok().flatten().as_ref() != Some(&payload) {
                self.not_stored
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(device.to_string());
            }
        }
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic, payload));
        Box::pin(async {})
    }
}

impl Recorder {
    pub(super) fn sent(&self) -> Vec<(String, Vec<u8>)> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn not_stored(&self) -> Vec<String> {
        self.not_stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

pub(super) struct Fixture {
    pub(super) _dir: tempfile::TempDir,
    pub(super) store: Store,
    pub(super) profiles: Arc<std::collections::BTreeMap<String, protocol::DeviceProfile>>,
    pub(super) clock: TestClock,
    pub(super) sink: Arc<Recorder>,
    pub(super) registry: Registry,
    pub(super) publisher: Publisher,
}

pub(super) const T0: u64 = 1_800_000_000;

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("hub.db")).expect("store");
    let keys = KeyDir(dir.path().join("keys"));
    keys.init(T0).expect("keys");
    let key = crate::keys::read_key(&keys.online()).expect("online key");
    let clock = TestClock::at(T0);
    let shared: SharedClock = Arc::new(clock.clone());
    let profiles = Arc::new(crate::serve::load_profiles(None).expect("profiles"));
    let sink = Arc::new(Recorder {
        store: store.clone(),
        sent: Mutex::default(),
        not_stored: Mutex::default(),
    });
    let publisher = Publisher::new(
        store.clone(),
        shared.clone(),
        key,
        keys,
        profiles.clone(),
        sink.clone(),
        3600,
    );
    let registry = Registry::new(
        store.clone(),
        shared,
        profiles.clone(),
        publisher.clone(),
        DeviceEndpoints {
            mqtt: ("127.0.0.1".into(), 1883),
            url: "http://127.0.0.1:8080".into(),
        },
    );
    Fixture {
        _dir: dir,
        store,
        profiles,
        clock,
        sink,
        registry,
        publisher,
    }
}

pub(super) fn admin() -> TokenInfo {
    TokenInfo {
        name: "admin".into(),
        role: Role::Admin,
        scope: Default::default(),
    }
}

pub(super) fn enroll_token(ttl: u64) -> TokenIn {
    TokenIn {
        kind: "enroll".into(),
        name: None,
        role: None,
        labels: Default::default(),
        ttl_secs: Some(ttl),
        actions: None,
        groups: None,
    }
}

pub(super) fn request(token: &str, id: &str, seed: u8) -> EnrollRequest {
    let key = KeyPair::from_seed([seed; 32]);
    EnrollRequest {
        proof: EnrollRequest::prove(&key, token),
        token: token.into(),
        public_key: key.public(),
        device_id: Some(DeviceId::new(id).expect("id")),
        profile: "local-dev".into(),
        arch: Arch::host().expect("arch"),
        runtimes: vec![RuntimeKind::Process],
        agent_version: "t".into(),
        labels: Default::default(),
    }
}

#[tokio::test]
async fn enrollment_tokens_expire_by_the_injected_clock() {
    let f = fixture();
    let live = f
        .registry
        .create_token(&admin(), enroll_token(60))
        .await
        .expect("token");
    let late = f
        .registry
        .create_token(&admin(), enroll_token(60))
        .await
        .expect("token");
    f.clock.advance(59);
    f.registry
        .enroll(request(&live, "gw-1", 1))
        .await
        .expect("still valid");
    f.clock.advance(1);
    let err = f
        .registry
        .enroll(request(&late, "gw-2", 2))
        .await
        .expect_err("expired at exactly its ttl");
    assert!(
        matches!(&err, Error::BadToken(m) if m.contains("expired")),
        "{err:?}"
    );
    assert!(
        f.registry.device("gw-2".into()).await.is_err(),
        "nothing stored"
    );
}

#[tokio::test]
async fn a_window_change_is_signed_at_the_clocks_time_and_published_on_the_devices_topic() {
    let f = fixture();
    let t = f
        .registry
        .create_token(&admin(), enroll_token(60))
        .await
        .expect("token");
    f.registry
        .enroll(request(&t, "gw-1", 1))
        .await
        .expect("enroll");
    // Something to run, so the device has a state to carry the window.
    let digest = protocol::Digest::of(b"image");
    f.store
        .put_image(&crate::model::ImageRow {
            digest: digest.to_string(),
            name: "app".into(),
            size: 5,
            compressed_size: 5,
            arch: Arch::host().expect("arch"),
            created_at: T0,
        })
        .expect("image");
    let deploy =
        super::deploy::Deploy::new(f.store.clone(), f.profiles.clone(), f.publisher.clone());
    let release: crate::types::ReleaseIn = serde_json::from_value(serde_json::json!({
        "name": "app", "version": "1",
        "workloads": [{"name": "svc", "image": digest.to_string(), "command": ["./run"]}]
    }))
    .expect("release");
    let r = deploy
        .create_release(&admin(), release)
        .await
        .expect("release");
    let d = crate::types::DeploymentIn {
        release: r.id,
        devices: Some(vec!["gw-1".into()]),
        ..Default::default()
    };
    let created = deploy
        .create_deployment(&admin(), d)
        .await
        .expect("deployment");
    assert_eq!(created.marked, 1, "{created:?}");
    assert_eq!(f.publisher.drain().await.expect("drain").len(), 1);
    f.clock.advance(100);
    let window = protocol::MaintenanceWindow {
        cron: protocol::CronExpr::parse("0 0 3 * * *").expect("cron"),
        duration_secs: 600,
    };
    let set = f
        .registry
        .set_maintenance(
            &admin(),
            MaintenanceScope::Device,
            "gw-1".into(),
            Some(window.clone()),
        )
        .await
        .expect("set");
    assert_eq!(set.marked, 1);
    assert_eq!(f.publisher.drain().await.expect("drain").len(), 1);
    let sent = f.sink.sent();
    let (topic, wire) = sent.last().expect("published");
    assert_eq!(topic, "fleet/v1/dev/gw-1/desired");
    let env = protocol::Envelope::decode(wire).expect("envelope");
    let state: DesiredState = serde_json::from_slice(&env.payload).expect("state");
    assert_eq!(state.issued_at, T0 + 100);
    assert_eq!(state.expires_at, T0 + 100 + 3600);
    assert_eq!(state.maintenance, Some(window));
    // Nothing changed: nothing is signed again.
    assert!(f.publisher.resync().await.expect("resync").is_empty());
    // A bad window is refused before anything is stored.
    let bad = protocol::MaintenanceWindow {
        cron: protocol::CronExpr::parse("0 0 4 * * *").expect("cron"),
        duration_secs: 0,
    };
    let err = f
        .registry
        .set_maintenance(&admin(), MaintenanceScope::Group, "g".into(), Some(bad))
        .await
        .expect_err("zero duration");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(f.sink.not_stored().is_empty(), "{:?}", f.sink.not_stored());
}

#[tokio::test]
async fn a_viewer_is_refused_and_the_refusal_is_audited() {
    let f = fixture();
    let viewer = TokenInfo {
        name: "vera".into(),
        role: Role::Viewer,
        scope: Default::default(),
    };
    let err = f
        .registry
        .create_token(&viewer, enroll_token(60))
        .await
        .expect_err("viewers cannot make tokens");
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
    let audit = f
        .registry
        .audit_entries(Default::default())
        .await
        .expect("audit");
    assert!(audit
        .iter()
        .any(|e| e.actor == "vera" && e.outcome.starts_with("denied")));
}
