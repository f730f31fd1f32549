//! The HTTP API under `/api/v1` (bearer tokens with roles, JSON errors, audit of every change),
//! enrollment, and blob serving under `/v1/blobs`.
//!
//! Every mutating call is audited, including denials. Bad requests get a JSON 4xx
//! (`{"error": "...", "code": "..."}`) and change nothing.

mod blobs;
mod enroll;
mod fleet;
pub mod openapi;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use protocol::{DeviceProfile, KeyPair};
use tokio::sync::broadcast;

use crate::mqtt::{HubLink, Report};
use crate::store::{Role, Store, StoreError, TokenInfo};

/// Everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// MQTT publisher.
    pub link: HubLink,
    /// Online signing key; replaced by a trust reload after a key rotation.
    pub key: Arc<std::sync::RwLock<Arc<KeyPair>>>,
    /// The key directory (online key and trust document).
    pub keys: crate::keys::KeyDir,
    /// Device profiles by name.
    pub profiles: Arc<BTreeMap<String, DeviceProfile>>,
    /// Where blobs live.
    pub blobs_dir: PathBuf,
    /// Broker host and port given to devices.
    pub public_mqtt: (String, u16),
    /// Base URL given to devices.
    pub public_url: String,
    /// Lifetime of signed desired states.
    pub desired_lifetime_secs: u64,
    /// Live device reports.
    pub reports: broadcast::Sender<Report>,
    /// Trust envelope file.
    pub trust_path: PathBuf,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState")
    }
}

/// An API error: a status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// A 400.
    pub fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
    /// Any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            StoreError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            other => {
                tracing::error!(error = %other, "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

/// Result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// Authenticates the bearer token and checks the role; a refused mutating call is audited.
pub fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    need: Role,
    action: &str,
    target: &str,
) -> ApiResult<TokenInfo> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing bearer token",
            )
        })?;
    let who = state
        .store
        .api_token(token.trim())?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))?;
    if who.role < need {
        if need > Role::Viewer {
            let _ = state.store.audit(
                &who.name,
                action,
                target,
                "{}",
                &format!("denied: needs {need:?}"),
            );
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{action} needs the {} role",
                format!("{need:?}").to_lowercase()
            ),
        ));
    }
    Ok(who)
}

/// Runs blocking store work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// Recomputes and publishes desired states after a change.
pub async fn resync(state: &AppState) -> ApiResult<Vec<(String, u64)>> {
    // Take the key out of the lock before awaiting: the guard must not cross an await.
    let key = state.key.read().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(crate::publisher::sync_all(
        &state.store,
        key,
        state.profiles.clone(),
        &state.link,
        state.desired_lifetime_secs,
    )
    .await?)
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/enroll", post(enroll::enroll))
        .route("/api/v1/trust", get(fleet::trust))
        .route("/api/v1/trust/reload", post(fleet::reload_trust))
        .route("/api/v1/devices", get(fleet::list_devices))
        .route("/api/v1/devices/{id}", get(fleet::get_device))
        .route("/api/v1/devices/{id}/labels", put(fleet::set_labels))
        .route("/api/v1/devices/{id}/events", get(fleet::device_events))
        .route("/api/v1/groups", get(fleet::list_groups))
        .route("/api/v1/groups/{name}", put(fleet::put_group))
        .route(
            "/api/v1/images",
            get(fleet::list_images).post(fleet::import_image),
        )
        .route(
            "/api/v1/releases",
            get(fleet::list_releases).post(fleet::create_release),
        )
        .route(
            "/api/v1/deployments",
            get(fleet::list_deployments).post(fleet::create_deployment),
        )
        .route("/api/v1/deployments/{id}", delete(fleet::delete_deployment))
        .route("/api/v1/tokens", post(fleet::create_token))
        .route("/api/v1/audit", get(fleet::audit))
        .route("/api/v1/audit/verify", get(fleet::audit_verify))
        .route("/v1/blobs/{digest}", get(blobs::get_blob))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 30))
        .with_state(state)
}
