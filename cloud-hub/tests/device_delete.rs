//! Deleting a device cuts it off (C67): `fleetctl devices delete` removes its record and broker
//! credentials, drops its live session at once, and its reconnection is refused; other devices
//! keep theirs.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

async fn enrolled(hub: &Hub, id: &str, seed: u8) -> String {
    let t = hub.enroll_token(json!({}), 3600).await;
    hub.enroll(&t, id, seed)
        .await
        .expect("enroll")
        .1
        .mqtt
        .password
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_device_is_dropped_at_once_and_refused_on_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let pa = enrolled(&hub, "gw-stolen", 1).await;
    let pb = enrolled(&hub, "gw-kept", 2).await;
    let mut a = Device::connect(hub.mqtt_port, "gw-stolen", "gw-stolen", &pa);
    assert!(a.connected().await);
    let mut b = Device::connect(hub.mqtt_port, "gw-kept", "gw-kept", &pb);
    assert!(b.connected().await);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["--hub", &hub.http, "--token", &hub.token])
        .args(["devices", "delete", "gw-stolen"])
        .output()
        .await
        .expect("run fleetctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"sessions_dropped\": 1"), "{text}");

    // The live session ends without waiting for the device to reconnect (its keep-alive
    // would hold it open for good), and the client's own retry is refused.
    tokio::time::timeout(
        Duration::from_secs(20),
        a.connack.wait_for(|v| *v == Some(false)),
    )
    .await
    .expect("the deleted device's session was not dropped")
    .expect("watch");
    let mut again = Device::connect(hub.mqtt_port, "gw-stolen", "gw-stolen", &pa);
    assert!(!again.connected().await, "a deleted device reconnected");
    assert_eq!(
        *b.connack.borrow(),
        Some(true),
        "another device was dropped"
    );

    let (status, v) = hub
        .call(
            Method::GET,
            "/api/v1/devices/gw-stolen",
            Some(&hub.token),
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    let listed = hub.admin(Method::GET, "/api/v1/devices", None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // Deleting it again is a clear error; the deletion is audited.
    let (status, v) = hub
        .call(
            Method::DELETE,
            "/api/v1/devices/gw-stolen",
            Some(&hub.token),
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("device gw-stolen"),
        "{v}"
    );
    let audit = hub
        .admin(Method::GET, "/api/v1/audit?limit=1000", None)
        .await;
    assert!(
        audit
            .as_array()
            .expect("list")
            .iter()
            .any(|e| e["action"] == "device.delete"
                && e["target"] == "gw-stolen"
                && e["outcome"] == "ok"),
        "{audit}"
    );
}
