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

    /// Creates the data directory if needed and makes it private (0700): `agent.db` holds the
    /// device's secrets, and the workloads' logs and state are nobody else's business.
    pub fn create_private(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
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

    /// Function instances' records (the process and OCI runtimes' own, apart from the
    /// services' so the reconciler never sees an instance the activator started).
    pub fn functions(&self) -> PathBuf {
        self.root.join("functions")
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
