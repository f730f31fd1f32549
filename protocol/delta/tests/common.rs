//! Helpers shared by the delta tests: tars built in memory, and create-then-apply.
#![allow(dead_code)]

use fleet_delta::{apply, create_from_bytes, Applied, Limits, Options, Result};
use std::io::Cursor;

/// A deterministic tar of `(path, contents)` entries, like the hub's image writer makes.
pub fn tar_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, &data[..])
            .expect("append to an in-memory tar");
    }
    builder.into_inner().expect("finish an in-memory tar")
}

/// Pseudo-random bytes from a seed (xorshift), so tests need no data files.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Text-like bytes: words from a small vocabulary, so compressors have something to find.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "fleet ", "agent ", "image ", "delta ", "return ", "self.", "import ", "def ", "\n    ",
        "value", " = ", "(x)",
    ];
    let n = noise(seed, len);
    let mut out = Vec::with_capacity(len + 8);
    for b in n {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(WORDS[b as usize % WORDS.len()].as_bytes());
    }
    out.truncate(len);
    out
}

pub fn make(old: &[u8], new: &[u8]) -> Vec<u8> {
    let mut delta = Vec::new();
    create_from_bytes(old, new, &mut delta, &Options::default()).expect("create a delta");
    delta
}

pub fn run(old: &[u8], delta: &[u8]) -> (Result<Applied>, Vec<u8>) {
    let mut out = Vec::new();
    let result = apply(&mut Cursor::new(old), delta, &mut out, &Limits::default());
    (result, out)
}

/// Creates a delta from `old` to `new`, applies it and checks the result byte for byte.
pub fn roundtrip(old: &[u8], new: &[u8]) -> usize {
    let delta = make(old, new);
    let (result, out) = run(old, &delta);
    let applied = result.expect("apply the delta");
    assert_eq!(applied.target_size, new.len() as u64);
    assert!(out == new, "applied image differs from the new image");
    delta.len()
}

/// Machine-code-like bytes: `entries` short opcode runs, each followed by a 32-bit
/// little-endian address; the addresses of the last two thirds are moved by `shift`, as in a
/// release where code was inserted. Deltas between two shifts use the carry form.
pub fn code(seed: u64, entries: usize, shift: u32) -> Vec<u8> {
    const OPS: [&[u8]; 6] = [
        b"\xe8",
        b"\x48\x8d\x05",
        b"\x48\x8b\x05",
        b"\xe9",
        b"\x0f\x84",
        b"\x41\x54\x55\xe8",
    ];
    let n = noise(seed, entries * 2);
    let mut out = Vec::with_capacity(entries * 8);
    for i in 0..entries {
        out.extend_from_slice(OPS[n[2 * i] as usize % OPS.len()]);
        let base = (u32::from(n[2 * i]) << 8 | u32::from(n[2 * i + 1])) * 16;
        let addr = if i > entries / 3 { base + shift } else { base };
        out.extend_from_slice(&addr.to_le_bytes());
    }
    out
}
