//! `DELETE` of a group, a release or an image: refused with a 409 naming what still uses it.

use axum::extract::{Path, State};
use axum::Json;

use super::auth::{Auth, Operator};
use super::{ApiResult, AppState};
use crate::types::{Deleted, ImageDeleted};

pub(super) async fn delete_group(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(name): Path<String>,
) -> ApiResult<Json<Deleted>> {
    Ok(Json(st.services.registry.delete_group(&who, name).await?))
}

pub(super) async fn delete_release(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Deleted>> {
    Ok(Json(st.services.deploy.delete_release(&who, id).await?))
}

pub(super) async fn delete_image(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(digest): Path<String>,
) -> ApiResult<Json<ImageDeleted>> {
    Ok(Json(st.services.images.delete(&who, digest).await?))
}
