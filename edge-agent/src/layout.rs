//! Where things live under the data directory (docs/AGENT.md, "Data directory").

use std::path::{Path, PathBuf};

/// The data directory's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.to_path_buf(),
        }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite store.
    pub fn db(&self) -> PathBuf {
        self.root.join("agent.db")
    }

    /// Verified, unpacked images (and `partial/` downloads).
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The process runtime's instance records.
    pub fn runtime(&self) -> PathBuf {
        self.root.join("runtime")
    }

    /// OCI bundles, records and runc's own state.
    pub fn oci(&self) -> PathBuf {
        self.root.join("runtime-oci")
    }

    /// Workload logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Application update holds: a workload creates `holds/<name>` to defer its own swap.
    pub fn holds(&self) -> PathBuf {
        self.root.join("holds")
    }
}
