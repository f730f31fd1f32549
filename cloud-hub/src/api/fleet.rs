//! `/api/v1/groups`, `/images`, `/releases`, `/deployments`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use protocol::MaintenanceWindow;

use super::auth::{Auth, Operator, Viewer};
use super::server::ClientGone;
use super::ApiError;
use super::{ApiResult, AppState, JsonBody, QueryArgs, IMAGE_BODY_LIMIT};
use crate::model::{DeploymentRow, GroupRow, ImageRow, ReleaseRow};
use crate::service::registry::MaintenanceScope;
use crate::types::{
    DeploymentCreated, DeploymentDeleted, DeploymentIn, GroupIn, ImportQuery, ImportedImage,
    MaintenanceSet, ReleaseCreated, ReleaseIn,
};

pub(super) async fn list_groups(
    State(st): State<AppState>,
    _: Auth<Viewer>,
) -> ApiResult<Json<Vec<GroupRow>>> {
    Ok(Json(st.services.registry.groups().await?))
}

pub(super) async fn put_group(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(name): Path<String>,
    JsonBody(g): JsonBody<GroupIn>,
) -> ApiResult<Json<GroupRow>> {
    Ok(Json(st.services.registry.put_group(&who, name, g).await?))
}

pub(super) async fn set_group_maintenance(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(name): Path<String>,
    JsonBody(window): JsonBody<MaintenanceWindow>,
) -> ApiResult<Json<MaintenanceSet>> {
    let r = &st.services.registry;
    Ok(Json(
        r.set_maintenance(&who, MaintenanceScope::Group, name, Some(window))
            .await?,
    ))
}

pub(super) async fn clear_group_maintenance(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(name): Path<String>,
) -> ApiResult<Json<MaintenanceSet>> {
    let r = &st.services.registry;
    Ok(Json(
        r.set_maintenance(&who, MaintenanceScope::Group, name, None)
            .await?,
    ))
}

pub(super) async fn list_images(
    State(st): State<AppState>,
    _: Auth<Viewer>,
) -> ApiResult<Json<Vec<ImageRow>>> {
    Ok(Json(st.services.images.list().await?))
}

/// `POST /api/v1/images?name=&arch=&format=tar|docker|oci` with the archive as the body.
pub(super) async fn import_image(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    QueryArgs(q): QueryArgs<ImportQuery>,
    gone: Option<Extension<ClientGone>>,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<ImportedImage>)> {
    // Credentials (above) and arguments are checked before a byte of the upload is read.
    st.services.images.check_query(&q)?;
    let idle = std::time::Duration::from_secs(st.limits.http_body_idle_secs);
    let images = &st.services.images;
    let upload =
        super::upload::receive(body, images.blobs_dir(), IMAGE_BODY_LIMIT as u64, idle).await?;
    // Dropped with this future, or when the client hangs up, which stops the import.
    let cancel = super::upload::CancelOnDrop::default();
    let import = images.import(&who, q, upload, cancel.flag());
    let row = match gone {
        Some(Extension(ClientGone(gone))) => tokio::select! {
            r = import => r?,
            _ = gone.cancelled() => {
                drop(cancel);
                return Err(ApiError::bad("the client went away"));
            }
        },
        None => import.await?,
    };
    Ok((StatusCode::CREATED, Json(row)))
}

pub(super) async fn list_releases(
    State(st): State<AppState>,
    _: Auth<Viewer>,
) -> ApiResult<Json<Vec<ReleaseRow>>> {
    Ok(Json(st.services.deploy.releases().await?))
}

pub(super) async fn create_release(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    JsonBody(r): JsonBody<ReleaseIn>,
) -> ApiResult<(StatusCode, Json<ReleaseCreated>)> {
    let r = st.services.images.apply_image_configs(r).await?;
    let created = st.services.deploy.create_release(&who, r).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn list_deployments(
    State(st): State<AppState>,
    _: Auth<Viewer>,
) -> ApiResult<Json<Vec<DeploymentRow>>> {
    Ok(Json(st.services.deploy.deployments().await?))
}

pub(super) async fn create_deployment(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    JsonBody(d): JsonBody<DeploymentIn>,
) -> ApiResult<(StatusCode, Json<DeploymentCreated>)> {
    let target = crate::service::deploy::target_of(&d)?;
    (st.services.registry)
        .require_target(&who, "deployment.create", &target)
        .await?;
    let created = st.services.deploy.create_deployment(&who, d).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn delete_deployment(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(id): Path<u64>,
) -> ApiResult<Json<DeploymentDeleted>> {
    if who.scope.groups.is_some() {
        let all = st.services.deploy.deployments().await?;
        let d = all
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| crate::service::Error::NotFound(format!("deployment {id}")))?;
        (st.services.registry)
            .require_target(&who, "deployment.delete", &d.target)
            .await?;
    }
    Ok(Json(st.services.deploy.delete_deployment(&who, id).await?))
}
