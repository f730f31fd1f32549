//! The OpenAPI 3 document for `/api/v1`, served at `/api/v1/openapi.json`. The schemas of
//! every request and response body are generated (`utoipa`) from the very types the handlers
//! and `fleetctl` use (`crate::types`, `crate::model`); the operations name them.

use axum::Json;
use serde_json::{json, Value};
use utoipa::OpenApi as _;

use crate::images::ImageConfig;
use crate::model::{
    ApiTokenRow, AuditEntry, DeploymentRow, DeviceRow, FleetSummary, GroupRow, ImageRow,
    MaintenanceWindowSchema, PullTotals, Refused, ReleaseRow, Role, Target, TokenScope,
};
use crate::service::rollout::controller::{Health, Stage};
use crate::service::rollout::plan::{
    Budget, OfflineAfterDeadline, OnFailure, PhaseSpec, Plan, Select,
};
use crate::service::rollout::wire::{
    Candidate, ClassPreview, Explanation, ImageDownload, PhaseStatus, Preview, RolloutCreated,
    RolloutDevice, RolloutIn, RolloutStatus, RolloutSummary, Unfit,
};
use crate::store::DeliveryRow;
use crate::types::{
    AuditVerified, Deleted, DeploymentCreated, DeploymentDeleted, DeploymentIn, DeviceDeleted,
    GroupIn, ImageDeleted, ImportedImage, LabelsSet, MaintenanceSet, ReleaseCreated, ReleaseIn,
    TokenCreated, TokenIn, TokenRevoked, TrustReloaded, WorkloadIn,
};

#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    ApiTokenRow,
    AuditEntry,
    AuditVerified,
    Budget,
    Candidate,
    ClassPreview,
    Deleted,
    DeploymentCreated,
    DeploymentDeleted,
    DeploymentIn,
    DeploymentRow,
    DeliveryRow,
    DeviceDeleted,
    DeviceRow,
    Explanation,
    FleetSummary,
    GroupIn,
    GroupRow,
    Health,
    ImageDownload,
    ImageConfig,
    ImageDeleted,
    ImageRow,
    ImportedImage,
    LabelsSet,
    MaintenanceSet,
    MaintenanceWindowSchema,
    OfflineAfterDeadline,
    OnFailure,
    PhaseSpec,
    PhaseStatus,
    Plan,
    Preview,
    PullTotals,
    Refused,
    ReleaseCreated,
    ReleaseIn,
    ReleaseRow,
    Role,
    RolloutCreated,
    RolloutDevice,
    RolloutIn,
    RolloutStatus,
    RolloutSummary,
    Select,
    Stage,
    Target,
    TokenCreated,
    TokenIn,
    TokenRevoked,
    TokenScope,
    TrustReloaded,
    Unfit,
    WorkloadIn
)))]
struct Schemas;

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn list(name: &str) -> Value {
    json!({"type": "array", "items": schema(name)})
}

fn body(s: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": s}}})
}

/// An operation needing `role`, answering `ok` with `resp`, taking `req` as its body.
fn op(summary: &str, role: &str, req: Option<Value>, ok: u16, resp: Value) -> Value {
    let mut o = json!({
        "summary": summary,
        "description": format!("Requires the {role} role."),
        "security": [{"bearer": []}],
        "responses": {
            ok.to_string(): {"description": "OK", "content": {"application/json": {"schema": resp}}},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "500": {"$ref": "#/components/responses/Error"}
        }
    });
    if let Some(r) = req {
        o["requestBody"] = body(r);
    }
    o
}

/// The document.
pub fn spec() -> Value {
    let generated = serde_json::to_value(Schemas::openapi()).unwrap_or(Value::Null);
    let mut schemas = generated["components"]["schemas"].clone();
    schemas["Error"] = json!({"type": "object", "required": ["error", "code"],
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}}});
    let labels = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let object = json!({"type": "object"});
    let mut deploy = op(
        "Deploy a release to a group, selector or devices (exactly one)",
        "operator",
        Some(schema("DeploymentIn")),
        201,
        schema("DeploymentCreated"),
    );
    deploy["responses"]["422"] = json!({"$ref": "#/components/responses/Error"});
    let mut import = op(
        "Import an image (body: tar, docker save or OCI layout tar; format detected)",
        "operator",
        None,
        201,
        schema("ImportedImage"),
    );
    import["parameters"] = json!([
        {"name": "name", "in": "query", "required": true, "schema": {"type": "string"}},
        {"name": "arch", "in": "query", "required": false, "schema": {"type": "string"}},
        {"name": "format", "in": "query", "required": false, "schema": {"type": "string", "enum": ["tar", "docker", "oci"]}}
    ]);
    import["requestBody"] = json!({"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}});
    import["responses"]["409"] = json!({"$ref": "#/components/responses/Error"});
    let mut stage = op(
        "Create a rollout: a deployment taken through phases (preset or custom), with thresholds, budget and policy; nothing changes until its first phase is admitted",
        "operator",
        Some(schema("RolloutIn")),
        201,
        schema("RolloutCreated"),
    );
    stage["responses"]["422"] = json!({"$ref": "#/components/responses/Error"});
    let mut command = op(
        "Pause, resume, approve, abort or roll back a rollout (409 when its stage does not allow it)",
        "operator",
        None,
        200,
        schema("RolloutSummary"),
    );
    command["parameters"] = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
        {"name": "command", "in": "path", "required": true, "schema": {"type": "string", "enum": ["pause", "resume", "approve", "abort", "rollback"]}}
    ]);
    command["responses"]["409"] = json!({"$ref": "#/components/responses/Error"});
    let mut sse = op(
        "A rollout's history, then its progress as it happens: server-sent events (id = audit entry id, event = action, data = the entry as JSON); resume with Last-Event-ID",
        "viewer",
        None,
        200,
        schema("AuditEntry"),
    );
    sse["responses"]["200"] = json!({"description": "text/event-stream",
        "content": {"text/event-stream": {"schema": {"type": "string"}}}});
    sse["parameters"] = json!([
        {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "integer"}}
    ]);
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "fleet hub API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "device": {"type": "http", "scheme": "basic"}
            },
            "schemas": schemas,
            "responses": {
                "Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        },
        "paths": {
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}},
            "/api/v1/enroll": {"post": {"summary": "Enroll a device with a one-time token (protocol EnrollRequest → EnrollResponse)",
                "requestBody": body(object.clone()),
                "responses": {"201": {"description": "Enrolled", "content": {"application/json": {"schema": object.clone()}}},
                    "400": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}}}},
            "/api/v1/trust": {"get": {"summary": "The current signed trust document", "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": object.clone()}}}}}},
            "/api/v1/trust/reload": {"post": op("Load a rotated online key and trust document, publish it, re-sign every state", "admin", None, 200, schema("TrustReloaded"))},
            "/api/v1/devices": {"get": op("List devices, ordered by id; query q (substring of id or key=value label), label (key=value), state (online, offline, converged, converging, deferred, failed, idle, stale, unreported), profile, limit (1-1000), offset; header x-total-count is the number matched", "viewer", None, 200, list("DeviceRow"))},
            "/api/v1/devices/{id}": {"get": op("One device", "viewer", None, 200, schema("DeviceRow")),
                "delete": op("Delete a device: its state and broker credentials go, its live session is dropped", "operator", None, 200, schema("DeviceDeleted"))},
            "/api/v1/devices/{id}/labels": {"put": op("Replace a device's labels", "operator", Some(labels), 200, schema("LabelsSet"))},
            "/api/v1/devices/{id}/maintenance": {
                "put": op("Set a device's maintenance window; it wins over its groups'", "operator", Some(schema("MaintenanceWindowSchema")), 200, schema("MaintenanceSet")),
                "delete": op("Clear a device's maintenance window", "operator", None, 200, schema("MaintenanceSet"))},
            "/api/v1/devices/{id}/events": {"get": op("A device's events, newest first (limit, before)", "viewer", None, 200, json!({"type": "array", "items": object}))},
            "/api/v1/fleet/summary": {"get": op("The fleet at a glance: devices, states held, publishing pending, online, converged, failed, stale", "viewer", None, 200, schema("FleetSummary"))},
            "/api/v1/groups": {"get": op("List groups", "viewer", None, 200, list("GroupRow"))},
            "/api/v1/groups/{name}": {"put": op("Create or replace a group (selector k=v,..., members)", "operator", Some(schema("GroupIn")), 200, schema("GroupRow")),
                "delete": op("Delete a group no live deployment targets (409 names the one that does)", "operator", None, 200, schema("Deleted"))},
            "/api/v1/groups/{name}/maintenance": {
                "put": op("Set the maintenance window of a group's devices", "operator", Some(schema("MaintenanceWindowSchema")), 200, schema("MaintenanceSet")),
                "delete": op("Clear a group's maintenance window", "operator", None, 200, schema("MaintenanceSet"))},
            "/api/v1/images": {"get": op("List images", "viewer", None, 200, list("ImageRow")), "post": import},
            "/api/v1/images/{digest}": {"delete": op("Delete an image no release names, its blob and its cached deltas (409 names the release)", "operator", None, 200, schema("ImageDeleted"))},
            "/api/v1/releases/{id}": {"delete": op("Delete a release no live deployment runs (409 names the deployment)", "operator", None, 200, schema("Deleted"))},
            "/api/v1/releases": {"get": op("List releases", "viewer", None, 200, list("ReleaseRow")),
                "post": op("Create a release", "operator", Some(schema("ReleaseIn")), 201, schema("ReleaseCreated"))},
            "/api/v1/deployments": {"get": op("List deployments", "viewer", None, 200, list("DeploymentRow")), "post": deploy},
            "/api/v1/deployments/{id}": {"delete": op("Delete a deployment", "operator", None, 200, schema("DeploymentDeleted"))},
            "/api/v1/tokens": {"post": op("Create an API token (admin; ttl_secs, actions, groups narrow it) or an enrollment token (operator)", "operator", Some(schema("TokenIn")), 201, schema("TokenCreated")),
                "get": op("List API tokens (never their secrets)", "admin", None, 200, list("ApiTokenRow"))},
            "/api/v1/tokens/{id}": {"delete": op("Revoke an API token at once", "admin", None, 200, schema("TokenRevoked"))},
            "/api/v1/audit": {"get": op("Audit log entries (after, limit)", "viewer", None, 200, list("AuditEntry"))},
            "/api/v1/audit/verify": {"get": op("Verify the audit hash chain", "viewer", None, 200, schema("AuditVerified"))},
            "/v1/blobs/{digest}": {"get": {"summary": "An image blob (zstd tar), with Range and ETag", "security": [{"device": []}],
                "responses": {"200": {"description": "Whole blob"}, "206": {"description": "Range"}, "401": {"$ref": "#/components/responses/Error"}, "404": {"$ref": "#/components/responses/Error"}}}},
            "/v1/deltas/{base}/{target}": {"get": {"summary": "The delta from one stored image to another (made on demand, cached), with Range and ETag", "security": [{"device": []}],
                "responses": {"200": {"description": "Whole delta"}, "206": {"description": "Range"}, "401": {"$ref": "#/components/responses/Error"}, "404": {"$ref": "#/components/responses/Error"},
                    "503": {"description": "Being made: ask again after Retry-After seconds"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4; names in docs/HUB.md)", "security": [{"bearer": []}],
                "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}, "401": {"$ref": "#/components/responses/Error"}}}}
        }
    });
    // The rollout routes apart: one `json!` of every path passes the macro's recursion limit.
    let rollouts = json!({
        "/api/v1/whoami": {"get": op("The calling token's name and role", "viewer", None, 200, json!({"type": "object", "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]}}}))},
        "/api/v1/devices/{id}/explain": {"get": op("Why a device runs what it runs: every deployment targeting it (winner first, with the reason), its rollout and phase, its window's source", "viewer", None, 200, schema("Explanation"))},
        "/api/v1/rollouts": {"get": op("List rollouts", "viewer", None, 200, list("RolloutSummary")), "post": stage},
        "/api/v1/rollouts/preview": {"post": op("What a rollout would change before it exists: devices taken, phase sizes, per device class the workloads changed and bytes to download, the devices that cannot take it; nothing is stored", "viewer", Some(schema("RolloutIn")), 200, schema("Preview"))},
        "/api/v1/rollouts/{id}": {"get": op("A rollout: stage, plan, per-phase counts and the devices behind each (with last seen)", "viewer", None, 200, schema("RolloutStatus"))},
        "/api/v1/rollouts/{id}/events": {"get": sse},
        "/api/v1/rollouts/{id}/webhooks": {"get": op("A rollout's webhook deliveries: event, body, attempts, delivered or next attempt, last error", "viewer", None, 200, list("DeliveryRow"))},
        "/api/v1/rollouts/{id}/{command}": {"post": command}
    });
    if let (Some(paths), Some(more)) = (doc["paths"].as_object_mut(), rollouts.as_object()) {
        paths.extend(more.clone());
    }
    doc
}

pub(super) async fn document() -> Json<Value> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    use super::spec;

    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = spec();
        for (method, path) in super::super::ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is missing from the OpenAPI document"
            );
        }
    }

    #[test]
    fn every_reference_resolves_to_a_generated_schema() {
        let doc = spec();
        let text = doc.to_string();
        let mut refs = 0;
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{name} is referenced but has no schema"
            );
            refs += 1;
        }
        assert!(refs > 20, "only {refs} references");
        // The generated schemas are the real types': fields and required lists.
        let d = &doc["components"]["schemas"]["DeploymentIn"];
        assert!(d["properties"]["release"].is_object(), "{d}");
        assert!(
            d["required"]
                .as_array()
                .is_some_and(|r| r.contains(&"release".into())),
            "{d}"
        );
        let w = &doc["components"]["schemas"]["WorkloadIn"];
        assert!(w["properties"]["command"].is_object(), "{w}");
    }

    #[test]
    fn the_route_table_matches_the_router() {
        // Every `.route("…"` in the router is in ROUTES, and the other way round.
        let src = include_str!("mod.rs");
        let body = &src[src.find("pub fn router").unwrap_or(0)..];
        let in_router: std::collections::BTreeSet<&str> = body
            .split(".route(")
            .skip(1)
            .filter_map(|s| s.trim_start().strip_prefix('"')?.split('"').next())
            .collect();
        let in_table: std::collections::BTreeSet<&str> =
            super::super::ROUTES.iter().map(|(_, p)| *p).collect();
        assert_eq!(in_router, in_table);
    }
}
