//! `publish-bench`: how long a deployment to N devices takes to reach the broker, against the
//! time the same broker needs to deliver N retained messages from one plain client.
//!
//! ```sh
//! cargo build --release -p cloud-hub -p fleet-tests
//! target/release/publish-bench 10000 [--hub-bin path/to/cloud-hub] [--runs 3]
//! ```
//!
//! Per run, on one Debian mosquitto (anonymous, unbounded client queues):
//! - **baseline**: one rumqttc client publishes N retained QoS 1 messages of the size of a signed
//!   state to `bench/raw/<i>`; a subscriber on `bench/raw/+` times until it holds all N;
//! - **hub**: a fresh `cloud-hub` (the one given by `--hub-bin`, so an older build can be
//!   measured the same way) publishing through that mosquitto, with N devices registered
//!   through the store's bulk path; a subscriber on `fleet/v1/dev/+/desired` times from the
//!   deployment call until it holds a state for all N devices. Also printed: when the call
//!   returned and when the first state arrived.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloud_hub::model::NewDevice;
use cloud_hub::store::Store;
use fleet_test_kit::mosquitto::Mosquitto;
use fleet_test_kit::process::Proc;
use protocol::{Arch, DeviceId, RuntimeKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A subscriber: every (topic) it receives, sent on the channel.
fn subscribe(port: u16, id: &str, filter: &str) -> mpsc::UnboundedReceiver<String> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let filter = filter.to_string();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p.topic.clone()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    rx
}

/// Waits until `n` distinct topics arrived; returns when the first and the last arrived.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<String>,
    n: usize,
    limit: Duration,
) -> Option<(Instant, Instant)> {
    let mut seen = HashSet::new();
    let mut first = None;
    let until = Instant::now() + limit;
    while seen.len() < n {
        let left = until.checked_duration_since(Instant::now())?;
        let topic = tokio::time::timeout(left, rx.recv()).await.ok()??;
        first.get_or_insert_with(Instant::now);
        seen.insert(topic);
    }
    Some((first?, Instant::now()))
}

async fn baseline(port: u16, n: usize, size: usize) -> Duration {
    let mut rx = subscribe(port, "bench-raw-sub", "bench/raw/+");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut opts = MqttOptions::new("bench-raw-pub", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(100);
    let (client, mut el) = AsyncClient::new(opts, 1024);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let payload = vec![b'x'; size];
    let start = Instant::now();
    let pusher = tokio::spawn(async move {
        for i in 0..n {
            let _ = client
                .publish(
                    format!("bench/raw/{i}"),
                    QoS::AtLeastOnce,
                    true,
                    payload.clone(),
                )
                .await;
        }
        client
    });
    let done = collect(&mut rx, n, Duration::from_secs(300)).await;
    let _client = pusher.await;
    let (_, last) = done.expect("baseline: all messages delivered");
    last - start
}

struct HubRun {
    call: Duration,
    first: Duration,
    all: Duration,
    size: usize,
}

fn api(http: &str, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    // An older hub signs every state inside the deployment call: allow it minutes.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("http client");
    let mut req = client
        .request(method, format!("{http}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().expect("request");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().expect("json")
}

async fn hub_run(hub_bin: &PathBuf, port: u16, n: usize, dir: &std::path::Path) -> HubRun {
    let data = dir.join("hub");
    let broker = format!("127.0.0.1:{port}");
    let mut hub = Proc::new(
        hub_bin,
        [
            "serve",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--http",
            "127.0.0.1:0",
            "--external-mqtt",
            broker.as_str(),
        ],
        &[("RUST_LOG".into(), "warn".into())],
        dir.join("hub.log"),
    );
    hub.start().expect("start hub");
    let info: Value = fleet_test_kit::eventually(30, "hub.json", || {
        serde_json::from_str(&std::fs::read_to_string(data.join("hub.json")).ok()?).ok()
    });
    let http = info["http"].as_str().expect("http").to_string();
    let token = std::fs::read_to_string(data.join("admin.token")).expect("token");
    let token = token.trim().to_string();

    let store = Store::open(&data.join("hub.db")).expect("store");
    let devices: Vec<NewDevice> = (0..n)
        .map(|i| NewDevice {
            id: DeviceId::new(format!("bench-{i:06}")).expect("id"),
            public_key: "unused".into(),
            password_hash: "unused".into(),
            password_salt: "unused".into(),
            profile: "local-dev".into(),
            arch: Arch::host().expect("arch"),
            runtimes: vec![RuntimeKind::Process],
            agent_version: "bench".into(),
            labels: [("bench".to_string(), "yes".to_string())].into(),
        })
        .collect();
    store
        .import_devices(&devices, fleet_test_kit::now())
        .expect("import");

    let (http2, token2) = (http.clone(), token.clone());
    let release = tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(Vec::new());
        let data = b"#!/bin/sh\nexec sleep 300\n";
        let mut h = tar::Header::new_ustar();
        h.set_path("run.sh").expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, &data[..]).expect("append");
        let img: Value = reqwest::blocking::Client::new()
            .post(format!("{http2}/api/v1/images?name=bench&format=tar"))
            .bearer_auth(&token2)
            .body(b.into_inner().expect("tar"))
            .send()
            .expect("upload")
            .json()
            .expect("json");
        let rel = api(
            &http2,
            &token2,
            reqwest::Method::POST,
            "/api/v1/releases",
            Some(json!({"name": "bench", "version": "1", "workloads": [
                {"name": "svc", "image": img["digest"], "command": ["./run.sh"]}]})),
        );
        rel["id"].as_u64().expect("release id")
    })
    .await
    .expect("join");

    let mut rx = subscribe(port, "bench-hub-sub", "fleet/v1/dev/+/desired");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let call = tokio::task::spawn_blocking(move || {
        api(
            &http,
            &token,
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(json!({"release": release, "selector": "bench=yes"})),
        );
        start.elapsed()
    });
    let (first, last) = collect(&mut rx, n, Duration::from_secs(600))
        .await
        .expect("hub: a state for every device");
    let call = call.await.expect("join");
    let size = store
        .desired_envelope("bench-000000")
        .ok()
        .flatten()
        .map_or(0, |e| e.len());
    hub.terminate(Duration::from_secs(5));
    HubRun {
        call,
        first: first - start,
        all: last - start,
        size,
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut n = 10_000usize;
    let mut runs = 1usize;
    let mut hub_bin = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--hub-bin" => hub_bin = Some(PathBuf::from(args.next().expect("--hub-bin PATH"))),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            v => {
                n = v
                    .parse()
                    .expect("usage: publish-bench N [--hub-bin PATH] [--runs K]")
            }
        }
    }
    let hub_bin = hub_bin.unwrap_or_else(|| fleet_tests::fleet::bin("cloud-hub"));
    println!("hub binary: {}", hub_bin.display());
    println!("| run | devices | baseline: raw client, all delivered | hub: call returned | hub: first state | hub: all delivered | ratio to baseline |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for run in 1..=runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = fleet_test_kit::free_port();
        let _broker = Mosquitto::start(
            dir.path(),
            port,
            "allow_anonymous true\npersistence false\nmax_packet_size 1048576\nmax_queued_messages 0\n",
        );
        let h = hub_run(&hub_bin, port, n, dir.path()).await;
        let base = baseline(port, n, h.size.max(1)).await;
        println!(
            "| {run} | {n} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.1}x |",
            base.as_secs_f64(),
            h.call.as_secs_f64(),
            h.first.as_secs_f64(),
            h.all.as_secs_f64(),
            h.all.as_secs_f64() / base.as_secs_f64()
        );
    }
}
