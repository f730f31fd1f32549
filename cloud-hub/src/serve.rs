//! Wiring: store, keys, profiles, embedded broker (or an external one), the hub's MQTT client,
//! the publisher and the HTTP server. `serve` runs until `cancel` fires, then drains.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use protocol::DeviceProfile;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::broker::{self, DeviceAuth, HUB_USER};
use crate::config::{split_addr, Config};
use crate::keys::{read_key, KeyDir};
use crate::mqtt::{self, BrokerLogin};
use crate::store::{random_token, unix_now, Role, Store};

/// The device profiles shipped in `firmware-profiles/`, compiled in.
const BUILTIN_PROFILES: &[&str] = &[
    include_str!("../../firmware-profiles/rpi4-4g.toml"),
    include_str!("../../firmware-profiles/armv7-gw-512m.toml"),
    include_str!("../../firmware-profiles/ind-x86-8g.toml"),
    include_str!("../../firmware-profiles/cell-a64-256m.toml"),
    include_str!("../../firmware-profiles/local-dev.toml"),
];

/// Loads profiles from `dir`, or the built-in ones.
pub fn load_profiles(
    dir: Option<&std::path::Path>,
) -> anyhow::Result<BTreeMap<String, DeviceProfile>> {
    let mut out = BTreeMap::new();
    let mut add = |text: &str, from: &str| -> anyhow::Result<()> {
        let p = DeviceProfile::from_toml(text).with_context(|| format!("profile {from}"))?;
        out.insert(p.name.clone(), p);
        Ok(())
    };
    match dir {
        Some(d) => {
            for e in std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))? {
                let p = e?.path();
                if p.extension().and_then(|x| x.to_str()) == Some("toml") {
                    add(&std::fs::read_to_string(&p)?, &p.display().to_string())?;
                }
            }
        }
        None => {
            for (i, t) in BUILTIN_PROFILES.iter().enumerate() {
                add(t, &format!("built-in #{i}"))?;
            }
        }
    }
    Ok(out)
}

/// What a running hub exposes (also written to `<data>/hub.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Endpoints {
    /// HTTP base URL.
    pub http: String,
    /// Broker `host:port`.
    pub mqtt: String,
    /// File holding the first admin token.
    pub admin_token_file: String,
}

/// Runs the hub.
pub async fn serve(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let profiles = Arc::new(load_profiles(cfg.profiles_dir.as_deref())?);
    let store = Store::open(&cfg.data_dir.join("hub.db"))?;
    let keys = KeyDir(cfg.keys_dir());
    if !keys.exists() {
        keys.init(unix_now())?;
        tracing::warn!(
            root_key = %keys.root().display(),
            "generated a new root key: move it offline; the hub needs only online.key and trust.json"
        );
    }
    let (_, trust_env) = keys.current_trust()?;
    store.set_meta("trust_envelope", &String::from_utf8_lossy(&trust_env))?;
    let key = Arc::new(read_key(&keys.online())?);

    let admin_file = cfg.data_dir.join("admin.token");
    if store.meta("admin_created")?.is_none() {
        let t = store.create_api_token("admin", Role::Admin)?;
        crate::keys::write_atomic(&admin_file, t.as_bytes(), 0o600)?;
        store.set_meta("admin_created", "1")?;
        store.audit("hub", "token.create", "admin", "{}", "ok")?;
        tracing::info!(file = %admin_file.display(), "created the first admin API token");
    }

    // Bind HTTP first so a bad address fails before anything else starts.
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", cfg.http_addr))?;
    let http_addr = listener.local_addr()?;

    let (login, mqtt_public, embedded) = match &cfg.external_mqtt {
        Some(ext) => {
            let (host, port) = split_addr(ext)?;
            let login = BrokerLogin {
                host: host.clone(),
                port,
                username: cfg
                    .external_mqtt_username
                    .clone()
                    .unwrap_or_else(|| HUB_USER.into()),
                password: cfg.external_mqtt_password.clone().unwrap_or_default(),
            };
            (login, format!("{host}:{port}"), None)
        }
        None => {
            let hub_password = random_token();
            let s = store.clone();
            let auth = DeviceAuth::new(
                Arc::new(move |u: &str, p: &str| s.device_password_ok(u, p)),
                hub_password.clone(),
            );
            let b = broker::start(cfg.mqtt_addr, auth).await?;
            let login = BrokerLogin {
                host: b.addr.ip().to_string(),
                port: b.addr.port(),
                username: HUB_USER.into(),
                password: hub_password,
            };
            let public = b.addr.to_string();
            (login, public, Some(b))
        }
    };
    let public_mqtt = split_addr(cfg.public_mqtt.as_deref().unwrap_or(&mqtt_public))?;
    let public_url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));

    let (reports, _) = broadcast::channel(1024);
    let link = mqtt::start(login, store.clone(), reports.clone(), cancel.child_token());
    let state = AppState {
        store: store.clone(),
        link: link.clone(),
        key: Arc::new(std::sync::RwLock::new(key)),
        keys: keys.clone(),
        profiles,
        blobs_dir: cfg.data_dir.join("blobs"),
        public_mqtt,
        public_url,
        desired_lifetime_secs: cfg.desired_lifetime_secs,
        reports,
        trust_path: keys.trust(),
    };
    std::fs::create_dir_all(&state.blobs_dir)?;
    api::resync(&state)
        .await
        .map_err(|e| anyhow::anyhow!("initial publish: {e:?}"))?;

    let endpoints = Endpoints {
        http: format!("http://{http_addr}"),
        mqtt: mqtt_public,
        admin_token_file: admin_file.display().to_string(),
    };
    crate::keys::write_atomic(
        &cfg.data_dir.join("hub.json"),
        &serde_json::to_vec_pretty(&endpoints)?,
        0o644,
    )?;
    tracing::info!(http = %endpoints.http, mqtt = %endpoints.mqtt, "hub ready");

    let app = api::router(state);
    let c = cancel.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { c.cancelled().await })
        .await
        .context("HTTP server")?;
    if let Some(b) = embedded {
        b.shutdown();
    }
    tracing::info!("hub stopped");
    Ok(())
}
