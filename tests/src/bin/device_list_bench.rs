//! `device-list-bench`: how long the hub takes to answer a filtered, paged device list (the
//! console's device search) with N devices registered.
//!
//! ```sh
//! cargo build --release -p cloud-hub -p fleet-tests
//! target/release/device-list-bench 100000 [--hub-bin path/to/cloud-hub] [--runs 5]
//! ```
//!
//! A fresh `cloud-hub` with its embedded broker; N devices registered through the store's bulk
//! path, labelled `site=s<i % 100>` and `rack=r<i % 1000>`; then, timed from request to the
//! whole answer read, `GET /api/v1/devices` with: a label search (`q=rack=r7`, a substring: `r7`, `r70`…, `r799`, 11,100 matches), an
//! id search (`q=bench-04242`, 10 matches), a state filter (`state=unreported`, everything
//! matches) and a deep page (`offset=N/2`). Each query runs `--runs` times; printed: the median
//! and the slowest.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloud_hub::model::NewDevice;
use cloud_hub::store::Store;
use fleet_test_kit::process::Proc;
use protocol::{Arch, DeviceId, RuntimeKind};
use serde_json::Value;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut n: usize = 100_000;
    let mut runs = 5;
    let mut hub_bin = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--hub-bin" => hub_bin = Some(PathBuf::from(args.next().expect("--hub-bin PATH"))),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            other => n = other.parse().expect("device count"),
        }
    }
    let hub_bin = hub_bin.unwrap_or_else(|| fleet_tests::fleet::bin("cloud-hub"));
    println!("hub binary: {}, {n} devices", hub_bin.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("hub");
    let mut hub = Proc::new(
        &hub_bin,
        [
            "serve",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--http",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG".into(), "warn".into())],
        dir.path().join("hub.log"),
    );
    hub.start().expect("start hub");
    let info: Value = fleet_test_kit::eventually(30, "hub.json", || {
        serde_json::from_str(&std::fs::read_to_string(data.join("hub.json")).ok()?).ok()
    });
    let http = info["http"].as_str().expect("http").to_string();
    let token = std::fs::read_to_string(data.join("admin.token")).expect("token");
    let token = token.trim().to_string();

    let store = Store::open(&data.join("hub.db")).expect("store");
    let devices: Vec<NewDevice> = (0..n)
        .map(|i| NewDevice {
            id: DeviceId::new(format!("bench-{i:06}")).expect("id"),
            public_key: "unused".into(),
            password_hash: "unused".into(),
            password_salt: "unused".into(),
            profile: "local-dev".into(),
            arch: Arch::host().expect("arch"),
            runtimes: vec![RuntimeKind::Process],
            agent_version: "bench".into(),
            labels: [
                ("site".to_string(), format!("s{}", i % 100)),
                ("rack".to_string(), format!("r{}", i % 1000)),
            ]
            .into(),
        })
        .collect();
    let t = Instant::now();
    store
        .import_devices(&devices, fleet_test_kit::now())
        .expect("import");
    println!("registered in {:.1} s", t.elapsed().as_secs_f64());

    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let deep = format!("?limit=50&offset={}", n / 2);
    for (what, query) in [
        ("label search q=rack=r7", "?q=rack%3Dr7&limit=50"),
        ("id search q=bench-04242", "?q=bench-04242&limit=50"),
        ("state=unreported", "?state=unreported&limit=50"),
        ("deep page", deep.as_str()),
    ] {
        let mut times = Vec::new();
        let mut total = String::new();
        for _ in 0..runs {
            let t = Instant::now();
            let r = client
                .get(format!("{http}/api/v1/devices{query}"))
                .bearer_auth(&token)
                .send()
                .expect("get");
            assert!(r.status().is_success(), "{query}: {}", r.status());
            total = r
                .headers()
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let body = r.bytes().expect("body");
            assert!(!body.is_empty());
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{what:<26} matched {total:>7}: median {:>7.1} ms, slowest {:>7.1} ms",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0
        );
    }
    hub.terminate(Duration::from_secs(5));
}
