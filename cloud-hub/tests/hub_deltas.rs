//! `GET /v1/deltas/{base}/{target}` on the real hub binary: device credentials, 404 for images
//! the hub does not hold, 503 while a delta is made, one generation for parallel requests,
//! Range and If-Range as for blobs, and a delta that rebuilds the target byte for byte.

mod common;

use std::time::{Duration, Instant};

use common::*;
use protocol::Digest;
use serde_json::json;

struct Dev {
    c: reqwest::Client,
    user: String,
    pass: String,
}

impl Dev {
    async fn get(&self, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.c.get(url).basic_auth(&self.user, Some(&self.pass));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("get")
    }

    /// Asks until the delta is ready (each 503 must carry a Retry-After); returns the answer.
    async fn get_ready(&self, url: &str) -> reqwest::Response {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.get(url, &[]).await;
            if r.status().as_u16() != 503 {
                return r;
            }
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .expect("retry-after")
                .parse()
                .expect("seconds");
            assert!((1..=60).contains(&after), "Retry-After {after}");
            assert!(Instant::now() < until, "the delta was never made");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_are_made_once_served_with_ranges_and_rebuild_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let (_, d1) = hub.release("app", "1").await;
    let (_, d2) = hub.release("app", "2").await;
    let t = hub.enroll_token(json!({}), 3600).await;
    let (_, resp) = hub.enroll(&t, "gw-delta", 51).await.expect("enroll");
    let dev = Dev {
        c: reqwest::Client::new(),
        user: "gw-delta".into(),
        pass: resp.mqtt.password.clone(),
    };
    let url = format!("{}/v1/deltas/{d1}/{d2}", hub.http);

    // Devices only.
    let anon = reqwest::Client::new().get(&url).send().await.expect("get");
    assert_eq!(anon.status().as_u16(), 401);

    // 404 for a base or a target the hub does not hold; nothing is generated for them.
    let unknown = format!("sha256:{}", "1".repeat(64));
    for u in [
        format!("{}/v1/deltas/{unknown}/{d2}", hub.http),
        format!("{}/v1/deltas/{d1}/{unknown}", hub.http),
    ] {
        let r = dev.get(&u, &[]).await;
        assert_eq!(r.status().as_u16(), 404, "{u}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["code"], "not_found");
    }
    let bad = dev
        .get(&format!("{}/v1/deltas/nonsense/{d2}", hub.http), &[])
        .await;
    assert_eq!(bad.status().as_u16(), 400);

    // Two devices' requests at once: both get the same delta, made once.
    let (a, b) = tokio::join!(dev.get_ready(&url), dev.get_ready(&url));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let etag = a.headers()["etag"].to_str().expect("etag").to_string();
    let (a, b) = (a.bytes().await.expect("a"), b.bytes().await.expect("b"));
    assert_eq!(a, b);
    let log = std::fs::read_to_string(dir.path().join("hub.log")).expect("log");
    assert_eq!(
        log.matches("delta generated").count(),
        1,
        "two requests, one generation"
    );
    let cached: Vec<_> = std::fs::read_dir(hub.dir.join("deltas"))
        .expect("deltas dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "delta"))
        .collect();
    assert_eq!(cached.len(), 1);

    // The delta turns the base's tar into the target's, byte for byte.
    let blob = |d: String| {
        let dev = &dev;
        let url = format!("{}/v1/blobs/{d}", hub.http);
        async move {
            let z = dev.get(&url, &[]).await.bytes().await.expect("blob");
            zstd::decode_all(&z[..]).expect("zstd")
        }
    };
    let (old, new) = (blob(d1.clone()).await, blob(d2.clone()).await);
    let mut out = Vec::new();
    fleet_delta::apply(
        &mut std::io::Cursor::new(&old),
        &a[..],
        &mut out,
        &fleet_delta::Limits::default(),
    )
    .expect("the served delta applies");
    assert_eq!(Digest::of(&out).to_string(), d2);
    assert_eq!(out, new);

    // Range and If-Range exactly as for blobs.
    let part = dev
        .get(&url, &[("range", "bytes=10-"), ("if-range", &etag)])
        .await;
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().expect("cr"),
        format!("bytes 10-{}/{}", a.len() - 1, a.len())
    );
    assert_eq!(&part.bytes().await.expect("part")[..], &a[10..]);
    let stale = dev
        .get(&url, &[("range", "bytes=10-"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(
        stale.status().as_u16(),
        200,
        "another ETag: the whole delta"
    );
    let past = dev
        .get(&url, &[("range", &format!("bytes={}-", a.len()))])
        .await;
    assert_eq!(past.status().as_u16(), 416);

    // Served again from the cache, not made again.
    assert_eq!(dev.get(&url, &[]).await.status().as_u16(), 200);
    let log = std::fs::read_to_string(dir.path().join("hub.log")).expect("log");
    assert_eq!(log.matches("delta generated").count(), 1);
}
