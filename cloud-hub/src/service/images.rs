//! Image import: an uploaded tar, `docker save` archive or OCI layout becomes a deterministic
//! tar, stored as a zstd blob, and recorded (idempotent on digest; one architecture per digest).
//! The upload arrives as a file (the transport streams it to disk); the import runs within the
//! configured [`images::Limits`] and stops when its `cancel` flag is set (the client went away).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::time::Duration;

use protocol::{Arch, Digest};
use serde_json::json;

use super::{blocking, Error, Result, SharedClock};
use crate::images::deltas::{DeltaCache, Lookup};
use crate::images::{self, Format, ImageConfig, ImportSource};
use crate::model::{ImageRow, TokenInfo};
use crate::store::Store;
use crate::types::{ImageDeleted, ImportQuery, ImportedImage, ReleaseIn};

/// The image service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Images {
    store: Store,
    clock: SharedClock,
    blobs_dir: PathBuf,
    limits: images::Limits,
    deltas: Option<DeltaCache>,
}

/// How long a delta request waits for a generation before it answers "not yet".
const DELTA_WAIT: Duration = Duration::from_secs(2);

impl Images {
    /// Images stored under `blobs_dir`.
    pub fn new(
        store: Store,
        clock: SharedClock,
        blobs_dir: PathBuf,
        limits: images::Limits,
    ) -> Self {
        Self {
            store,
            clock,
            blobs_dir,
            limits,
            deltas: None,
        }
    }

    /// The same service, serving deltas from `cache`.
    pub fn with_deltas(mut self, cache: DeltaCache) -> Self {
        self.deltas = Some(cache);
        self
    }

    /// The delta from `base` to `target` for a device: `NotFound` when either is not a stored
    /// image or the delta cannot be made, [`Lookup::Generating`] while it is being made.
    pub async fn delta(&self, base: &Digest, target: &Digest) -> Result<Lookup> {
        let cache = self
            .deltas
            .as_ref()
            .ok_or_else(|| Error::NotFound("deltas are not served by this hub".into()))?;
        for d in [base, target] {
            if !images::blob_path(&self.blobs_dir, d).is_file() {
                return Err(Error::NotFound(format!("no image {d}")));
            }
        }
        if base == target {
            return Err(Error::NotFound("no delta from an image to itself".into()));
        }
        match cache.lookup(base, target, DELTA_WAIT).await {
            Lookup::Unavailable(why) => Err(Error::NotFound(format!(
                "no delta from {base} to {target}: {why}"
            ))),
            other => Ok(other),
        }
    }

    /// Where blobs live (served under `/v1/blobs`).
    pub fn blobs_dir(&self) -> &std::path::Path {
        &self.blobs_dir
    }

    /// Deletes an image no release names, then its blob and the deltas from or to it.
    pub async fn delete(&self, who: &TokenInfo, digest: String) -> Result<ImageDeleted> {
        let d = Digest::parse(&digest).map_err(|e| Error::Invalid(format!("{digest}: {e}")))?;
        let (store, actor, key) = (self.store.clone(), who.name.clone(), d.to_string());
        blocking(move || Ok(store.delete_image(&key, &actor)?)).await?;
        let blob = images::blob_path(&self.blobs_dir, &d);
        if let Err(e) = std::fs::remove_file(&blob) {
            tracing::warn!(blob = %blob.display(), error = %e, "removing a deleted image's blob");
        }
        let deltas = self.deltas.as_ref().map_or(0, |c| c.forget(&d));
        Ok(ImageDeleted {
            digest: d.to_string(),
            deltas_removed: deltas as u64,
        })
    }

    /// Removes the blobs no image record names, and the cached deltas from or to an image
    /// not stored: left by an import stopped between storing its blob and recording it, or a
    /// deletion stopped before its files went. Blobs younger than `min_age` stay (an import may
    /// be about to record one). Returns (blobs, deltas) removed.
    pub async fn collect_garbage(&self, min_age: Duration) -> Result<(usize, usize)> {
        let (store, dir, cache) = (
            self.store.clone(),
            self.blobs_dir.clone(),
            self.deltas.clone(),
        );
        blocking(move || {
            let stored: std::collections::HashSet<String> = store
                .images()?
                .into_iter()
                .filter_map(|i| Digest::parse(&i.digest).ok().map(|d| d.hex()))
                .collect();
            let mut blobs = 0;
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(hex) = name.strip_suffix(".tar.zst") else {
                    continue;
                };
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= min_age);
                if old && !stored.contains(hex) && std::fs::remove_file(e.path()).is_ok() {
                    blobs += 1;
                }
            }
            let deltas = cache.map_or(0, |c| c.retain(|d| stored.contains(d)));
            Ok((blobs, deltas))
        })
        .await
    }

    /// All images.
    pub async fn list(&self) -> Result<Vec<ImageRow>> {
        let store = self.store.clone();
        blocking(move || Ok(store.images()?)).await
    }

    /// Checks an import's arguments, so a bad one is refused before its upload is read.
    pub fn check_query(&self, q: &ImportQuery) -> Result<(Option<Format>, Option<Arch>)> {
        if q.name.is_empty() || q.name.len() > 128 {
            return Err(Error::Invalid("image name must be 1-128 bytes".into()));
        }
        let arch = q
            .arch
            .as_deref()
            .map(images::formats::parse_arch)
            .transpose()
            .map_err(|e| Error::Invalid(format!("{e:#}")))?;
        match q.format.as_deref().map(Format::parse).transpose() {
            Err(e) => Err(Error::Invalid(format!("{e:#}"))),
            Ok(Some(Format::Dir)) => Err(Error::Invalid(
                "a directory is uploaded as a plain tar (format tar)".into(),
            )),
            Ok(f) => Ok((f, arch)),
        }
    }

    /// Imports an uploaded archive (a file under [`Images::blobs_dir`], removed afterwards):
    /// its format is detected (an explicit one must match), a multi-architecture image is
    /// narrowed to `arch`, and the image's configuration is kept beside its blob. Stops early
    /// once `cancel` is set.
    pub async fn import(
        &self,
        who: &TokenInfo,
        q: ImportQuery,
        upload: tempfile::TempPath,
        cancel: Arc<AtomicBool>,
    ) -> Result<ImportedImage> {
        let (explicit, want) = self.check_query(&q)?;
        let (blobs, limits) = (self.blobs_dir.clone(), self.limits);
        tracing::info!(name = %q.name, format = ?q.format, "importing an image");
        let (info, format, config) = blocking(move || {
            let refused = |e: anyhow::Error| {
                // Logged here too: a client that went away never sees the answer.
                tracing::info!(error = %format!("{e:#}"), "image import refused");
                Error::Invalid(format!("import failed: {e:#}"))
            };
            let format = images::resolve(&upload, explicit)
                .map_err(|e| refused(e.context("the uploaded archive")))?;
            let src = match format {
                Format::Docker => ImportSource::DockerSave(upload.to_path_buf()),
                Format::Oci => ImportSource::OciLayout(upload.to_path_buf()),
                Format::Tar | Format::Dir => ImportSource::Tar(upload.to_path_buf()),
            };
            let budget = images::Budget::new(limits, cancel).spool_in(blobs.clone());
            let (info, config) =
                images::import_image(&blobs, &src, &budget, want).map_err(refused)?;
            if let Some(c) = &config {
                images::write_config(&blobs, &info.digest, c).map_err(|e| {
                    tracing::error!(error = %e, "keeping an image's configuration");
                    Error::Internal("internal error".into())
                })?;
            }
            drop(upload);
            Ok((info, format, config))
        })
        .await?;
        let arch = want
            .or(config.as_ref().and_then(|c| c.arch))
            .or_else(Arch::host)
            .ok_or_else(|| Error::Invalid("arch required".into()))?;
        let row = ImageRow {
            digest: info.digest.to_string(),
            name: q.name,
            size: info.size,
            compressed_size: info.compressed_size,
            arch,
            created_at: self.clock.now(),
        };
        let (store, r2, actor) = (self.store.clone(), row.clone(), who.name.clone());
        blocking(move || {
            store.put_image(&r2)?;
            store.audit(
                &actor,
                "image.import",
                &r2.digest,
                &json!(r2).to_string(),
                "ok",
            )?;
            Ok(())
        })
        .await?;
        Ok(ImportedImage {
            image: row,
            format: format.as_str().to_string(),
            config,
        })
    }

    /// The configuration an image was imported with (none for a directory or plain tar).
    pub async fn config(&self, digest: &Digest) -> Result<Option<ImageConfig>> {
        let (blobs, d) = (self.blobs_dir.clone(), *digest);
        blocking(move || {
            images::read_config(&blobs, &d).map_err(|e| {
                tracing::error!(error = %e, digest = %d, "reading an image's configuration");
                Error::Internal("internal error".into())
            })
        })
        .await
    }

    /// Fills what a release's workloads leave out from their images' configurations: a
    /// workload without a command runs the image's entrypoint and cmd, and takes the image's
    /// environment under its own (a variable the workload sets wins).
    pub async fn apply_image_configs(&self, mut r: ReleaseIn) -> Result<ReleaseIn> {
        for w in &mut r.workloads {
            // An image with no kept configuration (a directory or plain tar, or an unknown
            // image, which the release's own checks refuse) gives nothing.
            let Some(config) = self.config(&w.image).await? else {
                continue;
            };
            if w.command.is_empty() {
                w.command = config
                    .entrypoint
                    .iter()
                    .chain(&config.cmd)
                    .cloned()
                    .collect();
                if w.command.is_empty() {
                    return Err(Error::Invalid(format!(
                        "workload {}: no command, and its image names none",
                        w.name
                    )));
                }
            }
            for kv in &config.env {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                w.env.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        Ok(r)
    }
}
