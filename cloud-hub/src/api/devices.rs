//! `/api/v1/devices`: list (filtered and paged, [`DeviceQuery`]), show, labels, maintenance window, events; the fleet summary.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use protocol::{Event, MaintenanceWindow};

use super::auth::{Auth, Operator, Viewer};
use super::device_query::DeviceQuery;
use super::{ApiResult, AppState, JsonBody, QueryArgs};
use crate::model::{DeviceRow, FleetSummary};
use crate::service::registry::MaintenanceScope;
use crate::types::{DeviceDeleted, LabelsSet, MaintenanceSet, Page};

pub(super) async fn list(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    QueryArgs(q): QueryArgs<DeviceQuery>,
) -> ApiResult<([(&'static str, String); 1], Json<Vec<DeviceRow>>)> {
    let filter = q.parse()?;
    let all = match filter.prefilter() {
        Some((id, labels)) => st.services.registry.devices_containing(id, labels).await?,
        None => st.services.registry.devices().await?,
    };
    let (total, page) = filter.apply(all);
    Ok(([("x-total-count", total.to_string())], Json(page)))
}

pub(super) async fn summary(
    State(st): State<AppState>,
    _: Auth<Viewer>,
) -> ApiResult<Json<FleetSummary>> {
    Ok(Json(st.services.publisher.summary().await?))
}

pub(super) async fn get(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceRow>> {
    Ok(Json(st.services.registry.device(id).await?))
}

/// `DELETE /api/v1/devices/{id}` (operator): the device is gone and cut off at once.
pub(super) async fn delete(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceDeleted>> {
    Ok(Json(st.services.registry.delete_device(&who, id).await?))
}

pub(super) async fn set_labels(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(id): Path<String>,
    JsonBody(labels): JsonBody<BTreeMap<String, String>>,
) -> ApiResult<Json<LabelsSet>> {
    Ok(Json(
        st.services.registry.set_labels(&who, id, labels).await?,
    ))
}

pub(super) async fn set_maintenance(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(id): Path<String>,
    JsonBody(window): JsonBody<MaintenanceWindow>,
) -> ApiResult<Json<MaintenanceSet>> {
    let r = &st.services.registry;
    Ok(Json(
        r.set_maintenance(&who, MaintenanceScope::Device, id, Some(window))
            .await?,
    ))
}

pub(super) async fn clear_maintenance(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path(id): Path<String>,
) -> ApiResult<Json<MaintenanceSet>> {
    let r = &st.services.registry;
    Ok(Json(
        r.set_maintenance(&who, MaintenanceScope::Device, id, None)
            .await?,
    ))
}

pub(super) async fn events(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    Path(id): Path<String>,
    QueryArgs(page): QueryArgs<Page>,
) -> ApiResult<Json<Vec<Event>>> {
    Ok(Json(st.services.registry.events(id, page).await?))
}
