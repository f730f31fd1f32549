//! The image puller against a misbehaving blob server (TEST-CHECKLIST C16–C18, C20, C21, C24):
//! real HTTP on loopback, real files, the real `ImageStore`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use edge_agent::image::{BlobSource, ImageError, ImageStore};

fn source(server: &BlobServer) -> BlobSource {
    BlobSource {
        base_url: server.url.clone(),
        username: "gw".into(),
        password: "pw".into(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt")
}

#[test]
fn substituted_content_is_rejected_and_never_unpacked() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let good = Image::with_script("echo good", &[]);
    let evil = Image::with_script("echo evil", &[]);
    // The server answers the good digest with other bytes.
    server
        .state
        .lock()
        .expect("lock")
        .blobs
        .insert(good.digest.to_string(), evil.zst.clone());
    let store = ImageStore::open(&dir.path().join("images"), 1 << 30).expect("open");
    let r = rt().block_on(store.pull(&source(&server), &good.image_ref(), None));
    assert!(matches!(r, Err(ImageError::Integrity { .. })), "{r:?}");
    assert!(store.rootfs(&good.digest).is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/partial"))
            .expect("dir")
            .count(),
        0,
        "the bad download was kept"
    );
}

#[test]
fn a_server_sending_more_than_the_signed_size_is_cut_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let small = Image::with_script("echo small", &[]);
    // Endless data: a huge body (incompressible) for a tiny signed image.
    let junk = noise(3_000_000, 7);
    server
        .state
        .lock()
        .expect("lock")
        .blobs
        .insert(small.digest.to_string(), junk);
    let store = ImageStore::open(&dir.path().join("images"), 1 << 30).expect("open");
    let r = rt().block_on(store.pull(&source(&server), &small.image_ref(), None));
    assert!(matches!(r, Err(ImageError::Fetch { .. })), "{r:?}");
    assert!(
        store.usage_bytes() < 200_000,
        "disk use {} bytes for a bounded download",
        store.usage_bytes()
    );
}

#[test]
fn a_delta_longer_than_the_blob_bound_is_cut_off_and_the_full_blob_used() {
    // C17 on the delta path: the server streams far more "delta" than the target's bound allows.
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let base = Image::with_script("echo base", &[]);
    let target = Image::with_script("echo target", &[]);
    server.add(&base);
    server.add(&target);
    let junk = noise(3_000_000, 11);
    server.add_delta(&base.digest, &target.digest, junk);
    let store = ImageStore::open(&dir.path().join("images"), 1 << 30)
        .expect("open")
        .with_delta_wait(Duration::from_secs(5));
    rt().block_on(store.pull(&source(&server), &base.image_ref(), None))
        .expect("base pulled");
    assert!(store.base_blob(&base.digest).is_some(), "the base is kept");
    let report = rt()
        .block_on(store.pull(
            &source(&server),
            &target.image_ref(),
            Some(&base.image_ref()),
        ))
        .expect("the full blob after the delta is given up");
    assert!(!report.delta, "{report:?}");
    let why = report.fallback.expect("the fallback is reported");
    assert!(why.contains("delta"), "{why}");
    assert!(store.rootfs(&target.digest).is_some());
    // Bounded: what the delta attempt fetched is under the bound, nowhere near the 3 MB sent.
    let bound = edge_agent::image::compressed_bound(target.image_ref().size);
    assert!(
        report.bytes_fetched <= bound + target.zst.len() as u64,
        "{} bytes fetched (bound {bound})",
        report.bytes_fetched
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/partial"))
            .expect("dir")
            .count(),
        0,
        "the cut delta was kept"
    );
}

#[test]
fn a_stalled_server_is_abandoned_and_a_missing_blob_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    // A server that accepts and never answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let _held: Vec<_> = l.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(30));
    });
    let img = Image::with_script("echo x", &[]);
    let store = ImageStore::open(&dir.path().join("images"), 1 << 30)
        .expect("open")
        .with_transfer_limits(Duration::from_millis(500), 1024);
    let src = BlobSource {
        base_url: url,
        username: "gw".into(),
        password: "pw".into(),
    };
    let r = rt().block_on(store.pull(&src, &img.image_ref(), None));
    assert!(
        matches!(&r, Err(ImageError::Fetch { source, .. }) if source.to_string().contains("no response")),
        "{r:?}"
    );
    let server = BlobServer::start();
    let r = rt().block_on(store.pull(&source(&server), &img.image_ref(), None));
    assert!(
        matches!(&r, Err(ImageError::Fetch { source, .. }) if source.to_string().contains("not found")),
        "{r:?}"
    );
}

#[test]
fn the_cache_budget_is_checked_before_downloading_and_gc_keeps_what_is_pinned() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let a = Image::with_script("echo a", &[]);
    let b = Image::with_script("echo b", &[]);
    server.add(&a);
    server.add(&b);
    // A budget too small for even one image (twice its size is needed: blob + tree).
    let tiny = ImageStore::open(&dir.path().join("tiny"), 1_000).expect("open");
    let r = rt().block_on(tiny.pull(&source(&server), &a.image_ref(), None));
    assert!(matches!(r, Err(ImageError::NoSpace { .. })), "{r:?}");
    assert!(
        server.state.lock().expect("lock").requests.is_empty(),
        "downloaded despite the budget"
    );
    let store = ImageStore::open(&dir.path().join("images"), 1 << 30).expect("open");
    let rt = rt();
    rt.block_on(store.pull(&source(&server), &a.image_ref(), None))
        .expect("pull a");
    rt.block_on(store.pull(&source(&server), &b.image_ref(), None))
        .expect("pull b");
    // Pulling again is a no-op.
    let again = rt
        .block_on(store.pull(&source(&server), &a.image_ref(), None))
        .expect("again");
    assert_eq!(again.bytes_fetched, 0);
    let freed = store.gc(&BTreeSet::from([b.digest])).expect("gc");
    assert!(freed > 0);
    assert!(store.rootfs(&a.digest).is_none());
    assert!(store.rootfs(&b.digest).is_some());
}

/// C19 at the puller: interrupt a download at seeded moments, twenty times; every attempt
/// resumes where the last stopped, the partial file is never used, and the result verifies.
#[test]
fn a_download_interrupted_twenty_times_resumes_each_time_and_verifies() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let noise = noise(600_000, 99);
    let img = Image::with_script("exec sleep 1", &[("noise.bin", &noise)]);
    server.add(&img);
    server.set_mode(Mode::Slow);
    let store = ImageStore::open(&dir.path().join("images"), 1 << 30).expect("open");
    let rt = rt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    for round in 0..20 {
        // The whole blob takes about 370 ms at this pace; stop somewhere inside it.
        let cut = Duration::from_millis(rng.gen_range(5..40));
        let r = rt.block_on(async {
            tokio::time::timeout(cut, store.pull(&source(&server), &img.image_ref(), None)).await
        });
        assert!(
            r.is_err() || store.rootfs(&img.digest).is_some(),
            "round {round}: {r:?}"
        );
        assert!(
            store.rootfs(&img.digest).is_none() || r.is_ok(),
            "round {round}: a partial file was used"
        );
    }
    let finished_early = store.rootfs(&img.digest).is_some();
    let report = rt
        .block_on(store.pull(&source(&server), &img.image_ref(), None))
        .expect("final pull");
    assert!(
        finished_early || report.resumed_from > 0,
        "the last attempt did not resume"
    );
    assert!(store.rootfs(&img.digest).is_some());
    // Every attempt after the first continued where the file ended: one request from zero,
    // then ranges that never go back. (What the server sent into a socket the test's idle
    // runtime never read is not a measure of the puller, so bytes served are not bounded here;
    // the agent's kill -9 loop in `agent_e2e.rs` bounds them.)
    let requests = server.state.lock().expect("lock").requests.clone();
    let starts: Vec<Option<u64>> = requests
        .iter()
        .map(|r| {
            r.as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse().ok())
        })
        .collect();
    // (Requests cut before any byte arrived left nothing to resume from.)
    let first_resume = starts
        .iter()
        .position(Option::is_some)
        .unwrap_or(starts.len());
    assert!(
        starts[first_resume..].iter().all(Option::is_some),
        "a download started over: {requests:?}"
    );
    assert!(
        starts[first_resume..].windows(2).all(|w| w[0] <= w[1]),
        "a resume went back: {requests:?}"
    );
    assert!(starts.len() >= 10, "few ranged requests: {requests:?}");
}

/// C23: a zstd frame declaring a window above the limit is refused with bounded memory.
#[test]
fn a_zstd_frame_with_a_huge_window_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let img = Image::with_script("echo w", &[]);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(30))
        .expect("window log");
    enc.long_distance_matching(true).expect("ldm");
    std::io::Write::write_all(&mut enc, &img.tar).expect("write");
    let zst = enc.finish().expect("finish");
    server
        .state
        .lock()
        .expect("lock")
        .blobs
        .insert(img.digest.to_string(), zst);
    let store = ImageStore::open(&dir.path().join("images"), 1 << 30).expect("open");
    let r = rt().block_on(store.pull(&source(&server), &img.image_ref(), None));
    assert!(
        matches!(&r, Err(ImageError::Integrity { detail, .. }) if detail.contains("zstd")),
        "{r:?}"
    );
    assert!(store.rootfs(&img.digest).is_none());
}

/// Puts the first `n` bytes of `zst` where an interrupted download of `img` leaves them, with
/// the ETag the server gave for `img.zst` (what a kill -9 mid-download leaves on disk).
fn plant_partial(store_dir: &std::path::Path, img: &Image, zst: &[u8], n: usize) {
    let partial = store_dir.join("partial");
    std::fs::create_dir_all(&partial).expect("partial dir");
    let part = partial.join(format!("{}.tar.zst", img.digest.hex()));
    std::fs::write(&part, &zst[..n]).expect("write partial");
    let etag = format!("\"{}-{}\"", img.digest, img.zst.len());
    std::fs::write(
        partial.join(format!("{}.tar.zst.etag", img.digest.hex())),
        etag,
    )
    .expect("write etag");
}

/// C19/C20 (#15): a download that completed but was killed before verification asks for the
/// range after the end; the server answers 416 with `bytes */len`. The file already there is
/// verified and used, not fetched again, and the pull does not fail.
#[test]
fn a_complete_download_killed_before_verification_is_verified_not_refetched() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let img = Image::with_script("echo done", &[("noise.bin", &noise(50_000, 3))]);
    server.add(&img);
    let images = dir.path().join("images");
    let store = ImageStore::open(&images, 1 << 30).expect("open");
    // The real fetcher writes the whole blob, then the "agent dies" before verifying.
    rt().block_on(edge_agent::image::fetch::download(
        &reqwest::Client::new(),
        &format!("{}/v1/blobs/{}", server.url, img.digest),
        None,
        &images
            .join("partial")
            .join(format!("{}.tar.zst", img.digest.hex())),
        edge_agent::image::FetchLimits {
            max_bytes: 1 << 20,
            stall: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            kind: edge_agent::metrics::Download::Full,
        },
    ))
    .expect("complete download");
    let served = server.bytes_served();
    assert_eq!(served, img.zst.len() as u64);
    let r = rt()
        .block_on(store.pull(&source(&server), &img.image_ref(), None))
        .expect("the complete file is verified, not refused");
    assert_eq!(r.bytes_fetched, 0);
    assert!(store.rootfs(&img.digest).is_some());
    assert_eq!(server.bytes_served(), served, "fetched again");
    let requests = server.state.lock().expect("lock").requests.clone();
    assert_eq!(
        requests.last(),
        Some(&Some(format!("bytes={}-", img.zst.len())))
    );
}

/// C20 (#15): a partial file longer than the blob (the server answers 416 naming a smaller
/// length) is discarded and the blob downloaded afresh in the same pull, never appended to and
/// never a loop of 416s.
#[test]
fn a_partial_file_past_the_blob_end_is_discarded_and_downloaded_afresh() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let img = Image::with_script("echo long", &[("noise.bin", &noise(20_000, 4))]);
    server.add(&img);
    let images = dir.path().join("images");
    let store = ImageStore::open(&images, 1 << 30).expect("open");
    let mut longer = img.zst.clone();
    longer.extend_from_slice(&noise(1000, 5));
    plant_partial(&images, &img, &longer, longer.len());
    let r = rt()
        .block_on(store.pull(&source(&server), &img.image_ref(), None))
        .expect("pull");
    assert_eq!((r.resumed_from, r.bytes_fetched), (0, img.zst.len() as u64));
    assert!(store.rootfs(&img.digest).is_some());
}

/// C20: a server that ignores `Range` answers 200 with the whole body; the download starts
/// over from zero instead of appending the whole body to the partial file.
#[test]
fn a_server_ignoring_range_gets_a_fresh_download_not_an_appended_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let img = Image::with_script("echo ignore", &[("noise.bin", &noise(40_000, 6))]);
    server.add(&img);
    server.set_mode(Mode::IgnoreRange);
    let images = dir.path().join("images");
    let store = ImageStore::open(&images, 1 << 30).expect("open");
    let half = img.zst.len() / 2;
    plant_partial(&images, &img, &img.zst, half);
    let r = rt()
        .block_on(store.pull(&source(&server), &img.image_ref(), None))
        .expect("pull");
    assert_eq!((r.resumed_from, r.bytes_fetched), (0, img.zst.len() as u64));
    assert!(store.rootfs(&img.digest).is_some());
    let requests = server.state.lock().expect("lock").requests.clone();
    assert_eq!(
        requests,
        vec![Some(format!("bytes={half}-"))],
        "one request"
    );
}

/// C20: a 206 whose `Content-Range` does not start where the partial file ends is not
/// appended; the partial file is discarded and the same pull downloads the blob from zero.
#[test]
fn a_wrong_content_range_discards_the_partial_file_and_starts_over() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let img = Image::with_script("echo wrong", &[("noise.bin", &noise(40_000, 7))]);
    server.add(&img);
    server.set_mode(Mode::WrongContentRange);
    let images = dir.path().join("images");
    let store = ImageStore::open(&images, 1 << 30).expect("open");
    let half = img.zst.len() / 2;
    plant_partial(&images, &img, &img.zst, half);
    let r = rt()
        .block_on(store.pull(&source(&server), &img.image_ref(), None))
        .expect("pull");
    assert_eq!(r.resumed_from, 0);
    assert!(store.rootfs(&img.digest).is_some());
    let requests = server.state.lock().expect("lock").requests.clone();
    assert_eq!(
        requests,
        vec![Some(format!("bytes={half}-")), None],
        "a ranged request, then a fresh one"
    );
}

/// C21: the blob changed between two attempts (here: the same tar compressed at another
/// level, so the same digest and another ETag). `If-Range` makes the server send the whole new
/// blob with 200; the agent starts over rather than splicing two encodings, and it verifies.
#[test]
fn a_blob_changed_between_attempts_is_downloaded_again_and_verifies() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = BlobServer::start();
    let img = Image::with_script("echo changed", &[("noise.bin", &noise(40_000, 8))]);
    let images = dir.path().join("images");
    let store = ImageStore::open(&images, 1 << 30).expect("open");
    // The first attempt got half of the level-3 encoding ...
    plant_partial(&images, &img, &img.zst, img.zst.len() / 2);
    // ... and now the server holds another encoding of the same tar.
    let other = zstd::encode_all(&img.tar[..], 19).expect("zstd");
    assert_ne!(other.len(), img.zst.len(), "the ETags must differ");
    server
        .state
        .lock()
        .expect("lock")
        .blobs
        .insert(img.digest.to_string(), other.clone());
    let r = rt()
        .block_on(store.pull(&source(&server), &img.image_ref(), None))
        .expect("pull");
    assert_eq!((r.resumed_from, r.bytes_fetched), (0, other.len() as u64));
    assert!(store.rootfs(&img.digest).is_some());
}
