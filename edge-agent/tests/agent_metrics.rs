//! The agent's metrics listener with the real agent, a real broker, a real blob server and a
//! real crashing workload: off by default, and when configured its counters move (reconciler
//! passes, downloaded bytes, restarts), read with a Prometheus text-format parser.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use fleet_test_kit::{eventually, free_port};
use protocol::*;

/// `GET path` on the listener: (status line, body), or `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (status, body) = get(port, "/metrics").expect("the listener answers");
    assert_eq!(status, "HTTP/1.1 200 OK");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

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

#[test]
fn the_metrics_listener_is_off_by_default_and_its_counters_move_when_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let blobs = BlobServer::start();
    let keys = Keys::new();
    let hub = HubDouble::connect(broker.port, "gw-metrics");
    hub.publish_retained(topics::TRUST, keys.trust_update(1));

    // Off by default: an agent without the setting serves nothing.
    let port = free_port();
    let mut quiet = Agent::provision(dir.path(), "gw-quiet", broker.port, &blobs.url, &keys);
    quiet.start();
    eventually(20, "the quiet agent's first pass", || {
        std::fs::metadata(quiet.dir.join("agent.db")).ok()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        get(port, "/metrics").is_none(),
        "nothing listens by default"
    );

    let mut agent = Agent::provision(dir.path(), "gw-metrics", broker.port, &blobs.url, &keys);
    agent.set_env("FLEET_AGENT_METRICS_ADDR", &format!("127.0.0.1:{port}"));
    agent.start();
    let first = eventually(20, "the listener answers", || {
        get(port, "/metrics").map(|_| scrape(port))
    });
    assert_eq!(
        get(port, "/other").map(|(s, _)| s).as_deref(),
        Some("HTTP/1.1 404 Not Found")
    );
    eventually(20, "the link counted as up", || {
        (value(&scrape(port), "fleet_agent_link_up", &[]) == 1.0).then_some(())
    });
    assert_eq!(
        value(
            &first,
            "fleet_agent_download_bytes_total",
            &[("kind", "full")]
        ),
        0.0
    );
    assert!(
        first
            .samples
            .iter()
            .any(|s| s.metric == "fleet_agent_download_bytes_total"
                && s.labels.get("kind") == Some("delta")),
        "the delta series is there before any delta download"
    );

    let crashy = Image::with_script("echo run >> runs.log\nsleep 0.3\nexit 7", &[]);
    blobs.add(&crashy);
    let s = state("gw-metrics", 1, vec![workload("svc", &crashy)]);
    hub.publish_desired(keys.sign_state(&s));
    let after = eventually(40, "two restarts counted", || {
        let s = scrape(port);
        (value(&s, "fleet_agent_workload_restarts_total", &[]) >= 2.0).then_some(s)
    });
    assert!(
        value(
            &after,
            "fleet_agent_download_bytes_total",
            &[("kind", "full")]
        ) >= blobs.bytes_served() as f64 * 0.99,
        "every byte served was counted as a full download"
    );
    assert!(
        value(&after, "fleet_agent_reconcile_passes_total", &[])
            > value(&first, "fleet_agent_reconcile_passes_total", &[])
    );
    assert!(value(&after, "fleet_agent_reconcile_seconds", &[]) >= 1.0);
    assert_eq!(value(&after, "fleet_agent_outbox_dropped_total", &[]), 0.0);
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "fleet_agent_outbox_events"));

    // The Grafana dashboard asks only for what the agent exports.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/fleet.json"
    ))
    .expect("dashboard");
    let missing: Vec<String> = dashboard
        .match_indices("fleet_agent_")
        .map(|(i, _)| {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = name.strip_suffix("_bucket").unwrap_or(&name);
            base.trim_end_matches("_total").to_string()
        })
        .filter(|n| !after.docs.contains_key(n) && !after.docs.contains_key(&format!("{n}_total")))
        .collect();
    assert!(missing.is_empty(), "the dashboard asks for {missing:?}");
}
