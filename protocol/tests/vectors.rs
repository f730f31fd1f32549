//! Data-driven conformance vectors (TEST-CHECKLIST C78): each file in `tests/vectors/` holds a
//! trust store, a device, a revision floor, a time, a signed document as it would arrive, and the
//! expected outcome (`accepted`, `already_have`, or a rejection code). Any implementation of the
//! verifier — this crate, or one in another language — must produce the same outcome for every
//! file. `generate_vectors` (ignored) rewrites them from the fixtures; signatures are
//! deterministic, so regenerating gives the same bytes.

mod common;

use std::path::PathBuf;

use common::*;
use protocol::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Vector {
    description: String,
    /// `desired` or `trust`.
    document: String,
    trust: TrustStore,
    device: String,
    floor: RevisionFloor,
    now: u64,
    envelope: String,
    expect: String,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn outcome(v: &Vector) -> String {
    let bytes = v.envelope.as_bytes();
    if v.document == "trust" {
        match accept_trust_update(bytes, &v.trust, v.now) {
            Ok(TrustOutcome::Accepted(_)) => "accepted".into(),
            Ok(TrustOutcome::AlreadyHave) => "already_have".into(),
            Err(e) => e.code().into(),
        }
    } else {
        let device = DeviceId::new(v.device.clone()).expect("vector device id");
        match accept_desired_state(bytes, &v.trust, &device, &v.floor, v.now) {
            Ok(DesiredOutcome::Accepted(_)) => "accepted".into(),
            Ok(DesiredOutcome::AlreadyHave) => "already_have".into(),
            Err(e) => e.code().into(),
        }
    }
}

fn vectors() -> Vec<Vector> {
    let s = |text: &[u8]| String::from_utf8(text.to_vec()).expect("utf8");
    let desired =
        |description: &str, envelope: Vec<u8>, floor: RevisionFloor, expect: &str| Vector {
            description: description.into(),
            document: "desired".into(),
            trust: trust(),
            device: "gw-1".into(),
            floor,
            now: NOW,
            envelope: s(&envelope),
            expect: expect.into(),
        };
    let good = sign(&state("gw-1", 10), &[&online()]);
    let good_digest = Digest::of(&Envelope::decode(&good).expect("decodes").payload);
    let mut tampered = Envelope::decode(&good).expect("decodes");
    tampered.payload[30] ^= 1;
    let mut expired = state("gw-1", 10);
    expired.issued_at = NOW - 2 * DAY;
    expired.expires_at = NOW - DAY;
    let t2 = trust_update(
        2,
        RootKeys::single(root().public()),
        vec![entry(&key(3), NOW + DAY)],
    );
    let rotation = trust_update(
        2,
        RootKeys::single(key(9).public()),
        vec![entry(&online(), NOW + DAY)],
    );
    let trust_v = |description: &str, envelope: Vec<u8>, expect: &str| Vector {
        description: description.into(),
        document: "trust".into(),
        trust: trust(),
        device: "gw-1".into(),
        floor: RevisionFloor::default(),
        now: NOW,
        envelope: s(&envelope),
        expect: expect.into(),
    };
    vec![
        desired(
            "a valid state above the floor",
            good.clone(),
            floor(9),
            "accepted",
        ),
        desired(
            "the same state again",
            good.clone(),
            RevisionFloor {
                revision: 10,
                payload_digest: Some(good_digest),
            },
            "already_have",
        ),
        desired("an older revision", good.clone(), floor(11), "rollback"),
        desired(
            "one payload bit flipped",
            tampered.encode(),
            floor(0),
            "bad_signature",
        ),
        desired(
            "signed by an unknown key",
            sign(&state("gw-1", 10), &[&key(77)]),
            floor(0),
            "unknown_key",
        ),
        desired(
            "another device's state",
            sign(&state("gw-2", 10), &[&online()]),
            floor(0),
            "wrong_device",
        ),
        desired(
            "expired on arrival",
            sign(&expired, &[&online()]),
            floor(0),
            "expired",
        ),
        desired(
            "a trust update presented as a desired state",
            sign(&t2, &[&online()]),
            floor(0),
            "wrong_kind",
        ),
        desired(
            "an envelope of another version",
            edit_envelope(&good, |v| v["v"] = 2.into()),
            floor(0),
            "unsupported",
        ),
        desired(
            "duplicate keys in the payload",
            sign_bytes(
                s(&to_json(&state("gw-1", 10)))
                    .replacen("\"revision\":10", "\"revision\":10,\"revision\":11", 1)
                    .as_bytes(),
                &[&online()],
            ),
            floor(0),
            "malformed",
        ),
        trust_v(
            "a newer trust signed by root",
            sign(&t2, &[&root()]),
            "accepted",
        ),
        trust_v(
            "a newer trust signed by an online key",
            sign(&t2, &[&online()]),
            "unknown_key",
        ),
        trust_v(
            "a trust update that is not newer",
            sign(
                &trust_update(1, RootKeys::single(root().public()), vec![]),
                &[&root()],
            ),
            "rollback",
        ),
        trust_v(
            "root rotation signed by the old root only",
            sign(&rotation, &[&root()]),
            "threshold_not_met",
        ),
        trust_v(
            "root rotation signed by old and new root",
            sign(&rotation, &[&root(), &key(9)]),
            "accepted",
        ),
        trust_v(
            "a desired state presented as trust",
            sign(&state("gw-1", 10), &[&root()]),
            "wrong_kind",
        ),
    ]
}

#[test]
#[ignore = "rewrites tests/vectors; run with --ignored after changing the fixtures"]
fn generate_vectors() {
    std::fs::create_dir_all(dir()).expect("mkdir");
    for (i, v) in vectors().iter().enumerate() {
        let name = format!(
            "{:02}-{}.json",
            i + 1,
            v.description.replace([' ', '\'', '/'], "-")
        );
        std::fs::write(
            dir().join(name),
            serde_json::to_vec_pretty(v).expect("json"),
        )
        .expect("write");
    }
}

#[test]
fn every_conformance_vector_gives_its_expected_outcome() {
    let mut n = 0;
    let mut files: Vec<_> = std::fs::read_dir(dir())
        .expect("tests/vectors exists")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files {
        let v: Vector =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("vector json");
        assert_eq!(
            outcome(&v),
            v.expect,
            "{}: {}",
            path.display(),
            v.description
        );
        n += 1;
    }
    assert!(n >= 16, "only {n} vectors");
}

#[test]
fn the_committed_vectors_match_the_fixtures() {
    // Guards against vectors drifting from what the generator would write.
    let generated = vectors();
    for (i, v) in generated.iter().enumerate() {
        let name = format!(
            "{:02}-{}.json",
            i + 1,
            v.description.replace([' ', '\'', '/'], "-")
        );
        let on_disk: Vector =
            serde_json::from_slice(&std::fs::read(dir().join(&name)).expect("vector file"))
                .expect("json");
        assert_eq!(on_disk.envelope, v.envelope, "{name}");
        assert_eq!(on_disk.expect, v.expect, "{name}");
    }
}
