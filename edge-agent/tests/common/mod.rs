//! Harness for the agent's integration tests: a real mosquitto broker, a real HTTP blob server,
//! desired states signed with `protocol`, and the real `edge-agent` binary.
//!
//! The hub is not part of these tests (it is another crate); `HubDouble` stands in for it: a real
//! MQTT client that publishes signed documents and acks events the way the hub does. It is a
//! test double for the hub only — broker, HTTP, processes and SQLite are all real.
// Each test binary uses a part of the harness.
#![allow(dead_code, unused_imports)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::*;

use fleet_test_kit::mosquitto::Mosquitto;
pub use fleet_test_kit::process::Proc;
pub use fleet_test_kit::{eventually, free_port, noise, now};

pub const DAY: u64 = 86_400;

/// Debian's mosquitto on a free port, anonymous (ACLs are the hub's tests' business).
pub struct Broker {
    pub port: u16,
    mosquitto: Mosquitto,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let port = free_port();
        Self::start_on(dir, port)
    }

    pub fn start_on(dir: &Path, port: u16) -> Broker {
        Broker {
            port,
            mosquitto: Mosquitto::anonymous(dir, port, 1_000_000),
        }
    }

    pub fn stop(&mut self) {
        self.mosquitto.stop();
    }
}

/// An image: its tar, digest and zstd bytes.
#[derive(Clone)]
pub struct Image {
    pub tar: Vec<u8>,
    pub zst: Vec<u8>,
    pub digest: Digest,
}

impl Image {
    /// A tree with one executable `run.sh` (and any extra files).
    pub fn with_script(script: &str, extra: &[(&str, &[u8])]) -> Image {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], mode: u32| {
            let mut h = tar::Header::new_ustar();
            h.set_path(path).expect("path");
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_cksum();
            b.append(&h, data).expect("append");
        };
        add("run.sh", format!("#!/bin/sh\n{script}\n").as_bytes(), 0o755);
        for (p, d) in extra {
            add(p, d, 0o755);
        }
        let tar = b.into_inner().expect("tar");
        let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
        let digest = Digest::of(&tar);
        Image { tar, zst, digest }
    }

    pub fn image_ref(&self) -> ImageRef {
        ImageRef {
            digest: self.digest,
            size: self.tar.len() as u64,
            arch: Arch::host().expect("known arch"),
        }
    }
}

/// How the blob server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Send only the first N bytes of a full (non-range) response, then close.
    CutAfter(usize),
    /// Send every response in 8 KiB chunks, one every 5 ms.
    Slow,
    /// Ignore `Range`: every answer is 200 with the whole body (C20).
    IgnoreRange,
    /// Answer a range request with 206 but a `Content-Range` from offset 0 and the whole body
    /// (C20).
    WrongContentRange,
}

#[derive(Default)]
pub struct BlobState {
    pub blobs: HashMap<String, Vec<u8>>,
    pub mode: Option<Mode>,
    pub bytes_served: u64,
    /// The `Range` header of every request, in order.
    pub requests: Vec<Option<String>>,
    /// Bytes served per request, in the order of `requests`.
    pub served: Vec<u64>,
}

/// A real HTTP server for `/v1/blobs/{digest}` with Range support.
pub struct BlobServer {
    pub url: String,
    pub state: Arc<Mutex<BlobState>>,
    rt: tokio::runtime::Runtime,
}

impl BlobServer {
    pub fn start() -> BlobServer {
        use axum::{extract::Path as AxPath, http::HeaderMap};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("rt");
        let state = Arc::new(Mutex::new(BlobState::default()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let st = state.clone();
        let st2 = state.clone();
        let app = axum::Router::new()
            .route(
                "/v1/blobs/{digest}",
                axum::routing::get(move |AxPath(digest): AxPath<String>, headers: HeaderMap| {
                    let st = st.clone();
                    async move { serve_blob(&st, &digest, &headers) }
                }),
            )
            // A delta is served like a blob, keyed `delta:{base}:{target}` (see `add_delta`).
            .route(
                "/v1/deltas/{base}/{target}",
                axum::routing::get(
                    move |AxPath((base, target)): AxPath<(String, String)>, headers: HeaderMap| {
                        let st = st2.clone();
                        async move { serve_blob(&st, &format!("delta:{base}:{target}"), &headers) }
                    },
                ),
            );
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BlobServer {
            url: format!("http://127.0.0.1:{port}"),
            state,
            rt,
        }
    }

    pub fn add(&self, img: &Image) {
        self.state
            .lock()
            .expect("lock")
            .blobs
            .insert(img.digest.to_string(), img.zst.clone());
    }

    /// Serves `body` as the delta from `base` to `target`.
    pub fn add_delta(&self, base: &Digest, target: &Digest, body: Vec<u8>) {
        self.state
            .lock()
            .expect("lock")
            .blobs
            .insert(format!("delta:{base}:{target}"), body);
    }

    pub fn set_mode(&self, m: Mode) {
        self.state.lock().expect("lock").mode = Some(m);
    }

    pub fn bytes_served(&self) -> u64 {
        self.state.lock().expect("lock").bytes_served
    }
}

/// Answers one blob request the way the hub does (`cloud-hub/src/api/blobs.rs`): `Range:
/// bytes=N-` gets 206 with `Content-Range`, a range at or past the end 416 with `bytes */len`, a
/// stale `If-Range` the whole blob with 200 — unless the mode says to misbehave.
fn serve_blob(
    st: &Arc<Mutex<BlobState>>,
    digest: &str,
    headers: &axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let range = header("range");
    let (blob, mode, idx) = {
        let mut s = st.lock().expect("lock");
        s.requests.push(range.clone());
        s.served.push(0);
        (
            s.blobs.get(digest).cloned(),
            s.mode.unwrap_or(Mode::Normal),
            s.served.len() - 1,
        )
    };
    let count = {
        let st = st.clone();
        move |n: usize| {
            let mut s = st.lock().expect("lock");
            s.bytes_served += n as u64;
            s.served[idx] += n as u64;
        }
    };
    let Some(blob) = blob else {
        return (StatusCode::NOT_FOUND, "no such blob").into_response();
    };
    let len = blob.len();
    let etag = format!("\"{digest}-{len}\"");
    let if_range_ok = header("if-range").is_none_or(|v| v == etag);
    let start = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) if if_range_ok && mode != Mode::IgnoreRange => Some(
            r.trim_end_matches('-')
                .parse::<usize>()
                .unwrap_or(usize::MAX),
        ),
        _ => None,
    };
    if start.is_some_and(|s| s >= len) {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [("content-range", format!("bytes */{len}"))],
        )
            .into_response();
    }
    let (status, from, content_range) = match (start, mode) {
        (Some(_), Mode::WrongContentRange) => (
            StatusCode::PARTIAL_CONTENT,
            0,
            Some(format!("bytes 0-{}/{len}", len - 1)),
        ),
        (Some(s), _) => (
            StatusCode::PARTIAL_CONTENT,
            s,
            Some(format!("bytes {s}-{}/{len}", len - 1)),
        ),
        (None, _) => (StatusCode::OK, 0, None),
    };
    let body = blob[from..].to_vec();
    let mut resp = axum::http::Response::builder()
        .status(status)
        .header("etag", &etag);
    if let Some(cr) = content_range {
        resp = resp.header("content-range", cr);
    }
    let body = match mode {
        Mode::CutAfter(n) if status == StatusCode::OK => {
            // Announce the full length but deliver only n bytes: a cut mid-body. The first part
            // leaves; a moment later the connection breaks.
            let part = blob[..n.min(len)].to_vec();
            count(part.len());
            resp = resp.header("content-length", len.to_string());
            axum::body::Body::from_stream(
                futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(part))])
                    .chain(futures_util::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Err(std::io::Error::other("cut"))
                    })),
            )
        }
        Mode::Slow => {
            let chunks: Vec<Vec<u8>> = body.chunks(8192).map(<[u8]>::to_vec).collect();
            axum::body::Body::from_stream(futures_util::stream::iter(chunks).then(move |c| {
                let count = count.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    count(c.len());
                    Ok::<_, std::io::Error>(bytes::Bytes::from(c))
                }
            }))
        }
        _ => {
            count(body.len());
            axum::body::Body::from(body)
        }
    };
    resp.body(body).expect("response")
}

/// Keys and trust, as the hub and operator would hold them.
pub struct Keys {
    pub root: KeyPair,
    pub online: KeyPair,
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            root: KeyPair::from_seed([11; 32]),
            online: KeyPair::from_seed([12; 32]),
        }
    }

    pub fn trust_update(&self, version: u64) -> Vec<u8> {
        let u = TrustUpdate {
            kind: KIND_TRUST_UPDATE.into(),
            version,
            issued_at: now() - 60,
            expires_at: now() + 365 * DAY,
            root: RootKeys::single(self.root.public()),
            signing_keys: vec![SigningKeyEntry {
                kid: self.online.kid(),
                public_key: self.online.public(),
                not_after: now() + 365 * DAY,
            }],
            revision_floor: None,
        };
        Envelope::sign(serde_json::to_vec(&u).expect("json"), &[&self.root]).encode()
    }

    pub fn sign_state(&self, s: &DesiredState) -> Vec<u8> {
        Envelope::sign(serde_json::to_vec(s).expect("json"), &[&self.online]).encode()
    }
}

pub fn workload(name: &str, img: &Image) -> Workload {
    Workload {
        name: WorkloadName::new(name).expect("valid"),
        image: img.image_ref(),
        runtime: RuntimeKind::Process,
        command: vec!["./run.sh".into()],
        env: BTreeMap::new(),
        resources: Resources::default(),
        restart: RestartPolicy::Always,
        health: None,
        schedule: None,
        health_deadline_secs: 5,
        // Updates here are proven once healthy; the window's own test sets one.
        stability_window_secs: 0,
        function: None,
    }
}

pub fn state(device: &str, revision: u64, workloads: Vec<Workload>) -> DesiredState {
    DesiredState {
        kind: KIND_DESIRED_STATE.into(),
        device: DeviceId::new(device).expect("valid"),
        revision,
        issued_at: now() - 10,
        expires_at: now() + DAY,
        workloads,
        maintenance: None,
        rollout: None,
    }
}

/// Stands in for the hub on MQTT (see the module docs): publishes retained documents, collects
/// events idempotently by seq, and acks them the way the hub does.
pub struct HubDouble {
    pub client: rumqttc::Client,
    pub events: Arc<Mutex<BTreeMap<u64, Event>>>,
    pub duplicates: Arc<Mutex<u64>>,
    pub statuses: Arc<Mutex<Vec<StatusReport>>>,
    device: String,
}

impl HubDouble {
    pub fn connect(port: u16, device: &str) -> HubDouble {
        Self::connect_with(port, device, Arc::default())
    }

    /// Reconnects keeping what a previous double stored (the hub's database survives).
    pub fn connect_with(
        port: u16,
        device: &str,
        events: Arc<Mutex<BTreeMap<u64, Event>>>,
    ) -> HubDouble {
        use rumqttc::{Client, Event as MEvent, MqttOptions, Packet, QoS};
        let mut opts = MqttOptions::new(format!("hub-{}", free_port()), "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = Client::new(opts, 100);
        let duplicates: Arc<Mutex<u64>> = Arc::default();
        let statuses: Arc<Mutex<Vec<StatusReport>>> = Arc::default();
        let (ev, dup, st, c2, dev) = (
            events.clone(),
            duplicates.clone(),
            statuses.clone(),
            client.clone(),
            device.to_string(),
        );
        client
            .subscribe(format!("fleet/v1/dev/{device}/events"), QoS::AtLeastOnce)
            .expect("subscribe");
        client
            .subscribe(format!("fleet/v1/dev/{device}/status"), QoS::AtLeastOnce)
            .expect("subscribe");
        std::thread::spawn(move || {
            for notification in conn.iter() {
                match notification {
                    Ok(MEvent::Incoming(Packet::Publish(p))) => {
                        if p.topic.ends_with("/events") {
                            let Ok(batch) = EventBatch::decode(&p.payload) else {
                                continue;
                            };
                            let acked = {
                                let mut m = ev.lock().expect("lock");
                                for e in batch.events {
                                    if let Some(old) = m.get(&e.seq) {
                                        assert_eq!(
                                            old, &e,
                                            "seq {} reused with other content",
                                            e.seq
                                        );
                                        *dup.lock().expect("lock") += 1;
                                    } else {
                                        m.insert(e.seq, e);
                                    }
                                }
                                // Highest contiguous seq stored.
                                let mut n = 0;
                                while m.contains_key(&(n + 1)) {
                                    n += 1;
                                }
                                n
                            };
                            let _ = c2.publish(
                                format!("fleet/v1/dev/{dev}/ack"),
                                QoS::AtLeastOnce,
                                true,
                                serde_json::to_vec(&Ack { acked }).expect("json"),
                            );
                        } else if p.topic.ends_with("/status") {
                            if let Ok(s) = StatusReport::decode(&p.payload) {
                                st.lock().expect("lock").push(s);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        HubDouble {
            client,
            events,
            duplicates,
            statuses,
            device: device.to_string(),
        }
    }

    pub fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
            .expect("publish");
    }

    pub fn publish_desired(&self, wire: Vec<u8>) {
        let t = format!("fleet/v1/dev/{}/desired", self.device);
        self.publish_retained(&t, wire);
    }

    pub fn has_event(&self, f: impl Fn(&EventBody) -> bool) -> bool {
        self.events
            .lock()
            .expect("lock")
            .values()
            .any(|e| f(&e.body))
    }

    pub fn last_status(&self) -> Option<StatusReport> {
        self.statuses.lock().expect("lock").last().cloned()
    }
}

/// The real agent binary with its data directory.
pub struct Agent {
    pub dir: PathBuf,
    pub proc: Proc,
    pub device: String,
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_edge-agent")
}

impl Agent {
    pub fn provision(
        dir: &Path,
        device: &str,
        broker_port: u16,
        hub_url: &str,
        keys: &Keys,
    ) -> Agent {
        let data = dir.join(format!("agent-{device}"));
        let out = Command::new(agent_bin())
            .args(["--data-dir"])
            .arg(&data)
            .args([
                "provision",
                "--device-id",
                device,
                "--mqtt",
                &format!("127.0.0.1:{broker_port}"),
                "--password",
                "pw",
                "--hub-url",
                hub_url,
                "--root-key",
                &keys.root.public().to_base64(),
            ])
            .output()
            .expect("run provision");
        assert!(
            out.status.success(),
            "provision failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env: Vec<(String, String)> = fleet_test_kit::AGENT_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Agent {
            proc: Proc::new(
                agent_bin(),
                [
                    "--data-dir".into(),
                    data.clone().into_os_string(),
                    "run".into(),
                ],
                &env,
                data.join("agent.log"),
            ),
            dir: data,
            device: device.into(),
        }
    }

    pub fn set_env(&mut self, k: &str, v: &str) {
        self.proc.set_env(k, v);
    }

    pub fn start(&mut self) {
        self.proc.start().expect("spawn agent");
    }

    /// Running workload pids per name, read from the runtime's records and /proc.
    pub fn running(&self) -> Vec<(String, u32)> {
        self.running_digests()
            .into_iter()
            .map(|(n, p, _)| (n, p))
            .collect()
    }

    /// Running workloads as (name, pid, digest).
    pub fn running_digests(&self) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        // Process records and OCI records have the same shape.
        let entries = ["runtime", "runtime-oci"]
            .iter()
            .filter_map(|d| std::fs::read_dir(self.dir.join(d)).ok())
            .flat_map(|rd| rd.flatten());
        for e in entries {
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let name = v["instance"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let digest = v["instance"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(pid) = v["instance"]["state"]["Running"]["pid"].as_u64() {
                let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| !s.contains(") Z "))
                    .unwrap_or(false);
                if alive {
                    out.push((name, pid as u32, digest));
                }
            }
        }
        out.sort();
        out
    }

    /// Output files the workloads write into their working directory.
    pub fn rootfs_file(&self, digest: &Digest, file: &str) -> Option<String> {
        std::fs::read_to_string(
            self.dir
                .join("images")
                .join(digest.hex())
                .join("rootfs")
                .join(file),
        )
        .ok()
    }

    /// Pids of the function instances alive (records under `functions/`).
    pub fn function_pids(&self) -> Vec<u32> {
        ["functions/runtime", "functions/oci"]
            .iter()
            .filter_map(|d| std::fs::read_dir(self.dir.join(d)).ok())
            .flat_map(|rd| rd.flatten())
            .filter_map(|e| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                v["instance"]["state"]["Running"]["pid"]
                    .as_u64()
                    .map(|p| p as u32)
            })
            // Only a process still working inside this agent's images: never a reused pid.
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|c| c.starts_with(&self.dir))
            })
            .collect()
    }

    pub fn stop_workloads(&self) {
        let functions = self.function_pids();
        let services = self.running().into_iter().map(|(_, pid)| pid);
        for pid in services.chain(functions) {
            // A process workload leads its own group; an OCI container's init is pid 1 of its
            // namespace, and killing it ends everything inside.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.kill9();
        self.stop_workloads();
    }
}
