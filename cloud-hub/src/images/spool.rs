//! Where an import keeps file content while it flattens layers: one temporary file per import
//! (next to the blobs on the hub), appended to as entries arrive, so memory holds the tree's
//! paths and offsets, never its files. Small files stay inline.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;

use anyhow::Context as _;

/// Files up to this size are kept in memory.
const INLINE_MAX: u64 = 16 << 10;

/// The content of one file of a flattened tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Held in memory.
    Inline(Vec<u8>),
    /// A range of the import's [`Spool`].
    Spooled {
        /// Where it starts.
        offset: u64,
        /// How long it is.
        len: u64,
    },
}

impl Content {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Inline(d) => d.len() as u64,
            Content::Spooled { len, .. } => *len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The temporary file of one import.
#[derive(Debug, Default)]
pub struct Spool {
    dir: Option<PathBuf>,
    file: RefCell<Option<BufWriter<File>>>,
    len: Cell<u64>,
}

impl Spool {
    /// A spool in `dir` (the system's temporary directory when `None`), made at first use.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            ..Self::default()
        }
    }

    /// Reads `size` bytes of `r` into a [`Content`].
    pub fn take(&self, r: &mut dyn Read, size: u64) -> anyhow::Result<Content> {
        if size <= INLINE_MAX {
            let mut data = Vec::with_capacity(size as usize);
            r.take(size).read_to_end(&mut data)?;
            return Ok(Content::Inline(data));
        }
        let mut slot = self.file.borrow_mut();
        if slot.is_none() {
            let f = match &self.dir {
                Some(d) => tempfile::tempfile_in(d),
                None => tempfile::tempfile(),
            }
            .context("creating the import's spool file")?;
            *slot = Some(BufWriter::with_capacity(256 << 10, f));
        }
        let w = slot.as_mut().context("spool")?;
        let offset = self.len.get();
        let n = std::io::copy(&mut r.take(size), w).context("writing the import's spool file")?;
        if n != size {
            anyhow::bail!("a file of {size} bytes ends after {n}");
        }
        self.len.set(offset + n);
        Ok(Content::Spooled { offset, len: n })
    }

    /// A reader of `c`.
    pub fn reader<'a>(&'a self, c: &'a Content) -> anyhow::Result<Box<dyn Read + 'a>> {
        match c {
            Content::Inline(d) => Ok(Box::new(&d[..])),
            Content::Spooled { offset, len } => {
                let mut slot = self.file.borrow_mut();
                let w = slot.as_mut().context("spooled content without a spool")?;
                w.flush()?;
                let file = w.get_ref().try_clone()?;
                Ok(Box::new(RangeReader {
                    file,
                    pos: *offset,
                    end: offset + len,
                }))
            }
        }
    }
}

struct RangeReader {
    file: File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}
