//! The OpenAPI 3 document for `/api/v1`, served at `/api/v1/openapi.json`.

use axum::Json;
use serde_json::{json, Value};

fn op(summary: &str, role: &str) -> Value {
    json!({
        "summary": summary,
        "description": format!("Requires the {role} role."),
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "OK"},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "403": {"$ref": "#/components/responses/Error"}
        }
    })
}

/// The document.
pub fn spec() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "fleet hub API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "device": {"type": "http", "scheme": "basic"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error", "code"],
                          "properties": {"error": {"type": "string"}, "code": {"type": "string"}}}
            },
            "responses": {
                "Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        },
        "paths": {
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}},
            "/api/v1/enroll": {"post": {"summary": "Enroll a device with a one-time token (EnrollRequest → EnrollResponse)",
                "responses": {"201": {"description": "Enrolled"}, "400": {"$ref": "#/components/responses/Error"}, "403": {"$ref": "#/components/responses/Error"}}}},
            "/api/v1/trust": {"get": {"summary": "The current signed trust document", "responses": {"200": {"description": "OK"}}}},
            "/api/v1/trust/reload": {"post": op("Load a rotated online key and trust document, publish it, re-sign every state", "admin")},
            "/api/v1/devices": {"get": op("List devices", "viewer")},
            "/api/v1/devices/{id}": {"get": op("One device", "viewer")},
            "/api/v1/devices/{id}/labels": {"put": op("Replace a device's labels", "operator")},
            "/api/v1/devices/{id}/maintenance": {"put": op("Set a device's maintenance window ({cron, duration_secs}); it wins over its groups'", "operator"), "delete": op("Clear a device's maintenance window", "operator")},
            "/api/v1/devices/{id}/events": {"get": op("A device's events, newest first (limit, before)", "viewer")},
            "/api/v1/groups": {"get": op("List groups", "viewer")},
            "/api/v1/groups/{name}": {"put": op("Create or replace a group (selector k=v,..., members)", "operator")},
            "/api/v1/groups/{name}/maintenance": {"put": op("Set the maintenance window of a group's devices ({cron, duration_secs})", "operator"), "delete": op("Clear a group's maintenance window", "operator")},
            "/api/v1/images": {"get": op("List images", "viewer"), "post": op("Import an image (body: tar, docker save or OCI layout tar; query name, arch, format)", "operator")},
            "/api/v1/releases": {"get": op("List releases", "viewer"), "post": op("Create a release", "operator")},
            "/api/v1/deployments": {"get": op("List deployments", "viewer"), "post": op("Deploy a release to a group, selector or devices", "operator")},
            "/api/v1/deployments/{id}": {"delete": op("Delete a deployment", "operator")},
            "/api/v1/tokens": {"post": op("Create an API token (admin) or an enrollment token (operator)", "operator")},
            "/api/v1/audit": {"get": op("Audit log entries (after, limit)", "viewer")},
            "/api/v1/audit/verify": {"get": op("Verify the audit hash chain", "viewer")},
            "/v1/blobs/{digest}": {"get": {"summary": "An image blob (zstd tar), with Range and ETag", "security": [{"device": []}],
                "responses": {"200": {"description": "Whole blob"}, "206": {"description": "Range"}, "401": {"$ref": "#/components/responses/Error"}, "404": {"$ref": "#/components/responses/Error"}}}}
        }
    })
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
