//! Updates through deltas, end to end: the real hub makes the delta, the real agent downloads
//! it through its proxy, applies it to the image it runs and converges; and when the delta
//! cannot be had (the hub lacks the base), is corrupt, or is cut mid-way, the agent still
//! converges — from the full blob, or by resuming the delta — and says which path it took.

use std::path::PathBuf;
use std::time::Duration;

use fleet_test_kit::eventually;
use fleet_test_kit::proxy::Mode;
use fleet_tests::fleet::Fleet;
use serde_json::{json, Value};

/// Release 1's payload: 1.5 MB of incompressible bytes.
fn payload_v1() -> Vec<u8> {
    fleet_test_kit::noise(1_500_000, 0x9e37_79b9_7f4a_7c15)
}

/// Release 2: release 1's payload with a byte changed every 50 kB.
fn payload_v2() -> Vec<u8> {
    let mut p = payload_v1();
    for i in (0..p.len()).step_by(50_000) {
        p[i] ^= 0xff;
    }
    p
}

/// Imports release `version` of `app` with `files`, deploys it to the lab group above every
/// earlier one, and returns (image digest, deployment id).
fn roll_out(fleet: &Fleet, version: u64, files: &[(&str, Vec<u8>)]) -> (String, u64) {
    let digest = fleet.image("app", &format!("exec sleep 10000{version}"), files);
    let release = fleet.release("app", &version.to_string(), &digest, None);
    (digest.clone(), fleet.deploy(release, version as i64))
}

/// The `image_pulled` event a device reported for `digest`.
fn pulled(fleet: &Fleet, id: &str, digest: &str) -> Value {
    fleet
        .events(id)
        .into_iter()
        .find(|e| e["body"]["type"] == "image_pulled" && e["body"]["digest"] == digest)
        .map(|e| e["body"].clone())
        .unwrap_or_else(|| panic!("{id} reported no image_pulled for {digest}"))
}

/// The stored (compressed) size of an image's full blob.
fn blob_size(fleet: &Fleet, digest: &str) -> u64 {
    fleet
        .api("GET", "/api/v1/images", None)
        .as_array()
        .and_then(|a| a.iter().find(|i| i["digest"] == digest).cloned())
        .and_then(|i| i["compressed_size"].as_u64())
        .expect("image listed")
}

fn hub_data(fleet: &Fleet) -> PathBuf {
    fleet.dir.path().join("hub")
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

#[test]
fn an_update_goes_through_a_delta_and_downloads_far_less_than_the_blob() {
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    let (v1, _) = roll_out(&fleet, 1, &[("payload.bin", payload_v1())]);
    fleet.wait_converged(120);
    let first = pulled(&fleet, &a.id, &v1);
    assert_eq!(first["delta"], false, "nothing to diff against: {first}");
    assert!(
        a.data
            .join("images")
            .join(hex(&v1))
            .join("image.tar.zst")
            .is_file(),
        "the agent keeps the image's compressed tar as the next base"
    );

    let down_before = a.http.bytes_down();
    let (v2, dep2) = roll_out(&fleet, 2, &[("payload.bin", payload_v2())]);
    fleet.wait_converged(180);
    let crossed = a.http.bytes_down() - down_before;
    let ev = pulled(&fleet, &a.id, &v2);
    let full = blob_size(&fleet, &v2);
    assert_eq!(ev["delta"], true, "{ev}");
    assert_eq!(ev["base"], v1.as_str(), "{ev}");
    assert!(ev.get("fallback").is_none(), "{ev}");
    let fetched = ev["bytes_fetched"].as_u64().expect("bytes_fetched");
    let saved = ev["bytes_saved"].as_u64().expect("bytes_saved");
    assert!(
        fetched < full / 10,
        "delta of {fetched} bytes for a {full}-byte blob"
    );
    assert_eq!(saved + fetched, full, "{ev}");
    assert!(
        crossed < full / 5,
        "{crossed} bytes crossed the agent's link for a {full}-byte image"
    );
    assert_eq!(a.running().first().map(|r| r.2.clone()), Some(v2.clone()));
    println!("blob {full} bytes, delta {fetched} fetched, {saved} saved, {crossed} on the link");

    // The hub shows what was saved, per device and per deployment.
    let dev = fleet.device(&a.id);
    assert_eq!(dev["pulls"]["delta"], 1, "{dev}");
    assert_eq!(dev["pulls"]["full"], 1, "{dev}");
    assert_eq!(dev["pulls"]["bytes_saved"], saved, "{dev}");
    let deps = fleet.api("GET", "/api/v1/deployments", None);
    let d2 = deps
        .as_array()
        .and_then(|a| a.iter().find(|d| d["id"] == dep2).cloned())
        .expect("deployment 2");
    assert_eq!(d2["pulls"]["bytes_saved"], saved, "{d2}");
}

#[test]
fn a_base_the_hub_lacks_falls_back_to_the_full_blob_and_says_so() {
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    let (v1, _) = roll_out(&fleet, 1, &[("payload.bin", payload_v1())]);
    fleet.wait_converged(120);
    // The hub no longer holds the image the device runs: no delta can be made from it.
    std::fs::remove_file(
        hub_data(&fleet)
            .join("blobs")
            .join(format!("{}.tar.zst", hex(&v1))),
    )
    .expect("remove the base's blob");
    let (v2, _) = roll_out(&fleet, 2, &[("payload.bin", payload_v2())]);
    fleet.wait_converged(180);
    let ev = pulled(&fleet, &a.id, &v2);
    assert_eq!(ev["delta"], false, "{ev}");
    let why = ev["fallback"].as_str().unwrap_or_default();
    assert!(why.contains("not found"), "fallback reason {why:?}");
    assert!(ev["bytes_fetched"].as_u64() >= Some(blob_size(&fleet, &v2)));
    assert_eq!(a.running().first().map(|r| r.2.clone()), Some(v2));
    assert_eq!(fleet.device(&a.id)["pulls"]["fallbacks"], 1);
}

#[test]
fn a_corrupted_delta_is_refused_and_the_full_blob_converges() {
    let fleet = Fleet::start(2);
    let (v1, _) = roll_out(&fleet, 1, &[("payload.bin", payload_v1())]);
    fleet.wait_converged(120);
    // Release 2 to dev-0 alone first: the hub makes and caches the delta.
    let digest = fleet.image("app", "exec sleep 100002", &[("payload.bin", payload_v2())]);
    let release = fleet.release("app", "2", &digest, None);
    fleet.api(
        "POST",
        "/api/v1/deployments",
        Some(json!({"release": release, "devices": ["dev-0"], "priority": 5})),
    );
    let (first, second) = (fleet.agents[0].id.clone(), fleet.agents[1].id.clone());
    eventually(180, "dev-0 on release 2 through the delta", || {
        fleet
            .events(&first)
            .iter()
            .any(|e| e["body"]["type"] == "image_pulled" && e["body"]["delta"] == true)
            .then_some(())
    });
    // Then the cached delta rots on the hub's disk (same length, so the same ETag).
    let cached =
        hub_data(&fleet)
            .join("deltas")
            .join(format!("{}-{}.delta", hex(&v1), hex(&digest)));
    let mut bytes = std::fs::read(&cached).expect("cached delta");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    bytes[mid + 1] ^= 0xaa;
    std::fs::write(&cached, &bytes).expect("corrupt it");
    fleet.deploy(release, 2);
    fleet.wait_converged(180);
    let ev = pulled(&fleet, &second, &digest);
    assert_eq!(ev["delta"], false, "{ev}");
    let why = ev["fallback"].as_str().unwrap_or_default();
    assert!(why.contains("delta"), "fallback reason {why:?}");
    let b = &fleet.agents[1];
    assert_eq!(
        b.running().first().map(|r| r.2.clone()),
        Some(digest.clone())
    );
    // Nothing of the refused delta stays behind.
    let partial: Vec<_> = std::fs::read_dir(b.data.join("images").join("partial"))
        .expect("partial dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(partial.is_empty(), "left in partial/: {partial:?}");
}

#[test]
fn a_delta_download_cut_mid_way_resumes_with_range() {
    let fleet = Fleet::start(1);
    let a = &fleet.agents[0];
    let (_, _) = roll_out(&fleet, 1, &[("payload.bin", payload_v1())]);
    fleet.wait_converged(120);
    // Release 2 adds 600 kB of new bytes: a delta of about that size.
    let extra = fleet_test_kit::noise(600_000, 0x1234_5678_9abc_def0);
    a.http.set(Mode::Throttle(100_000));
    let down_before = a.http.bytes_down();
    let (v2, _) = roll_out(
        &fleet,
        2,
        &[("payload.bin", payload_v2()), ("more.bin", extra)],
    );
    eventually(120, "delta download under way", || {
        (a.http.bytes_down() > down_before + 200_000).then_some(())
    });
    a.http.cut();
    std::thread::sleep(Duration::from_secs(2));
    let before_cut = a.http.bytes_down() - down_before;
    a.http.heal();
    fleet.wait_converged(180);
    let total = a.http.bytes_down() - down_before;
    let ev = pulled(&fleet, &a.id, &v2);
    assert_eq!(ev["delta"], true, "{ev}");
    let fetched = ev["bytes_fetched"].as_u64().expect("bytes_fetched");
    let delta_len = fetched + before_cut; // at most: the resumed part plus what came before
    assert!(
        fetched < 550_000,
        "the resumed delta fetched {fetched} bytes: it started over"
    );
    assert!(
        total < delta_len + 100_000,
        "{total} bytes crossed the link for a delta of about {delta_len}"
    );
    assert!(total < blob_size(&fleet, &v2) / 2);
}

/// C16 on the delta path: the hub serves a well-formed delta from the right base to another
/// image. It applies cleanly, but the result is not the signed image: refused, full blob.
#[test]
fn a_delta_to_another_image_than_the_signed_one_is_refused_and_the_blob_converges() {
    let fleet = Fleet::start(2);
    let (v1, _) = roll_out(&fleet, 1, &[("payload.bin", payload_v1())]);
    fleet.wait_converged(120);
    // Release 3 to dev-0 alone: the hub makes and caches the delta from v1 to v3.
    let v3 = fleet.image("app", "exec sleep 100003", &[("payload.bin", payload_v2())]);
    let r3 = fleet.release("app", "3", &v3, None);
    fleet.api(
        "POST",
        "/api/v1/deployments",
        Some(json!({"release": r3, "devices": ["dev-0"], "priority": 5})),
    );
    let first = fleet.agents[0].id.clone();
    eventually(180, "dev-0 on release 3 through the delta", || {
        fleet
            .events(&first)
            .iter()
            .any(|e| e["body"]["type"] == "image_pulled" && e["body"]["delta"] == true)
            .then_some(())
    });
    // The hub's cache now answers v1 → v2 with the delta v1 → v3.
    let mut v2_payload = payload_v2();
    v2_payload[7] ^= 0x01;
    let v2 = fleet.image("app", "exec sleep 100002", &[("payload.bin", v2_payload)]);
    let deltas = hub_data(&fleet).join("deltas");
    std::fs::copy(
        deltas.join(format!("{}-{}.delta", hex(&v1), hex(&v3))),
        deltas.join(format!("{}-{}.delta", hex(&v1), hex(&v2))),
    )
    .expect("plant the wrong delta");
    let r2 = fleet.release("app", "2", &v2, None);
    fleet.deploy(r2, 2);
    fleet.wait_converged(180);
    let b = &fleet.agents[1];
    let ev = pulled(&fleet, &b.id, &v2);
    assert_eq!(ev["delta"], false, "{ev}");
    let why = ev["fallback"].as_str().unwrap_or_default();
    assert!(
        why.contains("not the signed image"),
        "fallback reason {why:?}"
    );
    assert_eq!(b.running().first().map(|r| r.2.clone()), Some(v2.clone()));
    assert!(
        !b.data.join("images").join(hex(&v3)).exists(),
        "the image the wrong delta made was kept"
    );
}
