//! `Auth<R>`: the extractor that authenticates the bearer token and checks it has at least the
//! role `R` ([`Viewer`], [`Operator`], [`Admin`]), is neither revoked nor expired, and that its
//! scope covers the route's action (and, for group routes, the group in the path). A refused
//! change is audited (by the registry) under the action the route table below names, and changes
//! nothing. Deployment targets, which come in the body, are checked by the handler.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};

use super::{ApiError, AppState};
use crate::model::{Role, TokenInfo};

/// A role a route requires.
pub trait RequiredRole {
    /// The least role allowed.
    const ROLE: Role;
}

/// Any valid token.
#[derive(Debug)]
pub struct Viewer;
/// Operators and admins.
#[derive(Debug)]
pub struct Operator;
/// Admins only.
#[derive(Debug)]
pub struct Admin;

impl RequiredRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl RequiredRole for Operator {
    const ROLE: Role = Role::Operator;
}
impl RequiredRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// An authenticated caller holding at least role `R`.
#[derive(Debug)]
pub struct Auth<R>(pub TokenInfo, pub PhantomData<R>);

/// The audited action name of a route.
pub fn action(method: &Method, path: &str) -> &'static str {
    let m = method.as_str();
    match (m, path.trim_start_matches("/api/v1")) {
        ("GET", "/devices") => "device.list",
        ("GET", "/devices/{id}") => "device.get",
        ("DELETE", "/devices/{id}") => "device.delete",
        ("PUT", "/devices/{id}/labels") => "device.labels",
        ("PUT" | "DELETE", "/devices/{id}/maintenance") => "device.maintenance",
        ("GET", "/devices/{id}/events") => "device.events",
        ("GET", "/devices/{id}/explain") => "device.explain",
        ("GET", "/fleet/summary") => "fleet.summary",
        ("GET", "/groups") => "group.list",
        ("PUT", "/groups/{name}") => "group.put",
        ("DELETE", "/groups/{name}") => "group.delete",
        ("DELETE", "/images/{digest}") => "image.delete",
        ("DELETE", "/releases/{id}") => "release.delete",
        ("PUT" | "DELETE", "/groups/{name}/maintenance") => "group.maintenance",
        ("GET", "/images") => "image.list",
        ("POST", "/images") => "image.import",
        ("GET", "/releases") => "release.list",
        ("POST", "/releases") => "release.create",
        ("GET", "/deployments") => "deployment.list",
        ("POST", "/deployments") => "deployment.create",
        ("DELETE", "/deployments/{id}") => "deployment.delete",
        ("GET", "/rollouts") => "rollout.list",
        ("POST", "/rollouts") => "rollout.create",
        ("POST", "/rollouts/preview") => "rollout.preview",
        ("GET", "/rollouts/{id}") => "rollout.status",
        ("GET", "/rollouts/{id}/events") => "rollout.events",
        ("GET", "/rollouts/{id}/webhooks") => "rollout.webhooks",
        ("POST", "/rollouts/{id}/{command}") => "rollout.command",
        ("POST", "/tokens") => "token.create",
        ("GET", "/tokens") => "token.list",
        ("DELETE", "/tokens/{id}") => "token.revoke",
        ("GET", "/audit") => "audit.list",
        ("GET", "/audit/verify") => "audit.verify",
        ("POST", "/trust/reload") => "trust.reload",
        _ => "api.call",
    }
}

impl<R: RequiredRole + Send + Sync> FromRequestParts<AppState> for Auth<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing bearer token",
                )
            })?
            .to_string();
        let path = parts
            .extensions
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let action = action(&parts.method, &path);
        let target = RawPathParams::from_request_parts(parts, st)
            .await
            .ok()
            .and_then(|p| p.iter().next().map(|(_, v)| v.to_string()))
            .unwrap_or_else(|| "*".into());
        let who = st
            .services
            .registry
            .authorize(&token, R::ROLE, action, &target)
            .await?;
        Ok(Auth(who, PhantomData))
    }
}
