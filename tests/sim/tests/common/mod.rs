//! What the simulator's tests share: the real `cloud-hub` binary on free ports in a temp dir,
//! and a hub seeded with enrolled devices straight through its store (enrolling thousands
//! through the API is the enrollment cost, not what the ingest tests measure).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cloud_hub::keys::KeyDir;
use cloud_hub::model::NewDevice;
use cloud_hub::secrets::{hash_secret, random_token};
use cloud_hub::store::Store;
use fleet_sim::identity::{device_id, Identity};
use fleet_test_kit::eventually_async;
use fleet_test_kit::process::Proc;
use protocol::KeyPair;
use rand::RngCore;
use serde_json::Value;

/// The workspace's `target/debug/cloud-hub`, or the binary `FLEET_HUB_BIN` names (to run these
/// tests against a release build or an older hub).
pub fn hub_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLEET_HUB_BIN") {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug/cloud-hub");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cloud-hub` first",
        bin.display()
    );
    bin
}

/// The real hub (the kit's managed process: killed on drop, its log printed when the test
/// fails).
pub struct Hub {
    pub proc: Proc,
    pub data: PathBuf,
    pub http: String,
    pub mqtt: String,
    pub token: String,
}

impl Hub {
    /// Starts the hub on `dir/hub` with its embedded broker.
    pub async fn start(dir: &Path) -> Hub {
        Self::start_with(dir, &["--mqtt", "127.0.0.1:0"]).await
    }

    /// Starts the hub on `dir/hub` with `extra` arguments (e.g. an external broker).
    pub async fn start_with(dir: &Path, extra: &[&str]) -> Hub {
        let data = dir.join("hub");
        let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "--data-dir".into()];
        args.push(data.clone().into());
        args.extend(["--http", "127.0.0.1:0"].map(Into::into));
        args.extend(extra.iter().map(Into::into));
        let _ = std::fs::remove_file(data.join("hub.json"));
        let mut proc = Proc::new(
            hub_binary(),
            args,
            &[("RUST_LOG".to_string(), "warn".to_string())],
            dir.join("hub.log"),
        );
        proc.start().expect("spawn cloud-hub");
        let info: Value = eventually_async(60, "the hub writes hub.json", || async {
            std::fs::read_to_string(data.join("hub.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        })
        .await;
        let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token");
        Hub {
            proc,
            data,
            http: info["http"].as_str().expect("http address").to_string(),
            mqtt: info["mqtt"].as_str().expect("mqtt address").to_string(),
            token: token.trim().to_string(),
        }
    }

    /// The broker address the hub hands out, as (host, port).
    pub fn broker(&self) -> (String, u16) {
        let (host, port) = self.mqtt.rsplit_once(':').expect("host:port");
        (host.to_string(), port.parse().expect("port"))
    }
}

/// Creates the hub's keys and `count` enrolled devices `PREFIX-i` (labelled as the
/// simulator's own) in `dir/hub` before the hub first starts, as enrollment would store them;
/// returns their identities (broker address to be filled in).
pub fn seed_devices(dir: &Path, prefix: &str, count: usize) -> Vec<Identity> {
    let data = dir.join("hub");
    let keys = KeyDir(data.join("keys"));
    let now = fleet_test_kit::now();
    keys.init(now).expect("hub keys");
    let (trust, _) = keys.current_trust().expect("trust");
    let store = Store::open(&data.join("hub.db")).expect("hub store");
    let labels = fleet_sim::scenario::labels(prefix);
    (0..count)
        .map(|i| {
            let device = device_id(prefix, i).expect("device id");
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let (password, salt) = (random_token(), random_token());
            let token = hash_secret("enroll", &random_token());
            store
                .insert_enroll_token(&token, &labels, now + 3600)
                .expect("enrollment token");
            let new = NewDevice {
                id: device.clone(),
                public_key: KeyPair::from_seed(seed).public().to_base64(),
                password_hash: hash_secret(&salt, &password),
                password_salt: salt,
                profile: "local-dev".into(),
                arch: protocol::Arch::X86_64,
                runtimes: vec![protocol::RuntimeKind::Process],
                agent_version: "fleet-sim".into(),
                labels: Default::default(),
            };
            store.enroll_device(&token, &new, now).expect("enroll");
            Identity {
                device,
                seed: hex::encode(seed),
                mqtt_host: String::new(),
                mqtt_port: 0,
                password,
                root: trust.root.clone(),
                state: Default::default(),
            }
        })
        .collect()
}
