//! `GET /metrics` on the real hub binary, read with a Prometheus text-format parser: it needs
//! a token, and its counters move when a device connects, reports and gets a deployment.

mod common;

use common::*;
use fleet_test_kit::now;
use protocol::*;
use reqwest::Method;
use serde_json::json;

/// One scrape of `/metrics`, parsed.
async fn scrape(hub: &Hub, token: &str) -> prometheus_parse::Scrape {
    let resp = reqwest::Client::new()
        .get(format!("{}/metrics", hub.http))
        .bearer_auth(token)
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = resp.text().await.expect("body");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The value of `name` with at least `labels` (a histogram gives its count; several matching
/// series are summed), or 0 when there is none.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_and_move_when_a_device_connects_reports_and_is_deployed_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let (status, _) = hub.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 401, "no token, no metrics");
    let (status, _) = hub.call(Method::GET, "/metrics", Some("nope"), None).await;
    assert_eq!(status, 401, "an unknown token gets nothing");
    let viewer = hub
        .admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"kind": "api", "name": "prometheus", "role": "viewer"})),
        )
        .await["token"]
        .as_str()
        .expect("token")
        .to_string();

    let before = scrape(&hub, &viewer).await;
    assert_eq!(
        value(&before, "fleet_hub_devices", &[("state", "enrolled")]),
        0.0
    );
    assert_eq!(value(&before, "fleet_hub_broker_link_up", &[]), 1.0);

    let t = hub.enroll_token(json!({"site": "m"}), 3600).await;
    let (_, resp) = hub.enroll(&t, "gw-m", 41).await.expect("enroll");
    let mut dev = Device::connect(hub.mqtt_port, "gw-m", "gw-m", &resp.mqtt.password);
    assert!(dev.connected().await);
    dev.client
        .subscribe("fleet/v1/dev/gw-m/ack", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("sub");
    let presence = Presence {
        state: PresenceState::Online,
        epoch: 1,
    };
    let events = EventBatch {
        device: DeviceId::new("gw-m").expect("id"),
        events: (1..=3)
            .map(|seq| Event {
                seq,
                time: now(),
                body: EventBody::DesiredAccepted { revision: seq },
            })
            .collect(),
    };
    for (topic, payload) in [
        (
            "fleet/v1/dev/gw-m/presence",
            serde_json::to_vec(&presence).expect("json"),
        ),
        (
            "fleet/v1/dev/gw-m/events",
            serde_json::to_vec(&events).expect("json"),
        ),
    ] {
        dev.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    assert!(
        dev.next_on("fleet/v1/dev/gw-m/ack", 10).await.is_some(),
        "the events are acked"
    );
    let (release, _) = hub.release("metered", "1.0").await;
    hub.admin(
        Method::POST,
        "/api/v1/deployments",
        Some(json!({"release": release, "devices": ["gw-m"]})),
    )
    .await;
    hub.admin(Method::GET, "/api/v1/devices/gw-m", None).await;

    let after = eventually_async(
        20,
        "the deployment's state counted as published",
        || async {
            let s = scrape(&hub, &viewer).await;
            (value(&s, "fleet_hub_states_published_total", &[]) >= 1.0).then_some(s)
        },
    )
    .await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        value(&after, "fleet_hub_devices", &[("state", "enrolled")]),
        1.0
    );
    assert_eq!(
        value(&after, "fleet_hub_devices", &[("state", "online")]),
        1.0
    );
    assert_eq!(
        value(&after, "fleet_hub_devices", &[("state", "offline")]),
        0.0
    );
    assert!(moved("fleet_hub_states_signed_total", &[]) >= 1.0);
    assert_eq!(moved("fleet_hub_ingest_events_total", &[]), 3.0);
    assert_eq!(
        moved("fleet_hub_ingest_messages_total", &[("channel", "events")]),
        1.0
    );
    assert_eq!(
        moved(
            "fleet_hub_ingest_messages_total",
            &[("channel", "presence")]
        ),
        1.0
    );
    assert!(value(&after, "fleet_hub_connections", &[("listener", "mqtt")]) >= 2.0);
    assert!(value(&after, "fleet_hub_publish_chunk_seconds", &[]) >= 1.0);
    assert!(value(&after, "fleet_hub_ingest_batch_seconds", &[]) >= 1.0);
    // Requests are counted under their route pattern, never the raw path.
    assert_eq!(
        moved(
            "fleet_hub_http_request_seconds",
            &[
                ("route", "/api/v1/enroll"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "fleet_hub_http_request_seconds",
            &[("route", "/metrics"), ("status", "401")]
        ),
        0.0,
        "the refusals came before `before`"
    );
    assert!(
        value(
            &after,
            "fleet_hub_http_request_seconds",
            &[("route", "/metrics"), ("status", "401")]
        ) >= 2.0
    );
    assert!(
        value(
            &after,
            "fleet_hub_http_request_seconds",
            &[("route", "/api/v1/devices/:id"), ("status", "200")]
        ) >= 1.0
    );
    assert!(!after
        .samples
        .iter()
        .any(|s| s.labels.get("route").is_some_and(|r| r.contains("gw-m"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_asks_only_for_metrics_the_hub_exports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    // The first scrape is itself an HTTP request: the second shows its latency family.
    scrape(&hub, &hub.token).await;
    let exported: std::collections::BTreeSet<String> = scrape(&hub, &hub.token)
        .await
        .docs
        .keys()
        .cloned()
        .collect();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/fleet.json"
    ))
    .expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() > 5));
    let mut asked = std::collections::BTreeSet::new();
    for (i, _) in dashboard.match_indices("fleet_hub_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        asked.insert(base);
    }
    assert!(asked.len() >= 10, "{asked:?}");
    // The text format documents counters without their `_total` suffix.
    let missing: Vec<_> = asked
        .iter()
        .filter(|n| !exported.contains(*n) && !exported.contains(n.trim_end_matches("_total")))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard asks for {missing:?}; the hub exports {exported:?}"
    );
}
