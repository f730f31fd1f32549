//! Applying a delta (the agent's side): the base read with seeks, the delta read once, the
//! target written front to back; memory bounded by [`Limits`], not by the image.

use crate::carry::Carry;
use crate::codec::{classify, Decoder};
use crate::format::{read_exact, read_u8, BlockHeader, ControlReader, Header, TAG_BLOCK, TAG_END};
use crate::{io_err, Error, Limits, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

const CHUNK: usize = 64 << 10;

/// What [`apply`] wrote: the target's size and digest, both checked against the delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub target_size: u64,
    pub target_sha256: [u8; 32],
    pub base_sha256: [u8; 32],
}

/// Applies `delta` to the base `old`, writing the target to `out`.
///
/// Checks the base's size and SHA-256 against the delta before writing anything, and returns
/// `Ok` only if what was written has the target size and SHA-256 the delta records. On `Err`
/// whatever was written to `out` must be discarded.
pub fn apply<O, D, W>(old: &mut O, delta: D, out: W, limits: &Limits) -> Result<Applied>
where
    O: Read + Seek,
    D: Read,
    W: Write,
{
    let mut delta = BufReader::with_capacity(CHUNK, delta);
    let header = Header::read(&mut delta)?;
    if header.target_size > limits.max_target_size {
        return Err(Error::OutOfBounds {
            what: "target size",
            value: header.target_size,
            limit: limits.max_target_size,
        });
    }
    check_base(old, &header)?;
    old.seek(SeekFrom::Start(0))
        .map_err(io_err("seeking in the base image"))?;
    let mut base = Base {
        reader: BufReader::with_capacity(CHUNK, old),
        pos: 0,
        cursor: 0,
        size: header.base_size,
    };
    let mut out = Target {
        inner: BufWriter::with_capacity(CHUNK, out),
        sha: Sha256::new(),
        written: 0,
    };
    loop {
        match read_u8(&mut delta, "block tag")? {
            TAG_END => break,
            TAG_BLOCK => {
                let remaining = header.target_size - out.written;
                let block = BlockHeader::read(&mut delta, remaining, limits.max_buffered)?;
                apply_block(
                    &block,
                    &mut delta,
                    &mut base,
                    &mut out,
                    limits.max_window_log,
                )?;
            }
            _ => return Err(Error::Malformed("unknown block tag")),
        }
    }
    if out.written != header.target_size {
        return Err(Error::Malformed("blocks end before the target size"));
    }
    let mut probe = [0u8; 1];
    if delta.read(&mut probe).map_err(io_err("reading delta"))? != 0 {
        return Err(Error::TrailingData);
    }
    out.inner
        .flush()
        .map_err(io_err("writing the target image"))?;
    let found: [u8; 32] = out.sha.finalize().into();
    if found != header.target_sha256 {
        return Err(Error::TargetMismatch {
            expected: hex::encode(header.target_sha256),
            expected_size: header.target_size,
            found: hex::encode(found),
            found_size: out.written,
        });
    }
    Ok(Applied {
        target_size: header.target_size,
        target_sha256: found,
        base_sha256: header.base_sha256,
    })
}

/// Reads the whole base once and compares its size and SHA-256 with the delta's header.
fn check_base(old: &mut (impl Read + Seek), header: &Header) -> Result<()> {
    old.seek(SeekFrom::Start(0))
        .map_err(io_err("seeking in the base image"))?;
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match old.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading the base image")(e)),
        };
        sha.update(&buf[..n]);
        size += n as u64;
    }
    let found: [u8; 32] = sha.finalize().into();
    if size != header.base_size || found != header.base_sha256 {
        return Err(Error::WrongBase {
            expected: hex::encode(header.base_sha256),
            expected_size: header.base_size,
            found: hex::encode(found),
            found_size: size,
        });
    }
    Ok(())
}

fn apply_block<D: BufRead, O: Read + Seek, W: Write>(
    block: &BlockHeader,
    delta: &mut D,
    base: &mut Base<O>,
    out: &mut Target<W>,
    window_log: u32,
) -> Result<()> {
    let control_packed = read_vec(delta, block.control.comp_len, "control stream")?;
    let diff_packed = read_vec(delta, block.diff.comp_len, "diff stream")?;
    let control_raw = {
        let method = block.control.method;
        let mut decoder = Decoder::new("control", method, &control_packed[..], window_log)?
            .take(block.control.raw_len);
        let mut raw = vec![0u8; block.control.raw_len as usize];
        stream_exact(&mut decoder, &mut raw, "control")?;
        finish("control", decoder, |rest: &[u8]| rest.is_empty())?;
        raw
    };
    let mut control = ControlReader::new(&control_raw)?;
    let diff_decoder = Decoder::new("diff", block.diff.method, &diff_packed[..], window_log)?
        .take(block.diff.raw_len);
    let mut diff = Unsparse::new(diff_decoder, block.diff.sparse);
    let literal_in = BufReader::with_capacity(CHUNK, delta.by_ref().take(block.literal.comp_len));
    let mut literal = Decoder::new("literal", block.literal.method, literal_in, window_log)?
        .take(block.literal.raw_len);

    let mut buf = vec![0u8; CHUNK];
    let mut old_buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    while let Some(r) = control.next_record()? {
        let len = r
            .diff_len
            .checked_add(r.literal_len)
            .ok_or(Error::Malformed("record length overflows"))?;
        if len == 0 {
            return Err(Error::Malformed("record writes nothing"));
        }
        if len > block.out_len - written {
            return Err(Error::WritePastTarget {
                target_size: out.written + (block.out_len - written),
            });
        }
        if r.diff_len > 0 {
            base.seek_by(r.seek)?;
            if base.cursor + r.diff_len > base.size {
                return Err(Error::ReadPastBase);
            }
        }
        let mut left = r.diff_len;
        // The carry form's carry restarts with every record.
        let mut carry = Carry::default();
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            base.read(&mut old_buf[..n])?;
            stream_exact(&mut diff, &mut buf[..n], "diff")?;
            let pairs = buf[..n].iter_mut().zip(&old_buf[..n]);
            if block.diff.carry {
                pairs.for_each(|(b, o)| *b = carry.decode(*o, *b));
            } else {
                pairs.for_each(|(b, o)| *b = b.wrapping_add(*o));
            }
            out.write(&buf[..n])?;
            left -= n as u64;
        }
        let mut left = r.literal_len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            stream_exact(&mut literal, &mut buf[..n], "literal")?;
            out.write(&buf[..n])?;
            left -= n as u64;
        }
        written += len;
    }
    if written != block.out_len {
        return Err(Error::Malformed("records write less than their block"));
    }
    if !diff.at_boundary() {
        return Err(Error::Malformed("sparse diff stream ends inside a run"));
    }
    finish("diff", diff.inner, |rest: &[u8]| rest.is_empty())?;
    finish("literal", literal, |rest: BufReader<_>| {
        rest.buffer().is_empty() && rest.get_ref().limit() == 0
    })?;
    Ok(())
}

/// Checks that a stream was used up exactly: all `raw_len` bytes read, the decoder at its end,
/// and no compressed bytes left over.
fn finish<R: BufRead>(
    name: &'static str,
    stream: io::Take<Decoder<R>>,
    rest_is_empty: impl FnOnce(R) -> bool,
) -> Result<()> {
    if stream.limit() != 0 {
        return Err(Error::Malformed("stream longer than its records use"));
    }
    let mut decoder = stream.into_inner();
    let mut probe = [0u8; 1];
    match decoder.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => return Err(Error::Malformed("stream longer than its declared length")),
        Err(e) => return Err(classify(name, e)),
    }
    if !rest_is_empty(decoder.into_inner()) {
        return Err(Error::Malformed("compressed stream has trailing bytes"));
    }
    Ok(())
}

fn read_vec(r: &mut impl Read, len: u64, what: &'static str) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len as usize];
    read_exact(r, &mut v, what)?;
    Ok(v)
}

fn stream_exact(r: &mut impl Read, buf: &mut [u8], name: &'static str) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Err(Error::Truncated(name)),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(classify(name, e)),
        }
    }
    Ok(())
}

/// The diff stream as bytes to add: passed through, or expanded from the sparse form.
struct Unsparse<R> {
    inner: R,
    sparse: bool,
    zeros: u64,
    run: u64,
}

impl<R: Read> Unsparse<R> {
    fn new(inner: R, sparse: bool) -> Self {
        Unsparse {
            inner,
            sparse,
            zeros: 0,
            run: 0,
        }
    }

    fn at_boundary(&self) -> bool {
        self.zeros == 0 && self.run == 0
    }

    fn varint(&mut self) -> io::Result<Option<u64>> {
        let mut v = 0u64;
        for i in 0..10 {
            let mut b = [0u8; 1];
            if self.inner.read(&mut b)? == 0 {
                if i == 0 {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sparse diff ends inside a length",
                ));
            }
            if i == 9 && b[0] > 1 {
                break;
            }
            v |= u64::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                return Ok(Some(v));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sparse diff length overflows",
        ))
    }
}

impl<R: Read> Read for Unsparse<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.sparse {
            return self.inner.read(buf);
        }
        // Each (zeros, run) pair takes at least two bytes of the bounded stream, so this ends.
        while self.zeros == 0 && self.run == 0 {
            let Some(zeros) = self.varint()? else {
                return Ok(0);
            };
            let run = self.varint()?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sparse diff ends before a run length",
                )
            })?;
            self.zeros = zeros;
            self.run = run;
        }
        if self.zeros > 0 {
            let n = (self.zeros.min(buf.len() as u64)) as usize;
            buf[..n].fill(0);
            self.zeros -= n as u64;
            return Ok(n);
        }
        let want = (self.run.min(buf.len() as u64)) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sparse diff ends inside a run",
            ));
        }
        self.run -= n as u64;
        Ok(n)
    }
}

/// The base image, read forwards with seeks where a record jumps.
struct Base<R> {
    reader: BufReader<R>,
    /// Where `reader` is.
    pos: u64,
    /// Where the next diff run reads.
    cursor: u64,
    size: u64,
}

impl<R: Read + Seek> Base<R> {
    fn seek_by(&mut self, seek: i64) -> Result<()> {
        let to = self.cursor as i128 + seek as i128;
        if to < 0 || to > self.size as i128 {
            return Err(Error::ReadPastBase);
        }
        self.cursor = to as u64;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        if self.pos != self.cursor {
            let delta = self.cursor as i64 - self.pos as i64;
            self.reader
                .seek_relative(delta)
                .map_err(io_err("seeking in the base image"))?;
            self.pos = self.cursor;
        }
        self.reader.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::ReadPastBase,
            _ => io_err("reading the base image")(e),
        })?;
        self.pos += buf.len() as u64;
        self.cursor = self.pos;
        Ok(())
    }
}

/// The target being written, hashed on the way.
struct Target<W: Write> {
    inner: BufWriter<W>,
    sha: Sha256,
    written: u64,
}

impl<W: Write> Target<W> {
    fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.inner
            .write_all(buf)
            .map_err(io_err("writing the target image"))?;
        self.sha.update(buf);
        self.written += buf.len() as u64;
        Ok(())
    }
}

/// Applies the delta file `delta` to the base file `old` and writes the target to `out`
/// atomically: a temporary file beside it, synced, renamed into place only on success.
pub fn apply_file(old: &Path, delta: &Path, out: &Path, limits: &Limits) -> Result<Applied> {
    let open = |p: &Path| {
        File::open(p).map_err(|source| Error::File {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut old_file = open(old)?;
    let delta_file = open(delta)?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let name = out.file_name().ok_or(Error::File {
        path: out.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name"),
    })?;
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::File { path, source }
    };
    let result = (|| {
        let file = File::create(&tmp).map_err(file_err(&tmp))?;
        let applied = apply(&mut old_file, delta_file, &file, limits)?;
        file.sync_all().map_err(file_err(&tmp))?;
        fs::rename(&tmp, out).map_err(file_err(out))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(file_err(&dir))?;
        Ok(applied)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
