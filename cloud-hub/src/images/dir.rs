//! A directory written as the deterministic tar ([`super::deterministic_tar`] of
//! [`super::tree_from_dir`], byte for byte) without holding its files: the paths and their
//! metadata are listed first, then each file is streamed from disk into the tar.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use anyhow::{bail, Context as _};

enum Entry {
    Dir { mode: u32 },
    File { mode: u32, size: u64 },
    Symlink { target: String },
}

/// Writes the directory `root` as a deterministic tar into `out`; returns `out`.
pub fn write_dir_tar<W: Write>(root: &Path, out: W) -> anyhow::Result<W> {
    use std::os::unix::fs::PermissionsExt;
    let mut listed = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = e?.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777 & !0o7000;
            let entry = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?.to_string_lossy().into_owned();
                Entry::Symlink { target }
            } else if meta.is_dir() {
                stack.push(path);
                Entry::Dir { mode }
            } else if meta.is_file() {
                Entry::File {
                    mode,
                    size: meta.len(),
                }
            } else {
                bail!(
                    "{} is a special file; images hold files, directories and symlinks only",
                    path.display()
                );
            };
            listed.insert(rel, entry);
        }
    }
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    for (rel, entry) in &listed {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match entry {
            Entry::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{rel}/"), std::io::empty())?;
            }
            Entry::File { mode, size } => {
                let path = root.join(rel);
                let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                let len = f.metadata()?.len();
                if len != *size {
                    bail!("{} changed while it was read", path.display());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(len);
                b.append_data(&mut h, rel, BufReader::new(f))?;
            }
            Entry::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, rel, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}
