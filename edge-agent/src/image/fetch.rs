//! Resumable, bounded HTTP download of one blob into a partial file (DESIGN §3.6).
//!
//! - Resumes with `Range: bytes=N-` and `If-Range: <etag>`; a server that answers 200 (Range
//!   ignored, or the blob changed) or a `Content-Range` that does not start at N restarts the
//!   download from zero instead of appending (C20, C21).
//! - Never writes more than `max_bytes` (endless data, C17).
//! - Aborts a stalled or trickling transfer: every chunk must arrive within `stall`, and the whole
//!   transfer must finish within `deadline` (slow retrieval, C18).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Transport or HTTP error.
    #[error("GET {url}: {detail}")]
    Http {
        /// URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The server sent more than the bound.
    #[error("GET {url}: server sent more than {limit} bytes")]
    TooLong {
        /// URL.
        url: String,
        /// Bound.
        limit: u64,
    },
    /// Too slow or stalled.
    #[error("GET {url}: {detail}")]
    Slow {
        /// URL.
        url: String,
        /// Stall or deadline.
        detail: String,
    },
    /// The server has no such blob (404).
    #[error("GET {url}: not found")]
    NotFound {
        /// URL.
        url: String,
    },
    /// Local file error.
    #[error("writing {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Limits for one download.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Most bytes the finished file may hold.
    pub max_bytes: u64,
    /// Longest wait for the next chunk.
    pub stall: Duration,
    /// Longest time for the whole transfer (this attempt).
    pub deadline: Duration,
}

/// Outcome of a finished download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes received in this call.
    pub bytes_fetched: u64,
    /// Offset the download resumed from (0 for a fresh start).
    pub resumed_from: u64,
}

fn etag_path(part: &Path) -> PathBuf {
    let mut p = part.as_os_str().to_owned();
    p.push(".etag");
    PathBuf::from(p)
}

/// Removes a partial download and its saved ETag.
pub fn discard(part: &Path) {
    let _ = std::fs::remove_file(part);
    let _ = std::fs::remove_file(etag_path(part));
}

/// Downloads `url` into `part`, resuming what is already there. On success `part` holds the
/// complete body, fsynced. The caller verifies it before use.
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    auth: Option<(&str, &str)>,
    part: &Path,
    limits: FetchLimits,
) -> Result<Fetched, FetchError> {
    let io = |source| FetchError::Io {
        path: part.to_path_buf(),
        source,
    };
    let http = |detail: String| FetchError::Http {
        url: url.to_string(),
        detail,
    };
    let have = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let etag = tokio::fs::read_to_string(etag_path(part)).await.ok();
    let mut req = client.get(url);
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    let resuming = have > 0 && etag.is_some();
    if resuming {
        req = req
            .header(reqwest::header::RANGE, format!("bytes={have}-"))
            .header(reqwest::header::IF_RANGE, etag.clone().unwrap_or_default());
    }
    let started = Instant::now();
    let resp = tokio::time::timeout(limits.stall, req.send())
        .await
        .map_err(|_| FetchError::Slow {
            url: url.into(),
            detail: format!("no response within {:?}", limits.stall),
        })?
        .map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(FetchError::NotFound { url: url.into() });
    }
    // Decide whether the body continues the partial file or replaces it.
    let append_at = if status == reqwest::StatusCode::PARTIAL_CONTENT && resuming {
        let cr = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if cr.starts_with(&format!("bytes {have}-")) {
            have
        } else {
            // A range we did not ask for: start over on the next attempt.
            let _ = tokio::fs::remove_file(part).await;
            let _ = tokio::fs::remove_file(etag_path(part)).await;
            return Err(http(format!(
                "unexpected Content-Range {cr:?} for offset {have}"
            )));
        }
    } else if status == reqwest::StatusCode::OK {
        0
    } else {
        return Err(http(format!("status {status}")));
    };
    if let Some(len) = resp.content_length() {
        if append_at + len > limits.max_bytes {
            return Err(FetchError::TooLong {
                url: url.into(),
                limit: limits.max_bytes,
            });
        }
    }
    let new_etag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut file = if append_at == 0 {
        tokio::fs::File::create(part).await.map_err(io)?
    } else {
        tokio::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .await
            .map_err(io)?
    };
    match &new_etag {
        Some(t) => tokio::fs::write(etag_path(part), t).await.map_err(io)?,
        None => {
            let _ = tokio::fs::remove_file(etag_path(part)).await;
        }
    }
    let mut total = append_at;
    let mut fetched = 0u64;
    let mut stream = resp.bytes_stream();
    loop {
        let remaining = limits.deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            file.flush().await.map_err(io)?;
            return Err(FetchError::Slow {
                url: url.into(),
                detail: format!("transfer not done within {:?}", limits.deadline),
            });
        }
        let next = tokio::time::timeout(limits.stall.min(remaining), stream.next()).await;
        let chunk = match next {
            Err(_) => {
                file.flush().await.map_err(io)?;
                return Err(FetchError::Slow {
                    url: url.into(),
                    detail: format!("stalled for {:?}", limits.stall.min(remaining)),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                file.flush().await.map_err(io)?;
                return Err(http(e.to_string()));
            }
            Ok(Some(Ok(c))) => c,
        };
        if total + chunk.len() as u64 > limits.max_bytes {
            return Err(FetchError::TooLong {
                url: url.into(),
                limit: limits.max_bytes,
            });
        }
        file.write_all(&chunk).await.map_err(io)?;
        total += chunk.len() as u64;
        fetched += chunk.len() as u64;
    }
    file.flush().await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    Ok(Fetched {
        bytes_fetched: fetched,
        resumed_from: append_at,
    })
}
