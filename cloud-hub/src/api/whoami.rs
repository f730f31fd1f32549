//! `GET /api/v1/whoami`: the name and role of the calling token, so a client (the console)
//! shows only the controls the role may use. The server checks every call anyway.

use axum::Json;
use serde_json::{json, Value};

use super::auth::{Auth, Viewer};

pub(super) async fn whoami(Auth(who, _): Auth<Viewer>) -> Json<Value> {
    Json(json!({"name": who.name, "role": who.role}))
}
