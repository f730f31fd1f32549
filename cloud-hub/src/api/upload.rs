//! Uploads streamed to disk: the body goes chunk by chunk into a temporary file next to the
//! blobs, never whole into memory, within the route's size limit and with a bounded silence
//! between chunks. [`CancelOnDrop`] tells the import its client has gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::ApiError;

/// Streams `body` into a new temporary file in `dir`; refuses more than `max` bytes (413) and
/// a silence longer than `idle` (408). The file is removed when the returned path is dropped.
pub(super) async fn receive(
    body: Body,
    dir: &std::path::Path,
    max: u64,
    idle: Duration,
) -> Result<tempfile::TempPath, ApiError> {
    let internal = |what: &str, e: std::io::Error| {
        tracing::error!(error = %e, dir = %dir.display(), "{what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    };
    let (file, path) = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| internal("creating an upload file", e))?
        .into_parts();
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("no upload data for {} s", idle.as_secs()),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ApiError::bad(format!("reading the upload: {e}"))),
            Ok(Some(Ok(c))) => c,
        };
        total += chunk.len() as u64;
        if total > max {
            return Err(too_large(max));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| internal("writing an upload file", e))?;
    }
    file.flush()
        .await
        .map_err(|e| internal("writing an upload file", e))?;
    Ok(path)
}

/// The 413 for a body over `max` bytes.
pub(super) fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body larger than {max} bytes"),
    )
}

/// A flag set when this guard is dropped: with the handler's future, when the client goes.
#[derive(Debug, Default)]
pub(super) struct CancelOnDrop(Arc<AtomicBool>);

impl CancelOnDrop {
    /// The flag to hand to the work.
    pub(super) fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
