//! `GET /metrics` (Prometheus text format, any API token: viewer is enough) and the middleware
//! that times every HTTP request by its route pattern.
//!
//! The endpoint sits on the API's own listener behind a bearer token rather than on a second,
//! unauthenticated port: the device counts describe the fleet, and Prometheus sends a token
//! with `authorization: { credentials_file: ... }`. A successful viewer call is not audited,
//! so scraping adds nothing to the audit log.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::{Auth, Viewer};
use super::{ApiResult, AppState};
use crate::metrics;

/// Every metric, with the store's gauges read now.
pub(super) async fn scrape(State(st): State<AppState>, _: Auth<Viewer>) -> ApiResult<Response> {
    let m = metrics::hub();
    m.set_fleet(&st.services.publisher.summary().await?);
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], m.encode()).into_response())
}

/// Times a request and counts it under its route pattern (`unmatched` when no route matched,
/// so probing random paths makes no new series). Placeholders are written `:id` rather than
/// `{id}`: braces inside a label value trip simple text-format parsers.
pub(super) async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map_or_else(
        || "unmatched".to_string(),
        |p| p.as_str().replace('{', ":").replace('}', ""),
    );
    let resp = next.run(req).await;
    metrics::hub().http_request(method.as_str(), &route, resp.status().as_u16(), start);
    resp
}
