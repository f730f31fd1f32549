//! The HTTP transport: `/api/v1` (bearer tokens with roles, JSON errors), enrollment, and blob
//! serving under `/v1/blobs`.
//!
//! Handlers only authenticate ([`auth::Auth`]), parse, call a service and map its error to a
//! status ([`error`], the one place that mapping lives); every rule and every audit entry is
//! the services'. Bad requests get a JSON 4xx (`{"error": "...", "code": "..."}`) and change
//! nothing; internal failures are a 500.
//!
//! - `server.rs`: the accept loop (connection cap, header and idle timeout, accept back-off);
//! - `doors.rs`: per-route body limits on the announced length and the body deadline, before
//!   any handler; `upload.rs`: uploads streamed to disk;
//! - `auth.rs`: the `Auth<R>` extractor and the route → audited action table;
//! - `error.rs`: `ApiError`, the status of each service error, `JsonBody` and `QueryArgs`;
//! - `devices.rs`, `fleet.rs`, `rollouts.rs`, `retire.rs`, `admin.rs`, `enroll.rs`, `blobs.rs`:
//!   handlers by area;
//! - `device_query.rs`: search, filters and paging of the device list; `whoami.rs`: the
//!   caller's name and role;
//! - `openapi.rs`: the OpenAPI document;
//! - `metrics.rs`: `GET /metrics` and the middleware timing every request by route.

mod admin;
pub mod auth;
mod blobs;
mod device_query;
mod devices;
pub mod doors;
mod enroll;
pub mod error;
mod fleet;
mod metrics;
pub mod openapi;
mod retire;
mod rollouts;
pub mod server;
mod upload;
mod whoami;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;

pub use crate::types;
pub use error::{ApiError, ApiResult, JsonBody, QueryArgs};

use crate::service::Services;

/// Largest JSON body of an operator call (a release is bounded by the signed state's size).
pub const JSON_BODY_LIMIT: usize = 512 * 1024;
/// Largest enrollment request.
pub const ENROLL_BODY_LIMIT: usize = 64 * 1024;
/// Largest image upload.
pub const IMAGE_BODY_LIMIT: usize = 1 << 30;

/// Everything the handlers need.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The services.
    pub services: Services,
    /// Connection, time and size bounds.
    pub limits: std::sync::Arc<crate::config::Limits>,
}

/// Every route as `(method, path)`, in the order [`router`] adds them (the OpenAPI test checks
/// each appears in the document).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/enroll"),
    ("get", "/api/v1/whoami"),
    ("get", "/api/v1/trust"),
    ("post", "/api/v1/trust/reload"),
    ("get", "/api/v1/devices"),
    ("get", "/api/v1/devices/{id}"),
    ("delete", "/api/v1/devices/{id}"),
    ("put", "/api/v1/devices/{id}/labels"),
    ("put", "/api/v1/devices/{id}/maintenance"),
    ("delete", "/api/v1/devices/{id}/maintenance"),
    ("get", "/api/v1/devices/{id}/events"),
    ("get", "/api/v1/devices/{id}/explain"),
    ("get", "/api/v1/fleet/summary"),
    ("get", "/api/v1/groups"),
    ("put", "/api/v1/groups/{name}"),
    ("delete", "/api/v1/groups/{name}"),
    ("put", "/api/v1/groups/{name}/maintenance"),
    ("delete", "/api/v1/groups/{name}/maintenance"),
    ("get", "/api/v1/images"),
    ("post", "/api/v1/images"),
    ("delete", "/api/v1/images/{digest}"),
    ("get", "/api/v1/releases"),
    ("post", "/api/v1/releases"),
    ("delete", "/api/v1/releases/{id}"),
    ("get", "/api/v1/deployments"),
    ("post", "/api/v1/deployments"),
    ("delete", "/api/v1/deployments/{id}"),
    ("get", "/api/v1/rollouts"),
    ("post", "/api/v1/rollouts"),
    ("post", "/api/v1/rollouts/preview"),
    ("get", "/api/v1/rollouts/{id}"),
    ("get", "/api/v1/rollouts/{id}/events"),
    ("get", "/api/v1/rollouts/{id}/webhooks"),
    ("post", "/api/v1/rollouts/{id}/{command}"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{id}"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/audit/verify"),
    ("get", "/v1/blobs/{digest}"),
    ("get", "/v1/deltas/{base}/{target}"),
    ("get", "/metrics"),
];

/// The router. Every route takes at most [`JSON_BODY_LIMIT`], except enrollment
/// ([`ENROLL_BODY_LIMIT`]) and image upload ([`IMAGE_BODY_LIMIT`], streamed to disk); an
/// announced length past the limit is refused before the body is read ([`doors`]).
pub fn router(state: AppState) -> Router {
    let limits = state.limits.clone();
    Router::new()
        .route("/api/v1/openapi.json", get(openapi::document))
        .route(
            "/api/v1/enroll",
            post(enroll::enroll).layer(DefaultBodyLimit::max(ENROLL_BODY_LIMIT)),
        )
        .route("/api/v1/whoami", get(whoami::whoami))
        .route("/api/v1/trust", get(admin::trust))
        .route("/api/v1/trust/reload", post(admin::reload_trust))
        .route("/api/v1/devices", get(devices::list))
        .route(
            "/api/v1/devices/{id}",
            get(devices::get).delete(devices::delete),
        )
        .route("/api/v1/devices/{id}/labels", put(devices::set_labels))
        .route(
            "/api/v1/devices/{id}/maintenance",
            put(devices::set_maintenance).delete(devices::clear_maintenance),
        )
        .route("/api/v1/devices/{id}/events", get(devices::events))
        .route("/api/v1/devices/{id}/explain", get(rollouts::explain))
        .route("/api/v1/fleet/summary", get(devices::summary))
        .route("/api/v1/groups", get(fleet::list_groups))
        .route(
            "/api/v1/groups/{name}",
            put(fleet::put_group).delete(retire::delete_group),
        )
        .route(
            "/api/v1/groups/{name}/maintenance",
            put(fleet::set_group_maintenance).delete(fleet::clear_group_maintenance),
        )
        .route(
            "/api/v1/images",
            get(fleet::list_images).post(fleet::import_image),
        )
        .route(
            "/api/v1/images/{digest}",
            axum::routing::delete(retire::delete_image),
        )
        .route(
            "/api/v1/releases",
            get(fleet::list_releases).post(fleet::create_release),
        )
        .route(
            "/api/v1/releases/{id}",
            axum::routing::delete(retire::delete_release),
        )
        .route(
            "/api/v1/deployments",
            get(fleet::list_deployments).post(fleet::create_deployment),
        )
        .route(
            "/api/v1/deployments/{id}",
            axum::routing::delete(fleet::delete_deployment),
        )
        .route(
            "/api/v1/rollouts",
            get(rollouts::list).post(rollouts::create),
        )
        .route("/api/v1/rollouts/preview", post(rollouts::preview))
        .route("/api/v1/rollouts/{id}", get(rollouts::status))
        .route("/api/v1/rollouts/{id}/events", get(rollouts::events))
        .route("/api/v1/rollouts/{id}/webhooks", get(rollouts::webhooks))
        .route("/api/v1/rollouts/{id}/{command}", post(rollouts::command))
        .route(
            "/api/v1/tokens",
            post(admin::create_token).get(admin::list_tokens),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(admin::revoke_token),
        )
        .route("/api/v1/audit", get(admin::audit))
        .route("/api/v1/audit/verify", get(admin::audit_verify))
        .route("/v1/blobs/{digest}", get(blobs::get_blob))
        .route("/v1/deltas/{base}/{target}", get(blobs::get_delta))
        .route("/metrics", get(metrics::scrape))
        .merge(crate::console::router())
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(limits, doors::guard))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}
