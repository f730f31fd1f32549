//! The background publisher over a real store: changes are marked in their own transaction and
//! return before anything is signed; chunks are stored before they are published; marks
//! survive a reopen of the store; enrollment marks one device; states are re-signed before
//! they expire, by the injected clock.

use protocol::{
    accept_desired_state, accept_trust_update, Arch, DesiredOutcome, DesiredState, Envelope,
    RevisionFloor, RuntimeKind, TrustOutcome, TrustStore,
};

use super::deploy::Deploy;
use super::tests::{admin, enroll_token, fixture, request, Fixture, T0};
use crate::model::{ImageRow, NewDevice};
use crate::store::Store;
use crate::types::{DeploymentIn, ReleaseIn};

/// Registers `n` devices labelled `site=north` through the store's bulk path.
fn import(store: &Store, n: usize) {
    let devices: Vec<NewDevice> = (0..n)
        .map(|i| NewDevice {
            id: protocol::DeviceId::new(format!("gw-{i:03}")).expect("id"),
            public_key: "unused".into(),
            password_hash: "h".into(),
            password_salt: "s".into(),
            profile: "local-dev".into(),
            arch: Arch::host().expect("arch"),
            runtimes: vec![RuntimeKind::Process],
            agent_version: "t".into(),
            labels: [("site".to_string(), "north".to_string())].into(),
        })
        .collect();
    store.import_devices(&devices, T0).expect("import");
}

/// A release with one workload, deployed to `site=north`; returns how many devices it marked.
async fn deploy_north(f: &Fixture) -> u64 {
    let digest = protocol::Digest::of(b"image");
    f.store
        .put_image(&ImageRow {
            digest: digest.to_string(),
            name: "app".into(),
            size: 5,
            compressed_size: 5,
            arch: Arch::host().expect("arch"),
            created_at: T0,
        })
        .expect("image");
    let deploy = Deploy::new(f.store.clone(), f.profiles.clone(), f.publisher.clone());
    let release: ReleaseIn = serde_json::from_value(serde_json::json!({
        "name": "app", "version": "1",
        "workloads": [{"name": "svc", "image": digest.to_string(), "command": ["./run"]}]
    }))
    .expect("release");
    let r = deploy
        .create_release(&admin(), release)
        .await
        .expect("release");
    let d = DeploymentIn {
        release: r.id,
        selector: Some("site=north".into()),
        ..Default::default()
    };
    deploy
        .create_deployment(&admin(), d)
        .await
        .expect("deployment")
        .marked
}

fn state(wire: &[u8]) -> DesiredState {
    let env = Envelope::decode(wire).expect("envelope");
    serde_json::from_slice(&env.payload).expect("state")
}

#[tokio::test]
async fn a_deployment_returns_before_signing_and_each_chunk_is_stored_before_it_is_published() {
    let f = fixture();
    import(&f.store, 7);
    assert_eq!(deploy_north(&f).await, 7);
    assert!(
        f.sink.sent().is_empty(),
        "nothing signed inside the request"
    );
    assert_eq!(f.publisher.pending().await.expect("pending"), 7);

    let published = f
        .publisher
        .clone()
        .with_chunk(2)
        .drain()
        .await
        .expect("drain");
    assert_eq!(published.len(), 7);
    assert!(f.sink.not_stored().is_empty(), "{:?}", f.sink.not_stored());
    let mut revisions: Vec<u64> = published.iter().map(|(_, r)| *r).collect();
    revisions.dedup();
    assert_eq!(revisions.len(), 7, "one fresh revision each: {published:?}");
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{published:?}");
    for (device, revision) in &published {
        let wire = f
            .store
            .desired_envelope(device)
            .expect("row")
            .expect("held");
        assert_eq!(state(&wire).revision, *revision);
    }
    let summary = f.publisher.summary().await.expect("summary");
    assert_eq!(
        (summary.devices, summary.with_state, summary.publish_pending),
        (7, 7, 0)
    );
}

#[tokio::test]
async fn marks_are_durable_and_worked_off_through_a_reopened_store() {
    let f = fixture();
    import(&f.store, 5);
    deploy_north(&f).await;
    // What a crash right after the deployment leaves: a fresh connection sees every mark.
    let reopened = Store::open(f.store.path()).expect("reopen");
    assert_eq!(reopened.publish_pending().expect("pending"), 5);
    assert_eq!(reopened.fleet_summary().expect("summary").with_state, 0);
    let published = f.publisher.drain().await.expect("drain");
    assert_eq!(published.len(), 5);
    assert_eq!(reopened.publish_pending().expect("pending"), 0);
    // Nothing changed since: another pass over every device signs nothing.
    assert!(f.publisher.resync().await.expect("resync").is_empty());
}

#[tokio::test]
async fn enrollment_marks_the_enrolling_device_alone() {
    let f = fixture();
    import(&f.store, 20);
    deploy_north(&f).await;
    f.publisher.drain().await.expect("drain");
    let sent_before = f.sink.sent().len();
    let t = f
        .registry
        .create_token(&admin(), enroll_token(60))
        .await
        .expect("token");
    f.registry
        .enroll(request(&t, "gw-new", 9))
        .await
        .expect("enroll");
    assert_eq!(f.publisher.pending().await.expect("pending"), 1);
    // The new device is not in site=north: nothing to send, and no other device is re-signed.
    assert!(f.publisher.drain().await.expect("drain").is_empty());
    assert_eq!(f.sink.sent().len(), sent_before);
}

#[tokio::test]
async fn a_quiet_fleet_is_re_signed_before_its_states_expire() {
    let f = fixture();
    // Labels come from the token (a device cannot choose its own).
    let mut token = enroll_token(60);
    token.labels = [("site".to_string(), "north".to_string())].into();
    let t = f
        .registry
        .create_token(&admin(), token)
        .await
        .expect("token");
    let resp = f
        .registry
        .enroll(request(&t, "gw-1", 1))
        .await
        .expect("enroll");
    deploy_north(&f).await;
    let first = f.publisher.drain().await.expect("drain");
    assert_eq!(first.len(), 1);
    let wire = f.sink.sent().last().expect("sent").1.clone();
    let old = state(&wire);
    assert_eq!(
        old.expires_at,
        T0 + 3600,
        "the fixture's lifetime is an hour"
    );

    // Early in its life nothing is re-signed.
    f.clock.advance(1000);
    assert_eq!(f.publisher.renew_expiring().await.expect("renew"), 0);
    assert!(f.publisher.drain().await.expect("drain").is_empty());

    // Past half its life: a new revision, the same content, a fresh expiry.
    f.clock.advance(900);
    let now = T0 + 1900;
    assert_eq!(f.publisher.renew_expiring().await.expect("renew"), 1);
    let again = f.publisher.drain().await.expect("drain");
    assert_eq!(again.len(), 1);
    let wire = f.sink.sent().last().expect("sent").1.clone();
    let new = state(&wire);
    assert!(
        new.revision > old.revision,
        "{} > {}",
        new.revision,
        old.revision
    );
    assert_eq!(new.workloads, old.workloads);
    assert_eq!((new.issued_at, new.expires_at), (now, now + 3600));
    assert!(f.sink.not_stored().is_empty());

    // The device, holding the old state, takes the new one as a newer state (not a no-op,
    // not a rollback) even after the old one would have expired.
    let (_, trust_env) = crate::keys::KeyDir(f._dir.path().join("keys"))
        .current_trust()
        .expect("trust");
    let pinned = TrustStore::pinned(resp.root.clone());
    let trust = match accept_trust_update(&trust_env, &pinned, now).expect("trust verifies") {
        TrustOutcome::Accepted(a) => a.store,
        TrustOutcome::AlreadyHave => pinned,
    };
    let floor = RevisionFloor {
        revision: old.revision,
        payload_digest: None,
    };
    let out = accept_desired_state(&wire, &trust, &resp.device_id, &floor, old.expires_at + 1)
        .expect("accepted");
    assert!(matches!(out, DesiredOutcome::Accepted(_)), "{out:?}");
}
