//! `/api/v1/rollouts`: create (operator), list, status and the progress stream (viewer), and
//! the operator's commands `pause`, `resume`, `approve`, `abort`, `rollback`.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;

use super::auth::{Auth, Operator, Viewer};
use super::{ApiError, ApiResult, AppState, JsonBody};
use crate::model::AuditEntry;
use crate::service::rollout::controller::Command;
use crate::service::rollout::wire::{
    Explanation, Preview, RolloutCreated, RolloutIn, RolloutStatus, RolloutSummary,
};
use crate::service::Error;
use crate::store::DeliveryRow;

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
    // A rollout is a deployment: a group-scoped token stages only to its own groups.
    let target = crate::service::deploy::target_of(&crate::types::DeploymentIn {
        release: r.release,
        group: r.group.clone(),
        selector: r.selector.clone(),
        devices: r.devices.clone(),
        priority: r.priority,
    })?;
    (st.services.registry)
        .require_target(&who, "rollout.create", &target)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(st.services.rollouts.create(&who, r).await?),
    ))
}

pub(super) async fn preview(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    JsonBody(r): JsonBody<RolloutIn>,
) -> ApiResult<Json<Preview>> {
    Ok(Json(st.services.rollouts.preview(r).await?))
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
    let id = rollout_id(&id)?;
    if who.scope.groups.is_some() {
        // Only a rollout whose deployment targets one of the token's groups.
        let status = st.services.rollouts.status(id).await?;
        let deployment = status.rollout.deployment;
        let all = st.services.deploy.deployments().await?;
        let d = all
            .iter()
            .find(|d| d.id == deployment)
            .ok_or_else(|| Error::NotFound(format!("deployment {deployment}")))?;
        (st.services.registry)
            .require_target(&who, "rollout.command", &d.target)
            .await?;
    }
    Ok(Json(st.services.rollouts.command(&who, id, cmd).await?))
}

pub(super) async fn webhooks(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<DeliveryRow>>> {
    Ok(Json(
        st.services.rollouts.deliveries(rollout_id(&id)?).await?,
    ))
}

pub(super) async fn explain(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    Path(device): Path<String>,
) -> ApiResult<Json<Explanation>> {
    Ok(Json(st.services.rollouts.explain(device).await?))
}

/// How often the progress stream looks for new history.
const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /api/v1/rollouts/{id}/events`: the rollout's history, then its progress as it happens,
/// as server-sent events (`id` = audit entry id, `event` = action, `data` = the entry). A
/// client that reconnects with `Last-Event-ID` continues after what it saw. The stream ends
/// when the client leaves (it is dropped with the connection).
pub(super) async fn events(
    State(st): State<AppState>,
    _: Auth<Viewer>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = rollout_id(&id)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .unwrap_or(0u64);
    let first = st.services.rollouts.history(id, after).await?;
    let svc = st.services.rollouts.clone();
    let queue: VecDeque<AuditEntry> = first.into();
    let stream = futures_util::stream::unfold(
        (svc, after, queue),
        move |(svc, mut after, mut queue)| async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    after = e.id;
                    let detail: serde_json::Value =
                        serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null);
                    let data = serde_json::json!({
                        "id": e.id, "time": e.time, "actor": e.actor, "action": e.action,
                        "detail": detail,
                    });
                    let ev = Event::default()
                        .id(e.id.to_string())
                        .event(e.action)
                        .data(data.to_string());
                    return Some((Ok(ev), (svc, after, queue)));
                }
                match svc.history(id, after).await {
                    Ok(more) if !more.is_empty() => queue.extend(more),
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(e) => {
                        tracing::warn!(rollout = id, error = %e, "progress stream ends");
                        return None;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
