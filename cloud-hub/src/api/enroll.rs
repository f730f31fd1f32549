//! `POST /api/v1/enroll`: the one unauthenticated mutating call. The one-time token inside the
//! request is the credential; a proof-of-possession signature binds it to the device key.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use protocol::enroll::{EnrollRequest, EnrollResponse};

use super::{ApiResult, AppState, JsonBody};

pub(super) async fn enroll(
    State(st): State<AppState>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    let resp = st.services.registry.enroll(req).await?;
    Ok((StatusCode::CREATED, Json(resp)))
}
