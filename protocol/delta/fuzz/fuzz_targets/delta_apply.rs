//! Arbitrary bytes as a delta: raw, and behind a valid header for the base they are applied to
//! (so the fuzzer reaches the block decoder without forging a SHA-256).
#![no_main]

use fleet_delta::format::{Header, HEADER_LEN};
use fleet_delta::{apply, Limits};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::io::Cursor;

const BASE: &[u8] = b"fleet delta fuzz base: a few bytes the records can copy from, \
                      with some repetition repetition repetition";

fuzz_target!(|data: &[u8]| {
    // Small limits keep each input's memory and time bounded (C73).
    let limits = Limits {
        max_target_size: 1 << 20,
        max_window_log: 20,
        max_buffered: 1 << 16,
    };
    let _ = apply(&mut Cursor::new(BASE), data, std::io::sink(), &limits);

    // The same bytes after a header naming BASE and a target digest that cannot match by chance,
    // with the target size taken from the input.
    let size = data.get(..2).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])));
    let header = Header {
        base_size: BASE.len() as u64,
        base_sha256: Sha256::digest(BASE).into(),
        target_size: size,
        target_sha256: [0; 32],
    };
    let mut delta = Vec::with_capacity(HEADER_LEN + data.len());
    delta.extend_from_slice(&header.encode());
    delta.extend_from_slice(data.get(2..).unwrap_or_default());
    let _ = apply(&mut Cursor::new(BASE), &delta[..], std::io::sink(), &limits);
});
