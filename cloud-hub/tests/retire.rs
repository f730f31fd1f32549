//! Retiring groups, releases and images through `fleetctl` against the real hub: what is still
//! used is refused with a clear error naming the user and nothing changes; once unused, each
//! goes, an image with its blob and the cached deltas from or to it.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

async fn fleetctl(hub: &Hub, args: &[&str]) -> (bool, String, String) {
    fleetctl_async(hub, &hub.token, args).await
}

async fn count(hub: &Hub, path: &str) -> usize {
    let v = hub.admin(Method::GET, path, None).await;
    v.as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_things_are_refused_and_unused_ones_go_with_their_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let (release, digest) = hub.release("app", "1").await;
    hub.admin(
        Method::PUT,
        "/api/v1/groups/north",
        Some(json!({"selector": "site=north"})),
    )
    .await;
    hub.admin(
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"release": release, "group": "north"})),
    )
    .await;
    let hex = digest.trim_start_matches("sha256:").to_string();
    let blob = hub.dir.join("blobs").join(format!("{hex}.tar.zst"));
    assert!(blob.is_file());
    let rel = release.to_string();

    // In use: 409 naming the user, nothing changed.
    for (args, why) in [
        (
            vec!["images", "delete", digest.as_str()],
            format!("used by release app 1 (id {release})"),
        ),
        (
            vec!["releases", "delete", &rel],
            "run by deployment 1".into(),
        ),
        (
            vec!["groups", "delete", "north"],
            "target of deployment 1".into(),
        ),
    ] {
        let (ok, _, err) = fleetctl(&hub, &args).await;
        assert!(!ok, "{args:?} was allowed");
        assert!(err.contains("409") && err.contains(&why), "{args:?}: {err}");
    }
    let (ok, _, err) = fleetctl(&hub, &["images", "delete", "not-a-digest"]).await;
    assert!(!ok && err.contains("400"), "{err}");
    assert!(blob.is_file());
    assert_eq!(count(&hub, "/api/v1/images").await, 1);
    assert_eq!(count(&hub, "/api/v1/releases").await, 1);
    assert_eq!(count(&hub, "/api/v1/groups").await, 1);

    // Unused: each goes.
    let (ok, _, err) = fleetctl(&hub, &["deployments", "delete", "1"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = fleetctl(&hub, &["groups", "delete", "north"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = fleetctl(&hub, &["releases", "delete", &rel]).await;
    assert!(ok, "{err}");
    let deltas = hub.dir.join("deltas");
    let other = "ab".repeat(32);
    let mine = deltas.join(format!("{other}-{hex}.delta"));
    let unrelated = deltas.join(format!("{other}-{}.delta", "cd".repeat(32)));
    for f in [&mine, &unrelated] {
        std::fs::write(f, b"delta").expect("write");
    }
    let (ok, out, err) = fleetctl(&hub, &["images", "delete", digest.as_str()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("\"deltas_removed\": 1"), "{out}");
    assert!(!blob.exists(), "the blob was kept");
    assert!(!mine.exists() && unrelated.exists());
    assert_eq!(count(&hub, "/api/v1/images").await, 0);
    assert_eq!(count(&hub, "/api/v1/releases").await, 0);
    assert_eq!(count(&hub, "/api/v1/groups").await, 0);
    let (ok, _, err) = fleetctl(&hub, &["groups", "delete", "north"]).await;
    assert!(
        !ok && err.contains("404") && err.contains("group north"),
        "{err}"
    );

    let audit = hub
        .admin(Method::GET, "/api/v1/audit?limit=1000", None)
        .await;
    for action in ["group.delete", "release.delete", "image.delete"] {
        assert!(
            audit
                .as_array()
                .expect("list")
                .iter()
                .any(|e| e["action"] == action),
            "{action}: {audit}"
        );
    }
    let v = hub.admin(Method::GET, "/api/v1/audit/verify", None).await;
    assert_eq!(v["ok"], json!(true), "{v}");
}

/// Sets a file's modification time `secs` into the past.
fn age(path: &std::path::Path, secs: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(secs))
        .expect("set mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_removes_old_blobs_and_deltas_no_image_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::start(dir.path()).await;
    let (_, digest) = hub.release("app", "1").await;
    let hex = digest.trim_start_matches("sha256:").to_string();
    let blobs = hub.dir.join("blobs");
    let kept = blobs.join(format!("{hex}.tar.zst"));
    let orphan = blobs.join(format!("{}.tar.zst", "ab".repeat(32)));
    let young = blobs.join(format!("{}.tar.zst", "cd".repeat(32)));
    let deltas = hub.dir.join("deltas");
    let stale_delta = deltas.join(format!("{}-{hex}.delta", "ab".repeat(32)));
    for f in [&orphan, &young, &stale_delta] {
        std::fs::write(f, b"left over").expect("write");
    }
    age(&kept, 7200);
    age(&orphan, 7200);
    hub.restart().await;
    assert!(kept.is_file(), "a recorded blob was removed");
    assert!(!orphan.exists(), "an old blob no image names was kept");
    assert!(young.is_file(), "a young blob was removed");
    assert!(
        !stale_delta.exists(),
        "a delta from an unknown image was kept"
    );
    assert_eq!(count(&hub, "/api/v1/images").await, 1);
}
