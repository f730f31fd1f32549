//! Applying a delta reproduces the new image byte for byte.

mod common;

use common::{code, make, noise, roundtrip, run, tar_of, text};
use proptest::prelude::*;

fn image(files: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    (0..files)
        .map(|i| {
            let body = if i % 3 == 0 {
                noise(seed + i as u64, 3000 + i * 17)
            } else {
                text(seed + i as u64, 2000 + i * 31)
            };
            (format!("app/lib/module_{i:03}.py"), body)
        })
        .collect()
}

#[test]
fn a_release_with_edited_added_and_removed_files_is_rebuilt_exactly_and_smaller_than_its_tar() {
    let old_entries = image(40, 7);
    let mut new_entries = old_entries.clone();
    new_entries[3].1[100..110].copy_from_slice(b"VERSION=43");
    new_entries[10].1.splice(500..500, text(99, 700));
    new_entries.remove(20);
    new_entries.push(("app/lib/new_module.py".into(), text(1234, 5000)));
    let old = tar_of(&old_entries);
    let new = tar_of(&new_entries);
    let size = roundtrip(&old, &new);
    assert!(
        size < new.len() / 10,
        "delta of {size} bytes for a {} byte image with small changes",
        new.len()
    );
}

#[test]
fn identical_images_give_a_tiny_delta() {
    let old = tar_of(&image(30, 1));
    let size = roundtrip(&old, &old);
    assert!(size < 400, "delta between identical images is {size} bytes");
}

#[test]
fn an_empty_base_still_rebuilds_the_target_from_literals() {
    let new = tar_of(&image(10, 3));
    roundtrip(&[], &new);
}

#[test]
fn an_empty_target_is_a_valid_delta() {
    let old = tar_of(&image(5, 3));
    roundtrip(&old, &[]);
    roundtrip(&[], &[]);
}

#[test]
fn a_delta_made_for_a_base_applies_to_that_base_only() {
    let old = tar_of(&image(8, 5));
    let other = tar_of(&image(8, 6));
    let new = tar_of(&image(9, 5));
    let delta = make(&old, &new);
    let (result, out) = run(&other, &delta);
    assert!(
        matches!(result, Err(fleet_delta::Error::WrongBase { .. })),
        "{result:?}"
    );
    assert!(
        out.is_empty(),
        "bytes were written before the base was checked"
    );
}

#[test]
fn moved_files_are_found_wherever_they_are_in_the_base() {
    let old_entries = image(30, 11);
    let mut new_entries: Vec<_> = old_entries.iter().rev().cloned().collect();
    for (i, e) in new_entries.iter_mut().enumerate() {
        e.0 = format!("moved/{i}/{}", e.0);
    }
    let new = tar_of(&new_entries);
    let size = roundtrip(&tar_of(&old_entries), &new);
    assert!(
        size < new.len() / 10,
        "delta of {size} bytes for moved files"
    );
}

fn edited(mut data: Vec<u8>, edits: &[(usize, u8, usize)]) -> Vec<u8> {
    for &(at, byte, kind) in edits {
        if data.is_empty() {
            data.push(byte);
            continue;
        }
        let at = at % data.len();
        match kind % 3 {
            0 => data[at] = byte,
            1 => data.splice(at..at, vec![byte; 1 + at % 50]).for_each(drop),
            _ => {
                let end = (at + 1 + at % 70).min(data.len());
                data.drain(at..end);
            }
        }
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_edits_insertions_and_deletions_roundtrip(
        seed in any::<u64>(),
        len in 0usize..20_000,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 0..40),
    ) {
        let old = text(seed, len);
        let new = edited(old.clone(), &edits);
        roundtrip(&old, &new);
    }

    #[test]
    fn moved_addresses_in_code_roundtrip(seed in any::<u64>(), entries in 0usize..1200,
                                         a in any::<u32>(), b in any::<u32>()) {
        roundtrip(&code(seed, entries, a % 0x10000), &code(seed, entries, b % 0x10000));
    }

    #[test]
    fn the_carry_form_decodes_to_what_it_encoded(
        pairs in proptest::collection::vec((any::<u8>(), any::<u8>()), 0..2000),
    ) {
        let (old, new): (Vec<u8>, Vec<u8>) = pairs.into_iter().unzip();
        let diff: Vec<u8> = old.iter().zip(&new).map(|(o, n)| n.wrapping_sub(*o)).collect();
        let mut digits = Vec::new();
        fleet_delta::carry::encode_run(&old, &diff, &mut digits);
        let mut carry = fleet_delta::carry::Carry::default();
        let decoded: Vec<u8> = old.iter().zip(&digits).map(|(o, d)| carry.decode(*o, *d)).collect();
        prop_assert_eq!(decoded, new);
    }

    #[test]
    fn unrelated_images_roundtrip(a in proptest::collection::vec(any::<u8>(), 0..3000),
                                  b in proptest::collection::vec(any::<u8>(), 0..3000)) {
        roundtrip(&a, &b);
    }

    #[test]
    fn reordered_and_edited_tar_entries_roundtrip(
        seed in any::<u64>(),
        order in proptest::collection::vec(any::<u16>(), 1..12),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 0..10),
    ) {
        let old_entries = image(12, seed % 1000);
        let new_entries: Vec<_> = order
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let (path, body) = &old_entries[*o as usize % old_entries.len()];
                (format!("{i}-{path}"), if i == 0 { edited(body.clone(), &edits) } else { body.clone() })
            })
            .collect();
        roundtrip(&tar_of(&old_entries), &tar_of(&new_entries));
    }
}
