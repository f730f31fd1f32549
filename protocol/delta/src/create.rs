//! Creating a delta (the hub's side): both images in memory, a suffix array over the old one.

use crate::format::{
    encode_control, encode_sparse, put_varint, BlockHeader, Header, Method, Record, StreamHeader,
    MAX_BUFFERED, MAX_WINDOW_LOG, TAG_END,
};
use crate::matcher::{Index, Script, Tuning, TUNINGS};
use crate::{carry, codec};
use crate::{io_err, Error, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::ops::Range;
use std::path::Path;

/// How to encode a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The largest decompression window (log2) any stream may need; must not exceed the
    /// decoder's [`crate::Limits::max_window_log`].
    pub window_log: u32,
    /// The largest compressed control + diff streams of one block; must not exceed the
    /// decoder's [`crate::Limits::max_buffered`].
    pub max_buffered: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            window_log: MAX_WINDOW_LOG,
            max_buffered: MAX_BUFFERED,
        }
    }
}

/// What [`create`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub base_size: u64,
    pub target_size: u64,
    pub delta_size: u64,
    pub blocks: u64,
    pub records: u64,
    /// Target bytes rebuilt from the base (diff runs) and written literally.
    pub diff_bytes: u64,
    pub literal_bytes: u64,
    /// Compressed sizes of the three streams, summed over blocks.
    pub control_packed: u64,
    pub diff_packed: u64,
    pub literal_packed: u64,
}

/// The largest base the matcher indexes (its suffix array holds 32-bit offsets).
pub const MAX_BASE_SIZE: u64 = i32::MAX as u64 - 1;

/// Creates a delta that turns the file `old` into the file `new`, written to `out`.
pub fn create(old: &Path, new: &Path, out: &mut impl Write, opts: &Options) -> Result<Stats> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::File {
            path: p.to_path_buf(),
            source,
        })
    };
    let (old, new) = (read(old)?, read(new)?);
    create_from_bytes(&old, &new, out, opts)
}

/// Creates a delta from images already in memory.
pub fn create_from_bytes(
    old: &[u8],
    new: &[u8],
    out: &mut impl Write,
    opts: &Options,
) -> Result<Stats> {
    if old.len() as u64 > MAX_BASE_SIZE {
        return Err(Error::InputTooLarge {
            what: "base image",
            size: old.len() as u64,
            limit: MAX_BASE_SIZE,
        });
    }
    let header = Header {
        base_size: old.len() as u64,
        base_sha256: Sha256::digest(old).into(),
        target_size: new.len() as u64,
        target_sha256: Sha256::digest(new).into(),
    };
    let index = Index::new(old);
    // Each tuning's script, sized with a fast compressor; the smallest is encoded for real.
    // Only the records of the best so far are kept: its diff and literal bytes follow from
    // them, and holding one script's bytes at a time keeps generation memory down.
    // The scans share the suffix array and run two at a time.
    let tunings = TUNINGS;
    let (first, second) = tunings.split_at(tunings.len() / 2);
    let (first, second) = std::thread::scope(|s| {
        let other = s.spawn(|| score(&index, old, new, second));
        (score(&index, old, new, first), codec::join(other))
    });
    let scored = first
        .and_then(|mut f| second.map(|s| f.extend(s)).map(|()| f))
        .map_err(io_err("compressing a stream"))?;
    let (mut best, mut best_estimate) = (Vec::new(), u64::MAX);
    for (estimate, records) in scored {
        // In tuning order: the first of equal estimates.
        if estimate < best_estimate {
            (best, best_estimate) = (records, estimate);
        }
    }
    // The suffix array (4 bytes per base byte) is not needed to encode.
    drop(index);
    let script = Script::rebuild(old, new, best);
    let mut w = Counting {
        inner: out,
        count: 0,
    };
    w.write_all(&header.encode())
        .map_err(io_err("writing delta"))?;
    let mut stats = Stats {
        base_size: header.base_size,
        target_size: header.target_size,
        diff_bytes: script.diff.len() as u64,
        literal_bytes: script.literal.len() as u64,
        ..Stats::default()
    };
    let placed = Placed::new(&script);
    let mut cursor = 0i64;
    // Ranges of the target still to encode, the next on top.
    let mut pending: Vec<Range<u64>> = Vec::new();
    pending.push(0..new.len() as u64);
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        let (records, diff, literal, end_cursor) = placed.slice(&script, range.clone(), cursor);
        let control = encode_control(&records);
        // The diff run plain or in the carry form, whichever a quick compressor prefers.
        let carried = carry_form(old, &records, cursor, &diff);
        let carry = quick_size(&carried).map_err(io_err("compressing a stream"))?
            < quick_size(&diff).map_err(io_err("compressing a stream"))?;
        let diff = if carry { carried } else { diff };
        let pack = |data: &[u8]| {
            codec::compress_best(data, opts.window_log).map_err(io_err("compressing a stream"))
        };
        let (cm, cp) = pack(&control)?;
        // The diff stream as it is or in sparse form, whichever packs smaller (packed side by side).
        let sparse_diff = encode_sparse(&diff);
        let sparse_fits = sparse_diff.len() as u64 <= 2 * diff.len() as u64 + 20;
        let (dense, sparse_packed) = std::thread::scope(|s| {
            let sparse = s.spawn(|| sparse_fits.then(|| pack(&sparse_diff)));
            (pack(&diff), codec::join(sparse))
        });
        let (mut dm, mut dp) = dense?;
        let (mut diff_raw, mut sparse) = (diff.len(), false);
        if let Some(sparse_packed) = sparse_packed {
            let (sm, sp) = sparse_packed?;
            if sp.len() < dp.len() {
                (diff_raw, sparse) = (sparse_diff.len(), true);
                (dm, dp) = (sm, sp);
            }
        }
        let buffered = (cp.len() + dp.len()) as u64;
        let too_big = buffered > opts.max_buffered || control.len() as u64 > opts.max_buffered;
        if too_big && range.end - range.start > 1 {
            // Too much for the decoder to hold at once: halve the block (second half last).
            let mid = range.start + (range.end - range.start) / 2;
            pending.push(mid..range.end);
            pending.push(range.start..mid);
            continue;
        }
        let (lm, lp) = pack(&literal)?;
        let stream = |method: Method, raw: usize, packed: &[u8]| StreamHeader {
            method,
            sparse: false,
            carry: false,
            raw_len: raw as u64,
            comp_len: packed.len() as u64,
        };
        let block = BlockHeader {
            out_len: range.end - range.start,
            control: stream(cm, control.len(), &cp),
            diff: StreamHeader {
                sparse,
                carry,
                ..stream(dm, diff_raw, &dp)
            },
            literal: stream(lm, literal.len(), &lp),
        };
        block.write(&mut w).map_err(io_err("writing delta"))?;
        for part in [&cp, &dp, &lp] {
            w.write_all(part).map_err(io_err("writing delta"))?;
        }
        stats.blocks += 1;
        stats.records += records.len() as u64;
        stats.control_packed += cp.len() as u64;
        stats.diff_packed += dp.len() as u64;
        stats.literal_packed += lp.len() as u64;
        cursor = end_cursor;
    }
    w.write_all(&[TAG_END]).map_err(io_err("writing delta"))?;
    w.flush().map_err(io_err("writing delta"))?;
    stats.delta_size = w.count;
    Ok(stats)
}

/// A quick guess at a stream's packed size: zstd level 3.
fn quick_size(data: &[u8]) -> std::io::Result<u64> {
    Ok(zstd::bulk::compress(data, 3)?.len() as u64)
}

/// A block's diff bytes in the carry form: each record's run over the base bytes it reads,
/// starting from the decoder's base offset `cursor` before the block.
fn carry_form(old: &[u8], records: &[Record], mut cursor: i64, diff: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(diff.len());
    for r in records.iter().filter(|r| r.diff_len > 0) {
        cursor += r.seek;
        let (start, len) = (cursor as usize, r.diff_len as usize);
        let at = out.len();
        carry::encode_run(&old[start..start + len], &diff[at..at + len], &mut out);
        cursor += r.diff_len as i64;
    }
    out
}

/// Each tuning's records with their estimated packed size.
fn score(
    index: &Index<'_>,
    old: &[u8],
    new: &[u8],
    tunings: &[Tuning],
) -> std::io::Result<Vec<(u64, Vec<Record>)>> {
    tunings
        .iter()
        .map(|&t| {
            let records = index.diff(new, t);
            Ok((estimate(old, new, &records)?, records))
        })
        .collect()
}

/// A quick guess at a script's packed size: its streams under zstd level 3, made from its
/// records a chunk at a time so that no candidate's bytes are ever held whole.
fn estimate(old: &[u8], new: &[u8], records: &[Record]) -> std::io::Result<u64> {
    let zstd3 = || zstd::stream::Encoder::new(Counter(0), 3);
    let (mut diff, mut sparse, mut literal) = (zstd3()?, zstd3()?, zstd3()?);
    let mut sparse_form = SparseWriter::default();
    let mut chunk = Vec::with_capacity(64 << 10);
    let (mut base, mut out) = (0usize, 0usize);
    for r in records {
        base = base.wrapping_add_signed(r.seek as isize);
        let (dl, ll) = (r.diff_len as usize, r.literal_len as usize);
        for start in (0..dl).step_by(64 << 10) {
            let end = dl.min(start + (64 << 10));
            let pairs = new[out + start..out + end].iter().zip(&old[base + start..]);
            chunk.clear();
            chunk.extend(pairs.map(|(n, o)| n.wrapping_sub(*o)));
            diff.write_all(&chunk)?;
            sparse_form.write(&chunk, &mut sparse)?;
        }
        literal.write_all(&new[out + dl..out + dl + ll])?;
        (base, out) = (base + dl, out + dl + ll);
    }
    sparse_form.finish(&mut sparse)?;
    let control = quick_size(&encode_control(records))?;
    let size = |e: zstd::stream::Encoder<'_, Counter>| e.finish().map(|c| c.0);
    Ok(control + size(diff)?.min(size(sparse)?) + size(literal)?)
}

/// [`encode_sparse`] a chunk at a time.
#[derive(Default)]
struct SparseWriter {
    zeros: u64,
    run: Vec<u8>,
}

impl SparseWriter {
    fn write(&mut self, diff: &[u8], out: &mut impl Write) -> std::io::Result<()> {
        for &b in diff {
            if b != 0 {
                self.run.push(b);
                continue;
            }
            if !self.run.is_empty() {
                self.emit(out)?;
            }
            self.zeros += 1;
        }
        Ok(())
    }

    fn emit(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(20);
        put_varint(&mut head, self.zeros);
        put_varint(&mut head, self.run.len() as u64);
        out.write_all(&head)?;
        out.write_all(&self.run)?;
        (self.zeros, self.run) = (0, Vec::new());
        Ok(())
    }

    fn finish(mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.zeros > 0 || !self.run.is_empty() {
            self.emit(out)?;
        }
        Ok(())
    }
}

/// A sink that counts what is written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Each record of a script with where it starts in the target, the base, and the two streams.
struct Placed {
    /// (target offset, base offset, diff offset, literal offset) per record.
    starts: Vec<(u64, i64, usize, usize)>,
}

impl Placed {
    fn new(script: &Script) -> Self {
        let mut starts = Vec::with_capacity(script.records.len());
        let (mut out, mut base, mut d, mut l) = (0u64, 0i64, 0usize, 0usize);
        for r in &script.records {
            base += r.seek;
            starts.push((out, base, d, l));
            out += r.diff_len + r.literal_len;
            base += r.diff_len as i64;
            d += r.diff_len as usize;
            l += r.literal_len as usize;
        }
        Placed { starts }
    }

    /// The records, diff bytes and literal bytes that write `range` of the target, with seeks
    /// relative to `cursor` (the decoder's base offset before the range); and the cursor after.
    fn slice(
        &self,
        script: &Script,
        range: Range<u64>,
        mut cursor: i64,
    ) -> (Vec<Record>, Vec<u8>, Vec<u8>, i64) {
        let first = self
            .starts
            .partition_point(|s| s.0 <= range.start)
            .saturating_sub(1);
        let (mut records, mut diff, mut literal) = (Vec::new(), Vec::new(), Vec::new());
        for (r, &(out, base, d, l)) in script.records[first..].iter().zip(&self.starts[first..]) {
            if out >= range.end {
                break;
            }
            let len = r.diff_len + r.literal_len;
            let s = range.start.max(out) - out;
            let e = range.end.min(out + len) - out;
            if s >= e {
                continue;
            }
            let dl = r.diff_len;
            let (ds, de) = (s.min(dl), e.min(dl));
            let (ls, le) = (s.max(dl) - dl, e.max(dl) - dl);
            let diff_len = de - ds;
            let mut seek = 0;
            if diff_len > 0 {
                let start = base + ds as i64;
                seek = start - cursor;
                cursor = start + diff_len as i64;
                diff.extend_from_slice(&script.diff[d + ds as usize..d + de as usize]);
            }
            literal.extend_from_slice(&script.literal[l + ls as usize..l + le as usize]);
            records.push(Record {
                seek,
                diff_len,
                literal_len: le - ls,
            });
        }
        (records, diff, literal, cursor)
    }
}

struct Counting<'a, W> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_sparse_writer_matches_the_sparse_form_whatever_the_chunks(
            diff in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..600),
            cut in 1usize..50,
        ) {
            let (mut writer, mut out) = (SparseWriter::default(), Vec::new());
            for chunk in diff.chunks(cut) {
                writer.write(chunk, &mut out).expect("write to a vec");
            }
            writer.finish(&mut out).expect("write to a vec");
            prop_assert_eq!(out, encode_sparse(&diff));
        }
    }
}
