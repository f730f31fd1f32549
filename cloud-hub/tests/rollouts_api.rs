//! `/api/v1/rollouts` and `fleetctl rollouts` against the real hub: roles (viewers read,
//! operators change), bad plans refused with nothing stored, commands refused outside their
//! stages, and the status the operator reads.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

fn fleetctl(hub: &Hub, args: &[&str]) -> (bool, String, String) {
    fleetctl_as(hub, &hub.token, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_created_read_and_commanded_through_the_api_and_fleetctl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    for i in 0..4u8 {
        let t = hub.enroll_token(json!({"site": "north"}), 3600).await;
        hub.enroll(&t, &format!("gw-{i}"), i + 1)
            .await
            .expect("enroll");
    }
    let (release, _) = hub.release("app", "1").await;

    // A viewer reads but cannot create.
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
    let body = json!({"release": release, "selector": "site=north", "preset": "canary"});
    let (status, _) = hub
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(&viewer),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 403);
    let (status, list) = hub
        .call(Method::GET, "/api/v1/rollouts", Some(&viewer), None)
        .await;
    assert_eq!((status, list), (200, json!([])), "nothing was created");

    // Bad plans: a clear 400, nothing stored.
    for (bad, says) in [
        (
            json!({"release": release, "selector": "site=north", "preset": "fast"}),
            "unknown preset",
        ),
        (
            json!({"release": release, "selector": "site=north", "phases": [{"select": {"percent": 50}}, {"select": {"percent": 20}}]}),
            "cumulative",
        ),
        (
            json!({"release": release, "selector": "site=north", "budget": {"group_by": ["site"], "max_unavailable": "x"}}),
            "neither a count",
        ),
        (
            json!({"release": release, "selector": "site=north", "bogus": 1}),
            "unknown field",
        ),
        (
            json!({"release": 999, "selector": "site=north"}),
            "unknown release",
        ),
    ] {
        let (status, v) = hub
            .call(
                Method::POST,
                "/api/v1/rollouts",
                Some(&hub.token),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(says),
            "{bad}: {v}"
        );
    }
    assert_eq!(
        hub.admin(Method::GET, "/api/v1/rollouts", None).await,
        json!([])
    );
    assert_eq!(
        hub.admin(Method::GET, "/api/v1/deployments", None).await,
        json!([])
    );

    // A preview stores nothing and says what would change.
    let preview = hub
        .admin(
            Method::POST,
            "/api/v1/rollouts/preview",
            Some(
                json!({"release": release, "selector": "site=north", "phases": [
                {"select": {"count": 1}}, {"select": {"percent": 100}}]}),
            ),
        )
        .await;
    assert_eq!(preview["devices"], 4, "{preview}");
    assert_eq!(preview["phases"], json!([1, 3]), "{preview}");
    let class = &preview["classes"][0];
    assert_eq!(class["profile"], "local-dev", "{preview}");
    assert_eq!(class["workloads_changed"], json!(["svc"]), "{preview}");
    assert_eq!(class["images"][0]["devices"], 4, "{preview}");
    assert!(class["download_bytes"].as_u64() > Some(0), "{preview}");
    assert_eq!(class["images"][0]["delta_devices"], 0, "{preview}");
    assert_eq!(preview["unfit"], json!([]));
    let h = hub.clone_handle();
    let rel = release.to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        fleetctl(
            &h,
            &[
                "rollouts",
                "preview",
                "--release",
                &rel,
                "--selector",
                "site=north",
            ],
        )
    })
    .await
    .expect("join");
    assert!(
        ok && out.contains("local-dev") && out.contains("devices 4"),
        "{out} {err}"
    );
    assert_eq!(
        hub.admin(Method::GET, "/api/v1/rollouts", None).await,
        json!([])
    );

    // fleetctl creates one; the simulated devices are offline, so nobody is issued anything.
    let h = hub.clone_handle();
    let rel = release.to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        fleetctl(
            &h,
            &[
                "--json",
                "rollouts",
                "create",
                "--release",
                &rel,
                "--selector",
                "site=north",
                "--phase",
                "1",
                "--phase",
                "100%",
                "--approval",
                "--group-by",
                "site",
                "--max-unavailable",
                "1",
            ],
        )
    })
    .await
    .expect("join");
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).expect("json");
    let id = created["id"].as_u64().expect("id");
    let status = eventually_async(20, "the first tick", || async {
        let s = hub
            .admin(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await;
        (s["rollout"]["stage"]["stage"] == "running").then_some(s)
    })
    .await;
    assert_eq!(status["phases"][0]["devices"], 1, "{status}");
    assert_eq!(status["phases"][1]["devices"], 3, "{status}");
    assert_eq!(status["phases"][0]["offline"], 1, "{status}");
    assert_eq!(
        status["rollout"]["admitted"], 0,
        "offline devices are pending"
    );
    assert!(status["phases"][1]["members"][0]["last_seen"].is_null());
    assert_eq!(status["plan"]["phases"][1]["approval"], true);

    // Commands: refused outside their stages (409), audited when done.
    let (s, v) = hub
        .call(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/approve"),
            Some(&hub.token),
            None,
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = hub
        .call(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/pause"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = hub
        .call(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/jump"),
            Some(&hub.token),
            None,
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let h = hub.clone_handle();
    let ids = id.to_string();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || fleetctl(&h, &["rollouts", "pause", &ids]))
            .await
            .expect("join");
    assert!(ok && out.contains("paused"), "{out} {err}");
    let h = hub.clone_handle();
    let ids = id.to_string();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || fleetctl(&h, &["rollouts", "status", &ids]))
            .await
            .expect("join");
    assert!(ok, "{err}");
    assert!(out.contains("stage paused") && out.contains("gw-"), "{out}");
    let (s, _) = hub
        .call(
            Method::GET,
            &format!("/api/v1/rollouts/{id}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = hub
        .call(Method::GET, "/api/v1/rollouts/nine", Some(&hub.token), None)
        .await;
    assert_eq!(s, 400);

    // The progress stream: the history so far, then what happens, resumable by id.
    let mut stream = sse(&hub, id, None).await;
    let seen = read_until(&mut stream, "pause by admin").await;
    let last = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .max()
        .expect("event ids");
    assert!(seen.contains("rollout.create"), "{seen}");
    drop(stream);
    let mut resumed = sse(&hub, id, Some(last)).await;
    hub.admin(Method::POST, &format!("/api/v1/rollouts/{id}/resume"), None)
        .await;
    let next = read_until(&mut resumed, "resume by admin").await;
    assert!(
        !next.contains("pause by admin"),
        "resumed after what it saw: {next}"
    );
    let (s, _) = hub
        .call(
            Method::GET,
            "/api/v1/rollouts/77/events",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, 404);

    // Why a device runs what it runs.
    let why = hub
        .admin(Method::GET, "/api/v1/devices/gw-0/explain", None)
        .await;
    assert_eq!(why["deployment"], serde_json::Value::Null, "{why}");
    let c = &why["candidates"][0];
    assert_eq!(c["rollout"], id, "{why}");
    assert!(
        c["verdict"]
            .as_str()
            .unwrap_or_default()
            .contains("has not admitted it"),
        "{why}"
    );
    let h = hub.clone_handle();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || fleetctl(&h, &["devices", "explain", "gw-0"]))
            .await
            .expect("join");
    assert!(ok && out.contains("passed over"), "{out} {err}");
    let (s, _) = hub
        .call(
            Method::GET,
            "/api/v1/devices/nope/explain",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, 404);

    let audit = hub
        .admin(Method::GET, "/api/v1/audit?limit=1000", None)
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"rollout.create"), "{actions:?}");
    assert!(actions.contains(&"rollout.transition"), "{actions:?}");
}

async fn sse(hub: &Hub, id: u64, after: Option<u64>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(format!("{}/api/v1/rollouts/{id}/events", hub.http))
        .bearer_auth(&hub.token);
    if let Some(a) = after {
        req = req.header("Last-Event-ID", a.to_string());
    }
    let resp = req.send().await.expect("events");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    resp
}

/// Reads the stream until `what` appears (bounded); returns everything read.
async fn read_until(resp: &mut reqwest::Response, what: &str) -> String {
    let mut text = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !text.contains(what) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("stream ended or timed out before {what:?}: {other:?}\n{text}"),
        }
    }
    text
}

/// What the test's webhook receiver got: (headers, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rollout_sends_a_signed_webhook_retried_until_it_is_taken() {
    use hmac::{Hmac, Mac};

    // A receiver that refuses its first delivery.
    let got: Received = Default::default();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (g, c) = (got.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (g, c) = (g.clone(), c.clone());
            async move {
                if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                g.lock().expect("lock").push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let t = hub.enroll_token(json!({"site": "north"}), 3600).await;
    hub.enroll(&t, "gw-0", 1).await.expect("enroll");
    let (release, _) = hub.release("app", "1").await;
    let (s, v) = hub
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(&hub.token),
            Some(json!({"release": release, "devices": ["gw-0"], "webhook": "ftp://x/"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let created = hub
        .admin(
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"release": release, "devices": ["gw-0"], "webhook": url})),
        )
        .await;
    let id = created["id"].as_u64().expect("id");
    let secret = created["webhook_secret"]
        .as_str()
        .expect("secret shown at creation")
        .to_string();
    let status = hub
        .admin(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
        .await;
    assert!(
        !status.to_string().contains(&secret),
        "the secret is never shown again"
    );
    eventually_async(20, "the first tick", || async {
        let s = hub
            .admin(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
            .await;
        (s["rollout"]["stage"]["stage"] == "running").then_some(())
    })
    .await;
    hub.admin(Method::POST, &format!("/api/v1/rollouts/{id}/pause"), None)
        .await;

    let (headers, body) = eventually_async(30, "the webhook delivered", || async {
        got.lock().expect("lock").first().cloned()
    })
    .await;
    let event: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(event["event"], "rollout.paused", "{event}");
    assert_eq!(event["rollout"], id);
    assert_eq!(headers["x-fleet-event"], "rollout.paused");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        headers["x-fleet-signature"],
        want.as_str(),
        "a valid signature"
    );

    let deliveries = hub
        .admin(
            Method::GET,
            &format!("/api/v1/rollouts/{id}/webhooks"),
            None,
        )
        .await;
    let d = &deliveries[0];
    assert_eq!(d["event"], "rollout.paused", "{deliveries}");
    assert_eq!(d["attempts"], 2, "refused once, then taken: {deliveries}");
    assert!(d["delivered_at"].is_u64(), "{deliveries}");
    assert_eq!(deliveries.as_array().map(Vec::len), Some(1), "{deliveries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_counts_a_delta_the_hub_has_made_instead_of_the_full_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    for i in 0..3u8 {
        let t = hub.enroll_token(json!({"site": "south"}), 3600).await;
        hub.enroll(&t, &format!("gw-{i}"), i + 1)
            .await
            .expect("enroll");
    }
    let (one, base) = hub.release("app", "1").await;
    let (two, target) = hub.release("app", "2").await;
    hub.admin(
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"release": one, "selector": "site=south"})),
    )
    .await;
    let ask = json!({"release": two, "selector": "site=south", "preset": "all"});
    let before = hub
        .admin(Method::POST, "/api/v1/rollouts/preview", Some(ask.clone()))
        .await;
    let class = &before["classes"][0];
    assert_eq!(class["images"][0]["devices"], 3, "{before}");
    assert_eq!(class["images"][0]["delta_devices"], 0, "{before}");
    let full = class["images"][0]["compressed_size"]
        .as_u64()
        .expect("size");
    assert_eq!(
        class["download_bytes"],
        3 * full,
        "no delta made yet: {before}"
    );

    // The delta from what the devices run now to the new image, as the cache keeps it.
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let made = hub
        .dir
        .join("deltas")
        .join(format!("{}-{}.delta", hex(&base), hex(&target)));
    std::fs::write(&made, vec![0u8; 57]).expect("plant");
    let after = hub
        .admin(Method::POST, "/api/v1/rollouts/preview", Some(ask))
        .await;
    let class = &after["classes"][0];
    assert_eq!(class["images"][0]["delta_devices"], 3, "{after}");
    assert_eq!(class["download_bytes"], 3 * 57, "{after}");
    assert_eq!(
        hub.admin(Method::GET, "/api/v1/rollouts", None).await,
        json!([]),
        "a preview stores nothing"
    );
}
