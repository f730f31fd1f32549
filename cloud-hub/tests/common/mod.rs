//! Harness: the real `cloud-hub` binary on free ports in a temp dir, HTTP through reqwest, and
//! devices simulated with real MQTT clients (rumqttc) and real enrollment requests.
// Each test binary uses a part of the harness.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_test_kit::process::Proc;
use protocol::enroll::{EnrollRequest, EnrollResponse};
use protocol::{Arch, KeyPair, RuntimeKind};
use serde_json::{json, Value};

pub use fleet_test_kit::{eventually_async, free_port};

pub struct Hub {
    pub dir: PathBuf,
    pub http: String,
    pub mqtt_port: u16,
    pub token: String,
    /// The hub process; `None` in a [`Hub::clone_handle`].
    proc: Option<Proc>,
}

impl Hub {
    pub async fn start(dir: &Path) -> Hub {
        Self::start_with(dir, &[]).await
    }

    pub async fn start_with(dir: &Path, extra: &[&str]) -> Hub {
        Self::start_wrapped(dir, &[], extra).await
    }

    /// Starts the hub through `wrapper` (a command and its arguments, e.g. `prlimit` with a
    /// limit), which execs the hub binary given as its last argument.
    pub async fn start_wrapped(dir: &Path, wrapper: &[&str], extra: &[&str]) -> Hub {
        let data = dir.join("hub");
        let mut args: Vec<String> = wrapper.iter().skip(1).map(|s| s.to_string()).collect();
        if !wrapper.is_empty() {
            args.push(env!("CARGO_BIN_EXE_cloud-hub").to_string());
        }
        args.extend([
            "serve".to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            // Port 0 everywhere: the hub writes the addresses it bound to hub.json.
            "--http".into(),
            "127.0.0.1:0".into(),
        ]);
        if !extra.contains(&"--external-mqtt") {
            args.push("--mqtt".into());
            args.push("127.0.0.1:0".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::new(
            wrapper
                .first()
                .copied()
                .unwrap_or(env!("CARGO_BIN_EXE_cloud-hub")),
            args,
            &[("RUST_LOG".into(), "info".into())],
            dir.join("hub.log"),
        );
        let mut hub = Hub {
            dir: data,
            http: String::new(),
            mqtt_port: 0,
            token: String::new(),
            proc: Some(proc),
        };
        hub.spawn().await;
        hub
    }

    async fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("hub.json"));
        self.proc
            .as_mut()
            .expect("a started hub, not a handle")
            .start()
            .expect("spawn hub");
        let info: Value = eventually_async(20, "hub.json", || async {
            let text = std::fs::read_to_string(self.dir.join("hub.json")).ok()?;
            serde_json::from_str(&text).ok()
        })
        .await;
        self.http = info["http"].as_str().expect("http").to_string();
        self.mqtt_port = info["mqtt"]
            .as_str()
            .and_then(|m| m.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("mqtt port");
        self.token = std::fs::read_to_string(self.dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_string();
    }

    /// A handle for blocking code (CLI runs): same addresses and token, no process ownership.
    pub fn clone_handle(&self) -> Hub {
        Hub {
            dir: self.dir.clone(),
            http: self.http.clone(),
            mqtt_port: self.mqtt_port,
            token: self.token.clone(),
            proc: None,
        }
    }

    /// The hub's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }

    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.http));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, Some(&self.token), body).await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
        v
    }

    pub async fn enroll_token(&self, labels: Value, ttl: u64) -> String {
        let v = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/tokens",
                Some(json!({"kind": "enroll", "labels": labels, "ttl_secs": ttl})),
            )
            .await;
        v["token"].as_str().expect("token").to_string()
    }

    /// Enrolls a simulated device; returns its key and the hub's answer, or the error status.
    pub async fn enroll(
        &self,
        token: &str,
        id: &str,
        seed: u8,
    ) -> Result<(KeyPair, EnrollResponse), (u16, Value)> {
        let key = KeyPair::from_seed([seed; 32]);
        let req = EnrollRequest {
            proof: EnrollRequest::prove(&key, token),
            token: token.into(),
            public_key: key.public(),
            device_id: Some(protocol::DeviceId::new(id).expect("id")),
            profile: "local-dev".into(),
            arch: Arch::host().expect("arch"),
            runtimes: vec![RuntimeKind::Process],
            agent_version: "test".into(),
            labels: Default::default(),
        };
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/enroll", self.http))
            .json(&req)
            .send()
            .await
            .expect("post");
        let status = resp.status().as_u16();
        if status == 201 {
            Ok((key, resp.json().await.expect("json")))
        } else {
            Err((status, resp.json().await.unwrap_or(Value::Null)))
        }
    }

    /// Imports a one-file image and makes a release of it; returns (release id, digest).
    pub async fn release(&self, name: &str, version: &str) -> (u64, String) {
        let mut b = tar::Builder::new(Vec::new());
        let data = format!("#!/bin/sh\necho {name} {version}\nexec sleep 300\n");
        let mut h = tar::Header::new_ustar();
        h.set_path("run.sh").expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, data.as_bytes()).expect("append");
        let tar = b.into_inner().expect("tar");
        let resp = reqwest::Client::new()
            .post(format!(
                "{}/api/v1/images?name={name}&format=tar",
                self.http
            ))
            .bearer_auth(&self.token)
            .body(tar)
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status().as_u16(), 201);
        let img: Value = resp.json().await.expect("json");
        let digest = img["digest"].as_str().expect("digest").to_string();
        let rel = self
            .admin(
                reqwest::Method::POST,
                "/api/v1/releases",
                Some(json!({"name": name, "version": version, "workloads": [{"name": "svc", "image": digest, "command": ["./run.sh"]}]})),
            )
            .await;
        (rel["id"].as_u64().expect("id"), digest)
    }
}

/// A simulated device's MQTT session (real client, real broker).
pub struct Device {
    pub client: rumqttc::AsyncClient,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    pub connack: tokio::sync::watch::Receiver<Option<bool>>,
    pub suback: tokio::sync::mpsc::UnboundedReceiver<Vec<rumqttc::SubscribeReasonCode>>,
}

impl Device {
    pub fn connect(port: u16, client_id: &str, user: &str, password: &str) -> Device {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_credentials(user, password);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(opts, 100);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (stx, suback) = tokio::sync::mpsc::unbounded_channel();
        let (ctx, connack) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ctx.send(Some(true));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(s))) => {
                        let _ = stx.send(s.return_codes.clone());
                    }
                    Ok(_) => {}
                    // A refused client (bad credentials, foreign client id) and a dropped one
                    // stop here: retrying forever with another device's client id would keep
                    // knocking on that device's session for the rest of the test.
                    Err(rumqttc::ConnectionError::ConnectionRefused(_))
                    | Err(rumqttc::ConnectionError::RequestsDone) => {
                        let _ = ctx.send(Some(false));
                        return;
                    }
                    Err(_) => {
                        let _ = ctx.send(Some(false));
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
        Device {
            client,
            rx,
            connack,
            suback,
        }
    }

    /// Waits for the first connection outcome.
    pub async fn connected(&mut self) -> bool {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            self.connack.wait_for(|v| v.is_some()),
        )
        .await;
        matches!(r, Ok(Ok(v)) if *v == Some(true))
    }

    /// The next message on `topic` within `secs`.
    pub async fn next_on(&mut self, topic: &str, secs: u64) -> Option<Vec<u8>> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some((t, p))) if t == topic => return Some(p),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }
}

/// `fleetctl ARGS…` against `hub` with `token`: (success, stdout, stderr). Blocking: from an
/// async test, call it on the blocking pool or use [`fleetctl_async`].
pub fn fleetctl_as(hub: &Hub, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["--hub", &hub.http, "--token", token])
        .args(args)
        .output()
        .expect("run fleetctl");
    fleetctl_outcome(out)
}

/// [`fleetctl_as`] without blocking the runtime.
pub async fn fleetctl_async(hub: &Hub, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["--hub", &hub.http, "--token", token])
        .args(args)
        .output()
        .await
        .expect("run fleetctl");
    fleetctl_outcome(out)
}

fn fleetctl_outcome(out: std::process::Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
