//! Safe unpacking of an image tar into a fresh staging directory (DESIGN §3.6, C25–C28).
//!
//! The archive is walked entry by entry; nothing is delegated to `tar::Archive::unpack`. Refused:
//! absolute paths and `..`; device nodes, FIFOs and other special files; a path seen twice; any
//! entry whose parent is a symlink the archive created (so nothing is ever written through a
//! link); symlinks whose target leaves the root, alone or through a chain of links
//! (`protocol::paths`, the rule the hub's import applies too); hard links to anything but a regular file
//! already unpacked; a PAX `size` that disagrees with the header; and more bytes than the limit.
//! Files are created with `create_new`, which never follows a symlink, and setuid/setgid/sticky
//! bits are dropped.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A refused entry.
    #[error("unsafe archive entry {path:?}: {why}")]
    Unsafe {
        /// Entry path as written in the archive.
        path: String,
        /// What was wrong.
        why: &'static str,
    },
    /// The archive expands past the limit.
    #[error("archive expands past {limit} bytes")]
    TooLarge {
        /// Limit.
        limit: u64,
    },
    /// Reading the archive or writing the tree failed.
    #[error("unpacking into {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Normalises an archive path: relative, no `..`, no root; `.` components dropped.
fn clean(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Unpacks `reader` (an uncompressed tar) into `dest`, which must not exist yet. Returns the
/// bytes of file content written.
pub fn unpack(reader: impl Read, dest: &Path, limit: u64) -> Result<u64, UnpackError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnpackError::Io { path, source }
    };
    fs::create_dir(dest).map_err(io_at(dest))?;
    let mut archive = tar::Archive::new(reader);
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut links: HashSet<PathBuf> = HashSet::new();
    // Every symlink's path and target as text, for the chain check once all are known.
    let mut link_targets: HashMap<String, String> = HashMap::new();
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut written = 0u64;
    for entry in archive.entries().map_err(io_at(dest))? {
        let mut entry = entry.map_err(io_at(dest))?;
        let raw = entry.path().map_err(io_at(dest))?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let unsafe_entry = |why| UnpackError::Unsafe {
            path: shown.clone(),
            why,
        };
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let rel = clean(&raw).ok_or_else(|| unsafe_entry("absolute path or '..'"))?;
        if rel.as_os_str().is_empty() {
            continue; // the root itself ("./")
        }
        if !seen.insert(rel.clone()) {
            return Err(unsafe_entry("duplicate path"));
        }
        if rel.ancestors().skip(1).any(|a| links.contains(a)) {
            return Err(unsafe_entry("parent is a symlink"));
        }
        let header_size = entry.header().size().ok();
        if let Some(pax) = entry.pax_extensions().map_err(io_at(dest))? {
            for ext in pax {
                let ext = ext.map_err(io_at(dest))?;
                if ext.key() == Ok("size") {
                    let pax_size: Option<u64> =
                        ext.value().ok().and_then(|v| v.trim().parse().ok());
                    if pax_size != header_size {
                        return Err(unsafe_entry("PAX size differs from header size"));
                    }
                }
            }
        }
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        if kind.is_dir() {
            match fs::create_dir(&target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && target.is_dir() => {}
                Err(e) => return Err(io_at(&target)(e)),
            }
            fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                .map_err(io_at(&target))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = entry.header().size().map_err(io_at(&target))?;
            if written.saturating_add(size) > limit {
                return Err(UnpackError::TooLarge { limit });
            }
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&target)
                .map_err(io_at(&target))?;
            let n = io::copy(&mut (&mut entry).take(size), &mut f).map_err(io_at(&target))?;
            f.sync_all().map_err(io_at(&target))?;
            written += n;
            files.insert(rel);
        } else if kind.is_symlink() {
            let to = entry
                .link_name()
                .map_err(io_at(&target))?
                .ok_or_else(|| unsafe_entry("symlink without target"))?
                .into_owned();
            let (Some(from), Some(to_text)) = (rel.to_str(), to.to_str()) else {
                return Err(unsafe_entry("symlink path or target is not UTF-8"));
            };
            if !protocol::paths::lexically_inside(from, to_text) {
                return Err(unsafe_entry("symlink escapes the root"));
            }
            link_targets.insert(from.to_string(), to_text.to_string());
            std::os::unix::fs::symlink(&to, &target).map_err(io_at(&target))?;
            links.insert(rel);
        } else if kind.is_hard_link() {
            let to = entry
                .link_name()
                .map_err(io_at(&target))?
                .ok_or_else(|| unsafe_entry("hard link without target"))?;
            let to = clean(&to).ok_or_else(|| unsafe_entry("hard link escapes the root"))?;
            if !files.contains(&to) {
                return Err(unsafe_entry(
                    "hard link to something not unpacked as a file",
                ));
            }
            fs::hard_link(dest.join(&to), &target).map_err(io_at(&target))?;
        } else {
            return Err(unsafe_entry("device node, FIFO or other special file"));
        }
    }
    // Each link stayed inside on its own; now the chains, which later entries could complete.
    protocol::paths::check_links(link_targets.keys().map(String::as_str), |p| {
        link_targets.get(p).map(String::as_str)
    })
    .map_err(|(path, _)| UnpackError::Unsafe {
        path,
        why: "symlink chain resolves outside the root",
    })?;
    sync_dir(dest).map_err(io_at(dest))?;
    Ok(written)
}

/// fsyncs a directory so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // Write the raw name so malicious paths are not sanitised by the builder.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o755);
        h.set_cksum();
        h
    }

    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = header(path, *kind, data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).expect("link name");
                h.set_cksum();
            }
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    fn try_unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<u64, UnpackError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("staging")).expect("mkdir");
        let r = unpack(bytes, &dir.path().join("staging").join("rootfs"), 1 << 20);
        (dir, r)
    }

    fn nothing_outside(dir: &Path) {
        let names: Vec<_> = fs::read_dir(dir)
            .expect("readable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(
            names.iter().all(|n| n == "staging"),
            "created outside: {names:?}"
        );
    }

    use tar::EntryType as T;

    #[test]
    fn a_plain_tree_unpacks() {
        let bytes = archive(&[
            ("app/", T::Directory, b"", None),
            ("app/run.sh", T::Regular, b"#!/bin/sh\necho hi\n", None),
            ("app/link", T::Symlink, b"", Some("run.sh")),
            ("app/hard", T::Link, b"", Some("app/run.sh")),
        ]);
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("s")).expect("mkdir");
        let dest = dir.path().join("s/rootfs");
        let n = unpack(&bytes[..], &dest, 1 << 20).expect("unpacks");
        assert_eq!(n, 18);
        assert_eq!(
            fs::read(dest.join("app/hard")).expect("read"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read_link(dest.join("app/link")).expect("link"),
            Path::new("run.sh")
        );
    }

    #[test]
    fn malicious_shapes_are_refused_and_nothing_lands_outside() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dotdot", archive(&[("../evil", T::Regular, b"x", None)])),
            (
                "absolute",
                archive(&[("/tmp/evil", T::Regular, b"x", None)]),
            ),
            (
                "hardlink outside",
                archive(&[("h", T::Link, b"", Some("../../etc/passwd"))]),
            ),
            (
                "hardlink absolute",
                archive(&[("h", T::Link, b"", Some("/etc/passwd"))]),
            ),
            ("device node", archive(&[("dev", T::Char, b"", None)])),
            ("block device", archive(&[("blk", T::Block, b"", None)])),
            ("fifo", archive(&[("fifo", T::Fifo, b"", None)])),
            (
                "duplicate",
                archive(&[("a", T::Regular, b"1", None), ("a", T::Regular, b"2", None)]),
            ),
            (
                "symlink escape",
                archive(&[("l", T::Symlink, b"", Some("../../.."))]),
            ),
            (
                "symlink absolute",
                archive(&[("l", T::Symlink, b"", Some("/etc"))]),
            ),
            (
                "write through symlink",
                archive(&[
                    ("l", T::Symlink, b"", Some(".")),
                    ("l/x", T::Regular, b"x", None),
                ]),
            ),
            (
                "link chain each inside, together the root's parent",
                archive(&[
                    ("d/", T::Directory, b"", None),
                    ("d/up", T::Symlink, b"", Some("..")),
                    ("top", T::Symlink, b"", Some("d/up/..")),
                ]),
            ),
            (
                "link to a link to '.', then up",
                archive(&[
                    ("a", T::Symlink, b"", Some(".")),
                    ("b", T::Symlink, b"", Some("a/..")),
                ]),
            ),
            (
                "symlink then dir of the same name",
                archive(&[
                    ("d", T::Symlink, b"", Some("e")),
                    ("d", T::Directory, b"", None),
                ]),
            ),
        ];
        for (name, bytes) in cases {
            let (dir, r) = try_unpack(&bytes);
            assert!(
                matches!(r, Err(UnpackError::Unsafe { .. })),
                "{name}: not refused as unsafe: {r:?}"
            );
            nothing_outside(dir.path());
        }
    }

    #[test]
    fn expansion_past_the_limit_is_refused() {
        let big = vec![0u8; 4096];
        let bytes = archive(&[("a", T::Regular, &big, None), ("b", T::Regular, &big, None)]);
        let dir = tempfile::tempdir().expect("tempdir");
        let r = unpack(&bytes[..], &dir.path().join("r"), 6000);
        assert!(matches!(r, Err(UnpackError::TooLarge { .. })), "{r:?}");
    }

    #[test]
    fn pax_size_disagreeing_with_the_header_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        // A PAX header claiming size 1 for an entry whose ustar header says 5.
        let rec = b"10 size=1\n";
        let mut ph = header("././@PaxHeader", T::XHeader, rec.len() as u64);
        ph.set_cksum();
        b.append(&ph, &rec[..]).expect("pax");
        let h = header("f", T::Regular, 5);
        b.append(&h, &b"hello"[..]).expect("file");
        let bytes = b.into_inner().expect("finish");
        let (dir, r) = try_unpack(&bytes);
        assert!(
            matches!(
                r,
                Err(UnpackError::Unsafe {
                    why: "PAX size differs from header size",
                    ..
                })
            ),
            "{r:?}"
        );
        nothing_outside(dir.path());
    }

    #[test]
    fn an_existing_destination_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/tmp", dir.path().join("rootfs")).expect("symlink");
        let bytes = archive(&[("a", T::Regular, b"x", None)]);
        assert!(unpack(&bytes[..], &dir.path().join("rootfs"), 1 << 20).is_err());
    }
}
