//! C47: a second client with device A's client id — a wrong password, no credentials, or
//! another device's valid credentials — is refused, and A is not disconnected. Tried against
//! the embedded broker and against mosquitto with the project's config
//! (`deploy/mosquitto/mosquitto.conf` and its ACL file), with a client for A that counts every
//! connection it makes and every one it loses.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fleet_test_kit::mosquitto::Mosquitto;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use serde_json::json;

/// A device's session that counts its connections and losses and records what it receives.
struct Watched {
    client: AsyncClient,
    connects: Arc<AtomicU64>,
    losses: Arc<AtomicU64>,
    received: tokio::sync::mpsc::UnboundedReceiver<String>,
}

fn watch(port: u16, id: &str, password: &str) -> Watched {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_credentials(id, password);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(opts, 10);
    let (connects, losses) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (tx, received) = tokio::sync::mpsc::unbounded_channel();
    let (c, l) = (connects.clone(), losses.clone());
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p.topic.clone());
                }
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => return,
                Err(_) => {
                    l.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Watched {
        client,
        connects,
        losses,
        received,
    }
}

/// One connection attempt with client id `id` and these credentials; whether it was accepted.
async fn attempt(port: u16, id: &str, creds: Option<(&str, &str)>) -> bool {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    let (client, mut el) = AsyncClient::new(opts, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return a.code == rumqttc::ConnectReturnCode::Success;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(300), el.poll()).await;
    outcome
}

/// A connects and subscribes to its own desired topic; three impostors try A's client id; A
/// must have connected exactly once, lost nothing, and still receive its retained state.
/// Returns whether each impostor was accepted.
async fn impostors_against(port: u16, pa: &str, pb: &str) -> [bool; 3] {
    let mut a = watch(port, "dev-a", pa);
    eventually_async(10, "A connected", || async {
        (a.connects.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let accepted = [
        attempt(port, "dev-a", Some(("dev-a", "not-the-password"))).await,
        attempt(port, "dev-a", None).await,
        attempt(port, "dev-a", Some(("dev-b", pb))).await,
    ];
    // Give a kick time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.client
        .subscribe("fleet/v1/dev/dev-a/desired", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let got = tokio::time::timeout(Duration::from_secs(10), a.received.recv()).await;
    assert_eq!(
        got.ok().flatten().as_deref(),
        Some("fleet/v1/dev/dev-a/desired"),
        "A still receives its retained state"
    );
    assert_eq!(
        (
            a.connects.load(Ordering::SeqCst),
            a.losses.load(Ordering::SeqCst)
        ),
        (1, 0),
        "A was disconnected by an impostor"
    );
    accepted
}

async fn enroll_two(hub: &Hub) -> (String, String) {
    let mut out = Vec::new();
    for (id, seed) in [("dev-a", 1), ("dev-b", 2)] {
        let t = hub.enroll_token(json!({}), 3600).await;
        out.push(
            hub.enroll(&t, id, seed)
                .await
                .expect("enroll")
                .1
                .mqtt
                .password,
        );
    }
    let (release, _) = hub.release("app", "1").await;
    hub.admin(
        reqwest::Method::POST,
        "/api/v1/deployments",
        Some(json!({"release": release, "devices": ["dev-a", "dev-b"]})),
    )
    .await;
    (out.remove(0), out.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c47_the_embedded_broker_refuses_impostors_without_disconnecting_the_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let (pa, pb) = enroll_two(&hub).await;
    let accepted = impostors_against(hub.mqtt_port, &pa, &pb).await;
    assert_eq!(accepted, [false; 3], "every impostor is refused");
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

/// The project's mosquitto config, with this test's port, password file and ACL, in memory.
fn project_config(passwd: &std::path::Path) -> String {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
    let conf = std::fs::read_to_string(deploy.join("mosquitto.conf")).expect("mosquitto.conf");
    let mut out: Vec<String> = conf
        .lines()
        .filter(|l| {
            let key = l.split_whitespace().next().unwrap_or("");
            !matches!(
                key,
                "listener" | "password_file" | "acl_file" | "persistence" | "autosave_interval"
            )
        })
        .map(str::to_string)
        .collect();
    out.push(format!("password_file {}", passwd.display()));
    out.push(format!("acl_file {}", deploy.join("acl").display()));
    out.push("persistence false".into());
    out.join("\n") + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c47_mosquitto_with_the_project_config_refuses_impostors_without_disconnecting_the_device()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let pw = dir.path().join("passwd");
    passwd(&pw, "hub", "hub-secret");
    let broker = Mosquitto::start(dir.path(), port, &project_config(&pw));
    // The only test in this binary that sets it, and the embedded one never reads it.
    std::env::set_var("FLEET_HUB_EXTERNAL_MQTT_PASSWORD", "hub-secret");
    let hub = Hub::start_with(
        dir.path(),
        &["--external-mqtt", &format!("127.0.0.1:{port}")],
    )
    .await;
    let (pa, pb) = enroll_two(&hub).await;
    passwd(&pw, "dev-a", &pa);
    passwd(&pw, "dev-b", &pb);
    broker.reload();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = impostors_against(port, &pa, &pb).await;
    // A wrong password and none are refused; B's own credentials connect B — as `dev-b`
    // (`use_username_as_clientid`), never in A's place.
    assert_eq!(accepted, [false, false, true]);
}
