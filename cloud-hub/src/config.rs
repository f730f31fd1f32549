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
