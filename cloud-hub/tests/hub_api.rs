//! The real hub binary: enrollment, signed desired states over the embedded broker, restart,
//! ingest, roles, audit and bad input.

mod common;

use common::*;
use fleet_test_kit::now;
use protocol::*;
use reqwest::Method;
use serde_json::json;

fn trust_store(hub_trust: &[u8], root: RootKeys) -> TrustStore {
    let pinned = TrustStore::pinned(root);
    match accept_trust_update(hub_trust, &pinned, now()).expect("hub trust verifies") {
        TrustOutcome::Accepted(a) => a.store,
        TrustOutcome::AlreadyHave => pinned,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_accepts_a_fresh_token_once_and_refuses_reused_expired_and_forged_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let token = hub.enroll_token(json!({"site": "north"}), 3600).await;
    let (_, resp) = hub.enroll(&token, "gw-1", 1).await.expect("enrolls");
    assert_eq!(resp.device_id.as_str(), "gw-1");
    assert_eq!(resp.mqtt.username, "gw-1");
    assert!(resp.trust.is_some());
    // Reused.
    let (status, body) = hub
        .enroll(&token, "gw-2", 2)
        .await
        .expect_err("reused token");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("already used"),
        "{body}"
    );
    // Expired.
    let short = hub.enroll_token(json!({}), 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = hub
        .enroll(&short, "gw-3", 3)
        .await
        .expect_err("expired token");
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap_or("").contains("expired"),
        "{body}"
    );
    // Unknown.
    let (status, _) = hub
        .enroll("enroll_nope", "gw-4", 4)
        .await
        .expect_err("unknown token");
    assert_eq!(status, 403);
    // A proof made by another key.
    let t = hub.enroll_token(json!({}), 3600).await;
    let key = KeyPair::from_seed([9; 32]);
    let mut req = serde_json::to_value(enroll::EnrollRequest {
        proof: enroll::EnrollRequest::prove(&KeyPair::from_seed([8; 32]), &t),
        token: t.clone(),
        public_key: key.public(),
        device_id: Some(DeviceId::new("gw-5").expect("id")),
        profile: "local-dev".into(),
        arch: Arch::host().expect("arch"),
        runtimes: vec![RuntimeKind::Process],
        agent_version: "t".into(),
        labels: Default::default(),
    })
    .expect("json");
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/enroll", hub.http))
        .json(&req)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    // Malformed id: refused, nothing stored, token still usable.
    req["device_id"] = json!("../gw");
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/enroll", hub.http))
        .json(&req)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    hub.enroll(&t, "gw-5", 9)
        .await
        .expect("the token survived the bad requests");
    let devices = hub.admin(Method::GET, "/api/v1/devices", None).await;
    let ids: Vec<&str> = devices
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["gw-1", "gw-5"]);
    assert_eq!(devices[0]["labels"]["site"], "north");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_reaches_each_device_as_a_verifiable_signed_state_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::start(dir.path()).await;
    let mut devices = Vec::new();
    for (i, id) in ["gw-a", "gw-b"].iter().enumerate() {
        let t = hub.enroll_token(json!({"site": "north"}), 3600).await;
        devices.push(hub.enroll(&t, id, 10 + i as u8).await.expect("enroll"));
    }
    let t = hub.enroll_token(json!({"site": "south"}), 3600).await;
    hub.enroll(&t, "gw-c", 20).await.expect("enroll");
    hub.admin(
        Method::PUT,
        "/api/v1/groups/north",
        Some(json!({"selector": "site=north"})),
    )
    .await;
    let (release, digest) = hub.release("sensors", "1.0").await;
    let v = hub
        .admin(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"release": release, "group": "north"})),
        )
        .await;
    // A group deployment marks every device; the publisher sends the two it targets.
    assert_eq!(v["marked"], 3, "{v}");

    let mut received = Vec::new();
    for (_, resp) in &devices {
        let id = resp.device_id.as_str();
        let mut dev = Device::connect(hub.mqtt_port, id, id, &resp.mqtt.password);
        assert!(dev.connected().await, "{id} connects with its credentials");
        dev.client
            .subscribe(topics::TRUST, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("sub");
        dev.client
            .subscribe(
                format!("fleet/v1/dev/{id}/desired"),
                rumqttc::QoS::AtLeastOnce,
            )
            .await
            .expect("sub");
        let trust_env = dev
            .next_on(topics::TRUST, 10)
            .await
            .expect("retained trust");
        let wire = dev
            .next_on(&format!("fleet/v1/dev/{id}/desired"), 10)
            .await
            .expect("retained desired");
        let trust = trust_store(&trust_env, resp.root.clone());
        let out = accept_desired_state(
            &wire,
            &trust,
            &resp.device_id,
            &RevisionFloor::default(),
            now(),
        )
        .expect("verifies");
        let DesiredOutcome::Accepted(a) = out else {
            panic!("expected a new state")
        };
        assert_eq!(a.state.workloads[0].image.digest.to_string(), digest);
        assert_eq!(
            a.state.rollout.as_ref().map(|r| r.release.as_str()),
            Some("sensors")
        );
        received.push((id.to_string(), wire, trust_env));
    }
    let south = hub.admin(Method::GET, "/api/v1/devices/gw-c", None).await;
    assert!(
        south["desired_revision"].is_null(),
        "gw-c is not targeted: {south}"
    );

    // Restart: the retained set is republished identically.
    hub.restart().await;
    for ((id, wire, trust_env), (_, resp)) in received.iter().zip(&devices) {
        let mut dev = Device::connect(hub.mqtt_port, id, id, &resp.mqtt.password);
        assert!(dev.connected().await);
        dev.client
            .subscribe(topics::TRUST, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("sub");
        dev.client
            .subscribe(
                format!("fleet/v1/dev/{id}/desired"),
                rumqttc::QoS::AtLeastOnce,
            )
            .await
            .expect("sub");
        assert_eq!(
            &dev.next_on(topics::TRUST, 10)
                .await
                .expect("trust after restart"),
            trust_env
        );
        assert_eq!(
            &dev.next_on(&format!("fleet/v1/dev/{id}/desired"), 10)
                .await
                .expect("desired after restart"),
            wire
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_events_are_stored_once_and_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let t = hub.enroll_token(json!({}), 3600).await;
    let (_, resp) = hub.enroll(&t, "gw-ev", 30).await.expect("enroll");
    let mut dev = Device::connect(hub.mqtt_port, "gw-ev", "gw-ev", &resp.mqtt.password);
    assert!(dev.connected().await);
    dev.client
        .subscribe("fleet/v1/dev/gw-ev/ack", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("sub");
    let batch = |seqs: &[u64]| EventBatch {
        device: DeviceId::new("gw-ev").expect("id"),
        events: seqs
            .iter()
            .map(|s| Event {
                seq: *s,
                time: now(),
                body: EventBody::DesiredAccepted { revision: *s },
            })
            .collect(),
    };
    for seqs in [&[1u64, 2, 3][..], &[1, 2, 3], &[2, 3, 4]] {
        dev.client
            .publish(
                "fleet/v1/dev/gw-ev/events",
                rumqttc::QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&batch(seqs)).expect("json"),
            )
            .await
            .expect("publish");
    }
    let mut acked = 0;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while acked != 4 && std::time::Instant::now() < until {
        if let Some(p) = dev.next_on("fleet/v1/dev/gw-ev/ack", 2).await {
            acked = Ack::decode(&p).map(|a| a.acked).unwrap_or(0);
        }
    }
    assert_eq!(acked, 4);
    let events = hub
        .admin(Method::GET, "/api/v1/devices/gw-ev/events", None)
        .await;
    let seqs: Vec<u64> = events
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![4, 3, 2, 1]);
    // A batch naming another device on this device's topic is dropped.
    let mut other = batch(&[5]);
    other.device = DeviceId::new("gw-other").expect("id");
    dev.client
        .publish(
            "fleet/v1/dev/gw-ev/events",
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&other).expect("json"),
        )
        .await
        .expect("publish");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let events = hub
        .admin(Method::GET, "/api/v1/devices/gw-ev/events", None)
        .await;
    assert_eq!(events.as_array().map(|a| a.len()), Some(4));
    // Events 5 and 6 were dropped by the agent's outbox budget; its next batch starts at 7. The
    // ack moves past the gap (everything below a batch's first seq is gone for good), so the
    // device is not stuck resending forever.
    dev.client
        .publish(
            "fleet/v1/dev/gw-ev/events",
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&batch(&[7, 8])).expect("json"),
        )
        .await
        .expect("publish");
    let mut acked = 0;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while acked != 8 && std::time::Instant::now() < until {
        if let Some(p) = dev.next_on("fleet/v1/dev/gw-ev/ack", 2).await {
            acked = Ack::decode(&p).map(|a| a.acked).unwrap_or(0);
        }
    }
    assert_eq!(acked, 8, "the ack did not move past the dropped events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_and_every_change_and_denial_is_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let viewer = hub
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"kind": "api", "name": "vera", "role": "viewer"})),
        )
        .await;
    let viewer = viewer["token"].as_str().expect("token").to_string();
    let (release, _) = hub.release("app", "1").await;
    let (status, body) = hub
        .call(
            Method::POST,
            "/api/v1/deployments",
            Some(&viewer),
            Some(json!({"release": release, "selector": "a=b"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden");
    let (status, _) = hub
        .call(Method::GET, "/api/v1/devices", Some(&viewer), None)
        .await;
    assert_eq!(status, 200, "viewers can read");
    let (status, _) = hub.call(Method::GET, "/api/v1/devices", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = hub
        .call(Method::GET, "/api/v1/devices", Some("fleet_wrong"), None)
        .await;
    assert_eq!(status, 401);
    let deployments = hub.admin(Method::GET, "/api/v1/deployments", None).await;
    assert_eq!(
        deployments.as_array().map(|a| a.len()),
        Some(0),
        "the denied deployment changed nothing"
    );
    let audit = hub
        .admin(Method::GET, "/api/v1/audit?limit=1000", None)
        .await;
    let denied = audit.as_array().expect("array").iter().any(|e| {
        e["actor"] == "vera"
            && e["action"] == "deployment.create"
            && e["outcome"].as_str().unwrap_or("").starts_with("denied")
    });
    assert!(denied, "no audit entry for the denial: {audit}");
    assert!(audit
        .as_array()
        .expect("array")
        .iter()
        .any(|e| e["action"] == "release.create" && e["outcome"] == "ok"));
    let v = hub.admin(Method::GET, "/api/v1/audit/verify", None).await;
    assert_eq!(v["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_json_error_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let (release, digest) = hub.release("app", "1").await;
    let cases = [
        (
            "/api/v1/releases",
            json!({"name": "x", "version": "1", "workloads": [{"name": "svc", "image": format!("sha256:{}", "0".repeat(64)), "command": ["a"]}]}),
        ),
        (
            "/api/v1/releases",
            json!({"name": "x", "version": "1", "workloads": [{"name": "../svc", "image": digest, "command": ["a"]}]}),
        ),
        (
            "/api/v1/releases",
            json!({"name": "x", "version": "1", "workloads": [{"name": "svc", "image": digest, "command": []}]}),
        ),
        (
            "/api/v1/releases",
            json!({"name": "app", "version": "1", "workloads": []}),
        ),
        (
            "/api/v1/deployments",
            json!({"release": 999, "selector": "a=b"}),
        ),
        ("/api/v1/deployments", json!({"release": release})),
        (
            "/api/v1/deployments",
            json!({"release": release, "selector": "nonsense"}),
        ),
        (
            "/api/v1/deployments",
            json!({"release": release, "group": "missing"}),
        ),
    ];
    for (path, body) in cases {
        let (status, v) = hub
            .call(Method::POST, path, Some(&hub.token), Some(body.clone()))
            .await;
        assert!((400..500).contains(&status), "{path} {body}: {status}");
        assert!(v["error"].is_string() && v["code"].is_string(), "{v}");
    }
    assert_eq!(
        hub.admin(Method::GET, "/api/v1/releases", None)
            .await
            .as_array()
            .map(|a| a.len()),
        Some(1)
    );
    assert_eq!(
        hub.admin(Method::GET, "/api/v1/deployments", None)
            .await
            .as_array()
            .map(|a| a.len()),
        Some(0)
    );
    // A deployment that does not fit a target's profile is refused, naming the device.
    let t = hub.enroll_token(json!({"tier": "x"}), 3600).await;
    hub.enroll(&t, "gw-fit", 40).await.expect("enroll");
    let img = hub.admin(Method::GET, "/api/v1/images", None).await;
    let _ = img;
    let other_arch = if Arch::host() == Some(Arch::Aarch64) {
        "x86_64"
    } else {
        "aarch64"
    };
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/images?name=foreign&format=tar&arch={other_arch}",
            hub.http
        ))
        .bearer_auth(&hub.token)
        .body(one_file_tar())
        .send()
        .await
        .expect("upload");
    let foreign: serde_json::Value = resp.json().await.expect("json");
    // The same content again, claimed for the host architecture: refused, record unchanged.
    let again = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/images?name=foreign&format=tar&arch={}",
            hub.http,
            Arch::host().expect("arch")
        ))
        .bearer_auth(&hub.token)
        .body(one_file_tar())
        .send()
        .await
        .expect("upload");
    assert_eq!(again.status().as_u16(), 409);
    let rel = hub
        .admin(Method::POST, "/api/v1/releases", Some(json!({"name": "foreign", "version": "1", "workloads": [{"name": "svc", "image": foreign["digest"], "command": ["./f"]}]})))
        .await;
    let (status, v) = hub
        .call(
            Method::POST,
            "/api/v1/deployments",
            Some(&hub.token),
            Some(json!({"release": rel["id"], "selector": "tier=x"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("gw-fit"), "{v}");
    let spec = hub
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await
        .1;
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/api/v1/deployments"]["post"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_served_to_enrolled_devices_only_with_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let (_, digest) = hub.release("app", "1").await;
    let t = hub.enroll_token(json!({}), 3600).await;
    let (_, resp) = hub.enroll(&t, "gw-blob", 50).await.expect("enroll");
    let url = format!("{}/v1/blobs/{digest}", hub.http);
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(&url).send().await.expect("get").status().as_u16(),
        401
    );
    assert_eq!(
        c.get(&url)
            .basic_auth("gw-blob", Some("wrong"))
            .send()
            .await
            .expect("get")
            .status()
            .as_u16(),
        401
    );
    let full = c
        .get(&url)
        .basic_auth("gw-blob", Some(&resp.mqtt.password))
        .send()
        .await
        .expect("get");
    assert_eq!(full.status().as_u16(), 200);
    let etag = full.headers()["etag"].to_str().expect("etag").to_string();
    let body = full.bytes().await.expect("body");
    let tar = zstd::decode_all(&body[..]).expect("zstd");
    assert_eq!(Digest::of(&tar).to_string(), digest);
    let part = c
        .get(&url)
        .basic_auth("gw-blob", Some(&resp.mqtt.password))
        .header("range", "bytes=10-")
        .header("if-range", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(&part.bytes().await.expect("body")[..], &body[10..]);
    let stale = c
        .get(&url)
        .basic_auth("gw-blob", Some(&resp.mqtt.password))
        .header("range", "bytes=10-")
        .header("if-range", "\"old\"")
        .send()
        .await
        .expect("get");
    assert_eq!(
        stale.status().as_u16(),
        200,
        "a changed ETag sends the whole blob"
    );
    let missing = format!("{}/v1/blobs/sha256:{}", hub.http, "1".repeat(64));
    assert_eq!(
        c.get(&missing)
            .basic_auth("gw-blob", Some(&resp.mqtt.password))
            .send()
            .await
            .expect("get")
            .status()
            .as_u16(),
        404
    );
}

/// A tar holding one one-byte file.
fn one_file_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("f").expect("path");
    h.set_size(1);
    h.set_cksum();
    b.append(&h, &b"x"[..]).expect("append");
    b.into_inner().expect("tar")
}

/// One device's view of its signed desired states.
struct Watcher {
    dev: Device,
    trust: TrustStore,
    id: DeviceId,
    topic: String,
}

impl Watcher {
    async fn connect(hub: &Hub, resp: &enroll::EnrollResponse) -> Watcher {
        let id = resp.device_id.as_str();
        let mut dev = Device::connect(hub.mqtt_port, id, id, &resp.mqtt.password);
        assert!(dev.connected().await, "{id} connects");
        dev.client
            .subscribe(topics::TRUST, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("sub");
        let trust_env = dev
            .next_on(topics::TRUST, 10)
            .await
            .expect("retained trust");
        let topic = format!("fleet/v1/dev/{id}/desired");
        dev.client
            .subscribe(&topic, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("sub");
        Watcher {
            dev,
            trust: trust_store(&trust_env, resp.root.clone()),
            id: resp.device_id.clone(),
            topic,
        }
    }

    /// The next desired state delivered, verified as the device would.
    async fn next(&mut self) -> DesiredState {
        let wire = self
            .dev
            .next_on(&self.topic, 10)
            .await
            .expect("a desired state");
        match accept_desired_state(
            &wire,
            &self.trust,
            &self.id,
            &RevisionFloor::default(),
            now(),
        )
        .expect("verifies")
        {
            DesiredOutcome::Accepted(a) => a.state,
            other => panic!("expected a state, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_windows_reach_the_signed_state_device_over_group_and_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let t = hub.enroll_token(json!({"site": "north"}), 3600).await;
    let (_, resp) = hub.enroll(&t, "gw-mw", 30).await.expect("enroll");
    hub.admin(
        Method::PUT,
        "/api/v1/groups/north",
        Some(json!({"selector": "site=north"})),
    )
    .await;
    let (release, _) = hub.release("app", "1").await;
    hub.admin(
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"release": release, "group": "north"})),
    )
    .await;
    let mut watch = Watcher::connect(&hub, &resp).await;
    assert_eq!(watch.next().await.maintenance, None);

    let group_window = json!({"cron": "0 0 3 * * *", "duration_secs": 3600});
    let v = hub
        .admin(
            Method::PUT,
            "/api/v1/groups/north/maintenance",
            Some(group_window.clone()),
        )
        .await;
    assert_eq!(v["marked"], 1, "{v}");
    let state = watch.next().await;
    let w = state.maintenance.expect("the group's window");
    assert_eq!((w.cron.as_str(), w.duration_secs), ("0 0 3 * * *", 3600));

    // The device's own window wins over its group's.
    hub.admin(
        Method::PUT,
        "/api/v1/devices/gw-mw/maintenance",
        Some(json!({"cron": "0 30 1 * * *", "duration_secs": 600})),
    )
    .await;
    let state = watch.next().await;
    let w = state.maintenance.expect("the device's window");
    assert_eq!((w.cron.as_str(), w.duration_secs), ("0 30 1 * * *", 600));
    let revision = state.revision;

    // A bad cron expression or duration is a 400 and changes nothing.
    for bad in [
        json!({"cron": "not cron", "duration_secs": 600}),
        json!({"cron": "0 0 3 * * *", "duration_secs": 0}),
        json!({"cron": "0 0 3 * * *"}),
    ] {
        for path in [
            "/api/v1/devices/gw-mw/maintenance",
            "/api/v1/groups/north/maintenance",
        ] {
            let (status, v) = hub
                .call(Method::PUT, path, Some(&hub.token), Some(bad.clone()))
                .await;
            assert_eq!(status, 400, "{path} {bad}: {v}");
            assert!(v["error"].is_string() && v["code"] == "bad_request", "{v}");
        }
    }
    let dev = hub.admin(Method::GET, "/api/v1/devices/gw-mw", None).await;
    assert_eq!(
        dev["desired_revision"], revision,
        "a refused window re-signed the state"
    );
    assert_eq!(dev["maintenance"]["cron"], "0 30 1 * * *");
    let groups = hub.admin(Method::GET, "/api/v1/groups", None).await;
    assert_eq!(groups[0]["maintenance"], group_window);

    // An unknown device is a 404.
    let (status, _) = hub
        .call(
            Method::PUT,
            "/api/v1/devices/nobody/maintenance",
            Some(&hub.token),
            Some(group_window.clone()),
        )
        .await;
    assert_eq!(status, 404);

    // Clearing the device's window falls back to the group's; clearing that leaves none.
    hub.admin(Method::DELETE, "/api/v1/devices/gw-mw/maintenance", None)
        .await;
    let w = watch
        .next()
        .await
        .maintenance
        .expect("the group's window again");
    assert_eq!(w.cron.as_str(), "0 0 3 * * *");
    hub.admin(Method::DELETE, "/api/v1/groups/north/maintenance", None)
        .await;
    let state = watch.next().await;
    assert_eq!(state.maintenance, None);
    assert_eq!(state.workloads.len(), 1, "the workloads are untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_a_routes_limit_are_refused_with_a_json_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let big = "x".repeat(600 * 1024);
    let (status, v) = hub
        .call(
            Method::POST,
            "/api/v1/releases",
            Some(&hub.token),
            Some(json!({"name": big, "version": "1", "workloads": []})),
        )
        .await;
    assert_eq!(status, 413, "{v}");
    assert!(v["error"].is_string() && v["code"].is_string(), "{v}");
    let (status, _) = hub
        .call(
            Method::POST,
            "/api/v1/enroll",
            None,
            Some(json!({"token": "x".repeat(100 * 1024)})),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(
        hub.admin(Method::GET, "/api/v1/releases", None)
            .await
            .as_array()
            .map(|a| a.len()),
        Some(0)
    );
    // An image upload has its own, larger limit.
    let mut b = tar::Builder::new(Vec::new());
    let data = vec![7u8; 700 * 1024];
    let mut h = tar::Header::new_ustar();
    h.set_path("big.bin").expect("path");
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &data[..]).expect("append");
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/images?name=big&format=tar", hub.http))
        .bearer_auth(&hub.token)
        .body(b.into_inner().expect("tar"))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_releases_with_colliding_routes_forbidden_topics_or_oversized_values_are_refused()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let (_, digest) = hub.release("app", "1").await;
    let f = |name: &str, function: serde_json::Value| json!({"name": name, "image": digest, "command": ["./run.sh"], "function": function});
    let http = |route: &str| json!({"triggers": [{"type": "http", "route": route}]});
    let cases = [
        (
            vec![f("a", http("/api")), f("b", http("/api/v2"))],
            "collides",
        ),
        (
            vec![f(
                "a",
                json!({"triggers": [{"type": "mqtt", "topic": "fleet/v1/dev/x/desired"}]}),
            )],
            "not readable by functions",
        ),
        (
            vec![f(
                "a",
                json!({"triggers": [{"type": "mqtt", "topic": "#"}]}),
            )],
            "not readable by functions",
        ),
        (
            vec![f(
                "a",
                json!({"triggers": [{"type": "http", "route": "/a"}], "max_instances": 1000}),
            )],
            "max_instances",
        ),
        (
            vec![f(
                "a",
                json!({"triggers": [{"type": "http", "route": "/a"}], "max_body_bytes": 1u64 << 40}),
            )],
            "max_body_bytes",
        ),
    ];
    for (workloads, expect) in cases {
        let body = json!({"name": "fn", "version": "1", "workloads": workloads});
        let (status, v) = hub
            .call(
                Method::POST,
                "/api/v1/releases",
                Some(&hub.token),
                Some(body.clone()),
            )
            .await;
        assert!((400..500).contains(&status), "{body}: {status}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(expect), "{body}: {msg}");
    }
    assert_eq!(
        hub.admin(Method::GET, "/api/v1/releases", None)
            .await
            .as_array()
            .map(|a| a.len()),
        Some(1),
        "nothing stored"
    );
    // Routes that only share a prefix, and a readable topic with its reply, are fine.
    let ok = json!({"name": "fn", "version": "2", "workloads": [
        f("a", http("/api")),
        f("b", json!({"triggers": [{"type": "http", "route": "/apix"},
            {"type": "mqtt", "topic": "sensors/+/temp", "reply_topic": "replies/temp"}]})),
    ]});
    let (status, v) = hub
        .call(Method::POST, "/api/v1/releases", Some(&hub.token), Some(ok))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["workloads"][1]["function"]["max_instances"], 1, "{v}");
}
