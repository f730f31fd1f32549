//! Resumable, bounded HTTP download of one blob into a partial file (DESIGN §3.6).
//!
//! - Resumes with `Range: bytes=N-` and `If-Range: <etag>`; a server that answers 200 (Range
//!   ignored, or the blob changed) restarts the download from zero instead of appending, and a
//!   `Content-Range` that does not start at N discards the partial file and starts over in the
//!   same call (C20, C21).
//! - A 416 naming the partial file's own length (`bytes */N`) means the file is complete — the
//!   agent died between the last byte and verification — so it goes to verification as it is;
//!   any other 416 discards the partial file and starts over. Never a loop of 416s (C19, #15).
//! - Never writes more than `max_bytes` (endless data, C17).
//! - Aborts a stalled or trickling transfer: every chunk must arrive within `stall`, and the whole
//!   transfer must finish within `deadline` (slow retrieval, C18).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use std::io::Write as _;

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
    /// The server is busy making the resource (503), e.g. a delta being generated.
    #[error("GET {url}: not ready (503), retry after {retry_after:?} s")]
    Busy {
        /// URL.
        url: String,
        /// The server's `Retry-After` in seconds, when it gave one.
        retry_after: Option<u64>,
    },
    /// The server answered with another error status.
    #[error("GET {url}: status {status}")]
    Status {
        /// URL.
        url: String,
        /// HTTP status code.
        status: u16,
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
    /// What the bytes are, for the download counter (`fleet_agent_download_bytes_total`).
    pub kind: crate::metrics::Download,
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

/// What one request made of the partial file.
enum Attempt {
    /// The partial file is complete.
    Done(Fetched),
    /// The partial file cannot be continued (why): discard it and download from zero.
    StartOver(String),
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
    match attempt(client, url, auth, part, limits, true).await? {
        Attempt::Done(f) => Ok(f),
        Attempt::StartOver(why) => {
            tracing::warn!(%url, %why, "partial download discarded; starting over");
            discard(part);
            match attempt(client, url, auth, part, limits, false).await? {
                Attempt::Done(f) => Ok(f),
                // Not resuming, so a range answer cannot come back; refuse rather than loop.
                Attempt::StartOver(why) => Err(FetchError::Http {
                    url: url.into(),
                    detail: why,
                }),
            }
        }
    }
}

/// fsyncs `file` off the async threads.
async fn sync(file: std::fs::File) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

/// The total length in a `Content-Range: bytes */N` (or `bytes A-B/N`) header.
fn content_range_total(cr: &str) -> Option<u64> {
    cr.strip_prefix("bytes ")?.rsplit_once('/')?.1.parse().ok()
}

/// One request: resumes from the partial file when `resume` and it has a saved ETag.
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    auth: Option<(&str, &str)>,
    part: &Path,
    limits: FetchLimits,
    resume: bool,
) -> Result<Attempt, FetchError> {
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
    let etag = tokio::fs::read_to_string(etag_path(part))
        .await
        .ok()
        .filter(|t| !t.is_empty());
    if resume && have > limits.max_bytes {
        return Ok(Attempt::StartOver(format!(
            "partial file of {have} bytes is over the bound of {}",
            limits.max_bytes
        )));
    }
    let mut req = client.get(url);
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    let resuming = resume && have > 0 && etag.is_some();
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
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        return Err(FetchError::Busy {
            url: url.into(),
            retry_after,
        });
    }
    let content_range = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && resuming {
        if content_range_total(&content_range) == Some(have) {
            // Complete already: the last run died after the last byte, before verification.
            let file = std::fs::File::open(part).map_err(io)?;
            sync(file).await.map_err(io)?;
            return Ok(Attempt::Done(Fetched {
                bytes_fetched: 0,
                resumed_from: have,
            }));
        }
        return Ok(Attempt::StartOver(format!(
            "range from {have} not satisfiable (Content-Range {content_range:?})"
        )));
    }
    // Decide whether the body continues the partial file or replaces it.
    let append_at = if status == reqwest::StatusCode::PARTIAL_CONTENT && resuming {
        if content_range.starts_with(&format!("bytes {have}-")) {
            have
        } else {
            // A range we did not ask for: never appended.
            return Ok(Attempt::StartOver(format!(
                "unexpected Content-Range {content_range:?} for offset {have}"
            )));
        }
    } else if status == reqwest::StatusCode::OK {
        0
    } else {
        return Err(FetchError::Status {
            url: url.into(),
            status: status.as_u16(),
        });
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
    // Plain blocking writes of one chunk each (page cache, microseconds), not `tokio::fs`: a
    // `tokio::fs::File` finishes a write in the background, so a download cancelled mid-write
    // could land bytes after the next attempt measured the file, splicing the blob. Here the
    // file's length is always exactly what this function wrote.
    let mut file = if append_at == 0 {
        std::fs::File::create(part).map_err(io)?
    } else {
        std::fs::OpenOptions::new()
            .append(true)
            .open(part)
            .map_err(io)?
    };
    match &new_etag {
        // Unchanged: not rewritten, so a kill can never leave a resumable file without it.
        Some(t) if append_at > 0 && etag.as_deref() == Some(t.as_str()) => {}
        Some(t) => std::fs::write(etag_path(part), t).map_err(io)?,
        None => {
            let _ = std::fs::remove_file(etag_path(part));
        }
    }
    let mut total = append_at;
    let mut fetched = 0u64;
    let mut stream = resp.bytes_stream();
    loop {
        let remaining = limits.deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(FetchError::Slow {
                url: url.into(),
                detail: format!("transfer not done within {:?}", limits.deadline),
            });
        }
        let next = tokio::time::timeout(limits.stall.min(remaining), stream.next()).await;
        let chunk = match next {
            Err(_) => {
                return Err(FetchError::Slow {
                    url: url.into(),
                    detail: format!("stalled for {:?}", limits.stall.min(remaining)),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
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
        file.write_all(&chunk).map_err(io)?;
        total += chunk.len() as u64;
        fetched += chunk.len() as u64;
        crate::metrics::downloaded(limits.kind, chunk.len() as u64);
    }
    sync(file).await.map_err(io)?;
    Ok(Attempt::Done(Fetched {
        bytes_fetched: fetched,
        resumed_from: append_at,
    }))
}
