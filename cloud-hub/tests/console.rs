//! The web console (docs/CONSOLE.md) against a real hub: its assets and headers, the API
//! additions it uses (whoami, the device list's search and paging), and the pages in a real
//! headless Chromium driven over WebDriver (`chromedriver` + `fantoccini`): sign in, find a
//! device by label and see why its desired state was rejected, open a rollout and see its
//! phases, pause it from the page, and a viewer token that sees no mutating control.
//!
//! The browser test skips with a message when Debian's `chromium` / `chromium-driver` are not
//! installed (`.ci/run` installs them). With `FLEET_UPDATE_SCREENSHOTS=1` it also writes the
//! screenshots the README shows to `docs/console/`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use fleet_test_kit::now;
use fleet_test_kit::process::Proc;
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use protocol::{DeviceId, Event, EventBatch, EventBody, Presence, PresenceState};
use reqwest::Method;
use serde_json::{json, Value};

/// A hub with five devices (one with `rack=r7`), a release and a two-phase rollout over them;
/// returns the hub, the rollout id, a viewer token and the MQTT password of `edge-r7`.
async fn fleet(dir: &Path) -> (Hub, u64, String, String) {
    let hub = Hub::start(dir).await;
    for i in 0..4u8 {
        let t = hub.enroll_token(json!({"site": "north"}), 3600).await;
        hub.enroll(&t, &format!("gw-{i}"), i + 1)
            .await
            .expect("enroll");
    }
    let t = hub
        .enroll_token(json!({"site": "north", "rack": "r7"}), 3600)
        .await;
    let (_, r7) = hub.enroll(&t, "edge-r7", 9).await.expect("enroll");
    let (release, _) = hub.release("app", "1").await;
    let created = hub
        .admin(
            Method::POST,
            "/api/v1/rollouts",
            Some(
                json!({"release": release, "selector": "site=north", "phases": [
                {"select": {"count": 1}}, {"select": {"percent": 100}}]}),
            ),
        )
        .await;
    let id = created["id"].as_u64().expect("id");
    eventually_async(20, "the rollout's first tick", || async {
        let s = hub
            .admin(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await;
        (s["rollout"]["stage"]["stage"] == "running").then_some(())
    })
    .await;
    let viewer = hub
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"kind": "api", "name": "vera", "role": "viewer"})),
        )
        .await["token"]
        .as_str()
        .expect("token")
        .to_string();
    (hub, id, viewer, r7.mqtt.password)
}

/// `edge-r7` connects, says it is online and reports that it rejected a desired state.
async fn rejects_a_state(hub: &Hub, password: &str) -> Device {
    let mut dev = Device::connect(hub.mqtt_port, "edge-r7", "edge-r7", password);
    assert!(dev.connected().await);
    let online = Presence {
        state: PresenceState::Online,
        epoch: 1,
    };
    dev.client
        .publish(
            "fleet/v1/dev/edge-r7/presence",
            rumqttc::QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&online).expect("json"),
        )
        .await
        .expect("publish");
    let batch = EventBatch {
        device: DeviceId::new("edge-r7").expect("id"),
        events: vec![Event {
            seq: 1,
            time: now(),
            body: EventBody::DesiredRejected {
                code: "bad_signature".into(),
                reason: "signature does not verify under the online key".into(),
            },
        }],
    };
    dev.client
        .publish(
            "fleet/v1/dev/edge-r7/events",
            rumqttc::QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&batch).expect("json"),
        )
        .await
        .expect("publish");
    eventually_async(20, "the rejection stored", || async {
        let e = hub
            .admin(Method::GET, "/api/v1/devices/edge-r7/events", None)
            .await;
        (e.as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    dev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_policy_and_whoami_and_device_paging_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, _, viewer, _) = fleet(dir.path()).await;
    let http = reqwest::Client::new();

    // The assets: no token needed, every one under the strict policy.
    for (path, kind) in [
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let r = http
            .get(format!("{}{path}", hub.http))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(h["content-type"].to_str().expect("type").starts_with(kind));
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    let page = http
        .get(format!("{}/console/", hub.http))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        !page.contains("<script>") && !page.contains("http://") && !page.contains("https://"),
        "no inline script and nothing from elsewhere: {page}"
    );

    // whoami: the role of the caller; no token, no answer.
    let (s, me) = hub
        .call(Method::GET, "/api/v1/whoami", Some(&viewer), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(me, json!({"name": "vera", "role": "viewer"}));
    let (s, me) = hub
        .call(Method::GET, "/api/v1/whoami", Some(&hub.token), None)
        .await;
    assert_eq!((s, &me["role"]), (200, &json!("admin")), "{me}");
    let (s, _) = hub.call(Method::GET, "/api/v1/whoami", None, None).await;
    assert_eq!(s, 401);

    // The device list: unchanged without parameters, searched, filtered and paged with them.
    let list = |q: &'static str| {
        let http = http.clone();
        let url = format!("{}/api/v1/devices{q}", hub.http);
        let token = hub.token.clone();
        async move {
            let r = http.get(url).bearer_auth(token).send().await.expect("get");
            let status = r.status().as_u16();
            let total = r
                .headers()
                .get("x-total-count")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let body: Value = r.json().await.expect("json");
            let ids: Vec<String> = body
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| Some(d["id"].as_str()?.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            (status, total, ids, body)
        }
    };
    let (s, total, ids, _) = list("").await;
    assert_eq!((s, total, ids.len()), (200, Some(5), 5));
    let (_, total, ids, _) = list("?q=rack%3Dr7").await;
    assert_eq!((total, ids), (Some(1), vec!["edge-r7".to_string()]));
    let (_, total, ids, _) = list("?q=GW-").await;
    assert_eq!(total, Some(4), "{ids:?}");
    // Searched in the store first (a superset), then exactly: any case, either side of `=`.
    let (_, total, _, _) = list("?q=NORTH").await;
    assert_eq!(total, Some(5));
    let (_, total, ids, _) = list("?q=%3Dr7").await;
    assert_eq!((total, ids), (Some(1), vec!["edge-r7".to_string()]));
    let (_, total, _, _) = list("?q=site%3Dnor").await;
    assert_eq!(total, Some(5));
    let (_, total, _, _) = list("?q=north%22").await;
    assert_eq!(
        total,
        Some(0),
        "a quote matches nothing and reads every device"
    );
    let (_, _, ids, _) = list("?label=rack%3Dr7").await;
    assert_eq!(ids, vec!["edge-r7".to_string()]);
    let (_, total, ids, _) = list("?limit=2&offset=1").await;
    assert_eq!((total, ids), (Some(5), vec!["gw-0".into(), "gw-1".into()]));
    let (_, total, ids, _) = list("?state=online").await;
    assert_eq!((total, ids.len()), (Some(0), 0), "nothing has connected");
    let (_, total, _, _) = list("?state=unreported&profile=local-dev").await;
    assert_eq!(total, Some(5));
    for bad in [
        "?limit=0",
        "?limit=5000",
        "?state=sleepy",
        "?label=rack",
        "?color=red",
    ] {
        let (s, _, _, body) = list(bad).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
}

/// Chromium and its driver from Debian, if installed.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.exists());
    Some((
        find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])?,
        find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])?,
    ))
}

async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if t.contains(needle) {
                    return t;
                }
                last = t;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{css} never showed {needle:?}; last text {last:?}");
}

/// Clicks what `loc` finds, again if the page re-rendered it in between.
async fn click(c: &Client, loc: Locator<'_>) {
    act(c, loc, None).await
}

/// Types `text` into what `loc` finds, again if the page re-rendered it in between.
async fn type_into(c: &Client, loc: Locator<'_>, text: &str) {
    act(c, loc, Some(text)).await
}

async fn act(c: &Client, loc: Locator<'_>, text: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = match (c.find(loc).await, text) {
            (Ok(e), None) => e.click().await,
            (Ok(e), Some(t)) => match e.clear().await {
                Ok(()) => e.send_keys(t).await,
                Err(e) => Err(e),
            },
            (Err(e), _) => Err(e),
        };
        match r {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("click {loc:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn sign_in(c: &Client, hub: &Hub, token: &str) {
    c.goto(&format!("{}/console/#/signin", hub.http))
        .await
        .expect("goto");
    if let Ok(b) = c.find(Locator::Id("signout")).await {
        if b.is_displayed().await.unwrap_or(false) {
            b.click().await.expect("sign out");
        }
    }
    type_into(c, Locator::Id("token"), token).await;
    click(c, Locator::Id("signin")).await;
    wait_text(c, "h1", "Fleet overview").await;
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join(name), &png).expect("write");
    if std::env::var_os("FLEET_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
        std::fs::create_dir_all(&docs).expect("docs dir");
        std::fs::write(docs.join(name), &png).expect("write");
    }
}

async fn walk(c: &Client, hub: &Hub, rollout: u64, viewer: &str) {
    // Sign in: the overview shows the fleet's figures and the rollout in progress.
    sign_in(c, hub, &hub.token).await;
    wait_text(c, "#t-devices", "5").await;
    wait_text(c, "#t-online", "1").await;
    wait_text(c, "#active", &format!("#{rollout}")).await;
    wait_text(c, "#deployments", "selector site=north").await;
    wait_text(c, "#deployments", "app 1").await;
    wait_text(c, "#who", "admin").await;
    wait_text(c, "#fresh", "data as of").await;
    screenshot(c, "overview.png").await;

    // Find a device by label, open it.
    c.goto(&format!("{}/console/#/devices", hub.http))
        .await
        .expect("goto");
    type_into(c, Locator::Id("q"), "rack=r7\n").await;
    wait_text(c, "#count", "1 matching").await;
    let rows = c
        .find_all(Locator::Css("#devices tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    click(c, Locator::LinkText("edge-r7")).await;
    wait_text(c, "#device", "edge-r7").await;
    wait_text(c, "#labels", "rack=r7").await;
    wait_text(c, "#rejections", "signature does not verify").await;
    wait_text(c, "#events", "bad_signature").await;
    wait_text(c, "#explain", "deployment").await;
    wait_text(c, "#candidates", "app").await;
    screenshot(c, "device.png").await;

    // The rollout: its phases as bars, paused from the page.
    c.goto(&format!("{}/console/#/rollout/{rollout}", hub.http))
        .await
        .expect("goto");
    wait_text(c, "#stage", "running").await;
    let phases = c.find_all(Locator::Css(".phase svg")).await.expect("bars");
    assert_eq!(phases.len(), 2, "one bar per phase");
    wait_text(c, ".phase[data-phase='1']", "Phase 2").await;
    wait_text(c, "#history", "rollout").await;
    screenshot(c, "rollout.png").await;
    click(c, Locator::Id("cmd-pause")).await;
    wait_text(c, "#stage", "paused").await;
    let s = hub
        .admin(Method::GET, &format!("/api/v1/rollouts/{rollout}"), None)
        .await;
    assert_eq!(s["rollout"]["stage"]["stage"], "paused", "{s}");
    c.find(Locator::Id("cmd-resume")).await.expect("resume now");

    // A viewer: the same pages, no control that changes anything.
    sign_in(c, hub, viewer).await;
    wait_text(c, "#who", "viewer").await;
    c.goto(&format!("{}/console/#/rollout/{rollout}", hub.http))
        .await
        .expect("goto");
    wait_text(c, "#stage", "paused").await;
    let buttons = c.find_all(Locator::Css("button.cmd")).await.expect("find");
    assert!(buttons.is_empty(), "a viewer sees no rollout command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_device_and_pauses_a_rollout_in_a_real_browser() {
    let Some((chromium, driver)) = browser() else {
        eprintln!("SKIPPED: chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, rollout, viewer, r7) = fleet(dir.path()).await;
    let _device = rejects_a_state(&hub, &r7).await;
    let port = free_port();
    let mut cd = Proc::new(
        &driver,
        [format!("--port={port}"), "--allowed-ips=127.0.0.1".into()],
        &[],
        dir.path().join("chromedriver.log"),
    );
    cd.start().expect("start chromedriver");
    let profile = dir.path().join("chromium-profile");
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display())],
        }
    }))
    .expect("caps");
    let url = format!("http://127.0.0.1:{port}");
    let client = eventually_async(30, "chromedriver to start a session", || async {
        let mut b = ClientBuilder::new(HttpConnector::new());
        b.capabilities(caps.clone());
        b.connect(&url).await.ok()
    })
    .await;
    let outcome = std::panic::AssertUnwindSafe(walk(&client, &hub, rollout, &viewer))
        .catch_unwind()
        .await;
    let _ = client.close().await;
    cd.terminate(Duration::from_secs(5));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
