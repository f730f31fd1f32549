//! Hub configuration: a TOML file with defaults for everything, `FLEET_HUB_*` environment
//! overrides, then command-line flags. A bad config fails before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Hub configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Store, blobs and keys live here.
    pub data_dir: PathBuf,
    /// HTTP API and blob server.
    pub http_addr: SocketAddr,
    /// Embedded broker listen address (ignored with `external_mqtt`).
    pub mqtt_addr: SocketAddr,
    /// An external broker `host:port` instead of the embedded one.
    pub external_mqtt: Option<String>,
    /// Username and password of the hub's client on the external broker.
    pub external_mqtt_username: Option<String>,
    /// Password for `external_mqtt_username`.
    pub external_mqtt_password: Option<String>,
    /// Broker host and port devices are told at enrollment (default: the listen address).
    pub public_mqtt: Option<String>,
    /// Base URL devices use for blobs (default: from the HTTP listen address).
    pub public_url: Option<String>,
    /// How long a signed desired state is accepted on arrival.
    pub desired_lifetime_secs: u64,
    /// Directory of device profiles.
    pub profiles_dir: Option<PathBuf>,
    /// Devices the publisher signs, stores (one transaction) and publishes at a time.
    pub publish_chunk: usize,
    /// Bounds on what clients may make the hub hold: connections, time, upload sizes.
    pub limits: Limits,
    /// Deltas between images: generation and cache bounds (`[deltas]`).
    pub deltas: crate::images::deltas::DeltaConfig,
}

/// What any client, authenticated or not, may make the hub hold (`[limits]` in the file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open HTTP connections; further ones wait in the listen backlog.
    pub http_max_connections: usize,
    /// Time a client has to send a request's head, on a new or a kept-alive connection.
    pub http_header_timeout_secs: u64,
    /// Longest silence while a request body is being received (an upload chunk, a JSON body).
    pub http_body_idle_secs: u64,
    /// Longest time a JSON request body may take in all.
    pub http_body_timeout_secs: u64,
    /// Bytes of file content an image import may expand to.
    pub image_max_bytes: u64,
    /// Entries an image import may hold, over all its layers.
    pub image_max_entries: u64,
    /// Open connections to the embedded broker, kept below the process's file limit.
    pub mqtt_max_connections: usize,
    /// Time a new broker client has to send its first byte before it is closed.
    pub mqtt_connect_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            http_max_connections: 512,
            http_header_timeout_secs: 10,
            http_body_idle_secs: 30,
            http_body_timeout_secs: 30,
            image_max_bytes: 1 << 30,
            image_max_entries: 100_000,
            mqtt_max_connections: 4096,
            mqtt_connect_timeout_secs: 10,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("fleet-data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            external_mqtt: None,
            external_mqtt_username: None,
            external_mqtt_password: None,
            public_mqtt: None,
            public_url: None,
            desired_lifetime_secs: 30 * 86_400,
            profiles_dir: None,
            limits: Limits::default(),
            deltas: Default::default(),
            publish_chunk: crate::service::publisher::DEFAULT_CHUNK,
        }
    }
}

impl Config {
    /// Loads `path` (or defaults), then environment overrides.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut cfg: Config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("invalid config {}", p.display()))?
            }
            None => Config::default(),
        };
        let env = |k: &str| std::env::var(format!("FLEET_HUB_{k}")).ok();
        if let Some(v) = env("DATA_DIR") {
            cfg.data_dir = v.into();
        }
        if let Some(v) = env("HTTP_ADDR") {
            cfg.http_addr = v
                .parse()
                .with_context(|| format!("FLEET_HUB_HTTP_ADDR={v}"))?;
        }
        if let Some(v) = env("MQTT_ADDR") {
            cfg.mqtt_addr = v
                .parse()
                .with_context(|| format!("FLEET_HUB_MQTT_ADDR={v}"))?;
        }
        if let Some(v) = env("EXTERNAL_MQTT") {
            cfg.external_mqtt = Some(v);
        }
        if let Some(v) = env("EXTERNAL_MQTT_USERNAME") {
            cfg.external_mqtt_username = Some(v);
        }
        if let Some(v) = env("EXTERNAL_MQTT_PASSWORD") {
            cfg.external_mqtt_password = Some(v);
        }
        if let Some(v) = env("PUBLIC_MQTT") {
            cfg.public_mqtt = Some(v);
        }
        if let Some(v) = env("PUBLIC_URL") {
            cfg.public_url = Some(v);
        }
        if let Some(v) = env("PROFILES_DIR") {
            cfg.profiles_dir = Some(v.into());
        }
        if let Some(v) = env("PUBLISH_CHUNK") {
            cfg.publish_chunk = v
                .parse()
                .with_context(|| format!("FLEET_HUB_PUBLISH_CHUNK={v}"))?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.desired_lifetime_secs < 60
            || self.desired_lifetime_secs > protocol::limits::MAX_STATE_LIFETIME_SECS
        {
            anyhow::bail!(
                "desired_lifetime_secs must be 60..={}",
                protocol::limits::MAX_STATE_LIFETIME_SECS
            );
        }
        if !(1..=10_000).contains(&self.publish_chunk) {
            anyhow::bail!("publish_chunk must be 1..=10000");
        }
        let l = &self.limits;
        if l.http_max_connections == 0 || l.mqtt_max_connections == 0 {
            anyhow::bail!("limits: connection caps must be at least 1");
        }
        if [
            l.http_header_timeout_secs,
            l.http_body_idle_secs,
            l.http_body_timeout_secs,
            l.mqtt_connect_timeout_secs,
        ]
        .contains(&0)
        {
            anyhow::bail!("limits: timeouts must be at least 1 s");
        }
        let d = &self.deltas;
        if d.concurrency == 0 || d.max_pending == 0 || d.generate_secs == 0 {
            anyhow::bail!("deltas: concurrency, max_pending and generate_secs must be at least 1");
        }
        for a in [&self.external_mqtt, &self.public_mqtt]
            .into_iter()
            .flatten()
        {
            split_addr(a)?;
        }
        Ok(())
    }

    /// Keys directory.
    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }
}

/// Splits `host:port`.
pub fn split_addr(a: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) = a
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{a:?} is not host:port"))?;
    Ok((
        h.to_string(),
        p.parse()
            .map_err(|_| anyhow::anyhow!("{a:?} has a bad port"))?,
    ))
}
