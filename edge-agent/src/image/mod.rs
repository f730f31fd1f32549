//! The image cache: pull (resumable, bounded, verified), safe unpack, garbage collection.
//!
//! Layout under the cache directory:
//! - `<hex>/rootfs/` — a verified, unpacked image; the directory appears by one atomic rename,
//!   so its existence means "complete".
//! - `<hex>/image.tar.zst` — the same image's tar, zstd-compressed: the base the next update's
//!   delta is applied to (`delta.rs`, `docs/DELTA.md` "The agent's base").
//! - `partial/<hex>.tar.zst` (+ `.etag`) — a download in progress, resumed after interruption;
//!   `partial/<hex>.delta` (+ `.etag`) the same for a delta, and `partial/<hex>.*` the files a
//!   delta is applied through.
//! - `staging/` — unpacking in progress; cleared at open.
//!
//! Invariant: nothing under `<hex>/` exists unless the SHA-256 of the decompressed tar equalled
//! `<hex>` and its size equalled the signed size.

mod delta;
pub mod fetch;
pub mod unpack;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::{Digest, ImageRef};
use sha2::{Digest as _, Sha256};

pub use fetch::{FetchError, FetchLimits};
pub use unpack::UnpackError;

/// Where blobs come from.
#[derive(Debug, Clone)]
pub struct BlobSource {
    /// Hub base URL (`{base_url}/v1/blobs/{digest}`).
    pub base_url: String,
    /// HTTP Basic username (the device id).
    pub username: String,
    /// HTTP Basic password.
    pub password: String,
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullReport {
    /// Bytes transferred by this pull (0 when already present), a delta given up included.
    pub bytes_fetched: u64,
    /// Offset a download resumed from.
    pub resumed_from: u64,
    /// The image was made from a delta applied to `base`.
    pub delta: bool,
    /// The base a delta was applied to.
    pub base: Option<Digest>,
    /// Bytes the delta saved against the full blob.
    pub bytes_saved: u64,
    /// Why a delta was tried and the full blob used instead.
    pub fallback: Option<String>,
}

/// Why an image could not be made present.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Download failed (network, server, slow, too long).
    #[error("image {digest}: {source}")]
    Fetch {
        /// Image.
        digest: Digest,
        /// Cause.
        source: FetchError,
    },
    /// Content did not match the signed digest or size.
    #[error("image {digest}: integrity check failed: {detail}")]
    Integrity {
        /// Image.
        digest: Digest,
        /// What differed.
        detail: String,
    },
    /// Not enough space for the download and unpack.
    #[error("image {digest}: needs {needed} bytes, {available} available")]
    NoSpace {
        /// Image.
        digest: Digest,
        /// Bytes needed.
        needed: u64,
        /// Bytes available (disk or budget, whichever is smaller).
        available: u64,
    },
    /// The archive was refused.
    #[error("image {digest}: {source}")]
    Unpack {
        /// Image.
        digest: Digest,
        /// Cause.
        source: UnpackError,
    },
    /// Local I/O.
    #[error("image cache {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl ImageError {
    /// The fault class, for reports: `network`, `integrity`, `space`, `unsafe-archive`, `local-io`.
    pub fn class(&self) -> &'static str {
        if self.is_no_space() {
            return "space";
        }
        match self {
            ImageError::Fetch { .. } => "network",
            ImageError::Integrity { .. } => "integrity",
            ImageError::NoSpace { .. } => "space",
            ImageError::Unpack { .. } => "unsafe-archive",
            ImageError::Io { .. } => "local-io",
        }
    }
}

impl ImageError {
    /// The disk filled up (ENOSPC), or the space check refused the pull.
    pub fn is_no_space(&self) -> bool {
        let full = |e: &std::io::Error| e.kind() == std::io::ErrorKind::StorageFull;
        match self {
            ImageError::NoSpace { .. } => true,
            ImageError::Fetch {
                source: FetchError::Io { source, .. },
                ..
            }
            | ImageError::Io { source, .. } => full(source),
            ImageError::Unpack {
                source: UnpackError::Io { source, .. },
                ..
            } => full(source),
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    budget: u64,
    client: reqwest::Client,
    stall: Duration,
    min_rate: u64,
    /// How long a pull waits for the hub to make a delta before it takes the full blob
    /// (zero: deltas are not tried).
    delta_wait: Duration,
}

/// The on-disk cache of verified, unpacked images. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore(Arc<Inner>);

/// zstd's worst-case compressed size for `n` input bytes (ZSTD_COMPRESSBOUND), plus frame
/// headers: the most a server may send for an image of signed size `n`.
pub fn compressed_bound(n: u64) -> u64 {
    let margin = if n < (128 << 10) {
        ((128 << 10) - n) >> 11
    } else {
        0
    };
    n + (n >> 8) + margin + 1024
}

/// The longest reason for a given-up delta reported (a report's text is bounded; an event
/// over the bound would be refused with its whole batch).
const MAX_FALLBACK_BYTES: usize = 512;

/// `s` cut to at most `max` bytes, on a character boundary.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The compressed tar kept beside `rootfs/`.
const BASE_BLOB: &str = "image.tar.zst";

/// Largest zstd window accepted (2^27 = 128 MiB: what `zstd -19 --long` is not allowed to use
/// here; the hub compresses with the default window).
const MAX_WINDOW_LOG: u32 = 27;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ImageStore {
    /// Opens the cache in `dir` with a byte budget; clears interrupted unpacks.
    pub fn open(dir: &Path, budget_bytes: u64) -> Result<ImageStore, ImageError> {
        for sub in ["partial", "staging"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io_err(dir))?;
        }
        let staging = dir.join("staging");
        for e in std::fs::read_dir(&staging)
            .map_err(io_err(&staging))?
            .flatten()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ImageError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other(e),
            })?;
        Ok(ImageStore(Arc::new(Inner {
            dir: dir.to_path_buf(),
            budget: budget_bytes,
            client,
            stall: Duration::from_secs(30),
            min_rate: 1024,
            delta_wait: Duration::from_secs(60),
        })))
    }

    /// Same cache with other slow-transfer limits (tests use short ones).
    pub fn with_transfer_limits(&self, stall: Duration, min_bytes_per_sec: u64) -> ImageStore {
        ImageStore(Arc::new(Inner {
            dir: self.0.dir.clone(),
            budget: self.0.budget,
            client: self.0.client.clone(),
            stall,
            min_rate: min_bytes_per_sec.max(1),
            delta_wait: self.0.delta_wait,
        }))
    }

    /// Same cache, waiting at most `wait` for the hub to make a delta (zero: never tries one).
    pub fn with_delta_wait(&self, wait: Duration) -> ImageStore {
        ImageStore(Arc::new(Inner {
            dir: self.0.dir.clone(),
            budget: self.0.budget,
            client: self.0.client.clone(),
            stall: self.0.stall,
            min_rate: self.0.min_rate,
            delta_wait: wait,
        }))
    }

    /// The compressed tar of a verified image, kept as a base for deltas (images pulled by an
    /// agent from before deltas have none).
    pub fn base_blob(&self, digest: &Digest) -> Option<PathBuf> {
        self.rootfs(digest)?;
        let p = self.0.dir.join(digest.hex()).join(BASE_BLOB);
        p.is_file().then_some(p)
    }

    /// The unpacked tree of a verified image.
    pub fn rootfs(&self, digest: &Digest) -> Option<PathBuf> {
        let p = self.0.dir.join(digest.hex()).join("rootfs");
        p.is_dir().then_some(p)
    }

    fn partial(&self, digest: &Digest) -> PathBuf {
        self.0
            .dir
            .join("partial")
            .join(format!("{}.tar.zst", digest.hex()))
    }

    /// Bytes used by images and partial downloads.
    pub fn usage_bytes(&self) -> u64 {
        dir_size(&self.0.dir)
    }

    /// Makes the image present: downloads (resuming), verifies, unpacks. Idempotent. With a
    /// `base` this cache holds, tries a delta from it first and falls back to the full blob on
    /// any failure but a transfer cut short (which fails the pull, so the retry resumes it).
    pub async fn pull(
        &self,
        src: &BlobSource,
        image: &ImageRef,
        base: Option<&ImageRef>,
    ) -> Result<PullReport, ImageError> {
        let digest = image.digest;
        if self.rootfs(&digest).is_some() {
            return Ok(PullReport::default());
        }
        let mut fallback = None;
        let mut wasted = 0;
        if let Some(base) = base.filter(|b| b.digest != digest && !self.0.delta_wait.is_zero()) {
            if self.base_blob(&base.digest).is_some() {
                match self.pull_delta(src, image, base).await {
                    Ok(report) => return Ok(report),
                    Err(delta::Failure::Retry(e)) => return Err(e),
                    Err(delta::Failure::Fallback { why, fetched }) => {
                        tracing::warn!(%digest, base = %base.digest, %why, "delta given up; pulling the full blob");
                        fallback = Some(clip(why, MAX_FALLBACK_BYTES));
                        wasted = fetched;
                    }
                }
            }
        }
        let mut report = self.pull_blob(src, image).await?;
        report.bytes_fetched += wasted;
        report.fallback = fallback;
        Ok(report)
    }

    async fn pull_blob(
        &self,
        src: &BlobSource,
        image: &ImageRef,
    ) -> Result<PullReport, ImageError> {
        let digest = image.digest;
        self.check_space(image)?;
        let part = self.partial(&digest);
        let url = format!("{}/v1/blobs/{}", src.base_url.trim_end_matches('/'), digest);
        let max = compressed_bound(image.size);
        let secs = (max / self.0.min_rate).max(60);
        let limits = FetchLimits {
            max_bytes: max,
            stall: self.0.stall,
            deadline: Duration::from_secs(secs),
            kind: crate::metrics::Download::Full,
        };
        let fetched = fetch::download(
            &self.0.client,
            &url,
            Some((&src.username, &src.password)),
            &part,
            limits,
        )
        .await
        .map_err(|source| {
            let err = ImageError::Fetch { digest, source };
            // Too long, or the disk filled up: what was fetched is of no use (C17, C24).
            if matches!(
                err,
                ImageError::Fetch {
                    source: FetchError::TooLong { .. },
                    ..
                }
            ) || err.is_no_space()
            {
                fetch::discard(&part);
            }
            err
        })?;
        let this = self.clone();
        let image = image.clone();
        let blob = part.clone();
        let unpacked = tokio::task::spawn_blocking(move || this.verify_and_unpack(&image, &blob))
            .await
            .map_err(|e| ImageError::Io {
                path: part.clone(),
                source: std::io::Error::other(e),
            })?;
        if let Err(e) = unpacked {
            if e.is_no_space() {
                // The disk filled up while unpacking: nothing half-done stays (C24).
                let _ = std::fs::remove_dir_all(self.0.dir.join("staging").join(digest.hex()));
                fetch::discard(&part);
            }
            return Err(e);
        }
        Ok(PullReport {
            bytes_fetched: fetched.bytes_fetched,
            resumed_from: fetched.resumed_from,
            ..PullReport::default()
        })
    }

    fn check_space(&self, image: &ImageRef) -> Result<(), ImageError> {
        self.check_space_for(image, image.size.saturating_mul(2))
    }

    fn check_space_for(&self, image: &ImageRef, needed: u64) -> Result<(), ImageError> {
        let used = self.usage_bytes();
        let budget_left = self.0.budget.saturating_sub(used);
        // fsblkcnt_t is 32 bits on some targets (armv7), so the casts are not always no-ops.
        #[allow(clippy::unnecessary_cast)]
        let disk_free = nix::sys::statvfs::statvfs(&self.0.dir)
            .map(|s| s.blocks_available() as u64 * s.fragment_size() as u64)
            .unwrap_or(u64::MAX);
        let available = budget_left.min(disk_free);
        if needed > available {
            return Err(ImageError::NoSpace {
                digest: image.digest,
                needed,
                available,
            });
        }
        Ok(())
    }

    fn decoder(&self, part: &Path) -> Result<impl Read, ImageError> {
        let f = std::fs::File::open(part).map_err(io_err(part))?;
        let mut d = zstd::stream::read::Decoder::new(f).map_err(io_err(part))?;
        d.window_log_max(MAX_WINDOW_LOG).map_err(io_err(part))?;
        Ok(d)
    }

    /// Pass 1 hashes the decompressed stream of the compressed tar `part` (bounded by the signed
    /// size); only a match leads to pass 2, which unpacks into staging, moves `part` beside the
    /// tree as the image's base for deltas, and renames the whole into place.
    fn verify_and_unpack(&self, image: &ImageRef, part: &Path) -> Result<(), ImageError> {
        let digest = image.digest;
        let integrity = |detail: String| {
            fetch::discard(part);
            ImageError::Integrity { digest, detail }
        };
        let mut hasher = Sha256::new();
        let mut reader = self.decoder(part)?.take(image.size + 1);
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) => return Err(integrity(format!("not a valid zstd stream: {e}"))),
            };
            hasher.update(&buf[..k]);
            n += k as u64;
        }
        if n != image.size {
            return Err(integrity(format!(
                "size {n} (or more), signed size {}",
                image.size
            )));
        }
        let got = Digest::from_bytes(hasher.finalize().into());
        if got != digest {
            return Err(integrity(format!("content hashes to {got}")));
        }
        let staging = self.0.dir.join("staging").join(digest.hex());
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        unpack::unpack(self.decoder(part)?, &staging.join("rootfs"), image.size).map_err(
            |source| {
                let _ = std::fs::remove_dir_all(&staging);
                ImageError::Unpack { digest, source }
            },
        )?;
        let kept = staging.join(BASE_BLOB);
        std::fs::rename(part, &kept).map_err(io_err(&kept))?;
        unpack::sync_dir(&staging).map_err(io_err(&staging))?;
        let fin = self.0.dir.join(digest.hex());
        std::fs::rename(&staging, &fin).map_err(io_err(&fin))?;
        unpack::sync_dir(&self.0.dir).map_err(io_err(&self.0.dir))?;
        fetch::discard(part);
        Ok(())
    }

    /// Deletes images and partial downloads whose digest is not in `keep`; returns bytes freed.
    pub fn gc(&self, keep: &BTreeSet<Digest>) -> Result<u64, ImageError> {
        let keep_hex: BTreeSet<String> = keep.iter().map(Digest::hex).collect();
        let mut freed = 0;
        let dir = &self.0.dir;
        for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && !keep_hex.contains(&name) {
                freed += dir_size(&e.path());
                std::fs::remove_dir_all(e.path()).map_err(io_err(&e.path()))?;
            }
        }
        let partial = dir.join("partial");
        for e in std::fs::read_dir(&partial)
            .map_err(io_err(&partial))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_hex.iter().any(|k| name.starts_with(k.as_str())) {
                freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(freed)
    }
}

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.len()
    }
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn a_long_fallback_reason_is_clipped_on_a_character_boundary() {
        assert_eq!(clip("abc".into(), 512), "abc");
        let long = "é".repeat(400); // 800 bytes
        let c = clip(long, 511);
        assert_eq!(c.len(), 510);
        assert!(c.chars().all(|ch| ch == 'é'));
    }
}
