//! One test per rejection reason, and the attacks of TEST-CHECKLIST C1–C6, C8, C10–C14, C75–C76
//! at the protocol level. Each asserts the exact reason code, so a check that stops firing, or
//! fires for the wrong reason, fails here.

mod common;

use common::*;
use protocol::{
    accept_desired_state, accept_trust_update, DesiredOutcome, Digest, Rejection, RevisionFloor,
    RootKeys, TrustOutcome, TrustStore,
};

fn desired(wire: &[u8], floor_rev: u64) -> Result<DesiredOutcome, Rejection> {
    accept_desired_state(wire, &trust(), &dev("gw-1"), &floor(floor_rev), NOW)
}

fn code(r: Result<DesiredOutcome, Rejection>) -> &'static str {
    match r {
        Ok(DesiredOutcome::Accepted(_)) => "accepted",
        Ok(DesiredOutcome::AlreadyHave) => "already_have",
        Err(e) => e.code(),
    }
}

fn tcode(r: Result<TrustOutcome, Rejection>) -> &'static str {
    match r {
        Ok(TrustOutcome::Accepted(_)) => "accepted",
        Ok(TrustOutcome::AlreadyHave) => "already_have",
        Err(e) => e.code(),
    }
}

fn good() -> Vec<u8> {
    sign(&state("gw-1", 10), &[&online()])
}

#[test]
fn a_valid_state_is_accepted() {
    match desired(&good(), 9) {
        Ok(DesiredOutcome::Accepted(a)) => {
            assert_eq!(a.state.revision, 10);
            assert_eq!(a.signed_by, online().kid());
        }
        other => panic!("expected accepted, got {other:?}"),
    }
}

// --- C1: one flipped bit anywhere ---------------------------------------------------------

#[test]
fn c1_flipped_payload_bit_is_a_bad_signature() {
    let env = protocol::Envelope::decode(&good()).expect("decodes");
    let mut tampered = env.clone();
    tampered.payload[20] ^= 0x01;
    assert_eq!(code(desired(&tampered.encode(), 0)), "bad_signature");
}

#[test]
fn c1_flipped_signature_bit_is_a_bad_signature() {
    let wire = edit_envelope(&good(), |v| {
        let sig = v["signatures"][0]["sig"].as_str().expect("sig").to_string();
        let mut raw = protocol::keys::decode_b64_canonical(&sig).expect("b64");
        raw[5] ^= 0x80;
        v["signatures"][0]["sig"] = protocol::keys::encode_b64(&raw).into();
    });
    assert_eq!(code(desired(&wire, 0)), "bad_signature");
}

#[test]
fn c1_flipped_kid_bit_is_an_unknown_key() {
    let wire = edit_envelope(&good(), |v| {
        let kid = v["signatures"][0]["kid"].as_str().expect("kid").to_string();
        let flipped = if kid.starts_with('0') { "1" } else { "0" };
        v["signatures"][0]["kid"] = format!("{flipped}{}", &kid[1..]).into();
    });
    assert_eq!(code(desired(&wire, 0)), "unknown_key");
}

// --- C2, C13: unknown, expired and revoked keys --------------------------------------------

#[test]
fn c2_unknown_key_is_rejected() {
    let wire = sign(&state("gw-1", 10), &[&key(77)]);
    assert_eq!(code(desired(&wire, 0)), "unknown_key");
}

#[test]
fn c2_key_past_not_after_is_rejected() {
    let mut t = trust();
    t.signing_keys = vec![entry(&online(), NOW - 1)];
    let r = accept_desired_state(&good(), &t, &dev("gw-1"), &floor(0), NOW);
    assert_eq!(code(r), "expired_key");
    // At its last valid second it still verifies.
    let r = accept_desired_state(&good(), &t, &dev("gw-1"), &floor(0), NOW - 2);
    assert_eq!(code(r), "accepted");
}

#[test]
fn c13_state_signed_by_a_revoked_key_is_rejected_even_with_a_higher_revision() {
    // Trust v2 drops key 2 in favour of key 3.
    let update = trust_update(
        2,
        RootKeys::single(root().public()),
        vec![entry(&key(3), NOW + DAY)],
    );
    let TrustOutcome::Accepted(acc) =
        accept_trust_update(&sign(&update, &[&root()]), &trust(), NOW).expect("trust accepted")
    else {
        panic!("expected a new trust");
    };
    let wire = sign(&state("gw-1", 1_000), &[&online()]);
    let r = accept_desired_state(&wire, &acc.store, &dev("gw-1"), &floor(10), NOW);
    assert_eq!(code(r), "unknown_key");
    let wire = sign(&state("gw-1", 11), &[&key(3)]);
    let r = accept_desired_state(&wire, &acc.store, &dev("gw-1"), &floor(10), NOW);
    assert_eq!(code(r), "accepted");
}

// --- C3: envelope structure ------------------------------------------------------------------

#[test]
fn c3_other_algorithm_is_unsupported() {
    let wire = edit_envelope(&good(), |v| v["signatures"][0]["alg"] = "rsa".into());
    assert_eq!(code(desired(&wire, 0)), "unsupported");
}

#[test]
fn c3_other_envelope_version_is_unsupported() {
    let wire = edit_envelope(&good(), |v| v["v"] = 2.into());
    assert_eq!(code(desired(&wire, 0)), "unsupported");
}

#[test]
fn c3_missing_fields_are_malformed() {
    for field in ["v", "payload", "signatures"] {
        let wire = edit_envelope(&good(), |v| {
            v.as_object_mut().expect("object").remove(field);
        });
        assert_eq!(code(desired(&wire, 0)), "malformed", "without {field}");
    }
    let wire = edit_envelope(&good(), |v| v["signatures"] = serde_json::json!([]));
    assert_eq!(code(desired(&wire, 0)), "malformed", "no signatures");
}

#[test]
fn c3_unknown_envelope_fields_are_malformed() {
    let wire = edit_envelope(&good(), |v| v["extra"] = 1.into());
    assert_eq!(code(desired(&wire, 0)), "malformed");
}

#[test]
fn c3_non_canonical_base64_is_malformed() {
    // Unpadded payload.
    let wire = edit_envelope(&good(), |v| {
        let p = v["payload"]
            .as_str()
            .expect("payload")
            .trim_end_matches('=')
            .to_string();
        v["payload"] = (p + "").into();
    });
    let env_payload_len = protocol::Envelope::decode(&good())
        .expect("ok")
        .payload
        .len();
    if !env_payload_len.is_multiple_of(3) {
        assert_eq!(code(desired(&wire, 0)), "malformed");
    }
    // Whitespace inside the signature.
    let wire = edit_envelope(&good(), |v| {
        let s = v["signatures"][0]["sig"].as_str().expect("sig").to_string();
        v["signatures"][0]["sig"] = format!("{} {}", &s[..4], &s[4..]).into();
    });
    assert_eq!(code(desired(&wire, 0)), "malformed");
    // Non-zero trailing bits: the last significant character of a 64-byte signature carries
    // 4 unused bits; setting one gives the same bytes in a second spelling.
    let wire = edit_envelope(&good(), |v| {
        let s = v["signatures"][0]["sig"].as_str().expect("sig").to_string();
        let mut c: Vec<char> = s.chars().collect();
        let i = c.iter().rposition(|&ch| ch != '=').expect("char");
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let idx = alphabet.find(c[i]).expect("b64 char");
        c[i] = alphabet.chars().nth(idx ^ 1).expect("char");
        v["signatures"][0]["sig"] = c.into_iter().collect::<String>().into();
    });
    assert_eq!(code(desired(&wire, 0)), "malformed");
}

#[test]
fn c3_duplicate_json_keys_are_malformed_in_envelope_payload_and_maps() {
    // In the envelope.
    let text = String::from_utf8(good()).expect("utf8");
    let dup = text.replacen("{\"v\":1,", "{\"v\":1,\"v\":1,", 1);
    assert_ne!(dup, text);
    assert_eq!(code(desired(dup.as_bytes(), 0)), "malformed");
    // In the payload.
    let payload = String::from_utf8(to_json(&state("gw-1", 10))).expect("utf8");
    let dup = payload.replacen("\"revision\":10", "\"revision\":10,\"revision\":11", 1);
    assert_ne!(dup, payload);
    assert_eq!(
        code(desired(&sign_bytes(dup.as_bytes(), &[&online()]), 0)),
        "malformed"
    );
    // In the env map, where serde would otherwise keep the last value silently.
    let dup = payload.replacen(
        "\"MODE\":\"edge\"",
        "\"MODE\":\"edge\",\"MODE\":\"evil\"",
        1,
    );
    assert_ne!(dup, payload);
    assert_eq!(
        code(desired(&sign_bytes(dup.as_bytes(), &[&online()]), 0)),
        "malformed"
    );
}

// --- C4: kind confusion ------------------------------------------------------------------------

#[test]
fn c4_trust_update_payload_presented_as_desired_state_is_wrong_kind() {
    // Signed by a key trusted for desired states, so the kind check is what must fire.
    let update = trust_update(
        2,
        RootKeys::single(root().public()),
        vec![entry(&online(), NOW + DAY)],
    );
    let wire = sign(&update, &[&online()]);
    assert_eq!(code(desired(&wire, 0)), "wrong_kind");
}

#[test]
fn c4_desired_state_payload_presented_as_trust_update_is_wrong_kind() {
    let wire = sign(&state("gw-1", 10), &[&root()]);
    assert_eq!(
        tcode(accept_trust_update(&wire, &trust(), NOW)),
        "wrong_kind"
    );
}

#[test]
fn c4_root_signed_trust_update_replayed_on_the_desired_topic_is_refused() {
    let update = trust_update(
        2,
        RootKeys::single(root().public()),
        vec![entry(&online(), NOW + DAY)],
    );
    let wire = sign(&update, &[&root()]);
    // Root is not an online signing key.
    assert_eq!(code(desired(&wire, 0)), "unknown_key");
}

// --- C5: mix-and-match ---------------------------------------------------------------------------

#[test]
fn c5_another_devices_state_is_wrong_device() {
    let wire = sign(&state("gw-2", 10), &[&online()]);
    assert_eq!(code(desired(&wire, 0)), "wrong_device");
}

// --- C6: rollback and replay ---------------------------------------------------------------------

#[test]
fn c6_older_revision_is_rollback_and_the_same_one_is_a_no_op() {
    let wire = good();
    let DesiredOutcome::Accepted(acc) = desired(&wire, 9).expect("accepted") else {
        panic!("expected accepted");
    };
    let held = RevisionFloor {
        revision: 10,
        payload_digest: Some(acc.payload_digest),
    };
    let d = dev("gw-1");
    // The same bytes again: silent no-op.
    let r = accept_desired_state(&wire, &trust(), &d, &held, NOW);
    assert_eq!(code(r), "already_have");
    // N-1, validly signed.
    let older = sign(&state("gw-1", 9), &[&online()]);
    assert_eq!(
        code(accept_desired_state(&older, &trust(), &d, &held, NOW)),
        "rollback"
    );
    // Same revision, different content: an equivocation, refused.
    let mut other = state("gw-1", 10);
    other.workloads.clear();
    let other = sign(&other, &[&online()]);
    assert_eq!(
        code(accept_desired_state(&other, &trust(), &d, &held, NOW)),
        "rollback"
    );
}

// --- C8: freeze ------------------------------------------------------------------------------------

#[test]
fn c8_state_expired_on_arrival_is_rejected() {
    let mut s = state("gw-1", 10);
    s.issued_at = NOW - 2 * DAY;
    s.expires_at = NOW - DAY;
    let wire = sign(&s, &[&online()]);
    assert_eq!(code(desired(&wire, 0)), "expired");
    // The same document re-delivered after it was accepted is a no-op, not an expiry: a device
    // keeps running its last accepted state past expiry.
    let held = RevisionFloor {
        revision: 10,
        payload_digest: Some(Digest::of(
            &protocol::Envelope::decode(&wire).expect("ok").payload,
        )),
    };
    let r = accept_desired_state(&wire, &trust(), &dev("gw-1"), &held, NOW);
    assert_eq!(code(r), "already_have");
}

// --- C10: fast-forward recovery from a stolen online key --------------------------------------

#[test]
fn c10_root_recovers_a_device_locked_out_by_a_stolen_keys_huge_revision() {
    let d = dev("gw-1");
    let stolen = online();
    let evil = sign(&state("gw-1", 1 << 63), &[&stolen]);
    let DesiredOutcome::Accepted(acc) =
        accept_desired_state(&evil, &trust(), &d, &floor(5), NOW).expect("valid at the time")
    else {
        panic!("expected accepted");
    };
    let locked = RevisionFloor {
        revision: 1 << 63,
        payload_digest: Some(acc.payload_digest),
    };
    // The real hub's next state is now a "rollback": the device is locked out.
    let real = sign(&state("gw-1", 6), &[&stolen]);
    assert_eq!(
        code(accept_desired_state(&real, &trust(), &d, &locked, NOW)),
        "rollback"
    );
    // Root revokes the stolen key, names a new one and resets the floor.
    let new_key = key(3);
    let mut update = trust_update(
        2,
        RootKeys::single(root().public()),
        vec![entry(&new_key, NOW + DAY)],
    );
    update.revision_floor = Some(100);
    let TrustOutcome::Accepted(t) =
        accept_trust_update(&sign(&update, &[&root()]), &trust(), NOW).expect("accepted")
    else {
        panic!("expected a new trust");
    };
    let reset = RevisionFloor {
        revision: t.update.revision_floor.expect("floor set"),
        payload_digest: None,
    };
    let recovered = sign(&state("gw-1", 101), &[&new_key]);
    assert_eq!(
        code(accept_desired_state(&recovered, &t.store, &d, &reset, NOW)),
        "accepted"
    );
    // The thief's states are dead, whatever their revision.
    let evil2 = sign(&state("gw-1", (1 << 63) + 1), &[&stolen]);
    assert_eq!(
        code(accept_desired_state(&evil2, &t.store, &d, &reset, NOW)),
        "unknown_key"
    );
    // And below the floor nothing is accepted, even from the new key.
    let low = sign(&state("gw-1", 100), &[&new_key]);
    assert_eq!(
        code(accept_desired_state(&low, &t.store, &d, &reset, NOW)),
        "rollback"
    );
}

// --- C11: trust updates that must not be accepted ----------------------------------------------

#[test]
fn c11_trust_update_not_newer_is_rollback_and_the_same_one_is_a_no_op() {
    let current = trust();
    let same_version = trust_update(1, RootKeys::single(root().public()), vec![]);
    assert_eq!(
        tcode(accept_trust_update(
            &sign(&same_version, &[&root()]),
            &current,
            NOW
        )),
        "rollback"
    );
    let older = trust_update(0, RootKeys::single(root().public()), vec![]);
    assert_eq!(
        tcode(accept_trust_update(
            &sign(&older, &[&root()]),
            &current,
            NOW
        )),
        "rollback"
    );
    // Accept v2, then see it again.
    let v2 = sign(
        &trust_update(2, RootKeys::single(root().public()), vec![]),
        &[&root()],
    );
    let TrustOutcome::Accepted(acc) = accept_trust_update(&v2, &current, NOW).expect("ok") else {
        panic!("expected accepted");
    };
    assert_eq!(
        tcode(accept_trust_update(&v2, &acc.store, NOW)),
        "already_have"
    );
}

#[test]
fn c11_trust_update_signed_by_an_online_key_or_nobody_trusted_is_rejected() {
    let update = trust_update(
        2,
        RootKeys::single(root().public()),
        vec![entry(&key(66), NOW + DAY)],
    );
    assert_eq!(
        tcode(accept_trust_update(
            &sign(&update, &[&online()]),
            &trust(),
            NOW
        )),
        "unknown_key"
    );
    assert_eq!(
        tcode(accept_trust_update(
            &sign(&update, &[&key(50)]),
            &trust(),
            NOW
        )),
        "unknown_key"
    );
}

#[test]
fn c11_trust_update_expired_on_arrival_is_rejected() {
    let mut update = trust_update(2, RootKeys::single(root().public()), vec![]);
    update.issued_at = NOW - 2 * DAY;
    update.expires_at = NOW - DAY;
    assert_eq!(
        tcode(accept_trust_update(
            &sign(&update, &[&root()]),
            &trust(),
            NOW
        )),
        "expired"
    );
}

// --- C12: root rotation matrix ------------------------------------------------------------------

#[test]
fn c12_root_rotation_needs_both_old_and_new_root() {
    let new_root = key(9);
    let update = trust_update(
        2,
        RootKeys::single(new_root.public()),
        vec![entry(&online(), NOW + DAY)],
    );
    let only_old = sign(&update, &[&root()]);
    assert_eq!(
        tcode(accept_trust_update(&only_old, &trust(), NOW)),
        "threshold_not_met"
    );
    let only_new = sign(&update, &[&new_root]);
    assert_eq!(
        tcode(accept_trust_update(&only_new, &trust(), NOW)),
        "unknown_key"
    );
    let both = sign(&update, &[&root(), &new_root]);
    let TrustOutcome::Accepted(acc) = accept_trust_update(&both, &trust(), NOW).expect("ok") else {
        panic!("expected accepted");
    };
    assert_eq!(acc.store.root, RootKeys::single(new_root.public()));
    // From now on the old root alone can do nothing.
    let next = trust_update(3, RootKeys::single(new_root.public()), vec![]);
    assert_eq!(
        tcode(accept_trust_update(
            &sign(&next, &[&root()]),
            &acc.store,
            NOW
        )),
        "unknown_key"
    );
    assert_eq!(
        tcode(accept_trust_update(
            &sign(&next, &[&new_root]),
            &acc.store,
            NOW
        )),
        "accepted"
    );
}

#[test]
fn c12_a_key_that_signs_twice_counts_once() {
    let (r1, r2) = (root(), key(5));
    let two_roots = RootKeys {
        keys: vec![r1.public(), r2.public()],
        threshold: 2,
    };
    let current = TrustStore::pinned(two_roots.clone());
    let update = trust_update(1, two_roots, vec![]);
    let twice = sign(&update, &[&r1, &r1]);
    match accept_trust_update(&twice, &current, NOW) {
        Err(Rejection::ThresholdNotMet {
            needed: 2, got: 1, ..
        }) => {}
        other => panic!("expected threshold_not_met 2/1, got {other:?}"),
    }
    assert_eq!(
        tcode(accept_trust_update(
            &sign(&update, &[&r1, &r2]),
            &current,
            NOW
        )),
        "accepted"
    );
}

// --- C14: weak keys and malleable signatures -------------------------------------------------

#[test]
fn c14_trust_update_carrying_a_small_order_key_is_rejected() {
    let update = trust_update(
        2,
        RootKeys::single(root().public()),
        vec![entry(&online(), NOW + DAY)],
    );
    let mut v: serde_json::Value = serde_json::from_slice(&to_json(&update)).expect("json");
    let mut identity = [0u8; 32];
    identity[0] = 1;
    v["signing_keys"][0]["public_key"] = protocol::keys::encode_b64(&identity).into();
    let wire = sign_bytes(&serde_json::to_vec(&v).expect("json"), &[&root()]);
    match accept_trust_update(&wire, &trust(), NOW) {
        Err(Rejection::Malformed(m)) => assert!(m.contains("small-order"), "{m}"),
        other => panic!("expected malformed small-order key, got {other:?}"),
    }
}

#[test]
fn c14_signature_with_non_canonical_s_is_rejected() {
    // L, the group order, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let wire = edit_envelope(&good(), |v| {
        let sig = v["signatures"][0]["sig"].as_str().expect("sig").to_string();
        let mut raw = protocol::keys::decode_b64_canonical(&sig).expect("b64");
        // S' = S + L verifies under lax (non-strict) checking; strict must refuse it.
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(raw[32 + i]) + u16::from(L[i]) + carry;
            raw[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        v["signatures"][0]["sig"] = protocol::keys::encode_b64(&raw).into();
    });
    assert_eq!(code(desired(&wire, 0)), "bad_signature");
}

// --- C75: endless and pathological data ------------------------------------------------------

#[test]
fn c75_oversized_envelope_is_too_large_before_parsing() {
    let huge = vec![b'['; protocol::limits::MAX_ENVELOPE_BYTES + 1];
    assert_eq!(code(desired(&huge, 0)), "too_large");
}

#[test]
fn c75_a_million_element_array_is_too_large() {
    let mut payload = b"{\"kind\":\"DesiredState\",\"x\":[".to_vec();
    payload.extend(std::iter::repeat_n(b"0,".as_slice(), 1_000_000).flatten());
    payload.extend_from_slice(b"0]}");
    // As an envelope it exceeds the wire limit; as a payload it exceeds the payload limit.
    assert_eq!(
        code(desired(&sign_bytes(&payload, &[&online()]), 0)),
        "too_large"
    );
}

#[test]
fn c75_deep_nesting_is_malformed() {
    let depth = 10_000;
    let payload = format!(
        "{{\"kind\":\"DesiredState\",\"x\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(
        code(desired(&sign_bytes(payload.as_bytes(), &[&online()]), 0)),
        "malformed"
    );
}

#[test]
fn c75_giant_strings_and_too_many_items_are_malformed() {
    let mut s = state("gw-1", 10);
    s.workloads[0].command = vec!["x".repeat(100_000)];
    assert_eq!(code(desired(&sign(&s, &[&online()]), 0)), "malformed");
    let mut s = state("gw-1", 10);
    s.workloads = (0..40).map(|i| workload(&format!("w{i}"))).collect();
    assert_eq!(code(desired(&sign(&s, &[&online()]), 0)), "malformed");
    let mut s = state("gw-1", 10);
    s.workloads[0].env = (0..100).map(|i| (format!("K{i}"), "v".into())).collect();
    assert_eq!(code(desired(&sign(&s, &[&online()]), 0)), "malformed");
}

#[test]
fn c75_invalid_utf8_payload_is_malformed() {
    let mut payload = to_json(&state("gw-1", 10));
    let at = payload
        .windows(4)
        .position(|w| w == b"edge")
        .expect("env value present");
    payload[at] = 0xff;
    assert_eq!(
        code(desired(&sign_bytes(&payload, &[&online()]), 0)),
        "malformed"
    );
}

#[test]
fn c75_non_ascii_and_upper_case_identifiers_are_malformed() {
    let payload = String::from_utf8(to_json(&state("gw-1", 10))).expect("utf8");
    for bad in ["gw-\u{0131}", "GW-1", "gw\u{0301}-1"] {
        let p = payload.replace("\"device\":\"gw-1\"", &format!("\"device\":\"{bad}\""));
        assert_eq!(
            code(desired(&sign_bytes(p.as_bytes(), &[&online()]), 0)),
            "malformed",
            "{bad}"
        );
    }
}

// --- C76: path-like names ---------------------------------------------------------------------

#[test]
fn c76_path_like_names_are_malformed() {
    let payload = String::from_utf8(to_json(&state("gw-1", 10))).expect("utf8");
    let digest = Digest::of(b"sensor").to_string();
    let cases = [
        ("\"device\":\"gw-1\"", "\"device\":\"../gw-1\""),
        ("\"device\":\"gw-1\"", "\"device\":\"gw%2F1\""),
        ("\"device\":\"gw-1\"", "\"device\":\"/etc/passwd\""),
        ("\"name\":\"sensor\"", "\"name\":\"../../etc\""),
        ("\"name\":\"sensor\"", "\"name\":\"a/b\""),
        (digest.as_str(), "sha256:../../../../etc/passwd"),
        (digest.as_str(), "/abs/path"),
    ];
    for (from, to) in cases {
        assert!(payload.contains(from), "fixture lacks {from}");
        let p = payload.replace(from, to);
        assert_eq!(
            code(desired(&sign_bytes(p.as_bytes(), &[&online()]), 0)),
            "malformed",
            "{to}"
        );
    }
}

// --- every field limit is enforced after the signature ---------------------------------------

#[test]
fn out_of_range_fields_are_malformed() {
    let mut s = state("gw-1", 10);
    s.expires_at = s.issued_at;
    assert_eq!(code(desired(&sign(&s, &[&online()]), 0)), "malformed");
    let mut s = state("gw-1", 10);
    s.workloads.push(workload("sensor"));
    assert_eq!(
        code(desired(&sign(&s, &[&online()]), 0)),
        "malformed",
        "duplicate workload"
    );
    let mut s = state("gw-1", 10);
    s.workloads[0].image.size = 0;
    assert_eq!(
        code(desired(&sign(&s, &[&online()]), 0)),
        "malformed",
        "zero size"
    );
    let mut s = state("gw-1", 10);
    s.workloads[0].command.clear();
    assert_eq!(
        code(desired(&sign(&s, &[&online()]), 0)),
        "malformed",
        "empty command"
    );
    let mut s = state("gw-1", 10);
    s.workloads[0].stability_window_secs = protocol::limits::MAX_DURATION_SECS + 1;
    assert_eq!(
        code(desired(&sign(&s, &[&online()]), 0)),
        "malformed",
        "stability window over a week"
    );
}
