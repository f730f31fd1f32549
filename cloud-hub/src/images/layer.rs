//! Flattening layers into a [`Tree`], within a [`Budget`]: bounded expanded bytes and entries,
//! linear time (removing a subtree is a range of the sorted map, never a scan of the whole
//! tree), and cancellable between reads. Entries through a symlink are refused and, once the
//! tree is complete, so is every symlink whose chain leaves the root (`protocol::paths`, the
//! rule the agent's unpack applies): what an agent would refuse is never stored.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};

use super::spool::{Content, Spool};

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
        data: Content,
    },
    /// A symbolic link.
    Symlink {
        /// Target as written.
        target: String,
    },
}

/// A flattened tree: normalised relative path → node.
pub type Tree = BTreeMap<String, Node>;

/// How large an import may grow once decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file content, summed over every layer.
    pub max_bytes: u64,
    /// Archive entries, summed over every layer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_entries: 100_000,
        }
    }
}

/// What one import has used of its [`Limits`], and whether its client has gone.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    cancel: Arc<AtomicBool>,
    /// Decompressed bytes read from every layer (content, headers, long names, PAX data).
    raw: Cell<u64>,
    bytes: Cell<u64>,
    entries: Cell<u64>,
    /// Where file content waits for the tree to be written.
    pub(super) spool: Spool,
}

impl Budget {
    /// A fresh budget; setting `cancel` stops the import at its next read.
    pub fn new(limits: Limits, cancel: Arc<AtomicBool>) -> Self {
        Self {
            limits,
            cancel,
            raw: Cell::new(0),
            bytes: Cell::new(0),
            entries: Cell::new(0),
            spool: Spool::default(),
        }
    }

    /// The same budget, keeping file content in a temporary file in `dir`.
    pub fn spool_in(mut self, dir: PathBuf) -> Self {
        self.spool = Spool::new(Some(dir));
        self
    }

    /// A budget nobody cancels.
    pub fn unlimited_time(limits: Limits) -> Self {
        Self::new(limits, Arc::default())
    }

    /// Headers, long names and PAX records may add this much per entry to the content.
    fn raw_max(&self) -> u64 {
        let l = self.limits;
        l.max_bytes
            .saturating_add(l.max_entries.saturating_mul(4096))
    }

    fn check_cancel(&self) -> std::io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "import cancelled: the client went away",
            ));
        }
        Ok(())
    }

    fn entry(&self) -> anyhow::Result<()> {
        self.check_cancel()?;
        let n = self.entries.get() + 1;
        if n > self.limits.max_entries {
            bail!(
                "the image has more than {} entries",
                self.limits.max_entries
            );
        }
        self.entries.set(n);
        Ok(())
    }

    fn content(&self, size: u64) -> anyhow::Result<()> {
        let n = self.bytes.get().saturating_add(size);
        if n > self.limits.max_bytes {
            bail!("the image expands past {} bytes", self.limits.max_bytes);
        }
        self.bytes.set(n);
        Ok(())
    }

    /// Wraps a decompressed layer stream so every byte read counts.
    pub fn meter<R: Read>(&self, inner: R) -> Metered<'_, R> {
        Metered {
            inner,
            budget: self,
        }
    }
}

/// A reader that counts what it yields against a [`Budget`] and stops once the budget is spent
/// or the import cancelled: a decompression bomb ends at the limit, not in memory.
#[derive(Debug)]
pub struct Metered<'a, R> {
    inner: R,
    budget: &'a Budget,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.budget.check_cancel()?;
        let n = self.inner.read(buf)?;
        let raw = self.budget.raw.get().saturating_add(n as u64);
        if raw > self.budget.raw_max() {
            return Err(std::io::Error::other(format!(
                "the image expands past {} bytes",
                self.budget.raw_max()
            )));
        }
        self.budget.raw.set(raw);
        Ok(n)
    }
}

/// Normalises an archive path: relative, no `..`; `.` and `/` dropped. `None` for `..` or a
/// non-UTF-8 name.
pub(super) fn clean(p: &str) -> Option<String> {
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

/// Removes everything strictly below `dir` (everything for `None`). The keys below a directory
/// are one contiguous range of the sorted map, so this costs what it removes.
fn remove_below(tree: &mut Tree, dir: Option<&str>) {
    let Some(dir) = dir else {
        tree.clear();
        return;
    };
    let prefix = format!("{dir}/");
    let doomed: Vec<String> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        tree.remove(&k);
    }
}

/// Whether some proper ancestor of `path` is a symlink in `tree`.
fn under_a_symlink(tree: &Tree, path: &str) -> bool {
    path.match_indices('/')
        .any(|(i, _)| matches!(tree.get(&path[..i]), Some(Node::Symlink { .. })))
}

/// Applies one layer (an uncompressed tar stream) onto `tree`, handling whiteouts.
pub fn apply_layer(tree: &mut Tree, layer: impl Read, budget: &Budget) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(budget.meter(layer));
    for entry in archive.entries().context("reading layer")? {
        let mut entry = entry.context("reading layer entry")?;
        budget.entry()?;
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
            // Everything below the directory goes; the directory itself stays.
            remove_below(tree, parent.as_deref());
            continue;
        }
        if let Some(victim) = name.strip_prefix(".wh.") {
            let victim = match &parent {
                Some(p) => format!("{p}/{victim}"),
                None => victim.to_string(),
            };
            remove_below(tree, Some(&victim));
            tree.remove(&victim);
            continue;
        }
        if under_a_symlink(tree, &path) {
            bail!("layer entry {raw:?} lies under a symlink; agents write nothing through links");
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let kind = entry.header().entry_type();
        let node = if kind.is_dir() {
            Node::Dir { mode }
        } else if kind.is_file() {
            let size = entry.header().size()?;
            budget.content(size)?;
            let data = budget.spool.take(&mut entry, size)?;
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
                Some(n @ Node::File { data, .. }) => {
                    budget.content(data.len())?;
                    n.clone()
                }
                _ => bail!("hard link {raw:?} to {target:?}, which is not a file in the image"),
            }
        } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        } else {
            bail!("layer entry {raw:?} is a device node or other special file");
        };
        // Replacing a directory with something else drops what was under it.
        if !matches!(node, Node::Dir { .. }) {
            remove_below(tree, Some(&path));
        }
        tree.insert(path, node);
    }
    Ok(())
}

/// Refuses a tree an agent would refuse to unpack: a symlink whose target is absolute or leaves
/// the root on its own (lexically), or whose chain of links leaves it.
pub fn check_links(tree: &Tree) -> anyhow::Result<()> {
    let target = |p: &str| match tree.get(p) {
        Some(Node::Symlink { target }) => Some(target.as_str()),
        _ => None,
    };
    let links = tree.iter().filter_map(|(p, n)| match n {
        Node::Symlink { target } => Some((p.as_str(), target.as_str())),
        _ => None,
    });
    for (path, to) in links.clone() {
        if !protocol::paths::lexically_inside(path, to) {
            bail!("symlink {path:?} -> {to:?} escapes the image root");
        }
    }
    protocol::paths::check_links(links.map(|(p, _)| p), target)
        .map_err(|(path, e)| anyhow::anyhow!("symlink {path:?} {e}; agents refuse such an image"))
}
