//! Functions through the whole fleet: a release with a function, signed by the real hub, run by
//! real agents on demand; the counters the devices report shown by `fleetctl functions` per
//! device and fleet-wide.

use std::io::{Read, Write};

use fleet_test_kit::eventually;
use fleet_tests::fleet::Fleet;
use serde_json::{json, Value};

/// Answers `hi <path>` to one HTTP request per connection.
const HANDLER: &str = r#"#!/bin/sh
read -r method path proto
while read -r line; do
  [ -z "$(printf '%s' "$line" | busybox tr -d '\r')" ] && break
done
resp="hi $path"
printf 'HTTP/1.1 200 OK\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${#resp}" "$resp"
"#;

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn a_function_release_runs_on_demand_and_fleetctl_sums_its_counters() {
    let fleet = Fleet::start(2);
    let digest = fleet.image(
        "hello-fn",
        "chmod 755 h.sh\nexec busybox nc -ll -p \"$FLEET_FUNCTION_PORT\" -e \"$PWD/h.sh\"",
        &[("h.sh", HANDLER.as_bytes().to_vec())],
    );
    let release = fleet.api(
        "POST",
        "/api/v1/releases",
        Some(json!({"name": "fn", "version": "1", "workloads": [{
            "name": "hello", "image": digest, "command": ["./run.sh"],
            "function": {"triggers": [{"type": "http", "route": "/hello"}]}
        }]})),
    )["id"]
        .as_u64()
        .expect("id");
    fleet.deploy(release, 1);
    fleet.wait_converged(60);
    let (a, b) = (&fleet.agents[0], &fleet.agents[1]);
    for (port, n) in [(a.functions, 2), (b.functions, 1)] {
        for _ in 0..n {
            assert_eq!(get(port, "/hello/x"), (200, "hi /hello/x".to_string()));
        }
    }
    let ctl = || -> Value {
        let out = std::process::Command::new(fleet_tests::fleet::bin("fleetctl"))
            .args([
                "--hub",
                &fleet.http,
                "--token",
                &fleet.token,
                "--json",
                "functions",
            ])
            .output()
            .expect("fleetctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let rows = eventually(30, "the counters at the hub", || {
        let rows = ctl();
        rows.as_array()
            .is_some_and(|r| {
                r.iter()
                    .any(|x| x["device"] == "*" && x["invocations"] == 3)
            })
            .then_some(rows)
    });
    let row = |dev: &str| {
        rows.as_array()
            .and_then(|r| r.iter().find(|x| x["device"] == dev).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(row(&a.id)["invocations"], 2, "{rows}");
    assert_eq!(row(&a.id)["cold_starts"], 1, "{rows}");
    assert_eq!(row(&b.id)["invocations"], 1, "{rows}");
    assert_eq!(row("*")["cold_starts"], 2, "{rows}");
    assert_eq!(row("*")["errors"], 0, "{rows}");
}
