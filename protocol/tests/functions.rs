//! The `function` workload kind: documents without it read as before, every field is bounded,
//! the topic rule and route collisions are refused with a clear reason.

mod common;

use common::*;
use protocol::{accept_desired_state, DesiredOutcome, DesiredState, Function, Rejection};

fn func(json: serde_json::Value) -> Function {
    serde_json::from_value(json).expect("function parses")
}

fn with_functions(fs: Vec<(&str, Function)>) -> DesiredState {
    let mut s = state("gw-1", 10);
    s.workloads = fs
        .into_iter()
        .map(|(n, f)| {
            let mut w = workload(n);
            w.function = Some(f);
            w
        })
        .collect();
    s
}

fn accept(s: &DesiredState) -> Result<DesiredOutcome, Rejection> {
    accept_desired_state(
        &sign(s, &[&online()]),
        &trust(),
        &dev("gw-1"),
        &floor(0),
        NOW,
    )
}

fn invalid_reason(s: &DesiredState) -> String {
    match accept(s) {
        Err(Rejection::Malformed(m)) => m,
        other => panic!("expected invalid, got {other:?}"),
    }
}

fn http(route: &str) -> Function {
    func(serde_json::json!({"triggers": [{"type": "http", "route": route}]}))
}

#[test]
fn a_state_without_functions_serializes_without_the_field() {
    let s = state("gw-1", 10);
    let text = String::from_utf8(to_json(&s)).expect("utf-8");
    assert!(!text.contains("function"), "{text}");
}

#[test]
fn a_function_round_trips_with_its_defaults() {
    let s = with_functions(vec![("f", http("/hello"))]);
    let Ok(DesiredOutcome::Accepted(a)) = accept(&s) else {
        panic!("refused")
    };
    let f = a.state.workloads[0].function.clone().expect("function");
    assert_eq!((f.min_instances, f.max_instances, f.concurrency), (0, 1, 1));
    assert_eq!(f.queue_len, 16);
    assert_eq!(a.state, s);
}

#[test]
fn unknown_function_fields_are_refused() {
    let r: Result<Function, _> = serde_json::from_value(serde_json::json!({
        "triggers": [{"type": "http", "route": "/a"}], "replicas": 3
    }));
    assert!(r.is_err());
}

#[test]
fn colliding_routes_are_refused() {
    let s = with_functions(vec![("a", http("/x")), ("b", http("/x/y"))]);
    let m = invalid_reason(&s);
    assert!(m.contains("collides"), "{m}");
    // A shared prefix that is not a path boundary is no collision.
    let ok = with_functions(vec![("a", http("/x")), ("b", http("/xy"))]);
    assert!(matches!(accept(&ok), Ok(DesiredOutcome::Accepted(_))));
}

#[test]
fn bad_routes_are_refused() {
    for r in [
        "",
        "x",
        "/",
        "/a//b",
        "/a/../b",
        "/a b",
        "/a?b",
        &format!("/{}", "a".repeat(200)),
    ] {
        let m = invalid_reason(&with_functions(vec![("a", http(r))]));
        assert!(m.contains("route"), "{r:?}: {m}");
    }
}

#[test]
fn topics_functions_may_not_read_are_refused() {
    for t in [
        "#",
        "+/x",
        "fleet/dead-letter/a",
        "$SYS/broker",
        "a/#/b",
        "a/b+",
        "",
    ] {
        let f = func(serde_json::json!({"triggers": [{"type": "mqtt", "topic": t}]}));
        let m = invalid_reason(&with_functions(vec![("a", f)]));
        assert!(m.contains("topic"), "{t:?}: {m}");
    }
    let f = func(serde_json::json!({"triggers": [{"type": "mqtt", "topic": "sensors/+/temp"}]}));
    assert!(matches!(
        accept(&with_functions(vec![("a", f)])),
        Ok(DesiredOutcome::Accepted(_))
    ));
}

#[test]
fn a_reply_topic_that_loops_or_is_a_filter_is_refused() {
    for (t, r) in [("s/+", "s/x"), ("s/a", "s/#"), ("s/a", "fleet/x")] {
        let f = func(serde_json::json!({"triggers": [
            {"type": "mqtt", "topic": t, "reply_topic": r}]}));
        let m = invalid_reason(&with_functions(vec![("a", f)]));
        assert!(m.contains("topic"), "{t:?} {r:?}: {m}");
    }
}

#[test]
fn oversized_and_out_of_range_values_are_refused() {
    let base = serde_json::json!({"triggers": [{"type": "http", "route": "/a"}]});
    let cases = [
        ("max_instances", serde_json::json!(0)),
        ("max_instances", serde_json::json!(65)),
        ("concurrency", serde_json::json!(0)),
        ("idle_timeout_secs", serde_json::json!(0)),
        ("timeout_ms", serde_json::json!(600_001)),
        ("queue_len", serde_json::json!(5000)),
        ("max_body_bytes", serde_json::json!(17 * 1024 * 1024)),
        ("min_instances", serde_json::json!(2)),
        ("queue_len", serde_json::json!(0)),
    ];
    for (k, v) in cases {
        let mut j = base.clone();
        j[k] = v.clone();
        let m = invalid_reason(&with_functions(vec![("a", func(j))]));
        assert!(m.contains("workload a"), "{k}={v}: {m}");
    }
    let mut j = base.clone();
    j["triggers"] = serde_json::json!([]);
    invalid_reason(&with_functions(vec![("a", func(j))]));
    let many: Vec<_> = (0..9)
        .map(|i| serde_json::json!({"type": "http", "route": format!("/r{i}")}))
        .collect();
    let mut j = base;
    j["triggers"] = serde_json::Value::Array(many);
    invalid_reason(&with_functions(vec![("a", func(j))]));
}

#[test]
fn a_function_with_a_schedule_or_health_check_is_refused() {
    let mut s = with_functions(vec![("a", http("/a"))]);
    s.workloads[0].schedule = Some("0 * * * * *".to_string().try_into().expect("cron"));
    assert!(invalid_reason(&s).contains("schedule"));
}
