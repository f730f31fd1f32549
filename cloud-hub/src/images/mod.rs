//! Images (DESIGN §3.6): imported from a directory tree, a tar, a `docker save` archive or an OCI
//! image layout (what an input is: `formats.rs`), normalised into a deterministic tar (sorted
//! paths, mtime 0, uid/gid 0, modes kept, no device nodes), whose SHA-256 is the image digest.
//! Stored zstd-compressed as `<blobs>/<hex>.tar.zst`, written atomically, with the image's
//! configuration beside it (`<hex>.config.json`).
//!
//! Layers (docker save, OCI) are flattened in order with whiteouts applied (`layer.rs`):
//! `.wh.<name>` deletes `<name>`, `.wh..wh..opq` empties its directory. The same content through
//! any import path gives the same digest. Layers are streamed (gzip and zstd included) through a
//! [`Budget`] that bounds the expanded bytes and entries and stops when the client goes; file
//! content waits in the budget's spool file (`spool.rs`), and the deterministic tar and its
//! compressed form are streamed to temporary files, never held whole. Every OCI blob is checked
//! against its digest, every docker save layer against the configuration's `diff_ids`.

pub mod deltas;
mod dir;
pub mod formats;
mod layer;
mod spool;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use protocol::{Arch, Digest};
use sha2::{Digest as _, Sha256};

pub use dir::write_dir_tar;
use formats::DockerImage;
pub use formats::{detect, resolve, Format, ImageConfig};
use layer::clean;
pub use layer::{apply_layer, check_links, Budget, Limits, Metered, Node, Tree};
pub use spool::{Content, Spool};

/// Where an import comes from.
#[derive(Debug, Clone)]
pub enum ImportSource {
    /// A directory tree.
    Dir(PathBuf),
    /// A plain tar of the root file system.
    Tar(PathBuf),
    /// A `docker save` archive.
    DockerSave(PathBuf),
    /// An OCI image layout, as a directory or a tar of one.
    OciLayout(PathBuf),
}

/// What an import produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    /// Digest of the uncompressed tar.
    pub digest: Digest,
    /// Uncompressed size.
    pub size: u64,
    /// Stored size.
    pub compressed_size: u64,
}

/// Largest JSON document (manifest, index) read from an archive.
const MAX_JSON_BYTES: u64 = 1 << 20;

/// Reads a directory into a tree (symlinks kept as links, special files refused).
pub fn tree_from_dir(root: &Path) -> anyhow::Result<Tree> {
    use std::os::unix::fs::PermissionsExt;
    let mut tree = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777 & !0o7000;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?.to_string_lossy().into_owned();
                tree.insert(rel, Node::Symlink { target });
            } else if meta.is_dir() {
                tree.insert(rel, Node::Dir { mode });
                stack.push(path);
            } else if meta.is_file() {
                tree.insert(
                    rel,
                    Node::File {
                        mode,
                        data: Content::Inline(std::fs::read(&path)?),
                    },
                );
            } else {
                bail!(
                    "{} is a special file; images hold files, directories and symlinks only",
                    path.display()
                );
            }
        }
    }
    Ok(tree)
}

/// Writes `tree` as a deterministic tar: sorted paths, parents implied by their entries,
/// mtime 0, uid/gid 0, no user or group names.
pub fn deterministic_tar(tree: &Tree) -> anyhow::Result<Vec<u8>> {
    write_deterministic_tar(tree, Vec::new())
}

/// [`deterministic_tar`] into any writer; returns the writer.
pub fn write_deterministic_tar<W: Write>(tree: &Tree, out: W) -> anyhow::Result<W> {
    write_tar(tree, &Spool::default(), out)
}

/// [`write_deterministic_tar`] of a tree whose content may be in `spool`.
fn write_tar<W: Write>(tree: &Tree, spool: &Spool, out: W) -> anyhow::Result<W> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    for (path, node) in tree {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match node {
            Node::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Node::File { mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len());
                b.append_data(&mut h, path, spool.reader(data)?)?;
            }
            Node::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// Calls `f` with the entry `name` of the tar file `archive`, streamed.
fn with_archive_entry<T>(
    archive: &Path,
    name: &str,
    f: impl FnOnce(&mut dyn Read) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut a = tar::Archive::new(BufReader::new(file));
    let want = clean(name);
    for e in a.entries()? {
        let mut e = e?;
        if clean(&e.path()?.to_string_lossy()) == want {
            return f(&mut e);
        }
    }
    bail!("{} has no {name}", archive.display())
}

/// Calls `f` with the file `name` of an OCI layout given as a directory or a tar.
fn with_layout_file<T>(
    src: &Path,
    name: &str,
    f: impl FnOnce(&mut dyn Read) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if src.is_dir() {
        let path = src.join(name);
        let mut file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        f(&mut file)
    } else {
        with_archive_entry(src, name, f)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(r: &mut dyn Read, what: &str) -> anyhow::Result<T> {
    let mut v = Vec::new();
    r.take(MAX_JSON_BYTES + 1).read_to_end(&mut v)?;
    if v.len() as u64 > MAX_JSON_BYTES {
        bail!("{what} is larger than {MAX_JSON_BYTES} bytes");
    }
    serde_json::from_slice(&v).with_context(|| format!("{what} is not a valid document"))
}

/// A layer as stored, decompressed on the fly when it starts with the gzip or zstd magic.
fn layer_stream<'a>(r: impl Read + 'a) -> std::io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::new(r);
    let head = br.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(br)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(br)?))
    } else {
        Ok(Box::new(br))
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn oci_hex(digest: &str) -> anyhow::Result<&str> {
    let hex = digest.strip_prefix("sha256:").context("digest")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("bad digest {digest:?}");
    }
    Ok(hex)
}

/// Calls `f` with an OCI blob, then checks the blob matched its digest (read to its end).
fn with_oci_blob<T>(
    src: &Path,
    digest: &str,
    f: impl FnOnce(&mut dyn Read) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let hex = oci_hex(digest)?.to_string();
    with_layout_file(src, &format!("blobs/sha256/{hex}"), |r| {
        let mut h = Hashing {
            inner: r,
            hasher: Sha256::new(),
        };
        let out = f(&mut h)?;
        std::io::copy(&mut h, &mut std::io::sink())?;
        if hex::encode(h.hasher.finalize()) != hex {
            bail!("blob {digest} does not match its digest");
        }
        Ok(out)
    })
}

/// Flattens any import source into a tree, within `budget`; refuses a tree whose links an
/// agent would refuse.
pub fn load(source: &ImportSource, budget: &Budget) -> anyhow::Result<Tree> {
    Ok(load_image(source, budget, None)?.0)
}

/// [`load`], keeping the image's configuration (docker save, OCI) and picking the platform
/// `want` from a multi-architecture index; an image built for another architecture than
/// `want` is refused.
pub fn load_image(
    source: &ImportSource,
    budget: &Budget,
    want: Option<Arch>,
) -> anyhow::Result<(Tree, Option<ImageConfig>)> {
    let mut t = Tree::new();
    let config = match source {
        ImportSource::Dir(p) => {
            t = tree_from_dir(p)?;
            None
        }
        ImportSource::Tar(p) => {
            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            apply_layer(&mut t, BufReader::new(f), budget)?;
            None
        }
        ImportSource::DockerSave(p) => Some(load_docker(p, &mut t, budget, want)?),
        ImportSource::OciLayout(p) => Some(load_oci(p, &mut t, budget, want)?),
    };
    if let (Some(w), Some(c)) = (want, config.as_ref().and_then(|c| c.arch)) {
        if w != c {
            bail!("the image is built for {c}, not {w}");
        }
    }
    check_links(&t)?;
    Ok((t, config))
}

/// A `docker save` archive: each layer's uncompressed content is checked against the
/// configuration's `rootfs.diff_ids`.
fn load_docker(
    p: &Path,
    t: &mut Tree,
    budget: &Budget,
    want: Option<Arch>,
) -> anyhow::Result<ImageConfig> {
    let images: Vec<DockerImage> = with_archive_entry(p, "manifest.json", |r| {
        read_json(r, "docker save manifest.json")
    })?;
    let mut candidates = Vec::new();
    for img in &images {
        let oci: ImageConfiguration =
            with_archive_entry(p, &img.config, |r| read_json(r, "the image configuration"))?;
        let config = ImageConfig::from_oci(&oci)?;
        if want.is_none() || config.arch == want {
            candidates.push((img, oci, config));
        }
    }
    let (img, oci, config) = match candidates.len() {
        1 => candidates.remove(0),
        0 if images.is_empty() => bail!("manifest.json lists no image"),
        0 => bail!(
            "the archive holds no image for {}",
            want.map(|w| w.to_string()).unwrap_or_default()
        ),
        n => bail!("the archive holds {n} images; save one, or choose one with --platform"),
    };
    let diff_ids = oci.rootfs().diff_ids();
    if diff_ids.len() != img.layers.len() {
        bail!(
            "manifest.json lists {} layers, the configuration {}",
            img.layers.len(),
            diff_ids.len()
        );
    }
    for (name, want_id) in img.layers.iter().zip(diff_ids) {
        with_archive_entry(p, name, |r| {
            let mut h = Hashing {
                inner: layer_stream(r)?,
                hasher: Sha256::new(),
            };
            apply_layer(t, &mut h, budget)?;
            std::io::copy(&mut h, &mut std::io::sink())?;
            let got = format!("sha256:{}", hex::encode(h.hasher.finalize()));
            if &got != want_id {
                bail!("its content is {got}, the configuration says {want_id}; nothing was stored");
            }
            Ok(())
        })
        .with_context(|| format!("layer {name}"))?;
    }
    Ok(config)
}

/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

/// An OCI image layout: the index (nested indexes followed) narrowed to `want`, then its
/// manifest, configuration and layers, each blob checked against its digest.
fn load_oci(
    p: &Path,
    t: &mut Tree,
    budget: &Budget,
    want: Option<Arch>,
) -> anyhow::Result<ImageConfig> {
    let mut index: ImageIndex = with_layout_file(p, "index.json", |r| read_json(r, "index.json"))?;
    let mut depth = 0;
    let desc = loop {
        let d = formats::pick(index.manifests(), want)?.clone();
        if !formats::is_index(&d) {
            break d;
        }
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            bail!("image indexes nest more than {MAX_INDEX_DEPTH} deep");
        }
        index = with_oci_blob(p, d.digest().as_ref(), |r| read_json(r, "nested index"))?;
    };
    let manifest: ImageManifest = with_oci_blob(p, desc.digest().as_ref(), |r| {
        read_json(r, "the image manifest")
    })?;
    let oci: ImageConfiguration = with_oci_blob(p, manifest.config().digest().as_ref(), |r| {
        read_json(r, "the image configuration")
    })?;
    let config = ImageConfig::from_oci(&oci)?;
    if want.is_some() && config.arch != want {
        bail!(
            "the image is built for {}, not {}",
            config.arch.map(|a| a.to_string()).unwrap_or_default(),
            want.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    for l in manifest.layers() {
        let d = l.digest().to_string();
        with_oci_blob(p, &d, |r| apply_layer(t, layer_stream(r)?, budget))
            .with_context(|| format!("layer {d}"))?;
    }
    Ok(config)
}

/// Imports an image into `blobs_dir` within `budget`; returns its info. Idempotent.
pub fn import(
    blobs_dir: &Path,
    source: &ImportSource,
    budget: &Budget,
) -> anyhow::Result<ImageInfo> {
    Ok(import_image(blobs_dir, source, budget, None)?.0)
}

/// [`import`] through [`load_image`], returning the image's configuration too.
pub fn import_image(
    blobs_dir: &Path,
    source: &ImportSource,
    budget: &Budget,
    want: Option<Arch>,
) -> anyhow::Result<(ImageInfo, Option<ImageConfig>)> {
    let (tree, config) = load_image(source, budget, want)?;
    Ok((store_spooled(blobs_dir, &tree, &budget.spool)?, config))
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Stores a tree as a blob: the deterministic tar is streamed to a temporary file while hashed,
/// then compressed into a temporary file renamed into place (atomic, fsynced).
pub fn store_tree(blobs_dir: &Path, tree: &Tree) -> anyhow::Result<ImageInfo> {
    store_spooled(blobs_dir, tree, &Spool::default())
}

/// [`store_tree`] of a tree whose content may be in `spool`.
fn store_spooled(blobs_dir: &Path, tree: &Tree, spool: &Spool) -> anyhow::Result<ImageInfo> {
    std::fs::create_dir_all(blobs_dir)?;
    let tar_file = tempfile::tempfile_in(blobs_dir).context("creating a temporary tar")?;
    let w = HashingWriter {
        inner: BufWriter::new(tar_file),
        hasher: Sha256::new(),
        len: 0,
    };
    let mut w = write_tar(tree, spool, w)?;
    w.flush()?;
    let digest = Digest::from_bytes(w.hasher.finalize().into());
    let size = w.len;
    let path = blob_path(blobs_dir, &digest);
    if !path.exists() {
        let mut tar_file = w.inner.into_inner().map_err(|e| e.into_error())?;
        tar_file.rewind()?;
        let mut zst = tempfile::NamedTempFile::new_in(blobs_dir).context("creating a blob")?;
        zstd::stream::copy_encode(BufReader::new(tar_file), &mut zst, 9).context("compressing")?;
        zst.as_file().sync_all()?;
        zst.persist(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        File::open(blobs_dir)?.sync_all()?;
    }
    Ok(ImageInfo {
        digest,
        size,
        compressed_size: std::fs::metadata(&path)?.len(),
    })
}

/// Where an image's configuration is kept, beside its blob.
fn config_path(blobs_dir: &Path, digest: &Digest) -> PathBuf {
    blobs_dir.join(format!("{}.config.json", digest.hex()))
}

/// Keeps an image's configuration beside its blob (written atomically).
pub fn write_config(blobs_dir: &Path, digest: &Digest, c: &ImageConfig) -> std::io::Result<()> {
    let mut f = tempfile::NamedTempFile::new_in(blobs_dir)?;
    serde_json::to_writer(&mut f, c)?;
    f.as_file().sync_all()?;
    f.persist(config_path(blobs_dir, digest))?;
    Ok(())
}

/// The configuration kept for an image; `None` when it has none.
pub fn read_config(blobs_dir: &Path, digest: &Digest) -> std::io::Result<Option<ImageConfig>> {
    match std::fs::read(config_path(blobs_dir, digest)) {
        Ok(v) => Ok(Some(serde_json::from_slice(&v)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where a blob lives.
pub fn blob_path(blobs_dir: &Path, digest: &Digest) -> PathBuf {
    blobs_dir.join(format!("{}.tar.zst", digest.hex()))
}
