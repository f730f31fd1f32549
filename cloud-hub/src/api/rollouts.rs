//! `/api/v1/rollouts`: create (operator), list and status (viewer), and the operator's
//! commands `pause`, `resume`, `approve`, `abort`, `rollback`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Auth, Operator, Viewer};
use super::{ApiError, ApiResult, AppState, JsonBody};
use crate::service::rollout::controller::Command;
use crate::service::rollout::wire::{RolloutCreated, RolloutIn, RolloutStatus, RolloutSummary};
use crate::service::Error;

fn rollout_id(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| Error::Invalid(format!("rollout id {s:?} is not a number")).into())
}

pub(super) async fn list(
    State(st): State<AppState>,
    _: Auth<Viewer>,
) -> ApiResult<Json<Vec<RolloutSummary>>> {
    Ok(Json(st.services.rollouts.list().await?))
}

pub(super) async fn create(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    JsonBody(r): JsonBody<RolloutIn>,
) -> ApiResult<(StatusCode, Json<RolloutCreated>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.services.rollouts.create(&who, r).await?),
    ))
}

pub(super) async fn status(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    Path(id): Path<String>,
) -> ApiResult<Json<RolloutStatus>> {
    Ok(Json(st.services.rollouts.status(rollout_id(&id)?).await?))
}

pub(super) async fn command(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    Path((id, verb)): Path<(String, String)>,
) -> ApiResult<Json<RolloutSummary>> {
    let cmd = match verb.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "approve" => Command::Approve,
        "abort" => Command::Abort,
        "rollback" => Command::Rollback,
        other => {
            return Err(Error::Invalid(format!(
                "unknown command {other:?} (pause, resume, approve, abort, rollback)"
            ))
            .into())
        }
    };
    Ok(Json(
        st.services
            .rollouts
            .command(&who, rollout_id(&id)?, cmd)
            .await?,
    ))
}
