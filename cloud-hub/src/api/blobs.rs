//! `GET /v1/blobs/{digest}`: the stored zstd tar, for enrolled devices only (HTTP Basic with the
//! device's broker credentials), with `Range: bytes=N-` / `bytes=N-M`, `ETag` and `If-Range`.
//! `GET /v1/deltas/{base}/{target}`: the delta between two stored images, same authentication
//! and the same file serving ([`serve_file`]); `503` with `Retry-After` while it is being made.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{ApiError, ApiResult, AppState};
use crate::images::deltas::Lookup;
use crate::service::Error;

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.strip_prefix("Basic ")?)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    Error::Internal(format!("serving a blob: {e}")).into()
}

/// Parses `bytes=N-` or `bytes=N-M` against a length; `None` when unsatisfiable or malformed.
pub fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let spec = v.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = if b.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        b.trim().parse().ok()?
    };
    (start <= end && end < len).then_some((start, end))
}

/// Enrolled devices only: HTTP Basic with the device's broker credentials.
async fn device_only(st: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "device credentials required",
        )
    };
    let (user, pass) = basic_auth(headers).ok_or_else(unauthorized)?;
    if !st
        .services
        .registry
        .device_authenticates(user, pass)
        .await?
    {
        return Err(unauthorized());
    }
    Ok(())
}

fn digest_arg(s: &str) -> ApiResult<protocol::Digest> {
    protocol::Digest::parse(s).map_err(|e| ApiError::bad(e.to_string()))
}

pub(super) async fn get_blob(
    State(st): State<AppState>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    device_only(&st, &headers).await?;
    let digest = digest_arg(&digest)?;
    let path = crate::images::blob_path(st.services.images.blobs_dir(), &digest);
    let missing = format!("no blob {digest}");
    serve_file(&path, &digest.hex(), "application/zstd", missing, &headers).await
}

/// Seconds a client is told to wait while a delta is being made.
const DELTA_RETRY_AFTER: u64 = 2;

pub(super) async fn get_delta(
    State(st): State<AppState>,
    Path((base, target)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    device_only(&st, &headers).await?;
    let (base, target) = (digest_arg(&base)?, digest_arg(&target)?);
    match st.services.images.delta(&base, &target).await? {
        Lookup::Ready(path) => {
            let tag = format!("{}-{}", base.hex(), target.hex());
            let missing = format!("no delta from {base} to {target}");
            serve_file(&path, &tag, "application/octet-stream", missing, &headers).await
        }
        Lookup::Generating | Lookup::Unavailable(_) => Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, DELTA_RETRY_AFTER.to_string())],
            axum::Json(serde_json::json!({
                "error": format!("the delta from {base} to {target} is being made"),
                "code": "delta_generating",
            })),
        )
            .into_response()),
    }
}

/// Serves a file whole or from a `Range: bytes=N-` / `bytes=N-M`, with an `ETag` made of
/// `tag` and the length, honouring `If-Range`; `404` (with `missing`) when it does not exist.
async fn serve_file(
    path: &std::path::Path,
    tag: &str,
    content_type: &str,
    missing: String,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", missing))?;
    let len = file.metadata().await.map_err(internal)?.len();
    let etag = format!("\"{tag}-{len}\"");
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag);
    let (status, start, end) = match range {
        Some(r) if if_range_ok => match parse_range(r, len) {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                )
                    .into_response())
            }
        },
        _ => (StatusCode::OK, 0, len.saturating_sub(1)),
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(internal)?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, count)
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    resp.body(body).map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_parse_and_bounds_hold() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=4-6", 10), Some((4, 6)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=6-4", 10), None);
        assert_eq!(parse_range("bytes=-4", 10), None);
        assert_eq!(parse_range("items=0-", 10), None);
    }
}
