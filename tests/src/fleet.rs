//! Starts the real hub and N real agents on loopback, each agent behind two proxies (broker and
//! hub HTTP), and talks to the hub's API the way an operator does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use fleet_test_kit::mosquitto::Mosquitto;
use fleet_test_kit::process::Proc;
use fleet_test_kit::proxy::Proxy;
use fleet_test_kit::{eventually, AGENT_ENV};

/// Where the workspace's binaries are: next to this test executable's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` (cargo nextest run --workspace does)",
        p.display()
    );
    p
}

/// One agent and its proxies.
#[derive(Debug)]
pub struct AgentNode {
    /// Device id.
    pub id: String,
    /// Data directory.
    pub data: PathBuf,
    /// The agent process.
    pub proc: Proc,
    /// Proxy between the agent and the broker.
    pub mqtt: Proxy,
    /// Proxy between the agent and the hub's HTTP.
    pub http: Proxy,
    /// Port of the agent's local function invocation listener (127.0.0.1).
    pub functions: u16,
}

impl AgentNode {
    /// Running workloads as (name, pid, digest), from the runtime's records and /proc.
    pub fn running(&self) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.data.join("runtime")) else {
            return out;
        };
        for e in rd.flatten() {
            let Ok(v) = std::fs::read(e.path())
                .map(|b| serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null))
            else {
                continue;
            };
            let Some(pid) = v["instance"]["state"]["Running"]["pid"].as_u64() else {
                continue;
            };
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
            if alive {
                out.push((
                    v["instance"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    pid as u32,
                    v["instance"]["digest"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
            }
        }
        out.sort();
        out
    }

    /// Kills the agent's workloads (they outlive the agent by design), function instances
    /// included (their records are under `functions/`).
    pub fn kill_workloads(&self) {
        let functions = std::fs::read_dir(self.data.join("functions/runtime"))
            .into_iter()
            .flat_map(|rd| rd.flatten())
            .filter_map(|e| {
                let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                v["instance"]["state"]["Running"]["pid"].as_u64()
            })
            // Only a process still working inside this agent's images: never a reused pid.
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|c| c.starts_with(&self.data))
            });
        let services = self.running().into_iter().map(|(_, pid, _)| u64::from(pid));
        for pid in services.chain(functions) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        self.proc.kill9();
        self.kill_workloads();
    }
}

/// A running fleet. Dropping it stops the agents and their workloads first, then the hub and
/// the broker, and only then deletes the directory (the workloads are found through records
/// in it).
#[derive(Debug)]
pub struct Fleet {
    /// Everything lives here.
    pub dir: tempfile::TempDir,
    /// The hub.
    pub hub: Proc,
    /// Hub HTTP base URL.
    pub http: String,
    /// Broker address.
    pub mqtt: SocketAddr,
    /// Admin API token.
    pub token: String,
    /// The agents.
    pub agents: Vec<AgentNode>,
    /// Debian's mosquitto, when the fleet runs on an external broker.
    pub mosquitto: Option<Mosquitto>,
    client: reqwest::blocking::Client,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Fields drop in declaration order, `dir` first: without this, each agent looked for its
        // workloads' records in a directory already deleted, and every workload outlived the run.
        self.agents.clear();
    }
}

impl Fleet {
    /// Starts the hub and `n` agents labelled `site=lab` (and `index=<i>`).
    pub fn start(n: usize) -> Fleet {
        Self::start_on(n, false)
    }

    /// Like [`Fleet::start`], on Debian's mosquitto as an external broker (anonymous, no ACL:
    /// the broker an attacker or a misconfiguration opened up).
    pub fn start_with_mosquitto(n: usize) -> Fleet {
        Self::start_on(n, true)
    }

    fn start_on(n: usize, external: bool) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub_data = dir.path().join("hub");
        let mut mosquitto = None;
        let mut broker_args: Vec<String> = vec!["--mqtt".into(), "127.0.0.1:0".into()];
        if external {
            let port = fleet_test_kit::free_port();
            let m = Mosquitto::anonymous(dir.path(), port, 1_048_576);
            mosquitto = Some(m);
            broker_args = vec!["--external-mqtt".into(), format!("127.0.0.1:{port}")];
        }
        let hub_args = |http: &str, broker: &[String]| -> Vec<String> {
            let mut a: Vec<String> = vec![
                "serve".into(),
                "--data-dir".into(),
                hub_data.display().to_string(),
                "--http".into(),
                http.into(),
            ];
            a.extend(broker.iter().cloned());
            a
        };
        let mut hub = Proc::new(
            bin("cloud-hub"),
            hub_args("127.0.0.1:0", &broker_args),
            &[("RUST_LOG".into(), "info".into())],
            dir.path().join("hub.log"),
        );
        hub.start().expect("start hub");
        let info: Value = eventually(30, "hub.json", || {
            serde_json::from_slice(&std::fs::read(hub_data.join("hub.json")).ok()?).ok()
        });
        let http = info["http"].as_str().expect("http").to_string();
        let mqtt: SocketAddr = info["mqtt"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .expect("mqtt addr");
        let token = std::fs::read_to_string(hub_data.join("admin.token"))
            .expect("token")
            .trim()
            .to_string();
        // From now on the hub runs on the ports it picked, so the agents' proxies stay valid
        // across hub restarts. Replacing `hub` kills the first process (Proc kills on drop).
        let http_addr = http.trim_start_matches("http://").to_string();
        if !external {
            broker_args = vec!["--mqtt".into(), mqtt.to_string()];
        }
        hub = Proc::new(
            bin("cloud-hub"),
            hub_args(&http_addr, &broker_args),
            &[("RUST_LOG".into(), "info".into())],
            dir.path().join("hub.log"),
        );
        let mut fleet = Fleet {
            dir,
            hub,
            http,
            mqtt,
            token,
            agents: Vec::new(),
            mosquitto,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        };
        fleet.hub.start().expect("restart hub on fixed ports");
        fleet.wait_hub();
        fleet.api(
            "PUT",
            "/api/v1/groups/lab",
            Some(json!({"selector": "site=lab"})),
        );
        for i in 0..n {
            fleet.add_agent(i);
        }
        fleet
    }

    /// Waits until the hub answers.
    pub fn wait_hub(&self) {
        eventually(30, "hub answering", || {
            self.client
                .get(format!("{}/api/v1/openapi.json", self.http))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
    }

    /// Kills the external broker with SIGKILL and starts it again (empty: it kept nothing).
    pub fn restart_broker(&mut self) {
        self.mosquitto
            .as_mut()
            .expect("fleet runs on mosquitto")
            .restart();
    }

    /// Kills the hub with SIGKILL and starts it again on the same ports.
    pub fn restart_hub(&mut self) {
        self.hub.kill9();
        self.hub.start().expect("start hub");
        self.wait_hub();
    }

    /// Enrolls and starts agent number `i`.
    pub fn add_agent(&mut self, i: usize) {
        let id = format!("dev-{i}");
        let data = self.dir.path().join(format!("agent-{i}"));
        let mqtt = Proxy::start_mqtt(self.mqtt).expect("mqtt proxy");
        let hub_addr: SocketAddr = self
            .http
            .trim_start_matches("http://")
            .parse()
            .expect("hub addr");
        let http = Proxy::start(hub_addr).expect("http proxy");
        let token = self.api(
            "POST",
            "/api/v1/tokens",
            Some(json!({"kind": "enroll", "labels": {"site": "lab", "index": i.to_string()}})),
        )["token"]
            .as_str()
            .expect("token")
            .to_string();
        let out = std::process::Command::new(bin("edge-agent"))
            .arg("--data-dir")
            .arg(&data)
            .args([
                "enroll",
                "--hub",
                &format!("http://{}", http.addr),
                "--token",
                &token,
                "--device-id",
                &id,
                "--profile",
                "local-dev",
            ])
            .output()
            .expect("enroll");
        assert!(
            out.status.success(),
            "enroll {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut env: Vec<(String, String)> = AGENT_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("FLEET_AGENT_MQTT_ADDR".into(), mqtt.addr.to_string()));
        env.push((
            "FLEET_AGENT_HUB_URL".into(),
            format!("http://{}", http.addr),
        ));
        let functions = fleet_test_kit::free_port();
        env.push((
            "FLEET_AGENT_FUNCTIONS_LISTEN".into(),
            format!("127.0.0.1:{functions}"),
        ));
        let mut proc = Proc::new(
            bin("edge-agent"),
            &[
                "--data-dir".into(),
                data.display().to_string(),
                "run".into(),
            ],
            &env,
            self.dir.path().join(format!("agent-{i}.log")),
        );
        proc.start().expect("start agent");
        self.agents.push(AgentNode {
            id,
            data,
            proc,
            mqtt,
            http,
            functions,
        });
    }

    /// Calls the API as admin; panics on a non-2xx answer.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .client
            .request(m, format!("{}{path}", self.http))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// Imports an image whose `run.sh` runs `script` (plus any extra files); returns its digest.
    pub fn image(&self, name: &str, script: &str, extra: &[(&str, Vec<u8>)]) -> String {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], mode: u32| {
            let mut h = tar::Header::new_ustar();
            h.set_path(path).expect("path");
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_cksum();
            b.append(&h, data).expect("append");
        };
        add("run.sh", format!("#!/bin/sh\n{script}\n").as_bytes(), 0o755);
        for (p, d) in extra {
            add(p, d, 0o644);
        }
        let tar = b.into_inner().expect("tar");
        let resp = self
            .client
            .post(format!(
                "{}/api/v1/images?name={name}&format=tar",
                self.http
            ))
            .bearer_auth(&self.token)
            .body(tar)
            .send()
            .expect("upload");
        assert!(
            resp.status().is_success(),
            "image upload: {}",
            resp.status()
        );
        let v: Value = resp.json().expect("json");
        v["digest"].as_str().expect("digest").to_string()
    }

    /// Creates a one-workload release (`svc` running `./run.sh`, watched 2 s after an update);
    /// returns its id.
    pub fn release(&self, name: &str, version: &str, digest: &str, health: Option<Value>) -> u64 {
        let mut w = json!({"name": "svc", "image": digest, "command": ["./run.sh"],
            "health_deadline_secs": 5, "stability_window_secs": 2});
        if let Some(h) = health {
            w["health"] = h;
        }
        self.api(
            "POST",
            "/api/v1/releases",
            Some(json!({"name": name, "version": version, "workloads": [w]})),
        )["id"]
            .as_u64()
            .expect("id")
    }

    /// Deploys a release to the `lab` group and waits until the hub's publisher has signed
    /// and stored every state it changes (the call itself returns before that), so a
    /// following `wait_converged` compares against the new revisions; returns the id.
    pub fn deploy(&self, release: u64, priority: i64) -> u64 {
        let id = self.api(
            "POST",
            "/api/v1/deployments",
            Some(json!({"release": release, "group": "lab", "priority": priority})),
        )["id"]
            .as_u64()
            .expect("id");
        eventually(30, "the deployment's states published", || {
            let s = self.api("GET", "/api/v1/fleet/summary", None);
            (s["publish_pending"] == 0).then_some(())
        });
        id
    }

    /// The hub's view of a device.
    pub fn device(&self, id: &str) -> Value {
        self.api("GET", &format!("/api/v1/devices/{id}"), None)
    }

    /// Events the hub stored for a device, oldest first.
    pub fn events(&self, id: &str) -> Vec<Value> {
        let mut v = self
            .api(
                "GET",
                &format!("/api/v1/devices/{id}/events?limit=1000"),
                None,
            )
            .as_array()
            .cloned()
            .unwrap_or_default();
        v.reverse();
        v
    }

    /// Whether the device reports running exactly the revision the hub holds for it, converged.
    pub fn converged(&self, id: &str) -> bool {
        let d = self.device(id);
        let want = d["desired_revision"].as_u64();
        want.is_some()
            && d["status"]["applied_revision"].as_u64() == want
            && d["status"]["convergence"] == "converged"
    }

    /// Waits until every agent converged on its current desired revision.
    pub fn wait_converged(&self, secs: u64) {
        for a in &self.agents {
            eventually(secs, &format!("{} converged", a.id), || {
                self.converged(&a.id).then_some(())
            });
        }
    }
}
