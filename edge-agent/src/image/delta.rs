//! A pull through a delta (`docs/DELTA.md`, "The agent's base"): the hub's delta from an image
//! this cache holds to the one wanted is downloaded like a blob (same partial file, `Range`
//! and `If-Range` machinery, `fetch.rs`), applied to the base's kept tar, checked against the
//! signed digest and size, compressed, and then verified and unpacked exactly as a downloaded
//! blob is (`ImageStore::verify_and_unpack`).
//!
//! The base is `<base>/image.tar.zst`, decompressed beside the delta for the time of the apply;
//! the delta's base digest must be the one asked for and `fleet_delta::apply` checks the tar's
//! own size and SHA-256 before writing a byte, so a base that does not verify is never used.
//! Every failure but a transfer cut short is a [`Failure::Fallback`]: the caller takes the full
//! blob. Nothing half-made stays: each intermediate file is removed on the way out.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::ImageRef;

use super::fetch::{self, FetchError, FetchLimits};
use super::{compressed_bound, BlobSource, ImageError, ImageStore, PullReport};

/// Why a delta did not make the image.
#[derive(Debug)]
pub(super) enum Failure {
    /// The transfer was cut short or stalled: the pull fails, and its retry resumes the delta.
    Retry(ImageError),
    /// Anything else: take the full blob. `fetched` is what the delta cost in bytes.
    Fallback {
        /// Why, for the report.
        why: String,
        /// Bytes downloaded for nothing.
        fetched: u64,
    },
}

fn fallback(why: impl Into<String>, fetched: u64) -> Failure {
    Failure::Fallback {
        why: why.into(),
        fetched,
    }
}

/// The files one delta pull goes through, all under `partial/`, all named after the target.
struct Files {
    delta: PathBuf,
    base_tar: PathBuf,
    tar: PathBuf,
    blob: PathBuf,
}

impl Files {
    fn remove_work(&self) {
        for p in [&self.base_tar, &self.tar, &self.blob] {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl ImageStore {
    fn delta_files(&self, image: &ImageRef) -> Files {
        let dir = self.0.dir.join("partial");
        let hex = image.digest.hex();
        Files {
            delta: dir.join(format!("{hex}.delta")),
            base_tar: dir.join(format!("{hex}.base.tar")),
            tar: dir.join(format!("{hex}.tar")),
            blob: dir.join(format!("{hex}.from-delta.tar.zst")),
        }
    }

    /// Makes `image` present from the hub's delta against `base` (held with its kept tar).
    pub(super) async fn pull_delta(
        &self,
        src: &BlobSource,
        image: &ImageRef,
        base: &ImageRef,
    ) -> Result<PullReport, Failure> {
        // The base's tar, the target's tar, its compressed form and its tree at once.
        let needed = base
            .size
            .saturating_add(image.size.saturating_mul(2))
            .saturating_add(compressed_bound(image.size));
        if let Err(e) = self.check_space_for(image, needed) {
            return Err(fallback(format!("no room to apply a delta: {e}"), 0));
        }
        let files = self.delta_files(image);
        let root = src.base_url.trim_end_matches('/');
        let url = format!("{root}/v1/deltas/{}/{}", base.digest, image.digest);
        let fetched = self.download_delta(src, &url, image, &files.delta).await?;
        let delta_len = std::fs::metadata(&files.delta)
            .map(|m| m.len())
            .unwrap_or(0);
        let (this, img, b) = (self.clone(), image.clone(), base.clone());
        let applied = tokio::task::spawn_blocking(move || {
            let files = this.delta_files(&img);
            let r = this.apply_delta(&files, &img, &b);
            files.remove_work();
            r
        })
        .await
        .unwrap_or_else(|e| Err(format!("apply task: {e}")));
        // Used or refused, this delta file is never tried again as it is.
        fetch::discard(&files.delta);
        if let Err(why) = applied {
            return Err(fallback(why, fetched.bytes_fetched));
        }
        let blob_len = self.blob_len(src, image).await;
        Ok(PullReport {
            bytes_fetched: fetched.bytes_fetched,
            resumed_from: fetched.resumed_from,
            delta: true,
            base: Some(base.digest),
            bytes_saved: blob_len.map_or(0, |n| n.saturating_sub(delta_len)),
            fallback: None,
        })
    }

    /// Downloads the delta, waiting (as the hub's `Retry-After` says) at most `delta_wait` for
    /// the hub to make it.
    async fn download_delta(
        &self,
        src: &BlobSource,
        url: &str,
        image: &ImageRef,
        part: &Path,
    ) -> Result<fetch::Fetched, Failure> {
        let give_up_at = Instant::now() + self.0.delta_wait;
        // A delta larger than the blob's bound is of no use.
        let max = compressed_bound(image.size);
        let limits = FetchLimits {
            max_bytes: max,
            stall: self.0.stall,
            deadline: Duration::from_secs((max / self.0.min_rate).max(60)),
            kind: crate::metrics::Download::Delta,
        };
        loop {
            let r = fetch::download(
                &self.0.client,
                url,
                Some((&src.username, &src.password)),
                part,
                limits,
            )
            .await;
            let e = match r {
                Ok(f) => return Ok(f),
                Err(e) => e,
            };
            match e {
                FetchError::Busy { retry_after, .. } => {
                    let pause = Duration::from_secs(retry_after.unwrap_or(2).clamp(1, 10));
                    if Instant::now() + pause > give_up_at {
                        return Err(fallback(
                            format!(
                                "the hub did not have the delta ready within {:?}",
                                self.0.delta_wait
                            ),
                            0,
                        ));
                    }
                    tokio::time::sleep(pause).await;
                }
                FetchError::Http { .. } | FetchError::Slow { .. } => {
                    // Cut short: kept for the retry, which resumes it with Range.
                    return Err(Failure::Retry(ImageError::Fetch {
                        digest: image.digest,
                        source: e,
                    }));
                }
                other => {
                    fetch::discard(part);
                    return Err(fallback(format!("delta download: {other}"), 0));
                }
            }
        }
    }

    /// Applies the downloaded delta to the base's kept tar; on `Ok` the image is verified and
    /// unpacked into place.
    fn apply_delta(&self, files: &Files, image: &ImageRef, base: &ImageRef) -> Result<(), String> {
        let kept = self
            .base_blob(&base.digest)
            .ok_or_else(|| format!("base {} is no longer in the cache", base.digest))?;
        decompress_bounded(self, &kept, &files.base_tar, base.size)
            .map_err(|e| format!("base {}: {e}", base.digest))?;
        let limits = fleet_delta::Limits {
            max_target_size: image.size,
            ..fleet_delta::Limits::default()
        };
        let applied = fleet_delta::apply_file(&files.base_tar, &files.delta, &files.tar, &limits)
            .map_err(|e| format!("applying the delta: {e}"))?;
        let _ = std::fs::remove_file(&files.base_tar);
        if applied.base_sha256 != *base.digest.as_bytes() {
            return Err(format!(
                "the delta was made for another base than {}",
                base.digest
            ));
        }
        if applied.target_size != image.size || applied.target_sha256 != *image.digest.as_bytes() {
            return Err(format!(
                "the delta makes {} bytes with sha256 {}, not the signed image",
                applied.target_size,
                protocol::Digest::from_bytes(applied.target_sha256)
            ));
        }
        compress(&files.tar, &files.blob).map_err(|e| format!("compressing the image: {e}"))?;
        let _ = std::fs::remove_file(&files.tar);
        self.verify_and_unpack(image, &files.blob)
            .map_err(|e| format!("the image made from the delta: {e}"))
    }

    /// The full blob's length (`HEAD`), to count what the delta saved; `None` if unknown.
    async fn blob_len(&self, src: &BlobSource, image: &ImageRef) -> Option<u64> {
        let root = src.base_url.trim_end_matches('/');
        let resp = self
            .0
            .client
            .head(format!("{root}/v1/blobs/{}", image.digest))
            .basic_auth(&src.username, Some(&src.password))
            .timeout(self.0.stall)
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.headers()
            .get(reqwest::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

/// Decompresses a kept base into `out`, refusing more than `size` bytes.
fn decompress_bounded(
    store: &ImageStore,
    kept: &Path,
    out: &Path,
    size: u64,
) -> Result<(), String> {
    let mut reader = store
        .decoder(kept)
        .map_err(|e| e.to_string())?
        .take(size + 1);
    let mut file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let n = std::io::copy(&mut reader, &mut file).map_err(|e| format!("kept tar: {e}"))?;
    if n != size {
        return Err(format!(
            "kept tar has {n} bytes (or more), signed size {size}"
        ));
    }
    Ok(())
}

/// zstd level 3: fast on a small gateway; the result is checked against the signed digest
/// again when it is unpacked.
fn compress(tar: &Path, out: &Path) -> std::io::Result<()> {
    let input = std::fs::File::open(tar)?;
    let mut file = std::fs::File::create(out)?;
    zstd::stream::copy_encode(std::io::BufReader::new(input), &mut file, 3)?;
    file.flush()?;
    file.sync_all()
}
