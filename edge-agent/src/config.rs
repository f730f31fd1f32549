//! The agent's configuration: a TOML file with defaults for every field, then `FLEET_AGENT_*`
//! environment overrides, then command-line flags. A bad value fails before any connection.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Agent configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store, images, workload state and logs live.
    pub data_dir: PathBuf,
    /// Broker `host:port` overriding the one from enrollment (e.g. a local proxy).
    pub mqtt_addr: Option<String>,
    /// Hub base URL overriding the one from enrollment.
    pub hub_url: Option<String>,
    /// Seconds between periodic status snapshots (one is also sent on every change).
    pub status_interval_secs: u64,
    /// Milliseconds between reconciler passes.
    pub tick_millis: u64,
    /// Byte budget of the outbox.
    pub outbox_budget_bytes: u64,
    /// Byte budget of the image cache.
    pub image_cache_bytes: u64,
    /// Longest a pull waits for the hub to make a delta before taking the full blob, in
    /// seconds (0: deltas are never tried).
    pub delta_wait_secs: u64,
    /// Longest an application's update hold may defer a swap, in seconds.
    pub max_update_hold_secs: u64,
    /// Seconds between SIGTERM and SIGKILL when stopping a workload.
    pub stop_grace_secs: u64,
    /// Size bound of each workload log file before rotation.
    pub log_max_bytes: u64,
    /// MQTT keep-alive in seconds.
    pub keep_alive_secs: u64,
    /// Seconds before unacked events are published again.
    pub resend_secs: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when unset. Loopback only unless
    /// `metrics_remote` is set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Allow `metrics_addr` on an address other hosts can reach (the listener has no
    /// authentication).
    pub metrics_remote: bool,
    /// Address of the local function invocation listener (`127.0.0.1:8088`); off when unset.
    pub functions_listen: Option<String>,
    /// The gateway's local MQTT bus (`host:port`) for functions' topic triggers; off when unset.
    pub functions_bus: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/fleet-agent"),
            mqtt_addr: None,
            hub_url: None,
            status_interval_secs: 30,
            tick_millis: 500,
            outbox_budget_bytes: 1 << 20,
            image_cache_bytes: 2 << 30,
            delta_wait_secs: 60,
            max_update_hold_secs: 3600,
            stop_grace_secs: 10,
            log_max_bytes: 1 << 20,
            keep_alive_secs: 15,
            resend_secs: 10,
            metrics_addr: None,
            metrics_remote: false,
            functions_listen: None,
            functions_bus: None,
        }
    }
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config {path}: {detail}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// An environment override is not valid.
    #[error("invalid environment variable {name}={value:?}: {detail}")]
    Env {
        /// Variable.
        name: String,
        /// Value.
        value: String,
        /// Why.
        detail: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

fn env_num(name: &str, slot: &mut u64) -> Result<(), ConfigError> {
    if let Ok(v) = std::env::var(name) {
        *slot = v
            .parse()
            .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                name: name.into(),
                value: v.clone(),
                detail: e.to_string(),
            })?;
    }
    Ok(())
}

impl Config {
    /// Loads `path` (or defaults when `None`), then applies `FLEET_AGENT_*` overrides.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    detail: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        if let Ok(v) = std::env::var("FLEET_AGENT_DATA_DIR") {
            cfg.data_dir = v.into();
        }
        if let Ok(v) = std::env::var("FLEET_AGENT_MQTT_ADDR") {
            cfg.mqtt_addr = Some(v);
        }
        if let Ok(v) = std::env::var("FLEET_AGENT_HUB_URL") {
            cfg.hub_url = Some(v);
        }
        env_num(
            "FLEET_AGENT_STATUS_INTERVAL_SECS",
            &mut cfg.status_interval_secs,
        )?;
        env_num("FLEET_AGENT_TICK_MILLIS", &mut cfg.tick_millis)?;
        env_num(
            "FLEET_AGENT_OUTBOX_BUDGET_BYTES",
            &mut cfg.outbox_budget_bytes,
        )?;
        env_num("FLEET_AGENT_IMAGE_CACHE_BYTES", &mut cfg.image_cache_bytes)?;
        env_num("FLEET_AGENT_DELTA_WAIT_SECS", &mut cfg.delta_wait_secs)?;
        env_num(
            "FLEET_AGENT_MAX_UPDATE_HOLD_SECS",
            &mut cfg.max_update_hold_secs,
        )?;
        env_num("FLEET_AGENT_STOP_GRACE_SECS", &mut cfg.stop_grace_secs)?;
        env_num("FLEET_AGENT_KEEP_ALIVE_SECS", &mut cfg.keep_alive_secs)?;
        env_num("FLEET_AGENT_RESEND_SECS", &mut cfg.resend_secs)?;
        if let Ok(v) = std::env::var("FLEET_AGENT_METRICS_ADDR") {
            cfg.metrics_addr =
                Some(
                    v.parse()
                        .map_err(|e: std::net::AddrParseError| ConfigError::Env {
                            name: "FLEET_AGENT_METRICS_ADDR".into(),
                            value: v.clone(),
                            detail: e.to_string(),
                        })?,
                );
        }
        if let Ok(v) = std::env::var("FLEET_AGENT_FUNCTIONS_LISTEN") {
            cfg.functions_listen = Some(v);
        }
        if let Ok(v) = std::env::var("FLEET_AGENT_FUNCTIONS_BUS") {
            cfg.functions_bus = Some(v);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes `data_dir` absolute, so paths stay right for workloads that run elsewhere.
    pub fn absolutize(&mut self) -> Result<(), ConfigError> {
        self.data_dir = std::path::absolute(&self.data_dir).map_err(|e| {
            ConfigError::Invalid(format!("data_dir {}: {e}", self.data_dir.display()))
        })?;
        Ok(())
    }

    /// Range checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.tick_millis < 50 || self.tick_millis > 60_000 {
            return bad("tick_millis must be 50..=60000");
        }
        if self.status_interval_secs == 0 {
            return bad("status_interval_secs must be positive");
        }
        if self.outbox_budget_bytes < 16 * 1024 {
            return bad("outbox_budget_bytes must be at least 16 KiB");
        }
        if self.keep_alive_secs < 5 {
            return bad("keep_alive_secs must be at least 5");
        }
        if let Some(a) = &self.mqtt_addr {
            split_addr(a).map_err(ConfigError::Invalid)?;
        }
        if let Some(a) = self.metrics_addr {
            if !a.ip().is_loopback() && !self.metrics_remote {
                return Err(ConfigError::Invalid(format!(
                    "metrics_addr {a} is not a loopback address (set metrics_remote = true to serve it beyond this host)"
                )));
            }
        }
        if let Some(a) = &self.functions_listen {
            a.parse::<std::net::SocketAddr>().map_err(|e| {
                ConfigError::Invalid(format!("functions_listen {a:?} is not ip:port: {e}"))
            })?;
        }
        if let Some(a) = &self.functions_bus {
            split_addr(a).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// Path of the store.
    pub fn db_path(&self) -> PathBuf {
        self.layout().db()
    }

    /// The data directory's layout.
    pub fn layout(&self) -> crate::layout::Layout {
        crate::layout::Layout::new(&self.data_dir)
    }
}

/// Splits `host:port`.
pub fn split_addr(a: &str) -> Result<(String, u16), String> {
    let (h, p) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("address {a:?} is not host:port"))?;
    let port = p
        .parse()
        .map_err(|_| format!("address {a:?} has a bad port"))?;
    Ok((h.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_bad_values_fail() {
        let text = toml::to_string(&Config::default()).expect("toml");
        let back: Config = toml::from_str(&text).expect("parse");
        assert_eq!(back, Config::default());
        let c = Config {
            tick_millis: 1,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        assert!(toml::from_str::<Config>("nonsense_key = 1").is_err());
        let c = Config {
            mqtt_addr: Some("no-port".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            metrics_addr: Some("0.0.0.0:9101".parse().expect("addr")),
            ..Config::default()
        };
        assert!(
            c.validate().is_err(),
            "the listener is loopback only by default"
        );
        let c = Config {
            metrics_remote: true,
            ..c
        };
        assert!(c.validate().is_ok());
        let c = Config {
            metrics_addr: Some("127.0.0.1:9101".parse().expect("addr")),
            ..Config::default()
        };
        assert!(c.validate().is_ok());
        let c = Config {
            functions_listen: Some("localhost".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
