//! Simulated identities: each device has its own Ed25519 key and broker password, enrolled
//! through the hub's real enrollment API, and kept in a state file (JSON, written to a temp
//! file, fsynced and renamed) so a second run reuses the same devices instead of enrolling new
//! ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::{DeviceId, KeyPair, RootKeys};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::device::Persisted;
use crate::hub::{HubClient, HubError};

/// One enrolled device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// Its id.
    pub device: DeviceId,
    /// The key seed, hex (the state file is test material, not a production key store).
    pub seed: String,
    /// Broker host the hub told it.
    pub mqtt_host: String,
    /// Broker port the hub told it.
    pub mqtt_port: u16,
    /// Broker password.
    pub password: String,
    /// Root keys pinned at enrollment.
    pub root: RootKeys,
    /// Protocol state carried between runs.
    #[serde(default)]
    pub state: Persisted,
}

impl Identity {
    /// The device key.
    pub fn key(&self) -> Result<KeyPair, StateError> {
        let raw = hex::decode(&self.seed)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| StateError::Invalid(format!("{}: bad key seed", self.device)))?;
        Ok(KeyPair::from_seed(raw))
    }
}

/// Errors with the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The content is not a state file.
    #[error("invalid state file: {0}")]
    Invalid(String),
    /// Enrollment failed.
    #[error("enrolling {device}: {source}")]
    Enroll {
        /// Device.
        device: String,
        /// Cause.
        source: HubError,
    },
}

/// The state file: every identity of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateFile {
    /// The devices.
    pub devices: Vec<Identity>,
}

impl StateFile {
    /// Loads `path`; an absent file is an empty state.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StateError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes atomically: temp file, fsync, rename, directory fsync.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text =
            serde_json::to_vec(self).map_err(|e| StateError::Invalid(format!("encoding: {e}")))?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&text).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// What enrollment needs.
#[derive(Debug, Clone)]
pub struct EnrollPlan {
    /// Device ids are `{prefix}-{index}`.
    pub prefix: String,
    /// How many devices the run wants.
    pub count: usize,
    /// Labels every device gets through its token (the simulator adds `sim={prefix}`).
    pub labels: BTreeMap<String, String>,
    /// Device profile.
    pub profile: String,
    /// Enrollments in flight at once.
    pub concurrency: usize,
}

/// Device id of index `i`.
pub fn device_id(prefix: &str, i: usize) -> Result<DeviceId, StateError> {
    DeviceId::new(format!("{prefix}-{i}"))
        .map_err(|e| StateError::Invalid(format!("device id from prefix {prefix:?}: {e}")))
}

/// The identities a run uses, and the rest of the state file.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The plan's devices, in index order.
    pub devices: Vec<Identity>,
    /// How many of them were enrolled now.
    pub enrolled: usize,
    /// Identities of the state file this run does not use (kept when it is saved again).
    pub unused: Vec<Identity>,
}

/// Keeps the identities of `existing` that the plan names and enrolls the missing ones.
pub async fn enroll_missing(
    hub: &HubClient,
    plan: &EnrollPlan,
    existing: Vec<Identity>,
) -> Result<Enrolled, StateError> {
    let mut have: BTreeMap<String, Identity> = existing
        .into_iter()
        .map(|i| (i.device.to_string(), i))
        .collect();
    let sem = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut out: Vec<Option<Identity>> = Vec::with_capacity(plan.count);
    for i in 0..plan.count {
        let id = device_id(&plan.prefix, i)?;
        if let Some(known) = have.remove(id.as_str()) {
            out.push(Some(known));
            continue;
        }
        out.push(None);
        let (hub, plan, sem) = (hub.clone(), plan.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, enroll_one(&hub, &plan, id).await)
        });
    }
    let mut enrolled = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.map_err(|e| StateError::Invalid(format!("enroll task: {e}")))?;
        out[i] = Some(r?);
        enrolled += 1;
    }
    Ok(Enrolled {
        devices: out.into_iter().flatten().collect(),
        enrolled,
        unused: have.into_values().collect(),
    })
}

async fn enroll_one(
    hub: &HubClient,
    plan: &EnrollPlan,
    device: DeviceId,
) -> Result<Identity, StateError> {
    let err = |source| StateError::Enroll {
        device: device.to_string(),
        source,
    };
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = KeyPair::from_seed(seed);
    let token = hub.enroll_token(&plan.labels, 3600).await.map_err(err)?;
    let answer = hub
        .enroll(&token, &key, &device, &plan.profile)
        .await
        .map_err(err)?;
    Ok(Identity {
        device: answer.device_id,
        seed: hex::encode(seed),
        mqtt_host: answer.mqtt.host,
        mqtt_port: answer.mqtt.port,
        password: answer.mqtt.password,
        root: answer.root,
        state: Persisted::default(),
    })
}
