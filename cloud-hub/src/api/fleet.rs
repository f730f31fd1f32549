//! Devices, groups, images, releases, deployments, tokens, events and audit.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use protocol::{
    Arch, CronExpr, Digest, HealthCheck, ImageRef, Resources, RestartPolicy, RuntimeKind, Workload,
    WorkloadName,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, blocking, resync, ApiError, ApiResult, AppState};
use crate::images::{self, ImportSource};
use crate::releases::Target;
use crate::store::{unix_now, GroupRow, ImageRow, Role};

pub(super) async fn trust(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let text = std::fs::read_to_string(&st.trust_path).map_err(|e| ApiError::bad(e.to_string()))?;
    Ok(Json(
        serde_json::from_str(&text).map_err(|e| ApiError::bad(e.to_string()))?,
    ))
}

/// `POST /api/v1/trust/reload` (admin): after `fleetctl keys rotate`, `recover` or
/// `rotate-root`, load the new online key and trust document, publish the trust retained, and
/// re-sign every device's state with the new key (fresh revisions), so devices move to the new
/// key without a hub restart.
pub(super) async fn reload_trust(
    State(st): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Json<Value>> {
    let who = authorize(&st, &h, Role::Admin, "trust.reload", "*")?;
    let keys = st.keys.clone();
    let (update, env, key) = blocking(move || {
        let (update, env) = keys
            .current_trust()
            .map_err(|e| ApiError::bad(format!("{e:#}")))?;
        let key =
            crate::keys::read_key(&keys.online()).map_err(|e| ApiError::bad(format!("{e:#}")))?;
        if !update.signing_keys.iter().any(|k| k.kid == key.kid()) {
            return Err(ApiError::bad("online.key is not listed in trust.json"));
        }
        Ok((update, env, key))
    })
    .await?;
    let store = st.store.clone();
    let text = String::from_utf8_lossy(&env).into_owned();
    blocking(move || Ok(store.set_meta("trust_envelope", &text)?)).await?;
    *st.key.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    st.link
        .publish_retained(protocol::topics::TRUST.to_string(), env)
        .await;
    // Every state is signed again: one signed by a revoked key would be refused on re-delivery.
    // After a recovery, revisions continue above the floor root set for every device.
    let store = st.store.clone();
    let floor = update.revision_floor;
    blocking(move || {
        store.forget_desired_digests()?;
        if let Some(f) = floor {
            store.raise_revision_counter(f)?;
        }
        Ok(())
    })
    .await?;
    let changed = resync(&st).await?;
    st.store.audit(
        &who.name,
        "trust.reload",
        &update.version.to_string(),
        &json!({"resigned": changed.len()}).to_string(),
        "ok",
    )?;
    Ok(Json(
        json!({"version": update.version, "resigned": changed}),
    ))
}

pub(super) async fn list_devices(
    State(st): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "device.list", "*")?;
    let store = st.store.clone();
    let d = blocking(move || Ok(store.devices()?)).await?;
    Ok(Json(json!(d)))
}

pub(super) async fn get_device(
    State(st): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "device.get", &id)?;
    let store = st.store.clone();
    let d = blocking(move || Ok(store.device(&id)?)).await?;
    Ok(Json(json!(d)))
}

pub(super) async fn set_labels(
    State(st): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(labels): Json<BTreeMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let who = authorize(&st, &h, Role::Operator, "device.labels", &id)?;
    if labels.len() > protocol::limits::MAX_LABELS
        || labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 256)
    {
        return Err(ApiError::bad(
            "labels out of limits (64 labels, keys 1-128 bytes, values up to 256)",
        ));
    }
    let store = st.store.clone();
    let (id2, l2) = (id.clone(), labels.clone());
    blocking(move || Ok(store.set_labels(&id2, &l2)?)).await?;
    st.store.audit(
        &who.name,
        "device.labels",
        &id,
        &json!(labels).to_string(),
        "ok",
    )?;
    resync(&st).await?;
    Ok(Json(json!({"device": id, "labels": labels})))
}

#[derive(Deserialize)]
pub(super) struct Page {
    limit: Option<u32>,
    before: Option<u64>,
    after: Option<u64>,
}

pub(super) async fn device_events(
    State(st): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(p): Query<Page>,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "device.events", &id)?;
    let store = st.store.clone();
    let limit = p.limit.unwrap_or(100).min(1000);
    let ev = blocking(move || Ok(store.events(&id, limit, p.before)?)).await?;
    Ok(Json(json!(ev)))
}

pub(super) async fn list_groups(
    State(st): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "group.list", "*")?;
    let store = st.store.clone();
    Ok(Json(json!(blocking(move || Ok(store.groups()?)).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupIn {
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

pub(super) async fn put_group(
    State(st): State<AppState>,
    h: HeaderMap,
    Path(name): Path<String>,
    Json(g): Json<GroupIn>,
) -> ApiResult<Json<Value>> {
    let who = authorize(&st, &h, Role::Operator, "group.put", &name)?;
    protocol::DeviceId::new(name.clone()).map_err(|e| ApiError::bad(format!("group name: {e}")))?;
    let selector = g
        .selector
        .as_deref()
        .map(crate::releases::parse_selector)
        .transpose()
        .map_err(ApiError::bad)?;
    for m in &g.members {
        protocol::DeviceId::new(m.clone()).map_err(|e| ApiError::bad(format!("member: {e}")))?;
    }
    let row = GroupRow {
        name: name.clone(),
        selector,
        members: g.members,
    };
    let store = st.store.clone();
    let r2 = row.clone();
    blocking(move || Ok(store.put_group(&r2)?)).await?;
    st.store
        .audit(&who.name, "group.put", &name, &json!(row).to_string(), "ok")?;
    resync(&st).await?;
    Ok(Json(json!(row)))
}

pub(super) async fn list_images(
    State(st): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "image.list", "*")?;
    let store = st.store.clone();
    Ok(Json(json!(blocking(move || Ok(store.images()?)).await?)))
}

#[derive(Deserialize)]
pub(super) struct ImportQuery {
    name: String,
    arch: Option<Arch>,
    format: Option<String>,
}

/// `POST /api/v1/images?name=&arch=&format=tar|docker|oci` with the archive as the body.
pub(super) async fn import_image(
    State(st): State<AppState>,
    h: HeaderMap,
    Query(q): Query<ImportQuery>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = authorize(&st, &h, Role::Operator, "image.import", &q.name)?;
    if q.name.is_empty() || q.name.len() > 128 {
        return Err(ApiError::bad("image name must be 1-128 bytes"));
    }
    let arch = q
        .arch
        .or_else(Arch::host)
        .ok_or_else(|| ApiError::bad("arch required"))?;
    let blobs = st.blobs_dir.clone();
    let format = q.format.clone().unwrap_or_else(|| "tar".into());
    let info = blocking(move || {
        let tmp =
            tempfile::NamedTempFile::new_in(&blobs).map_err(|e| ApiError::bad(e.to_string()))?;
        std::fs::write(tmp.path(), &body).map_err(|e| ApiError::bad(e.to_string()))?;
        let src = match format.as_str() {
            "tar" => ImportSource::Tar(tmp.path().into()),
            "docker" => ImportSource::DockerSave(tmp.path().into()),
            "oci" => ImportSource::OciLayout(tmp.path().into()),
            other => {
                return Err(ApiError::bad(format!(
                    "unknown format {other:?} (tar, docker, oci)"
                )))
            }
        };
        images::import(&blobs, &src).map_err(|e| ApiError::bad(format!("import failed: {e:#}")))
    })
    .await?;
    let row = ImageRow {
        digest: info.digest.to_string(),
        name: q.name.clone(),
        size: info.size,
        compressed_size: info.compressed_size,
        arch,
        created_at: unix_now(),
    };
    let store = st.store.clone();
    let r2 = row.clone();
    blocking(move || Ok(store.put_image(&r2)?)).await?;
    st.store.audit(
        &who.name,
        "image.import",
        &row.digest,
        &json!(row).to_string(),
        "ok",
    )?;
    Ok((StatusCode::CREATED, Json(json!(row))))
}

pub(super) async fn list_releases(
    State(st): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "release.list", "*")?;
    let store = st.store.clone();
    Ok(Json(json!(blocking(move || Ok(store.releases()?)).await?)))
}

/// A workload as an operator writes it: the image is named by digest; the hub fills in its
/// size and architecture from the image record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkloadIn {
    name: WorkloadName,
    image: Digest,
    #[serde(default = "default_runtime")]
    runtime: RuntimeKind,
    command: Vec<String>,
    #[serde(default, deserialize_with = "protocol::json::unique_string_map")]
    env: BTreeMap<String, String>,
    #[serde(default)]
    resources: Resources,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default)]
    health: Option<HealthCheck>,
    #[serde(default)]
    schedule: Option<CronExpr>,
    #[serde(default)]
    health_deadline_secs: Option<u64>,
    #[serde(default)]
    stability_window_secs: Option<u64>,
}

fn default_runtime() -> RuntimeKind {
    RuntimeKind::Process
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReleaseIn {
    name: String,
    version: String,
    workloads: Vec<WorkloadIn>,
}

pub(super) async fn create_release(
    State(st): State<AppState>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = authorize(&st, &h, Role::Operator, "release.create", "*")?;
    let r: ReleaseIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid release: {e}")))?;
    if r.name.is_empty() || r.name.len() > 128 || r.version.is_empty() || r.version.len() > 128 {
        return Err(ApiError::bad(
            "release name and version must be 1-128 bytes",
        ));
    }
    if r.workloads.len() > protocol::limits::MAX_WORKLOADS {
        return Err(ApiError::bad("too many workloads"));
    }
    let store = st.store.clone();
    let images = blocking(move || Ok(store.images()?)).await?;
    let mut workloads = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for w in r.workloads {
        if !names.insert(w.name.clone()) {
            return Err(ApiError::bad(format!("duplicate workload {}", w.name)));
        }
        let img = images
            .iter()
            .find(|i| i.digest == w.image.to_string())
            .ok_or_else(|| {
                ApiError::bad(format!("workload {}: unknown image {}", w.name, w.image))
            })?;
        let wl = Workload {
            name: w.name,
            image: ImageRef {
                digest: w.image,
                size: img.size,
                arch: img.arch,
            },
            runtime: w.runtime,
            command: w.command,
            env: w.env,
            resources: w.resources,
            restart: w.restart,
            health: w.health,
            schedule: w.schedule,
            health_deadline_secs: w.health_deadline_secs.unwrap_or(60),
            stability_window_secs: w
                .stability_window_secs
                .unwrap_or(protocol::DEFAULT_STABILITY_WINDOW_SECS),
        };
        wl.validate().map_err(ApiError::bad)?;
        workloads.push(wl);
    }
    let store = st.store.clone();
    let (n, v, wls) = (r.name.clone(), r.version.clone(), workloads.clone());
    let id = blocking(move || Ok(store.create_release(&n, &v, &wls)?)).await?;
    st.store.audit(
        &who.name,
        "release.create",
        &format!("{} {}", r.name, r.version),
        &json!({"id": id}).to_string(),
        "ok",
    )?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": r.name, "version": r.version, "workloads": workloads})),
    ))
}

pub(super) async fn list_deployments(
    State(st): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "deployment.list", "*")?;
    let store = st.store.clone();
    Ok(Json(json!(
        blocking(move || Ok(store.deployments()?)).await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeploymentIn {
    release: u64,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    devices: Option<Vec<String>>,
    #[serde(default)]
    priority: i64,
}

pub(super) async fn create_deployment(
    State(st): State<AppState>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = authorize(&st, &h, Role::Operator, "deployment.create", "*")?;
    let d: DeploymentIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid deployment: {e}")))?;
    let target = match (d.group, d.selector, d.devices) {
        (Some(g), None, None) => Target::Group(g),
        (None, Some(s), None) => {
            Target::Selector(crate::releases::parse_selector(&s).map_err(ApiError::bad)?)
        }
        (None, None, Some(ids)) => Target::Devices(ids),
        _ => {
            return Err(ApiError::bad(
                "give exactly one of group, selector, devices",
            ))
        }
    };
    let store = st.store.clone();
    let (releases, devices, groups) =
        blocking(move || Ok((store.releases()?, store.devices()?, store.groups()?))).await?;
    let release = releases
        .iter()
        .find(|r| r.id == d.release)
        .ok_or_else(|| ApiError::bad(format!("unknown release {}", d.release)))?;
    if let Target::Group(g) = &target {
        if !groups.iter().any(|x| &x.name == g) {
            return Err(ApiError::bad(format!("unknown group {g}")));
        }
    }
    // Refuse, naming the device and the reason, a deployment that does not fit a target.
    for dev in devices
        .iter()
        .filter(|dev| crate::releases::target_matches(&target, dev, &groups))
    {
        let profile = st.profiles.get(&dev.profile).ok_or_else(|| {
            ApiError::bad(format!(
                "device {} has unknown profile {}",
                dev.id, dev.profile
            ))
        })?;
        if let Err(m) = profile.check_fit(&release.workloads, Some(&dev.runtimes)) {
            let _ = st.store.audit(
                &who.name,
                "deployment.create",
                &format!("release {}", d.release),
                "{}",
                &format!("error: {}: {m}", dev.id),
            );
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "does_not_fit",
                format!("device {}: {m}", dev.id),
            ));
        }
    }
    let store = st.store.clone();
    let t2 = target.clone();
    let id = blocking(move || Ok(store.create_deployment(d.release, &t2, d.priority)?)).await?;
    st.store.audit(
        &who.name,
        "deployment.create",
        &id.to_string(),
        &json!({"release": d.release, "target": target, "priority": d.priority}).to_string(),
        "ok",
    )?;
    let changed = resync(&st).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "published": changed})),
    ))
}

pub(super) async fn delete_deployment(
    State(st): State<AppState>,
    h: HeaderMap,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    let who = authorize(
        &st,
        &h,
        Role::Operator,
        "deployment.delete",
        &id.to_string(),
    )?;
    let store = st.store.clone();
    blocking(move || Ok(store.delete_deployment(id)?)).await?;
    st.store
        .audit(&who.name, "deployment.delete", &id.to_string(), "{}", "ok")?;
    let changed = resync(&st).await?;
    Ok(Json(json!({"deleted": id, "published": changed})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenIn {
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

pub(super) async fn create_token(
    State(st): State<AppState>,
    h: HeaderMap,
    Json(t): Json<TokenIn>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (need, action) = match t.kind.as_str() {
        "api" => (Role::Admin, "token.create"),
        "enroll" => (Role::Operator, "enroll_token.create"),
        other => {
            return Err(ApiError::bad(format!(
                "unknown token kind {other:?} (api, enroll)"
            )))
        }
    };
    let who = authorize(&st, &h, need, action, "*")?;
    let store = st.store.clone();
    let secret = match t.kind.as_str() {
        "api" => {
            let name = t
                .name
                .clone()
                .ok_or_else(|| ApiError::bad("api tokens need a name"))?;
            let role = t
                .role
                .ok_or_else(|| ApiError::bad("api tokens need a role"))?;
            blocking(move || Ok(store.create_api_token(&name, role)?)).await?
        }
        _ => {
            let ttl = t.ttl_secs.unwrap_or(24 * 3600).clamp(1, 365 * 86_400);
            let labels = t.labels.clone();
            blocking(move || Ok(store.create_enroll_token(&labels, ttl)?)).await?
        }
    };
    st.store.audit(
        &who.name,
        action,
        t.name.as_deref().unwrap_or("-"),
        &json!({"role": t.role, "labels": t.labels}).to_string(),
        "ok",
    )?;
    Ok((StatusCode::CREATED, Json(json!({"token": secret}))))
}

pub(super) async fn audit(
    State(st): State<AppState>,
    h: HeaderMap,
    Query(p): Query<Page>,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "audit.list", "*")?;
    let store = st.store.clone();
    let limit = p.limit.unwrap_or(100).min(1000);
    let after = p.after.unwrap_or(0);
    Ok(Json(json!(
        blocking(move || Ok(store.audit_entries(after, limit)?)).await?
    )))
}

pub(super) async fn audit_verify(
    State(st): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorize(&st, &h, Role::Viewer, "audit.verify", "*")?;
    let store = st.store.clone();
    Ok(Json(
        match blocking(move || Ok(store.verify_audit()?)).await? {
            Ok(n) => json!({"ok": true, "entries": n}),
            Err(id) => json!({"ok": false, "first_bad_entry": id}),
        },
    ))
}
