//! The external-broker path: the hub publishes through Debian's mosquitto configured with the
//! project's ACL file (deploy/mosquitto/acl) and per-device passwords, and an independent
//! client (`mosquitto_sub`) receives a verifiable signed desired state.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use fleet_test_kit::mosquitto::Mosquitto;
use protocol::*;
use serde_json::json;

fn have(bin: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn passwd(file: &std::path::Path, user: &str, pass: &str) {
    let mut args = vec!["-b"];
    if !file.exists() {
        args.push("-c");
    }
    let out = Command::new("mosquitto_passwd")
        .args(&args)
        .arg(file)
        .args([user, pass])
        .output()
        .expect("mosquitto_passwd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sub(port: u16, user: &str, pass: &str, topic: &str, wait: u32) -> Option<Vec<u8>> {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-P",
            pass,
            "-i",
            user,
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            &wait.to_string(),
            "-N",
        ])
        .output()
        .expect("mosquitto_sub");
    (out.status.success() && !out.stdout.is_empty()).then_some(out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_publishes_through_mosquitto_with_per_device_acls() {
    if !have("mosquitto") || !have("mosquitto_sub") {
        panic!("mosquitto and mosquitto-clients are required (apt-get install mosquitto mosquitto-clients; .ci/run does)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let pw = dir.path().join("passwd");
    passwd(&pw, "hub", "hub-secret");
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/acl");
    let broker = Mosquitto::start(
        dir.path(),
        port,
        &format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\nmax_packet_size 1048576\n",
            pw.display(),
            acl.display()
        ),
    );

    // The only test in this binary, so setting the variable races with nothing.
    std::env::set_var("FLEET_HUB_EXTERNAL_MQTT_PASSWORD", "hub-secret");
    let hub = Hub::start_with(
        dir.path(),
        &["--external-mqtt", &format!("127.0.0.1:{port}")],
    )
    .await;
    let t = hub.enroll_token(json!({}), 3600).await;
    let (_, resp) = hub.enroll(&t, "ext-a", 1).await.expect("enroll");
    let t = hub.enroll_token(json!({}), 3600).await;
    let (_, resp_b) = hub.enroll(&t, "ext-b", 2).await.expect("enroll");
    assert_eq!(
        resp.mqtt.port, port,
        "devices are pointed at the external broker"
    );
    passwd(&pw, "ext-a", &resp.mqtt.password);
    passwd(&pw, "ext-b", &resp_b.mqtt.password);
    // Reload the password file.
    broker.reload();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (release, digest) = hub.release("app", "1").await;
    hub.admin(
        reqwest::Method::POST,
        "/api/v1/deployments",
        Some(json!({"release": release, "devices": ["ext-a", "ext-b"]})),
    )
    .await;

    let wire = tokio::task::spawn_blocking({
        let p = resp.mqtt.password.clone();
        move || sub(port, "ext-a", &p, "fleet/v1/dev/ext-a/desired", 10)
    })
    .await
    .expect("join")
    .expect("ext-a received its retained desired state from mosquitto");
    let trust_env = tokio::task::spawn_blocking({
        let p = resp.mqtt.password.clone();
        move || sub(port, "ext-a", &p, "fleet/v1/trust", 10)
    })
    .await
    .expect("join")
    .expect("trust");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let trust = match accept_trust_update(&trust_env, &TrustStore::pinned(resp.root.clone()), now)
        .expect("trust verifies")
    {
        TrustOutcome::Accepted(a) => a.store,
        TrustOutcome::AlreadyHave => panic!("fresh trust"),
    };
    let DesiredOutcome::Accepted(a) = accept_desired_state(
        &wire,
        &trust,
        &resp.device_id,
        &RevisionFloor::default(),
        now,
    )
    .expect("verifies") else {
        panic!("expected a new state");
    };
    assert_eq!(a.state.workloads[0].image.digest.to_string(), digest);
    // The ACL keeps ext-a out of ext-b's topic.
    let other = tokio::task::spawn_blocking({
        let p = resp.mqtt.password.clone();
        move || sub(port, "ext-a", &p, "fleet/v1/dev/ext-b/desired", 2)
    })
    .await
    .expect("join");
    assert!(
        other.is_none(),
        "mosquitto let ext-a read ext-b's desired state"
    );
}
