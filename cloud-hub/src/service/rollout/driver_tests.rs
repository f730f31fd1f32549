//! The rollout service and its driver over a real store, a real publisher (with a recording
//! sink) and a test clock: admissions reach only the admitted devices, a restart resumes from
//! the stored state without re-issuing or reshuffling (C37), a rollback is a new, higher
//! revision of the previous release (C62), overlapping rollouts resolve by priority (C64).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use protocol::{Arch, DesiredState, DeviceId, Presence, PresenceState, RuntimeKind};

use super::controller::{Command, Stage};
use super::wire::RolloutIn;
use super::{AlwaysUp, BrokerLink, Rollouts};
use crate::model::{Inbound, NewDevice};
use crate::service::deploy::Deploy;
use crate::service::tests::{admin, fixture, Fixture, T0};
use crate::service::SharedClock;
use crate::store::Store;

fn devices(n: usize) -> Vec<NewDevice> {
    (0..n)
        .map(|i| NewDevice {
            id: DeviceId::new(format!("gw-{i:02}")).expect("id"),
            public_key: String::new(),
            password_hash: String::new(),
            password_salt: String::new(),
            profile: "local-dev".into(),
            arch: Arch::host().expect("arch"),
            runtimes: vec![RuntimeKind::Process],
            agent_version: "t".into(),
            labels: BTreeMap::from([("site".to_string(), format!("s{}", i % 3))]),
        })
        .collect()
}

async fn release(deploy: &Deploy, f: &Fixture, version: &str) -> u64 {
    let digest = protocol::Digest::of(version.as_bytes());
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
    let r: crate::types::ReleaseIn = serde_json::from_value(serde_json::json!({
        "name": "app", "version": version,
        "workloads": [{"name": "svc", "image": digest.to_string(), "command": ["./run"]}]
    }))
    .expect("release");
    deploy
        .create_release(&admin(), r)
        .await
        .expect("release")
        .id
}

/// What each device's stored state says: (revision, release version, phase).
fn held(store: &Store, n: usize) -> BTreeMap<String, (u64, String, Option<u32>)> {
    (0..n)
        .filter_map(|i| {
            let id = format!("gw-{i:02}");
            let env = store.desired_envelope(&id).expect("read")?;
            let env = protocol::Envelope::decode(&env).expect("envelope");
            let s: DesiredState = serde_json::from_slice(&env.payload).expect("state");
            let r = s.rollout.expect("rollout ref");
            Some((id, (s.revision, r.version, r.phase)))
        })
        .collect()
}

/// Every device online, and those running `version` report converged on their revision.
fn report(store: &Store, n: usize, version: &str) {
    let states = held(store, n);
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(Inbound::Presence(
            DeviceId::new(format!("gw-{i:02}")).expect("id"),
            Presence {
                state: PresenceState::Online,
                epoch: 1,
            },
        ));
    }
    for (id, (rev, v, _)) in states {
        let dev = DeviceId::new(id).expect("id");
        if v == version {
            batch.push(Inbound::Status(
                dev.clone(),
                serde_json::from_value(serde_json::json!({
                    "device": dev, "time": T0, "agent_version": "t", "arch": Arch::host().expect("arch"),
                    "runtimes": [], "desired_revision": rev, "applied_revision": rev,
                    "convergence": "converged", "trust_version": 1, "workloads": []
                }))
                .expect("status"),
            ));
        }
    }
    store.ingest_batch(&batch).expect("ingest");
}

fn count(states: &BTreeMap<String, (u64, String, Option<u32>)>, version: &str) -> usize {
    states.values().filter(|s| s.1 == version).count()
}

#[tokio::test]
async fn a_restarted_hub_resumes_mid_phase_without_reissuing_or_reshuffling_and_a_rollback_is_a_higher_revision(
) {
    let f = fixture();
    const N: usize = 12;
    f.store.import_devices(&devices(N), T0).expect("import");
    let deploy = Deploy::new(f.store.clone(), f.profiles.clone(), f.publisher.clone());
    let v1 = release(&deploy, &f, "1").await;
    let v2 = release(&deploy, &f, "2").await;
    let all: Vec<String> = (0..N).map(|i| format!("gw-{i:02}")).collect();
    deploy
        .create_deployment(
            &admin(),
            crate::types::DeploymentIn {
                release: v1,
                devices: Some(all.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("v1");
    f.publisher.drain().await.expect("drain");
    report(&f.store, N, "1");
    let clock: SharedClock = std::sync::Arc::new(f.clock.clone());
    let rollouts = Rollouts::new(
        f.store.clone(),
        clock.clone(),
        deploy.clone(),
        f.publisher.clone(),
        Arc::new(AlwaysUp),
    );
    let r = rollouts
        .create(
            &admin(),
            RolloutIn {
                release: v2,
                devices: Some(all.clone()),
                priority: 1,
                preset: Some("canary".into()),
                ..Default::default()
            },
        )
        .await
        .expect("rollout");
    f.publisher.drain().await.expect("drain");
    assert_eq!(
        count(&held(&f.store, N), "2"),
        0,
        "nobody before the first tick"
    );

    rollouts.tick().await.expect("tick");
    f.publisher.drain().await.expect("drain");
    let after_canary = held(&f.store, N);
    assert_eq!(
        count(&after_canary, "2"),
        1,
        "the canary alone: {after_canary:?}"
    );
    assert!(after_canary.values().any(|s| s.1 == "2" && s.2 == Some(0)));
    report(&f.store, N, "2");

    // The hub restarts: a new service over the reopened database.
    let reopened = Store::open(f.store.path()).expect("reopen");
    let before = f.store.rollout(r.id).expect("row").state;
    let again = Rollouts::new(
        reopened.clone(),
        clock,
        deploy.clone(),
        f.publisher.clone(),
        Arc::new(AlwaysUp),
    );
    again.tick().await.expect("tick"); // the canary succeeded: phase 1 starts
    again.tick().await.expect("tick"); // phase 1 admitted
    f.publisher.drain().await.expect("drain");
    let after_phase1 = held(&f.store, N);
    let state: super::controller::RolloutState =
        serde_json::from_str(&reopened.rollout(r.id).expect("row").state).expect("state");
    let old: super::controller::RolloutState = serde_json::from_str(&before).expect("state");
    assert_eq!(state.assignment, old.assignment, "never reshuffled");
    for (id, (rev, v, _)) in &after_canary {
        if v == "2" {
            assert_eq!(&after_phase1[id].0, rev, "the canary was not issued again");
        }
    }
    assert_eq!(count(&after_phase1, "2"), 2, "{after_phase1:?}");

    // A rollback: every admitted device gets release 1 at a higher revision.
    let s = again
        .command(&admin(), r.id, Command::Rollback)
        .await
        .expect("rollback");
    assert!(matches!(s.stage, Stage::RolledBack { .. }));
    f.publisher.drain().await.expect("drain");
    let rolled = held(&f.store, N);
    assert_eq!(count(&rolled, "2"), 0, "{rolled:?}");
    for (id, (rev, v, _)) in &after_phase1 {
        if v == "2" {
            assert!(rolled[id].0 > *rev, "higher revision for {id}");
        }
    }
    let err = again
        .command(&admin(), r.id, Command::Resume)
        .await
        .expect_err("a rolled back rollout does not resume");
    assert!(err.to_string().contains("cannot"), "{err}");
    let audit = f.store.audit_entries(0, 1000).expect("audit");
    assert!(audit.iter().any(|e| e.action == "rollout.transition"
        && e.detail.contains("rolled_back")
        && e.actor == "admin"));
}

#[tokio::test]
async fn overlapping_rollouts_resolve_by_deployment_priority() {
    let f = fixture();
    const N: usize = 6;
    f.store.import_devices(&devices(N), T0).expect("import");
    let deploy = Deploy::new(f.store.clone(), f.profiles.clone(), f.publisher.clone());
    let (va, vb) = (
        release(&deploy, &f, "a").await,
        release(&deploy, &f, "b").await,
    );
    let clock: SharedClock = std::sync::Arc::new(f.clock.clone());
    let rollouts = Rollouts::new(
        f.store.clone(),
        clock,
        deploy,
        f.publisher.clone(),
        Arc::new(AlwaysUp),
    );
    let all: Vec<String> = (0..N).map(|i| format!("gw-{i:02}")).collect();
    let mk = |release, priority, devices: Vec<String>| RolloutIn {
        release,
        devices: Some(devices),
        priority,
        preset: Some("all".into()),
        ..Default::default()
    };
    report(&f.store, N, "-");
    let low = rollouts
        .create(&admin(), mk(va, 1, all.clone()))
        .await
        .expect("low");
    let high = rollouts
        .create(&admin(), mk(vb, 5, all[..3].to_vec()))
        .await
        .expect("high");
    rollouts.tick().await.expect("tick");
    f.publisher.drain().await.expect("drain");
    let states = held(&f.store, N);
    for (i, id) in all.iter().enumerate() {
        assert_eq!(states[id].1, if i < 3 { "b" } else { "a" }, "{id}");
    }
    let low = rollouts.status(low.id).await.expect("status");
    let high = rollouts.status(high.id).await.expect("status");
    let members = |s: &super::wire::RolloutStatus| -> usize {
        s.phases.iter().map(|p| p.devices as usize).sum()
    };
    let why = rollouts.explain("gw-00".into()).await.expect("explain");
    assert_eq!(why.release.as_deref(), Some("app b"));
    assert_eq!(why.candidates.len(), 2, "{why:?}");
    assert_eq!(why.candidates[0].rollout, Some(high.rollout.id));
    assert!(
        why.candidates[0].verdict.contains("admitted by rollout"),
        "{why:?}"
    );
    assert!(why.candidates[1].verdict.contains("outranked"), "{why:?}");
    assert!(rollouts.explain("nobody".into()).await.is_err());
    assert_eq!(
        (members(&low), members(&high)),
        (3, 3),
        "each device in one rollout"
    );
}

/// A broker link the test switches.
#[derive(Debug, Default)]
struct Switch(AtomicBool);

impl BrokerLink for Switch {
    fn is_up(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_hub_cut_off_from_the_broker_holds_its_rollouts_and_resumes_without_repeating() {
    let f = fixture();
    const N: usize = 6;
    f.store.import_devices(&devices(N), T0).expect("import");
    report(&f.store, N, "-");
    let deploy = Deploy::new(f.store.clone(), f.profiles.clone(), f.publisher.clone());
    let v = release(&deploy, &f, "1").await;
    let clock: SharedClock = Arc::new(f.clock.clone());
    let link = Arc::new(Switch::default());
    let rollouts = Rollouts::new(
        f.store.clone(),
        clock,
        deploy,
        f.publisher.clone(),
        link.clone(),
    );
    let all: Vec<String> = (0..N).map(|i| format!("gw-{i:02}")).collect();
    let r = rollouts
        .create(
            &admin(),
            RolloutIn {
                release: v,
                devices: Some(all),
                preset: Some("all".into()),
                ..Default::default()
            },
        )
        .await
        .expect("rollout");
    for _ in 0..3 {
        assert_eq!(
            rollouts.tick().await.expect("tick"),
            0,
            "held while cut off"
        );
        f.clock.advance(10);
    }
    let s = rollouts.status(r.id).await.expect("status");
    assert_eq!(s.rollout.stage, Stage::Created);
    link.0.store(true, Ordering::SeqCst);
    assert_eq!(rollouts.tick().await.expect("tick"), 1);
    assert_eq!(rollouts.tick().await.expect("tick"), 0, "nothing to repeat");
    let s = rollouts.status(r.id).await.expect("status");
    assert_eq!(s.rollout.admitted, N as u64);
}
