//! Instance records on disk, shared by both runtimes: one JSON file per instance in a state
//! directory, each written atomically (temp + fsync + rename + directory fsync), so a power cut
//! leaves either the old record or the new one, never a torn file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use super::RuntimeError;

/// Writes a file atomically: temp + fsync + rename + directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of `<id>.json` instance records.
#[derive(Debug, Clone)]
pub struct RecordDir {
    dir: PathBuf,
}

/// What [`RecordDir::load_all`] found.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The records that decoded, by file name.
    pub records: Vec<T>,
    /// Files that did not decode.
    pub unreadable: Vec<PathBuf>,
}

impl RecordDir {
    /// Records in `dir` (which must exist).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The file of instance `id`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the record of instance `id` atomically.
    pub fn save<T: Serialize>(&self, id: &str, rec: &T) -> Result<(), RuntimeError> {
        let path = self.path(id);
        let bytes = serde_json::to_vec(rec).map_err(|e| RuntimeError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes).map_err(io(&path))
    }

    /// The record of instance `id`, if present and readable.
    pub fn load<T: DeserializeOwned>(&self, id: &str) -> Option<T> {
        serde_json::from_slice(&std::fs::read(self.path(id)).ok()?).ok()
    }

    /// Every record, in file-name order, and the files that did not decode.
    pub fn load_all<T: DeserializeOwned>(&self) -> Result<Loaded<T>, RuntimeError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
            .collect();
        paths.sort();
        let mut out = Loaded {
            records: Vec::new(),
            unreadable: Vec::new(),
        };
        for p in paths {
            match std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<T>(&b).ok())
            {
                Some(r) => out.records.push(r),
                None => out.unreadable.push(p),
            }
        }
        Ok(out)
    }

    /// Deletes the record of instance `id`; a missing one is not an error.
    pub fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_unreadable_files_are_reported_not_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = RecordDir::new(dir.path());
        records.save("b-1", &vec![2u32]).expect("save");
        records.save("a-1", &vec![1u32]).expect("save");
        std::fs::write(records.path("c-1"), b"{torn").expect("write");
        assert_eq!(records.load::<Vec<u32>>("a-1"), Some(vec![1]));
        let all = records.load_all::<Vec<u32>>().expect("load_all");
        assert_eq!(all.records, vec![vec![1], vec![2]]);
        assert_eq!(all.unreadable, vec![records.path("c-1")]);
        assert!(!dir.path().join("a-1.tmp").exists(), "no temp file is left");
        records.remove("a-1").expect("remove");
        records.remove("a-1").expect("removing twice is fine");
        assert_eq!(records.load::<Vec<u32>>("a-1"), None);
    }
}
