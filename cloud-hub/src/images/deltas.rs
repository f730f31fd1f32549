//! The delta cache (`docs/HUB.md`, "Deltas"): `fleet_delta` deltas between two stored images,
//! made on demand in the background and kept on disk as `<deltas>/<base>-<target>.delta`.
//!
//! - **Once per pair.** A request for a pair being made joins its job (a `watch` channel);
//!   it never starts a second one.
//! - **Bounded.** At most `concurrency` jobs run at once (a semaphore) and at most
//!   `max_pending` wait; images over `max_image_bytes` are not diffed (the generator holds
//!   both and a suffix array, about 6 × the base); each job runs in its own process (the hub
//!   binary's `delta-generate`), killed past `generate_secs`, so neither its time nor its peak
//!   memory stays with the hub. The cache is bounded by `cache_bytes`, oldest used first out.
//! - **Failures are remembered** for `retry_failed_secs`, so a pair that cannot be made is not
//!   made again on every request.
//! - **Atomic.** The delta is written in `tmp/`, synced and renamed into place: a file under
//!   its final name is complete. `tmp/` is cleared at start.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use protocol::Digest;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use super::blob_path;

#[cfg(test)]
#[path = "deltas_tests.rs"]
mod tests;

/// The delta cache's bounds (`[deltas]` in the hub's config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DeltaConfig {
    /// Deltas generated at once.
    pub concurrency: usize,
    /// Pairs waiting for a generator; more are answered 503 until one finishes.
    pub max_pending: usize,
    /// Largest image (uncompressed tar) either side of a delta may be.
    pub max_image_bytes: u64,
    /// A generation running longer is killed, and the pair remembered as failed.
    pub generate_secs: u64,
    /// Bytes of deltas kept on disk; the least recently served go first.
    pub cache_bytes: u64,
    /// How long a failed pair is answered 404 before it is tried again.
    pub retry_failed_secs: u64,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        Self {
            concurrency: 1,
            max_pending: 16,
            max_image_bytes: 256 << 20,
            generate_secs: 900,
            cache_bytes: 2 << 30,
            retry_failed_secs: 600,
        }
    }
}

/// What the cache can say about a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The delta, complete, at this path.
    Ready(PathBuf),
    /// Being made (or waiting for a generator): ask again later.
    Generating,
    /// It cannot be made (why); the client takes the full blob.
    Unavailable(String),
}

type Key = (Digest, Digest);
type Outcome = Option<Result<(), String>>;

#[derive(Debug, Default)]
struct Jobs {
    running: HashMap<Key, watch::Receiver<Outcome>>,
    failed: HashMap<Key, (Instant, String)>,
}

/// The delta cache. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeltaCache {
    dir: PathBuf,
    blobs_dir: PathBuf,
    cfg: DeltaConfig,
    generator: PathBuf,
    permits: Arc<Semaphore>,
    jobs: Arc<Mutex<Jobs>>,
}

impl DeltaCache {
    /// A cache in `dir` over the blobs in `blobs_dir`; `generator` is the hub binary (run as
    /// `generator delta-generate OLD NEW OUT`). Clears what an interrupted run left in `tmp/`.
    pub fn open(
        dir: &Path,
        blobs_dir: &Path,
        cfg: DeltaConfig,
        generator: PathBuf,
    ) -> std::io::Result<Self> {
        let tmp = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            blobs_dir: blobs_dir.to_path_buf(),
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            cfg,
            generator,
            jobs: Arc::default(),
        })
    }

    /// Where the delta of a pair lives once made.
    pub fn path(&self, base: &Digest, target: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.delta", base.hex(), target.hex()))
    }

    /// Removes every cached delta whose base or target `keep` refuses (by hex digest); returns
    /// how many.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pair) = name.strip_suffix(".delta") else {
                continue;
            };
            if !pair.split('-').all(&keep) && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Removes every cached delta from or to `digest` (its image was deleted); returns how many.
    pub fn forget(&self, digest: &Digest) -> usize {
        let hex = digest.hex();
        self.retain(|d| d != hex)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The delta from `base` to `target` (both stored blobs): ready, being made (started now if
    /// needed, waited for at most `wait`), or not to be had.
    pub async fn lookup(&self, base: &Digest, target: &Digest, wait: Duration) -> Lookup {
        let path = self.path(base, target);
        if path.is_file() {
            // Served now: the last to be evicted.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()));
            return Lookup::Ready(path);
        }
        let key = (*base, *target);
        let mut rx = {
            let mut jobs = self.lock();
            let retry = Duration::from_secs(self.cfg.retry_failed_secs);
            if let Some((at, why)) = jobs.failed.get(&key) {
                if at.elapsed() < retry {
                    return Lookup::Unavailable(why.clone());
                }
                jobs.failed.remove(&key);
            }
            match jobs.running.get(&key) {
                Some(rx) => rx.clone(),
                None if jobs.running.len() >= self.cfg.max_pending => return Lookup::Generating,
                None => {
                    let (tx, rx) = watch::channel(None);
                    jobs.running.insert(key, rx.clone());
                    tokio::spawn(self.clone().run_job(key, tx));
                    rx
                }
            }
        };
        let _ = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        let outcome = rx.borrow().clone();
        match outcome {
            Some(Ok(())) if path.is_file() => Lookup::Ready(path),
            Some(Ok(())) => Lookup::Generating, // evicted in between: made again on the next ask
            Some(Err(why)) => Lookup::Unavailable(why),
            None => Lookup::Generating,
        }
    }

    async fn run_job(self, key: Key, tx: watch::Sender<Outcome>) {
        let result = match self.permits.clone().acquire_owned().await {
            Ok(_permit) => self.generate(&key).await,
            Err(e) => Err(format!("generator closed: {e}")),
        };
        let mut jobs = self.lock();
        match &result {
            Ok(()) => tracing::info!(base = %key.0, target = %key.1, "delta generated"),
            Err(why) => {
                tracing::warn!(base = %key.0, target = %key.1, %why, "delta not generated");
                jobs.failed.insert(key, (Instant::now(), why.clone()));
            }
        }
        jobs.running.remove(&key);
        let _ = tx.send(Some(result));
    }

    async fn generate(&self, (base, target): &Key) -> Result<(), String> {
        let work = self
            .dir
            .join("tmp")
            .join(format!("{}-{}", base.hex(), target.hex()));
        let result = self.generate_in(&work, base, target).await;
        let _ = tokio::fs::remove_dir_all(&work).await;
        result
    }

    async fn generate_in(&self, work: &Path, base: &Digest, target: &Digest) -> Result<(), String> {
        let (old, new, out) = (
            work.join("old.tar"),
            work.join("new.tar"),
            work.join("delta"),
        );
        let (blobs, max) = (self.blobs_dir.clone(), self.cfg.max_image_bytes);
        let (b, t, w) = (*base, *target, work.to_path_buf());
        let (o2, n2) = (old.clone(), new.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&w).map_err(|e| format!("{}: {e}", w.display()))?;
            unpack_blob(&blob_path(&blobs, &b), &o2, max)?;
            unpack_blob(&blob_path(&blobs, &t), &n2, max)
        })
        .await
        .map_err(|e| format!("unpacking task: {e}"))??;
        let mut child = tokio::process::Command::new(&self.generator)
            .arg("delta-generate")
            .args([&old, &new, &out])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.generator.display()))?;
        let mut stderr = child.stderr.take();
        let limit = Duration::from_secs(self.cfg.generate_secs);
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(s) => s.map_err(|e| format!("waiting for the generator: {e}"))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(format!("generation took longer than {limit:?}"));
            }
        };
        if !status.success() {
            let mut msg = String::new();
            if let Some(s) = stderr.as_mut() {
                use tokio::io::AsyncReadExt as _;
                let _ = s.take(4096).read_to_string(&mut msg).await;
            }
            return Err(format!("generator {status}: {}", msg.trim()));
        }
        let fin = self.path(base, target);
        let this = self.clone();
        let keep = fin.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::rename(&out, &fin).map_err(|e| format!("{}: {e}", fin.display()))?;
            let _ = std::fs::File::open(&this.dir).and_then(|d| d.sync_all());
            this.evict(&keep);
            Ok(())
        })
        .await
        .map_err(|e| format!("storing task: {e}"))?
    }

    /// Removes the least recently served deltas until the cache fits its budget (`keep`, the
    /// one just made, stays).
    fn evict(&self, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "delta"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.cfg.cache_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), "delta evicted");
                total -= len;
            }
        }
    }
}

/// Decompresses a stored blob into `out`, refusing more than `max` bytes.
fn unpack_blob(blob: &Path, out: &Path, max: u64) -> Result<(), String> {
    let ctx = |e: std::io::Error| format!("{}: {e}", blob.display());
    let f = std::fs::File::open(blob).map_err(ctx)?;
    let mut dec = zstd::stream::read::Decoder::new(f)
        .map_err(ctx)?
        .take(max + 1);
    let mut file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let n = std::io::copy(&mut dec, &mut file).map_err(ctx)?;
    if n > max {
        return Err(format!(
            "image over the delta size limit of {max} bytes (max_image_bytes)"
        ));
    }
    Ok(())
}

/// `cloud-hub delta-generate OLD NEW OUT`: the generator's process (see the module doc).
pub fn generate_file(old: &Path, new: &Path, out: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    fleet_delta::create(old, new, &mut w, &fleet_delta::Options::default())
        .context("creating the delta")?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().context("syncing the delta")?;
    Ok(())
}
