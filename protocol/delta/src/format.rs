//! The delta's wire format (version 2). `docs/DELTA.md` has the same in prose.
//!
//! ```text
//! header  = magic "FLTDELTA" | version u8 = 2
//!           | base_size u64 | base_sha256 [32] | target_size u64 | target_sha256 [32]
//! block*  = tag u8 = 1 | out_len u64
//!           | 3 x (method u8 | raw_len u64 | comp_len u64)   control, diff, literal
//!           | control bytes | diff bytes | literal bytes
//! end     = tag u8 = 0                                         then end of input
//! control = count varint | seek zigzag-varint * count | diff_len varint * count
//!           | literal_len varint * count
//! method  = 0 stored | 1 zstd (one frame) | 2 lzma (the .lzma "alone" form, end marker)
//!           | 0x80 (diff stream only): sparse = (zeros varint | run varint | run bytes)*
//!           | 0x40 (diff stream only): carry form, see [`crate::carry`]
//! ```
//!
//! Integers are little-endian. The base offset starts at 0. A record moves it by `seek`, adds
//! `diff_len` bytes of the diff stream to the base bytes there (the offset advances by
//! `diff_len`), then appends `literal_len` bytes of the literal stream. Every record writes at least
//! one byte. Every length is checked before it is used: `out_len` against what remains of
//! `target_size`, `raw_len` against `out_len`, `comp_len` against `raw_len` (the encoder
//! stores a stream that does not shrink), buffered lengths against [`crate::Limits`].

use crate::{Error, Result};
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"FLTDELTA";
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 8 + 1 + 8 + 32 + 8 + 32;
/// Default and encoder window: 8 MiB, so three decoders stay well inside 32 MiB.
pub const MAX_WINDOW_LOG: u32 = 23;
/// Default bound on one block's compressed control + diff streams held while decoding, and
/// on its decoded control stream.
pub const MAX_BUFFERED: u64 = 2 << 20;
/// The most control bytes one record takes (three 10-byte varints).
pub const MAX_RECORD_LEN: u64 = 30;

pub const TAG_END: u8 = 0;
pub const TAG_BLOCK: u8 = 1;

/// How one stream of a block is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stored = 0,
    Zstd = 1,
    Lzma = 2,
}

/// Set in a stream's method byte when the stream is in the sparse form ([`encode_sparse`]);
/// allowed for the diff stream only.
pub const SPARSE: u8 = 0x80;
/// Set in a stream's method byte when the diff bytes are in the carry form
/// ([`crate::carry`]); allowed for the diff stream only. New in version 2.
pub const CARRY: u8 = 0x40;

impl Method {
    pub fn from_byte(b: u8) -> Result<Self> {
        match b {
            0 => Ok(Method::Stored),
            1 => Ok(Method::Zstd),
            2 => Ok(Method::Lzma),
            other => Err(Error::UnknownMethod(other)),
        }
    }
}

/// Base and target identity, written first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub base_size: u64,
    pub base_sha256: [u8; 32],
    pub target_size: u64,
    pub target_sha256: [u8; 32],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8] = VERSION;
        out[9..17].copy_from_slice(&self.base_size.to_le_bytes());
        out[17..49].copy_from_slice(&self.base_sha256);
        out[49..57].copy_from_slice(&self.target_size.to_le_bytes());
        out[57..89].copy_from_slice(&self.target_sha256);
        out
    }

    pub fn read(r: &mut impl Read) -> Result<Self> {
        let mut magic = [0u8; 8];
        read_exact(r, &mut magic, "header")?;
        if &magic != MAGIC {
            return Err(Error::NotADelta);
        }
        let version = read_u8(r, "header")?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let base_size = read_u64(r, "header")?;
        let mut base_sha256 = [0u8; 32];
        read_exact(r, &mut base_sha256, "header")?;
        let target_size = read_u64(r, "header")?;
        let mut target_sha256 = [0u8; 32];
        read_exact(r, &mut target_sha256, "header")?;
        Ok(Header {
            base_size,
            base_sha256,
            target_size,
            target_sha256,
        })
    }
}

/// One stream's entry in a block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub method: Method,
    pub sparse: bool,
    pub carry: bool,
    pub raw_len: u64,
    pub comp_len: u64,
}

/// A block header: how many target bytes the block writes and its three streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub out_len: u64,
    pub control: StreamHeader,
    pub diff: StreamHeader,
    pub literal: StreamHeader,
}

impl BlockHeader {
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&[TAG_BLOCK])?;
        w.write_all(&self.out_len.to_le_bytes())?;
        for s in [self.control, self.diff, self.literal] {
            let flags = if s.sparse { SPARSE } else { 0 } | if s.carry { CARRY } else { 0 };
            w.write_all(&[s.method as u8 | flags])?;
            w.write_all(&s.raw_len.to_le_bytes())?;
            w.write_all(&s.comp_len.to_le_bytes())?;
        }
        Ok(())
    }

    /// Reads the rest of a block header (after its tag) and checks every length against what
    /// remains of the target and the buffering limit.
    pub fn read(r: &mut impl Read, remaining: u64, max_buffered: u64) -> Result<Self> {
        let out_len = read_u64(r, "block header")?;
        if out_len == 0 {
            return Err(Error::Malformed("empty block"));
        }
        if out_len > remaining {
            return Err(Error::WritePastTarget {
                target_size: remaining,
            });
        }
        let mut streams = [StreamHeader {
            method: Method::Stored,
            sparse: false,
            carry: false,
            raw_len: 0,
            comp_len: 0,
        }; 3];
        // A record writes at least one byte; a sparse diff takes at most 2 bytes per byte
        // (a zero, then a run of one) and 20 to end on zeros.
        let bounds = [
            out_len.saturating_mul(MAX_RECORD_LEN).min(max_buffered),
            out_len.saturating_mul(2).saturating_add(20),
            out_len,
        ];
        let names = ["control length", "diff length", "literal length"];
        for (i, s) in streams.iter_mut().enumerate() {
            let byte = read_u8(r, "block header")?;
            let (sparse, carry) = (byte & SPARSE != 0, byte & CARRY != 0);
            if (sparse || carry) && i != 1 {
                return Err(Error::Malformed(
                    "sparse or carry form outside the diff stream",
                ));
            }
            let method = Method::from_byte(byte & !(SPARSE | CARRY))?;
            let raw_len = read_u64(r, "block header")?;
            let comp_len = read_u64(r, "block header")?;
            check(names[i], raw_len, bounds[i])?;
            check("compressed length", comp_len, raw_len)?;
            if method == Method::Stored && comp_len != raw_len {
                return Err(Error::Malformed("stored stream with a compressed length"));
            }
            *s = StreamHeader {
                method,
                sparse,
                carry,
                raw_len,
                comp_len,
            };
        }
        check(
            "buffered control and diff",
            streams[0].comp_len + streams[1].comp_len,
            max_buffered,
        )?;
        Ok(BlockHeader {
            out_len,
            control: streams[0],
            diff: streams[1],
            literal: streams[2],
        })
    }
}

fn check(what: &'static str, value: u64, limit: u64) -> Result<()> {
    if value > limit {
        return Err(Error::OutOfBounds { what, value, limit });
    }
    Ok(())
}

/// One control record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub seek: i64,
    pub diff_len: u64,
    pub literal_len: u64,
}

/// Encodes records as a control stream: the count, then each field as its own column (seeks,
/// diff lengths, literal lengths), which compresses better than records side by side.
pub fn encode_control(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 6 + 10);
    put_varint(&mut out, records.len() as u64);
    for r in records {
        put_varint(&mut out, ((r.seek << 1) ^ (r.seek >> 63)) as u64);
    }
    for r in records {
        put_varint(&mut out, r.diff_len);
    }
    for r in records {
        put_varint(&mut out, r.literal_len);
    }
    out
}

/// Reads records back from a whole decoded control stream, checking its shape up front.
#[derive(Debug)]
pub struct ControlReader<'a> {
    columns: [&'a [u8]; 3],
    left: u64,
}

impl<'a> ControlReader<'a> {
    pub fn new(buf: &'a [u8]) -> Result<Self> {
        let mut rest = buf;
        let count = take_varint(&mut rest)?;
        if count > rest.len() as u64 {
            return Err(Error::Malformed("control record count exceeds the stream"));
        }
        let mut columns = [&rest[..0]; 3];
        for column in columns.iter_mut() {
            let start = rest;
            for _ in 0..count {
                take_varint(&mut rest)?;
            }
            *column = &start[..start.len() - rest.len()];
        }
        if !rest.is_empty() {
            return Err(Error::Malformed("control stream has trailing bytes"));
        }
        Ok(ControlReader {
            columns,
            left: count,
        })
    }

    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let [s, d, l] = &mut self.columns;
        let z = take_varint(s)?;
        Ok(Some(Record {
            seek: ((z >> 1) as i64) ^ -((z & 1) as i64),
            diff_len: take_varint(d)?,
            literal_len: take_varint(l)?,
        }))
    }
}

fn take_varint(buf: &mut &[u8]) -> Result<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(Error::Truncated("control record"));
        };
        *buf = rest;
        if i == 9 && byte > 1 {
            return Err(Error::Malformed("control varint overflows 64 bits"));
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::Malformed("control varint too long"))
}

/// Encodes a diff run as sparse: (zero count varint, run length varint, run bytes) per run of
/// non-zero bytes. Most diff bytes are zero; this form states where the others are.
pub fn encode_sparse(diff: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < diff.len() {
        let zeros = diff[i..].iter().take_while(|&&b| b == 0).count();
        let start = i + zeros;
        let run = diff[start..].iter().take_while(|&&b| b != 0).count();
        put_varint(&mut out, zeros as u64);
        put_varint(&mut out, run as u64);
        out.extend_from_slice(&diff[start..start + run]);
        i = start + run;
    }
    out
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated(what),
        _ => Error::Io {
            context: "reading delta",
            source: e,
        },
    })
}

pub(crate) fn read_u8(r: &mut impl Read, what: &'static str) -> Result<u8> {
    let mut b = [0u8; 1];
    read_exact(r, &mut b, what)?;
    Ok(b[0])
}

pub(crate) fn read_u64(r: &mut impl Read, what: &'static str) -> Result<u64> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b, what)?;
    Ok(u64::from_le_bytes(b))
}
