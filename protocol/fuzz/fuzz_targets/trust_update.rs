//! Arbitrary bytes as a trust update, raw and behind a valid root signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{accept_trust_update, KeyPair, RootKeys, TrustStore};

fuzz_target!(|data: &[u8]| {
    let root = KeyPair::from_seed([1; 32]);
    let trust = TrustStore::pinned(RootKeys::single(root.public()));
    let _ = accept_trust_update(data, &trust, 1_800_000_000);
    let wire = protocol::Envelope::sign(data.to_vec(), &[&root]).encode();
    let _ = accept_trust_update(&wire, &trust, 1_800_000_000);
});
