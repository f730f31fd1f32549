//! The delta cache's bounds, with stand-in generators (shell scripts) so the limits can be
//! reached in a test: the time limit kills, a failure is remembered, the size limit is checked
//! before any generation, and eviction takes the least recently served first.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use protocol::Digest;

use super::{DeltaCache, DeltaConfig, Lookup};
use crate::images::blob_path;

/// Two stored blobs of `len` bytes each; returns their digests.
fn blobs(dir: &Path, len: usize) -> (Digest, Digest) {
    std::fs::create_dir_all(dir).expect("blobs dir");
    let mut out = Vec::new();
    for seed in [1u8, 2] {
        let tar = vec![seed; len];
        let d = Digest::of(&tar);
        let z = zstd::encode_all(&tar[..], 3).expect("zstd");
        std::fs::write(blob_path(dir, &d), z).expect("blob");
        out.push(d);
    }
    (out[0], out[1])
}

/// A generator script (`$0 delta-generate OLD NEW OUT`).
fn script(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join("generator.sh");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn cache(dir: &Path, cfg: DeltaConfig, generator: PathBuf) -> DeltaCache {
    DeltaCache::open(&dir.join("deltas"), &dir.join("blobs"), cfg, generator).expect("open")
}

async fn settle(c: &DeltaCache, a: &Digest, b: &Digest) -> Lookup {
    for _ in 0..100 {
        match c.lookup(a, b, Duration::from_secs(5)).await {
            Lookup::Generating => continue,
            other => return other,
        }
    }
    panic!("never settled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_past_its_time_is_killed_remembered_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = blobs(&dir.path().join("blobs"), 1000);
    let cfg = DeltaConfig {
        generate_secs: 1,
        ..DeltaConfig::default()
    };
    let gen = script(dir.path(), "exec sleep 30");
    let c = cache(dir.path(), cfg, gen);
    let started = std::time::Instant::now();
    let Lookup::Unavailable(why) = settle(&c, &a, &b).await else {
        panic!("a generation past its time must not succeed");
    };
    assert!(why.contains("longer than"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(20), "not killed");
    // Remembered: answered at once, not generated again.
    let again = c.lookup(&a, &b, Duration::ZERO).await;
    assert!(matches!(again, Lookup::Unavailable(_)), "{again:?}");
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("deltas").join("tmp"))
        .expect("tmp")
        .flatten()
        .collect();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    assert!(!c.path(&a, &b).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_over_the_size_limit_is_refused_without_generating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = blobs(&dir.path().join("blobs"), 5000);
    let marker = dir.path().join("ran");
    let gen = script(dir.path(), &format!("touch {}", marker.display()));
    let cfg = DeltaConfig {
        max_image_bytes: 4096,
        ..DeltaConfig::default()
    };
    let c = cache(dir.path(), cfg, gen);
    let Lookup::Unavailable(why) = settle(&c, &a, &b).await else {
        panic!("over the limit");
    };
    assert!(why.contains("max_image_bytes"), "{why}");
    assert!(
        !marker.exists(),
        "the generator ran for a pair over the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_made_delta_is_served_and_the_least_recently_served_are_evicted_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = blobs(&dir.path().join("blobs"), 1000);
    // Writes 600 bytes as the "delta".
    let gen = script(dir.path(), "head -c 600 /dev/zero > \"$4\"");
    let cfg = DeltaConfig {
        cache_bytes: 1000,
        ..DeltaConfig::default()
    };
    let c = cache(dir.path(), cfg, gen);
    // Two older deltas of other pairs, the second served more recently.
    let deltas = dir.path().join("deltas");
    let old = |name: &str, secs_ago: u64| {
        let p = deltas.join(name);
        std::fs::write(&p, [0u8; 300]).expect("old delta");
        let f = std::fs::File::options()
            .append(true)
            .open(&p)
            .expect("open");
        f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .expect("mtime");
        p
    };
    let oldest = old("aa-bb.delta", 300);
    let recent = old("cc-dd.delta", 100);
    let Lookup::Ready(path) = settle(&c, &a, &b).await else {
        panic!("the delta was not made");
    };
    assert_eq!(std::fs::metadata(&path).expect("made").len(), 600);
    // 300 + 300 + 600 > 1000: the least recently served goes, until it fits.
    assert!(!oldest.exists(), "the oldest delta was kept");
    assert!(recent.exists(), "a more recent delta went first");
    assert!(matches!(
        c.lookup(&a, &b, Duration::ZERO).await,
        Lookup::Ready(_)
    ));
}
