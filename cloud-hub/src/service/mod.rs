//! The services: the one layer between the transports (HTTP handlers, the MQTT client) and the
//! store. Every domain rule lives here; handlers only authenticate, parse, call a service and
//! map its [`Error`] to a status.
//!
//! - `registry`: enrollment, devices, labels, groups, maintenance windows,
//!   the audit log;
//! - `tokens`: API tokens (expiry, revocation, scopes) and the role and scope checks;
//! - `images`: image import;
//! - `deploy`: releases and deployments (validation, fit to each target's profile);
//! - `publisher`: change → revision → sign → store → publish retained; trust reload; the
//!   republish of every retained message on each broker (re)connection;
//! - `ingest`: status, events (acked) and presence from devices, batched off the MQTT read loop;
//! - `limits`: the per-device token bucket at ingest and the count of what it refused;
//! - `rollout`: staged rollouts — the pure controller, its observations, and the driver task;
//! - `desired`: the pure desired-state computation;
//! - `clock`: time as a dependency.
//!
//! Store calls are short synchronous sections; services run them on the blocking pool.

pub mod clock;
pub mod deploy;
pub mod desired;
pub mod images;
pub mod ingest;
pub mod limits;
pub mod publisher;
pub mod registry;
pub mod rollout;
mod tokens;

use crate::store::StoreError;

pub use clock::{Clock, SharedClock, SystemClock, TestClock};

/// What a service call can fail with; the HTTP layer maps each kind to one status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or breaks a rule; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// No or an unknown credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role does not allow the action.
    #[error("{0}")]
    Forbidden(String),
    /// An enrollment token is unknown, used or expired.
    #[error("{0}")]
    BadToken(String),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// A deployment does not fit a target device.
    #[error("{0}")]
    DoesNotFit(String),
    /// The hub failed, not the request.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Error::NotFound(what),
            StoreError::Conflict(m) => Error::Conflict(m),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// Result of a service call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs blocking (store) work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

/// All services, as the transports see them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Services {
    /// Tokens, enrollment, devices, groups, audit.
    pub registry: registry::Registry,
    /// Image import.
    pub images: images::Images,
    /// Releases and deployments.
    pub deploy: deploy::Deploy,
    /// Signing and publishing.
    pub publisher: publisher::Publisher,
    /// Device reports.
    pub ingest: ingest::Ingest,
    /// Staged rollouts.
    pub rollouts: rollout::Rollouts,
}

#[cfg(test)]
mod publisher_tests;
#[cfg(test)]
mod tests;
