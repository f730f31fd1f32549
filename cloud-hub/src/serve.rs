//! Wiring: store, keys, profiles, embedded broker (or an external one), the hub's MQTT client,
//! the services and the HTTP server. `serve` runs until `cancel` fires, then drains: the HTTP
//! server finishes its requests and the background tasks (on one `TaskTracker`) end.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use protocol::DeviceProfile;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use tokio_util::task::TaskTracker;

use crate::api::{self, AppState};
use crate::broker::{self, DeviceAuth, HUB_USER};
use crate::config::{split_addr, Config};
use crate::images::deltas::DeltaCache;
use crate::keys::{read_key, KeyDir};
use crate::mqtt::{self, BrokerLogin};
use crate::secrets::random_token;
use crate::service::deploy::Deploy;
use crate::service::images::Images;
use crate::service::ingest::{Ingest, IngestConfig};
use crate::service::publisher::Publisher;
use crate::service::registry::{DeviceEndpoints, Registry, SessionCutter};
use crate::service::rollout::Rollouts;
use crate::service::{Services, SharedClock, SystemClock};
use crate::store::Store;

/// A blob file no image names is removed at start once it is this old (an import records its
/// blob right after writing it; a younger one may belong to an import under way).
const BLOB_GC_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

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

/// Creates `dir` if needed and makes it private to the hub's user (0700), tightening one an
/// earlier version left open.
fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", dir.display()))
}

/// Makes the store's files private (0600). Created empty with that mode before SQLite opens
/// it, so its WAL and shared-memory files, which SQLite creates with the database's mode,
/// are never readable by others either; existing ones are tightened.
fn private_store_files(db: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(db)
        .with_context(|| format!("creating {}", db.display()))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private (0600)", p.display()))?;
        }
    }
    Ok(())
}

/// Runs the hub.
pub async fn serve(cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    // Secrets (keys, tokens, password hashes in hub.db) readable by the hub's user only.
    private_dir(&cfg.data_dir)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let profiles = Arc::new(load_profiles(cfg.profiles_dir.as_deref())?);
    let db = cfg.data_dir.join("hub.db");
    private_store_files(&db)?;
    let store = Store::open(&db)?;
    private_store_files(&db)?;
    let keys = KeyDir(cfg.keys_dir());
    private_dir(&cfg.keys_dir())?;
    if !keys.exists() {
        keys.init(clock.now())?;
        tracing::warn!(
            root_key = %keys.root().display(),
            "generated a new root key: move it offline; the hub needs only online.key and trust.json"
        );
    }
    let (_, trust_env) = keys.current_trust()?;
    store.set_meta("trust_envelope", &String::from_utf8_lossy(&trust_env))?;
    let key = read_key(&keys.online())?;

    // Both connection caps fit under the process's file limit, so `accept` never runs out.
    let (http_cap, mqtt_cap) = crate::accept::fit_caps(
        cfg.limits.http_max_connections,
        cfg.limits.mqtt_max_connections,
        crate::accept::open_files_limit(),
    );
    if (http_cap, mqtt_cap)
        != (
            cfg.limits.http_max_connections,
            cfg.limits.mqtt_max_connections,
        )
    {
        tracing::warn!(
            http_cap,
            mqtt_cap,
            "connection caps lowered to fit the open-file limit (raise LimitNOFILE)"
        );
    }

    // Bind HTTP first so a bad address fails before anything else starts.
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", cfg.http_addr))?;
    let http_addr = listener.local_addr()?;

    // The broker authenticates devices against the store; the hub's own user gets a password
    // made now. The check is installed once the registry exists.
    let device_check: Arc<std::sync::OnceLock<Registry>> = Arc::default();
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
            let check = device_check.clone();
            let auth = DeviceAuth::new(
                Arc::new(move |u: &str, p: &str| {
                    check.get().is_some_and(|r| r.device_password_ok(u, p))
                }),
                hub_password.clone(),
            );
            let first_byte = std::time::Duration::from_secs(cfg.limits.mqtt_connect_timeout_secs);
            let b = broker::start(cfg.mqtt_addr, auth, mqtt_cap, first_byte).await?;
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

    let (link, connection) = mqtt::client(login);
    let sink = Arc::new(link);
    let publisher = Publisher::new(
        store.clone(),
        clock.clone(),
        key,
        keys.clone(),
        profiles.clone(),
        sink.clone(),
        cfg.desired_lifetime_secs,
    )
    .with_chunk(cfg.publish_chunk);
    let registry = Registry::new(
        store.clone(),
        clock.clone(),
        profiles.clone(),
        publisher.clone(),
        DeviceEndpoints {
            mqtt: public_mqtt,
            url: public_url,
        },
    );
    let registry = match &embedded {
        Some(b) => {
            let sessions = b.sessions();
            registry.with_session_cutter(SessionCutter::new(move |id| sessions.drop_client(id)))
        }
        None => registry,
    };
    let _ = device_check.set(registry.clone());
    let blobs_dir = cfg.data_dir.join("blobs");
    private_dir(&blobs_dir)?;
    let deltas_dir = cfg.data_dir.join("deltas");
    private_dir(&deltas_dir)?;
    let generator = std::env::current_exe().context("locating the hub binary")?;
    let deltas = DeltaCache::open(&deltas_dir, &blobs_dir, cfg.deltas.clone(), generator)
        .with_context(|| format!("opening {}", deltas_dir.display()))?;
    let (reports, _) = broadcast::channel(1024);
    let deploy = Deploy::new(store.clone(), profiles, publisher.clone());
    let rollouts = Rollouts::new(
        store.clone(),
        clock.clone(),
        deploy.clone(),
        publisher.clone(),
        sink.clone(),
    )
    .with_deltas(deltas.clone());
    let services = Services {
        registry: registry.clone(),
        images: Images::new(
            store.clone(),
            clock.clone(),
            blobs_dir,
            crate::images::Limits {
                max_bytes: cfg.limits.image_max_bytes,
                max_entries: cfg.limits.image_max_entries,
            },
        )
        .with_deltas(deltas),
        deploy: deploy.clone(),
        rollouts: rollouts.clone(),
        publisher: publisher.clone(),
        ingest: Ingest::new(
            store.clone(),
            sink,
            reports,
            IngestConfig::default(),
            registry.refused_ledger(),
        ),
    };

    let admin_file = cfg.data_dir.join("admin.token");
    let created = registry
        .bootstrap_admin(|t| crate::keys::write_atomic(&admin_file, t.as_bytes(), 0o600))
        .await?;
    if created {
        tracing::info!(file = %admin_file.display(), "created the first admin API token");
    }

    match services.images.collect_garbage(BLOB_GC_MIN_AGE).await {
        Ok((0, 0)) => {}
        Ok((blobs, deltas)) => tracing::info!(blobs, deltas, "removed files no image names"),
        Err(e) => tracing::warn!(error = %e, "collecting unused blobs"),
    }

    let tasks = TaskTracker::new();
    mqtt::run(
        connection,
        publisher.clone(),
        services.ingest.clone(),
        &tasks,
        cancel.child_token(),
    );
    // Every device is looked at once per start (profiles or the code computing states may
    // have changed); marks left by a crash are worked off in the same pass.
    store.mark_all_dirty(false)?;
    tasks.spawn(publisher.clone().run(cancel.child_token()));
    tasks.spawn(rollouts.run(cancel.child_token()));

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

    let limits = Arc::new(cfg.limits.clone());
    let app = api::router(AppState {
        services,
        limits: limits.clone(),
    });
    api::server::serve(listener, app, &limits, http_cap, cancel.clone()).await;
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within 5 s");
    }
    if let Some(b) = embedded {
        b.shutdown();
    }
    tracing::info!("hub stopped");
    Ok(())
}
