//! `/api/v1/tokens`, `/audit`, `/trust`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::auth::{Admin, Auth, Viewer};
use super::{ApiError, ApiResult, AppState, JsonBody, QueryArgs};
use crate::model::{ApiTokenRow, AuditEntry};
use crate::service::Error;
use crate::types::{AuditVerified, Page, TokenCreated, TokenIn, TokenRevoked, TrustReloaded};

/// Any valid token may ask; the registry checks the role the token kind needs.
pub(super) async fn create_token(
    State(st): State<AppState>,
    Auth(who, _): Auth<Viewer>,
    JsonBody(t): JsonBody<TokenIn>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let token = st.services.registry.create_token(&who, t).await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token })))
}

/// `GET /api/v1/tokens` (admin): every API token, without secrets.
pub(super) async fn list_tokens(
    State(st): State<AppState>,
    _: Auth<Admin>,
) -> ApiResult<Json<Vec<ApiTokenRow>>> {
    Ok(Json(st.services.registry.tokens().await?))
}

/// `DELETE /api/v1/tokens/{id}` (admin): the token is refused from its next call on.
pub(super) async fn revoke_token(
    State(st): State<AppState>,
    Auth(who, _): Auth<Admin>,
    Path(id): Path<u64>,
) -> ApiResult<Json<TokenRevoked>> {
    let token = st.services.registry.revoke_token(&who, id).await?;
    Ok(Json(TokenRevoked { token }))
}

pub(super) async fn audit(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    QueryArgs(page): QueryArgs<Page>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(st.services.registry.audit_entries(page).await?))
}

pub(super) async fn audit_verify(
    State(st): State<AppState>,
    _: Auth<Viewer>,
) -> ApiResult<Json<AuditVerified>> {
    Ok(Json(st.services.registry.verify_audit().await?))
}

/// The current signed trust document (public: devices fetch it to pin).
pub(super) async fn trust(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let text = st.services.publisher.trust_text()?;
    let doc = serde_json::from_str(&text)
        .map_err(|e| ApiError::from(Error::Internal(format!("trust document: {e}"))))?;
    Ok(Json(doc))
}

/// `POST /api/v1/trust/reload` (admin): see `Publisher::reload_trust`.
pub(super) async fn reload_trust(
    State(st): State<AppState>,
    Auth(who, _): Auth<Admin>,
) -> ApiResult<Json<TrustReloaded>> {
    Ok(Json(st.services.publisher.reload_trust(&who.name).await?))
}
