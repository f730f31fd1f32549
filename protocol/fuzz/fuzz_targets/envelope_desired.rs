//! Arbitrary bytes as a desired-state envelope, against a fixed trust store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{accept_desired_state, DeviceId, KeyPair, RevisionFloor, RootKeys, SigningKeyEntry, TrustStore};

fuzz_target!(|data: &[u8]| {
    let online = KeyPair::from_seed([2; 32]);
    let trust = TrustStore {
        version: 1,
        root: RootKeys::single(KeyPair::from_seed([1; 32]).public()),
        signing_keys: vec![SigningKeyEntry { kid: online.kid(), public_key: online.public(), not_after: u64::MAX }],
        payload_digest: None,
        expires_at: u64::MAX,
    };
    let device = DeviceId::new("gw-1").expect("valid");
    let _ = accept_desired_state(data, &trust, &device, &RevisionFloor::default(), 1_800_000_000);
    // Also fuzz the payload parser behind a valid signature.
    let wire = protocol::Envelope::sign(data.to_vec(), &[&online]).encode();
    let _ = accept_desired_state(&wire, &trust, &device, &RevisionFloor::default(), 1_800_000_000);
});
