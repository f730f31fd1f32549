//! Binary deltas between two image tars.
//!
//! The hub calls [`create`] with the old and the new image; the agent calls [`apply`] with the
//! old image (read from disk with seeks), the delta (read once, front to back) and a writer for
//! the new image (written front to back). Applying holds a bounded amount of memory whatever the
//! image size: a few 64 KiB buffers, the compressed control and diff streams of one block (at
//! most [`Limits::max_buffered`]) and one decompression window per stream (at most
//! `2^`[`Limits::max_window_log`] each). The format is described in `docs/DELTA.md`.
//!
//! # Layout
//! - [`format`]: the header, block headers and control records, with every length checked
//! - [`carry`]: the carry form of a diff run (differences as one balanced base-256 number)
//! - `codec`: the per-stream compressors (stored, zstd, lzma) and their bounded decoders
//! - `matcher`: the suffix-array matcher that turns (old, new) into copy-with-diff and literal runs
//! - `create`, `apply`: the two directions; `apply_file` writes the result atomically
//!
//! Invariant: [`apply`] checks the base's size and SHA-256 before writing a byte, and returns
//! `Ok` only if the bytes it wrote have exactly the size and SHA-256 recorded in the delta.
//! A caller that writes to a temporary file and renames it on `Ok` (as [`apply_file`] does)
//! therefore never exposes a partial or wrong image.

mod apply;
pub mod carry;
mod codec;
mod create;
pub mod format;
mod matcher;

use std::io;
use std::path::PathBuf;

pub use apply::{apply, apply_file, Applied};
pub use create::{create, create_from_bytes, Options, Stats};

/// Bounds a decoder enforces on a delta it did not make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest target image accepted, in bytes.
    pub max_target_size: u64,
    /// The largest decompression window (log2 bytes) of any stream, zstd or lzma.
    pub max_window_log: u32,
    /// The largest compressed control + diff streams of one block, held in memory while the
    /// literal stream is read.
    pub max_buffered: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_target_size: 16 << 30,
            max_window_log: format::MAX_WINDOW_LOG,
            max_buffered: format::MAX_BUFFERED,
        }
    }
}

/// What went wrong creating or applying a delta.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not a fleet delta (bad magic)")]
    NotADelta,
    #[error("unsupported delta format version {0}")]
    UnsupportedVersion(u8),
    #[error("delta truncated while reading {0}")]
    Truncated(&'static str),
    #[error("malformed delta: {0}")]
    Malformed(&'static str),
    #[error("delta {what} is {value}, above the limit {limit}")]
    OutOfBounds {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("delta was made for another base image: expects {expected_size} bytes with sha256 {expected}, found {found_size} bytes with sha256 {found}")]
    WrongBase {
        expected: String,
        expected_size: u64,
        found: String,
        found_size: u64,
    },
    #[error("unknown compression method {0} in delta")]
    UnknownMethod(u8),
    #[error("{stream} stream needs a decompression window above the limit")]
    WindowTooLarge { stream: &'static str },
    #[error("corrupt {stream} stream: {source}")]
    Corrupt {
        stream: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("delta would write past the declared target size of {target_size} bytes")]
    WritePastTarget { target_size: u64 },
    #[error("delta copies from beyond the end of the base image")]
    ReadPastBase,
    #[error("applied image does not match the delta's target: expected {expected_size} bytes with sha256 {expected}, got {found_size} bytes with sha256 {found}")]
    TargetMismatch {
        expected: String,
        expected_size: u64,
        found: String,
        found_size: u64,
    },
    #[error("trailing bytes after the end of the delta")]
    TrailingData,
    #[error("{what} of {size} bytes is too large for this codec (limit {limit})")]
    InputTooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { context, source }
}
