//! `POST /api/v1/enroll`: the one unauthenticated mutating call. The one-time token inside the
//! request is the credential; a proof-of-possession signature binds it to the device key.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use protocol::enroll::{EnrollRequest, EnrollResponse, MqttCredentials};
use protocol::{DeviceId, RootKeys};

use super::{blocking, resync, ApiError, ApiResult, AppState};

/// A device that asks for no id gets one derived from its key.
fn derive_id(req: &EnrollRequest) -> ApiResult<DeviceId> {
    let kid = req.public_key.kid();
    DeviceId::new(format!("dev-{}", &kid.as_str()[..12])).map_err(|e| ApiError::bad(e.to_string()))
}

pub(super) async fn enroll(
    State(st): State<AppState>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    let req: EnrollRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid enrollment request: {e}")))?;
    if !req.proof_is_valid() {
        return Err(ApiError::bad(
            "proof of possession does not verify for this key and token",
        ));
    }
    if !st.profiles.contains_key(&req.profile) {
        return Err(ApiError::bad(format!(
            "unknown device profile {:?}",
            req.profile
        )));
    }
    if req.agent_version.len() > 64 || req.labels.len() > protocol::limits::MAX_LABELS {
        return Err(ApiError::bad("agent_version or labels out of limits"));
    }
    let id = match req.device_id.clone() {
        Some(id) => id,
        None => derive_id(&req)?,
    };
    let store = st.store.clone();
    let (id2, req2) = (id.clone(), req.clone());
    let password = blocking(move || {
        store
            .enroll_device(
                &req2.token,
                &id2,
                &req2.public_key,
                &req2.profile,
                req2.arch,
                &req2.runtimes,
                &req2.agent_version,
                &req2.labels,
            )
            .map_err(|e| match e {
                crate::store::StoreError::NotFound(_) => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "bad_token",
                    "unknown enrollment token",
                ),
                crate::store::StoreError::Conflict(m) => {
                    ApiError::new(StatusCode::FORBIDDEN, "bad_token", m)
                }
                other => other.into(),
            })
    })
    .await;
    let password = match password {
        Ok(p) => p,
        Err(e) => {
            let _ = st.store.audit(
                "enroll",
                "device.enroll",
                id.as_str(),
                "{}",
                &format!("denied: {}", e.message),
            );
            return Err(e);
        }
    };
    st.store
        .audit(
            "enroll",
            "device.enroll",
            id.as_str(),
            &serde_json::json!({"profile": req.profile}).to_string(),
            "ok",
        )
        .map_err(ApiError::from)?;
    let trust = std::fs::read_to_string(&st.trust_path).ok();
    let root = trust
        .as_deref()
        .and_then(|t| protocol::Envelope::decode(t.as_bytes()).ok())
        .and_then(|e| serde_json::from_slice::<protocol::TrustUpdate>(&e.payload).ok())
        .map(|u| u.root)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "hub has no trust document",
            )
        })?;
    resync(&st).await?;
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            device_id: id.clone(),
            mqtt: MqttCredentials {
                host: st.public_mqtt.0.clone(),
                port: st.public_mqtt.1,
                username: id.to_string(),
                password,
            },
            hub_url: st.public_url.clone(),
            root: RootKeys {
                keys: root.keys,
                threshold: root.threshold,
            },
            trust,
        }),
    ))
}
