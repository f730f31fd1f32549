//! A delta from outside is untrusted: every malformed one gets a typed error, in bounded time
//! and memory, and nothing that claims success.

mod common;

use common::{code, make, run, tar_of, text};
use fleet_delta::format::{
    encode_control, BlockHeader, Header, Method, Record, StreamHeader, CARRY, HEADER_LEN, TAG_END,
};
use fleet_delta::{apply, apply_file, Error, Limits};
use sha2::{Digest, Sha256};
use std::io::{Cursor, Write};

fn pair() -> (Vec<u8>, Vec<u8>) {
    let old_entries: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("etc/app/{i}.conf"), text(i, 1500)))
        .collect();
    let mut new_entries = old_entries.clone();
    new_entries[2].1[10..20].copy_from_slice(b"0123456789");
    new_entries.push(("etc/app/extra.conf".into(), text(77, 900)));
    (tar_of(&old_entries), tar_of(&new_entries))
}

/// A pair whose delta holds its diff stream in the carry form (checked by the first test that
/// uses it), so every hardening case below also runs over that stream kind.
fn code_pair() -> (Vec<u8>, Vec<u8>) {
    (code(7, 1500, 0), code(7, 1500, 0x140))
}

fn pairs() -> [(Vec<u8>, Vec<u8>); 2] {
    [pair(), code_pair()]
}

#[test]
fn the_code_pair_s_delta_uses_the_carry_form() {
    let (old, new) = code_pair();
    let delta = make(&old, &new);
    // header, block tag, out_len, the control stream's method and two lengths, then the diff's.
    let diff_method = delta[HEADER_LEN + 1 + 8 + 17];
    assert_ne!(diff_method & CARRY, 0, "diff method byte {diff_method:#x}");
    let (result, out) = run(&old, &delta);
    result.expect("apply the carry-form delta");
    assert_eq!(out, new);
}

fn stored(raw: &[u8]) -> StreamHeader {
    StreamHeader {
        method: Method::Stored,
        sparse: false,
        carry: false,
        raw_len: raw.len() as u64,
        comp_len: raw.len() as u64,
    }
}

/// A hand-made delta: one block with stored streams, header claiming `target` as the result.
fn handmade(
    base: &[u8],
    target: &[u8],
    out_len: u64,
    records: &[Record],
    diff: &[u8],
    literal: &[u8],
) -> Vec<u8> {
    let header = Header {
        base_size: base.len() as u64,
        base_sha256: Sha256::digest(base).into(),
        target_size: target.len() as u64,
        target_sha256: Sha256::digest(target).into(),
    };
    let control = encode_control(records);
    let mut out = header.encode().to_vec();
    let block = BlockHeader {
        out_len,
        control: stored(&control),
        diff: stored(diff),
        literal: stored(literal),
    };
    block.write(&mut out).expect("write to a vec");
    out.extend_from_slice(&control);
    out.extend_from_slice(diff);
    out.extend_from_slice(literal);
    out.push(TAG_END);
    out
}

#[test]
fn a_handmade_delta_applies_so_the_hardening_cases_below_differ_from_it_in_one_lie_only() {
    let base = b"hello world".to_vec();
    let target = b"hello there".to_vec();
    let records = [Record {
        seek: 0,
        diff_len: 6,
        literal_len: 5,
    }];
    let delta = handmade(&base, &target, 11, &records, &[0; 6], b"there");
    let (result, out) = run(&base, &delta);
    result.expect("a well-formed handmade delta applies");
    assert_eq!(out, target);
}

#[test]
fn every_truncation_of_a_delta_is_an_error() {
    for (old, new) in pairs() {
        every_truncation_is_an_error(&old, &new);
    }
}

fn every_truncation_is_an_error(old: &[u8], new: &[u8]) {
    let delta = make(old, new);
    for len in 0..delta.len() {
        let (result, _) = run(old, &delta[..len]);
        assert!(
            matches!(
                result,
                Err(Error::Truncated(_) | Error::Corrupt { .. } | Error::Malformed(_))
            ),
            "truncated to {len} of {} bytes: {result:?}",
            delta.len()
        );
    }
}

#[test]
fn a_corrupted_byte_anywhere_never_yields_a_wrong_image() {
    for (old, new) in pairs() {
        a_corrupted_byte_never_yields_a_wrong_image(&old, &new);
    }
}

fn a_corrupted_byte_never_yields_a_wrong_image(old: &[u8], new: &[u8]) {
    let delta = make(old, new);
    for at in 0..delta.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = delta.clone();
            bad[at] ^= flip;
            let (result, out) = run(old, &bad);
            // A flip in a bit no decoder reads (a zstd window's mantissa, say) may still give
            // exactly the target, verified by its digest; anything else must be refused.
            assert!(
                result.is_err() || out == new,
                "byte {at} ^ {flip:#x} applied to a wrong image: {result:?}"
            );
        }
    }
}

#[test]
fn trailing_bytes_after_the_end_are_refused() {
    let (old, new) = pair();
    let mut delta = make(&old, &new);
    delta.push(0);
    let (result, _) = run(&old, &delta);
    assert!(matches!(result, Err(Error::TrailingData)), "{result:?}");
}

#[test]
fn a_delta_for_another_base_is_refused_before_anything_is_written() {
    for (old, new) in pairs() {
        another_base_is_refused(old, new);
    }
}

fn another_base_is_refused(old: Vec<u8>, new: Vec<u8>) {
    let delta = make(&old, &new);
    let mut other = old.clone();
    other[600] ^= 1;
    let (result, out) = run(&other, &delta);
    assert!(matches!(result, Err(Error::WrongBase { .. })), "{result:?}");
    assert!(out.is_empty());
    let (result, out) = run(&old[..old.len() - 1], &delta);
    assert!(matches!(result, Err(Error::WrongBase { .. })), "{result:?}");
    assert!(out.is_empty());
}

#[test]
fn a_block_longer_than_the_declared_target_is_refused() {
    let base = b"abc".to_vec();
    let target = b"abcd".to_vec();
    let records = [Record {
        seek: 0,
        diff_len: 0,
        literal_len: 8,
    }];
    let delta = handmade(&base, &target, 8, &records, &[], b"abcdefgh");
    let (result, out) = run(&base, &delta);
    assert!(
        matches!(result, Err(Error::WritePastTarget { .. })),
        "{result:?}"
    );
    assert!(out.is_empty());
}

#[test]
fn a_record_that_writes_past_its_block_is_refused() {
    let base = b"abc".to_vec();
    let target = b"abcd".to_vec();
    let records = [
        Record {
            seek: 0,
            diff_len: 0,
            literal_len: 4,
        },
        Record {
            seek: 0,
            diff_len: 0,
            literal_len: 4,
        },
    ];
    let delta = handmade(&base, &target, 4, &records, &[], b"abcd");
    let (result, _) = run(&base, &delta);
    assert!(
        matches!(result, Err(Error::WritePastTarget { .. })),
        "{result:?}"
    );
}

#[test]
fn lengths_that_lie_are_refused() {
    let base = b"0123456789".to_vec();
    let target = b"0123456789!".to_vec();
    // A literal stream shorter than its records need.
    let records = [Record {
        seek: 0,
        diff_len: 10,
        literal_len: 1,
    }];
    let short = handmade(&base, &target, 11, &records, &[0; 10], b"");
    assert!(matches!(
        run(&base, &short).0,
        Err(Error::Truncated("literal"))
    ));
    // A diff stream longer than its records use.
    let long = handmade(&base, &target, 11, &records, &[0; 11], b"!");
    assert!(matches!(run(&base, &long).0, Err(Error::Malformed(_))));
    // A copy from beyond the end of the base.
    let beyond = [Record {
        seek: 5,
        diff_len: 10,
        literal_len: 1,
    }];
    let past = handmade(&base, &target, 11, &beyond, &[0; 10], b"!");
    assert!(matches!(run(&base, &past).0, Err(Error::ReadPastBase)));
    // A seek before the start of the base.
    let before = [Record {
        seek: -1,
        diff_len: 10,
        literal_len: 1,
    }];
    let neg = handmade(&base, &target, 11, &before, &[0; 10], b"!");
    assert!(matches!(run(&base, &neg).0, Err(Error::ReadPastBase)));
    // A record that writes nothing.
    let empty = [
        Record {
            seek: 0,
            diff_len: 10,
            literal_len: 1,
        },
        Record {
            seek: 0,
            diff_len: 0,
            literal_len: 0,
        },
    ];
    let nothing = handmade(&base, &target, 11, &empty, &[0; 10], b"!");
    assert!(matches!(run(&base, &nothing).0, Err(Error::Malformed(_))));
    // A target size the blocks do not reach.
    let mut longer_target = target.clone();
    longer_target.push(b'?');
    let unreached = handmade(&base, &longer_target, 11, &records, &[0; 10], b"!");
    assert!(matches!(run(&base, &unreached).0, Err(Error::Malformed(_))));
    // The right size but other bytes than the digest says.
    let wrong = handmade(&base, &target, 11, &records, &[0; 10], b"?");
    assert!(matches!(
        run(&base, &wrong).0,
        Err(Error::TargetMismatch { .. })
    ));
}

#[test]
fn a_huge_declared_stream_is_refused_before_it_is_buffered() {
    let base = b"abc".to_vec();
    let target = vec![7u8; 100];
    let header = Header {
        base_size: 3,
        base_sha256: Sha256::digest(&base).into(),
        target_size: target.len() as u64,
        target_sha256: Sha256::digest(&target).into(),
    };
    let mut delta = header.encode().to_vec();
    let big = StreamHeader {
        method: Method::Zstd,
        sparse: false,
        carry: false,
        raw_len: 100,
        comp_len: 100,
    };
    let block = BlockHeader {
        out_len: 100,
        control: stored(&[]),
        diff: big,
        literal: stored(&[]),
    };
    block.write(&mut delta).expect("write to a vec");
    // Declares more than the limit allows and provides nothing: refused on the header alone.
    let tight = Limits {
        max_buffered: 50,
        ..Limits::default()
    };
    let result = apply(&mut Cursor::new(&base), &delta[..], Vec::new(), &tight);
    assert!(
        matches!(result, Err(Error::OutOfBounds { .. })),
        "{result:?}"
    );
    // A target above the limit is refused on the header alone.
    let small = Limits {
        max_target_size: 99,
        ..Limits::default()
    };
    let result = apply(&mut Cursor::new(&base), &delta[..], Vec::new(), &small);
    assert!(
        matches!(
            result,
            Err(Error::OutOfBounds {
                what: "target size",
                ..
            })
        ),
        "{result:?}"
    );
}

/// A one-block delta whose literal stream is `packed` (decoding to `raw`) with `method`.
fn with_literal(base: &[u8], raw: &[u8], method: Method, packed: &[u8]) -> Vec<u8> {
    let header = Header {
        base_size: base.len() as u64,
        base_sha256: Sha256::digest(base).into(),
        target_size: raw.len() as u64,
        target_sha256: Sha256::digest(raw).into(),
    };
    let records = [Record {
        seek: 0,
        diff_len: 0,
        literal_len: raw.len() as u64,
    }];
    let control = encode_control(&records);
    let mut out = header.encode().to_vec();
    let literal = StreamHeader {
        method,
        sparse: false,
        carry: false,
        raw_len: raw.len() as u64,
        comp_len: packed.len() as u64,
    };
    let block = BlockHeader {
        out_len: raw.len() as u64,
        control: stored(&control),
        diff: stored(&[]),
        literal,
    };
    block.write(&mut out).expect("write to a vec");
    out.extend_from_slice(&control);
    out.extend_from_slice(packed);
    out.push(TAG_END);
    out
}

#[test]
fn a_zstd_stream_whose_window_exceeds_the_limit_is_refused() {
    let raw = text(5, 200_000);
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).expect("zstd encoder");
    enc.window_log(27).expect("set window");
    enc.include_contentsize(false).expect("no content size");
    enc.write_all(&raw).expect("compress");
    let packed = enc.finish().expect("finish");
    let delta = with_literal(b"", &raw, Method::Zstd, &packed);
    let (result, out) = run(b"", &delta);
    assert!(
        matches!(result, Err(Error::WindowTooLarge { stream: "literal" })),
        "{result:?}"
    );
    assert!(out.is_empty());
    // The same stream within a raised limit applies.
    let roomy = Limits {
        max_window_log: 27,
        ..Limits::default()
    };
    let mut out = Vec::new();
    apply(&mut Cursor::new(b""), &delta[..], &mut out, &roomy)
        .expect("applies under a larger limit");
    assert_eq!(out, raw);
}

#[test]
fn an_lzma_stream_whose_dictionary_exceeds_the_limit_is_refused_before_decoding() {
    let raw = text(6, 200_000);
    let mut opts = xz2::stream::LzmaOptions::new_preset(1).expect("preset");
    opts.dict_size(64 << 20);
    let stream = xz2::stream::Stream::new_lzma_encoder(&opts).expect("lzma encoder");
    let mut enc = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
    enc.write_all(&raw).expect("compress");
    let packed = enc.finish().expect("finish");
    let delta = with_literal(b"", &raw, Method::Lzma, &packed);
    let (result, out) = run(b"", &delta);
    assert!(
        matches!(result, Err(Error::WindowTooLarge { stream: "literal" })),
        "{result:?}"
    );
    assert!(out.is_empty());
    let roomy = Limits {
        max_window_log: 26,
        ..Limits::default()
    };
    let mut out = Vec::new();
    apply(&mut Cursor::new(b""), &delta[..], &mut out, &roomy)
        .expect("applies under a larger limit");
    assert_eq!(out, raw);
}

#[test]
fn a_stream_that_inflates_beyond_its_declared_length_is_cut_off() {
    let bomb = vec![0u8; 64 << 20];
    let packed = zstd::bulk::compress(&bomb, 19).expect("compress");
    let raw = vec![0u8; packed.len()];
    // Declares as many bytes as it has compressed: the 64 MiB never get decoded past that.
    let delta = with_literal(b"", &raw, Method::Zstd, &packed);
    let (result, out) = run(b"", &delta);
    assert!(matches!(result, Err(Error::Malformed(_))), "{result:?}");
    assert!(out.len() <= raw.len());
}

#[test]
fn apply_file_leaves_no_file_behind_on_failure_and_renames_on_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = pair();
    let delta = make(&old, &new);
    let old_path = dir.path().join("old.tar");
    let delta_path = dir.path().join("d.delta");
    let out_path = dir.path().join("new.tar");
    std::fs::write(&old_path, &old).expect("write old");
    let mut bad = delta.clone();
    let last = bad.len() - 2;
    bad[last] ^= 0x55;
    std::fs::write(&delta_path, &bad).expect("write delta");
    let err = apply_file(&old_path, &delta_path, &out_path, &Limits::default());
    assert!(err.is_err());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "left behind: {names:?}");

    std::fs::write(&delta_path, &delta).expect("write delta");
    let applied = apply_file(&old_path, &delta_path, &out_path, &Limits::default()).expect("apply");
    assert_eq!(applied.target_size, new.len() as u64);
    assert_eq!(std::fs::read(&out_path).expect("read result"), new);
}

#[test]
fn the_carry_flag_outside_the_diff_stream_is_refused() {
    let (old, new) = code_pair();
    let delta = make(&old, &new);
    for stream in [0, 2] {
        let mut bad = delta.clone();
        bad[HEADER_LEN + 1 + 8 + 17 * stream] |= CARRY;
        let (result, out) = run(&old, &bad);
        assert!(
            matches!(result, Err(Error::Malformed(_))),
            "stream {stream}: {result:?}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn a_handmade_carry_delta_adds_each_record_s_digits_with_their_carries() {
    // 0x01F0 → 0x0210 is the digits 0x20, 0x00; the carry restarts at the second record.
    let base = [0xF0, 0x01, 0xF0, 0x01];
    let target = [0x10, 0x02, 0x10, 0x02];
    let records = [
        Record {
            seek: 0,
            diff_len: 2,
            literal_len: 0,
        },
        Record {
            seek: 0,
            diff_len: 2,
            literal_len: 0,
        },
    ];
    let mut delta = handmade(&base, &target, 4, &records, &[0x20, 0, 0x20, 0], b"");
    let (result, out) = run(&base, &delta);
    assert!(
        matches!(result, Err(Error::TargetMismatch { .. })),
        "{result:?}"
    );
    assert_eq!(out, [0x10, 0x01, 0x10, 0x01], "plain: byte-wise sums");
    delta[HEADER_LEN + 1 + 8 + 17] |= CARRY;
    let (result, out) = run(&base, &delta);
    result.expect("the carry form rebuilds the target");
    assert_eq!(out, target);
}
