//! Images (DESIGN §3.6): imported from a directory tree, a tar, a `docker save` archive or an OCI
//! image layout, normalised into a deterministic tar (sorted paths, mtime 0, uid/gid 0, modes
//! kept, no device nodes), whose SHA-256 is the image digest. Stored zstd-compressed as
//! `<blobs>/<hex>.tar.zst`, written atomically.
//!
//! Layers (docker save, OCI) are flattened in order with whiteouts applied: `.wh.<name>` deletes
//! `<name>`, `.wh..wh..opq` empties its directory. The same content through any import path
//! gives the same digest.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _};
use protocol::Digest;
use sha2::{Digest as _, Sha256};

/// One file-system entry of a flattened image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Content.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Target as written.
        target: String,
    },
}

/// A flattened tree: normalised relative path → node.
pub type Tree = BTreeMap<String, Node>;

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

fn clean(p: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

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
                        data: std::fs::read(&path)?,
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

/// Applies one layer (a tar stream) onto `tree`, handling whiteouts.
pub fn apply_layer(tree: &mut Tree, layer: impl Read) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().context("reading layer")? {
        let mut entry = entry.context("reading layer entry")?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Some(path) = clean(&raw) else {
            if raw.trim_matches(['.', '/']).is_empty() {
                continue;
            }
            bail!("layer entry {raw:?} escapes the root");
        };
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (Some(p.to_string()), n.to_string()),
            None => (None, path.clone()),
        };
        if name == ".wh..wh..opq" {
            let prefix = parent.map(|p| format!("{p}/")).unwrap_or_default();
            // Everything below the directory goes; the directory itself stays.
            tree.retain(|k, _| !k.starts_with(&prefix));
            continue;
        }
        if let Some(victim) = name.strip_prefix(".wh.") {
            let victim = match &parent {
                Some(p) => format!("{p}/{victim}"),
                None => victim.to_string(),
            };
            let sub = format!("{victim}/");
            tree.retain(|k, _| k != &victim && !k.starts_with(&sub));
            continue;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let kind = entry.header().entry_type();
        let node = if kind.is_dir() {
            Node::Dir { mode }
        } else if kind.is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            Node::File { mode, data }
        } else if kind.is_symlink() {
            let target = entry
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            Node::Symlink { target }
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            let target = clean(&target)
                .ok_or_else(|| anyhow::anyhow!("hard link {raw:?} escapes the root"))?;
            match tree.get(&target) {
                Some(n @ Node::File { .. }) => n.clone(),
                _ => bail!("hard link {raw:?} to {target:?}, which is not a file in the image"),
            }
        } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        } else {
            bail!("layer entry {raw:?} is a device node or other special file");
        };
        // Replacing a directory with something else drops what was under it.
        if !matches!(node, Node::Dir { .. }) {
            let sub = format!("{path}/");
            tree.retain(|k, _| !k.starts_with(&sub));
        }
        tree.insert(path, node);
    }
    Ok(())
}

/// Writes `tree` as a deterministic tar: sorted paths, parents implied by their entries,
/// mtime 0, uid/gid 0, no user or group names.
pub fn deterministic_tar(tree: &Tree) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
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
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..])?;
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

fn read_archive_file(archive: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let f =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut a = tar::Archive::new(f);
    for e in a.entries()? {
        let mut e = e?;
        if clean(&e.path()?.to_string_lossy()).as_deref() == clean(name).as_deref() {
            let mut v = Vec::new();
            e.read_to_end(&mut v)?;
            return Ok(v);
        }
    }
    bail!("{} has no {name}", archive.display())
}

/// Reads a file from an OCI layout given as a directory or a tar.
fn layout_file(src: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    if src.is_dir() {
        std::fs::read(src.join(name)).with_context(|| format!("reading {}/{name}", src.display()))
    } else {
        read_archive_file(src, name)
    }
}

fn maybe_gunzip(bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .context("gunzip layer")?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Flattens any import source into a tree.
pub fn load(source: &ImportSource) -> anyhow::Result<Tree> {
    match source {
        ImportSource::Dir(p) => tree_from_dir(p),
        ImportSource::Tar(p) => {
            let mut t = Tree::new();
            apply_layer(
                &mut t,
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
            )?;
            Ok(t)
        }
        ImportSource::DockerSave(p) => {
            let manifest: serde_json::Value =
                serde_json::from_slice(&read_archive_file(p, "manifest.json")?)
                    .context("docker save manifest.json")?;
            let layers = manifest[0]["Layers"]
                .as_array()
                .context("manifest.json has no Layers")?;
            let mut t = Tree::new();
            for l in layers {
                let name = l.as_str().context("layer name")?;
                apply_layer(&mut t, &maybe_gunzip(read_archive_file(p, name)?)?[..])?;
            }
            Ok(t)
        }
        ImportSource::OciLayout(p) => {
            let index: serde_json::Value =
                serde_json::from_slice(&layout_file(p, "index.json")?).context("index.json")?;
            let blob = |digest: &str| -> anyhow::Result<Vec<u8>> {
                let hex = digest.strip_prefix("sha256:").context("digest")?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!("bad digest {digest:?}");
                }
                let data = layout_file(p, &format!("blobs/sha256/{hex}"))?;
                if hex::encode(Sha256::digest(&data)) != hex {
                    bail!("blob {digest} does not match its digest");
                }
                Ok(data)
            };
            let mdesc = index["manifests"][0]["digest"]
                .as_str()
                .context("index.json has no manifest")?;
            let manifest: serde_json::Value =
                serde_json::from_slice(&blob(mdesc)?).context("manifest")?;
            let layers = manifest["layers"]
                .as_array()
                .context("manifest has no layers")?;
            let mut t = Tree::new();
            for l in layers {
                let d = l["digest"].as_str().context("layer digest")?;
                apply_layer(&mut t, &maybe_gunzip(blob(d)?)?[..])?;
            }
            Ok(t)
        }
    }
}

/// Imports an image into `blobs_dir`; returns its info. Idempotent.
pub fn import(blobs_dir: &Path, source: &ImportSource) -> anyhow::Result<ImageInfo> {
    let tree = load(source)?;
    let tar = deterministic_tar(&tree)?;
    store_tar(blobs_dir, &tar)
}

/// Stores an uncompressed tar as a blob.
pub fn store_tar(blobs_dir: &Path, tar: &[u8]) -> anyhow::Result<ImageInfo> {
    std::fs::create_dir_all(blobs_dir)?;
    let digest = Digest::of(tar);
    let path = blob_path(blobs_dir, &digest);
    if !path.exists() {
        let zst = zstd::encode_all(tar, 9).context("compressing")?;
        crate::keys::write_atomic(&path, &zst, 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ImageInfo {
        digest,
        size: tar.len() as u64,
        compressed_size: std::fs::metadata(&path)?.len(),
    })
}

/// Where a blob lives.
pub fn blob_path(blobs_dir: &Path, digest: &Digest) -> PathBuf {
    blobs_dir.join(format!("{}.tar.zst", digest.hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(12345);
            if p.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
            }
            h.set_cksum();
            b.append_data(&mut h, p, *d).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn write_tree(root: &Path) {
        std::fs::create_dir_all(root.join("app/lib")).expect("mkdir");
        std::fs::write(root.join("app/run.sh"), b"#!/bin/sh\n").expect("write");
        std::fs::write(root.join("app/lib/data"), b"data").expect("write");
        use std::os::unix::fs::PermissionsExt;
        for p in ["app", "app/lib"] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        for p in ["app/run.sh", "app/lib/data"] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
    }

    #[test]
    fn the_same_tree_twice_gives_the_same_digest() {
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        write_tree(a.path());
        write_tree(b.path());
        let blobs = tempfile::tempdir().expect("tmp");
        let ia = import(blobs.path(), &ImportSource::Dir(a.path().into())).expect("import");
        let ib = import(blobs.path(), &ImportSource::Dir(b.path().into())).expect("import");
        assert_eq!(ia, ib);
        std::fs::write(b.path().join("app/lib/data"), b"datb").expect("write");
        let ic = import(blobs.path(), &ImportSource::Dir(b.path().into())).expect("import");
        assert_ne!(ia.digest, ic.digest);
    }

    #[test]
    fn docker_save_and_oci_layout_give_the_directory_digest() {
        let dir = tempfile::tempdir().expect("tmp");
        write_tree(&dir.path().join("tree"));
        let blobs = dir.path().join("blobs");
        let want = import(&blobs, &ImportSource::Dir(dir.path().join("tree"))).expect("dir");
        // Two layers: the second adds run.sh and removes a file the first had.
        let l1 = layer(&[
            ("app/", b""),
            ("app/lib/", b""),
            ("app/lib/data", b"data"),
            ("app/old", b"gone"),
        ]);
        let l2 = layer(&[("app/run.sh", b"#!/bin/sh\n"), ("app/.wh.old", b"")]);
        // docker save
        let mut b = tar::Builder::new(Vec::new());
        let manifest =
            br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
        for (p, d) in [
            ("manifest.json", &manifest[..]),
            ("l1/layer.tar", &l1[..]),
            ("l2/layer.tar", &l2[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, p, d).expect("append");
        }
        let docker = dir.path().join("docker.tar");
        std::fs::write(&docker, b.into_inner().expect("tar")).expect("write");
        let got = import(&blobs, &ImportSource::DockerSave(docker)).expect("docker");
        assert_eq!(got.digest, want.digest);
        // OCI layout directory, second layer gzipped.
        let oci = dir.path().join("oci");
        std::fs::create_dir_all(oci.join("blobs/sha256")).expect("mkdir");
        let put = |data: &[u8]| {
            let hex = hex::encode(Sha256::digest(data));
            std::fs::write(oci.join("blobs/sha256").join(&hex), data).expect("write");
            format!("sha256:{hex}")
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &l2).expect("gz");
        let l2gz = gz.finish().expect("gz");
        let d1 = put(&l1);
        let d2 = put(&l2gz);
        let m =
            format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{d1}"}},{{"digest":"{d2}"}}]}}"#);
        let dm = put(m.as_bytes());
        std::fs::write(
            oci.join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{dm}"}}]}}"#),
        )
        .expect("write");
        let got = import(&blobs, &ImportSource::OciLayout(oci)).expect("oci");
        assert_eq!(got.digest, want.digest);
    }

    #[test]
    fn opaque_whiteouts_empty_a_directory() {
        let mut t = Tree::new();
        apply_layer(
            &mut t,
            &layer(&[("d/", b""), ("d/a", b"1"), ("d/b", b"2"), ("e", b"3")])[..],
        )
        .expect("l1");
        apply_layer(
            &mut t,
            &layer(&[("d/.wh..wh..opq", b""), ("d/c", b"4")])[..],
        )
        .expect("l2");
        let keys: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["d", "d/c", "e"]);
    }

    #[test]
    fn escaping_and_special_layer_entries_are_refused() {
        let mut t = Tree::new();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, "dev/null", std::io::empty())
            .expect("append");
        assert!(apply_layer(&mut t, &b.into_inner().expect("tar")[..]).is_err());
        let mut raw = tar::Header::new_gnu();
        raw.as_old_mut().name[..9].copy_from_slice(b"../escape");
        raw.set_size(1);
        raw.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&raw, &b"x"[..]).expect("append");
        assert!(apply_layer(&mut t, &b.into_inner().expect("tar")[..]).is_err());
    }
}
