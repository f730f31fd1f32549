//! Image import: an uploaded tar, `docker save` archive or OCI layout becomes a deterministic
//! tar, stored as a zstd blob, and recorded (idempotent on digest; one architecture per digest).

use std::path::PathBuf;

use bytes::Bytes;
use protocol::Arch;
use serde_json::json;

use super::{blocking, Error, Result, SharedClock};
use crate::images::{self, ImportSource};
use crate::model::{ImageRow, TokenInfo};
use crate::store::Store;
use crate::types::ImportQuery;

/// The image service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Images {
    store: Store,
    clock: SharedClock,
    blobs_dir: PathBuf,
}

impl Images {
    /// Images stored under `blobs_dir`.
    pub fn new(store: Store, clock: SharedClock, blobs_dir: PathBuf) -> Self {
        Self {
            store,
            clock,
            blobs_dir,
        }
    }

    /// Where blobs live (served under `/v1/blobs`).
    pub fn blobs_dir(&self) -> &std::path::Path {
        &self.blobs_dir
    }

    /// All images.
    pub async fn list(&self) -> Result<Vec<ImageRow>> {
        let store = self.store.clone();
        blocking(move || Ok(store.images()?)).await
    }

    /// Imports an archive.
    pub async fn import(&self, who: &TokenInfo, q: ImportQuery, body: Bytes) -> Result<ImageRow> {
        if q.name.is_empty() || q.name.len() > 128 {
            return Err(Error::Invalid("image name must be 1-128 bytes".into()));
        }
        let arch = q
            .arch
            .or_else(Arch::host)
            .ok_or_else(|| Error::Invalid("arch required".into()))?;
        let format = q.format.clone().unwrap_or_else(|| "tar".into());
        if !matches!(format.as_str(), "tar" | "docker" | "oci") {
            return Err(Error::Invalid(format!(
                "unknown format {format:?} (tar, docker, oci)"
            )));
        }
        let blobs = self.blobs_dir.clone();
        let info = blocking(move || {
            let tmp = tempfile::NamedTempFile::new_in(&blobs)
                .map_err(|e| Error::Internal(format!("creating an upload file: {e}")))?;
            std::fs::write(tmp.path(), &body)
                .map_err(|e| Error::Internal(format!("writing an upload file: {e}")))?;
            let src = match format.as_str() {
                "docker" => ImportSource::DockerSave(tmp.path().into()),
                "oci" => ImportSource::OciLayout(tmp.path().into()),
                _ => ImportSource::Tar(tmp.path().into()),
            };
            images::import(&blobs, &src)
                .map_err(|e| Error::Invalid(format!("import failed: {e:#}")))
        })
        .await?;
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
        Ok(row)
    }
}
