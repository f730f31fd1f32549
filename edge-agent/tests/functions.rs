//! Functions end to end: the real agent binary as activator, real function processes
//! (`busybox nc -ll -e` serving one HTTP request per connection through a shell handler), a
//! real mosquitto for the link and another as the gateway's local bus.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use protocol::*;

/// Fields drop in order: the agent (and its instances) before the directory they live in.
struct World {
    _broker: Broker,
    blobs: BlobServer,
    keys: Keys,
    hub: HubDouble,
    agent: Agent,
    listen: u16,
    bus: Option<Broker>,
    _dir: tempfile::TempDir,
}

fn world(device: &str, with_bus: bool) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    let bus = with_bus.then(|| {
        let d = dir.path().join("bus");
        std::fs::create_dir_all(&d).expect("mkdir");
        Broker::start(&d)
    });
    let blobs = BlobServer::start();
    let keys = Keys::new();
    let hub = HubDouble::connect(broker.port, device);
    hub.publish_retained(topics::TRUST, keys.trust_update(1));
    let mut agent = Agent::provision(dir.path(), device, broker.port, &blobs.url, &keys);
    let listen = free_port();
    agent.set_env(
        "FLEET_AGENT_FUNCTIONS_LISTEN",
        &format!("127.0.0.1:{listen}"),
    );
    if let Some(b) = &bus {
        agent.set_env(
            "FLEET_AGENT_FUNCTIONS_BUS",
            &format!("127.0.0.1:{}", b.port),
        );
    }
    agent.start();
    World {
        _dir: dir,
        _broker: broker,
        blobs,
        keys,
        hub,
        agent,
        listen,
        bus,
    }
}

/// A shell handler for one HTTP request on stdin/stdout: answers
/// `<tag> <method> <path> topic=<fleet-topic> body=<body>` after `delay` seconds.
fn handler(tag: &str, delay: u32) -> String {
    format!(
        r#"#!/bin/sh
read -r method path proto
len=0
while read -r line; do
  line=$(printf '%s' "$line" | busybox tr -d '\r')
  [ -z "$line" ] && break
  case "$line" in [Cc]ontent-[Ll]ength:*) len=${{line#*: }};; [Ff]leet-[Tt]opic:*) topic=${{line#*: }};; esac
done
body=$(busybox head -c "$len")
busybox sleep {delay}
resp="{tag} $method $path topic=$topic body=$body"
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "${{#resp}}" "$resp"
"#
    )
}

/// A function image: `run.sh` serves on `$FLEET_FUNCTION_PORT` with [`handler`].
fn fn_image(tag: &str, delay: u32) -> Image {
    slow_starting(tag, delay, "0")
}

/// [`fn_image`] whose instances take `start` seconds before they listen.
fn slow_starting(tag: &str, delay: u32, start: &str) -> Image {
    let h = handler(tag, delay);
    Image::with_script(
        &format!(
            "echo start >> starts.log\nbusybox sleep {start}\nexec busybox nc -ll -p \"$FLEET_FUNCTION_PORT\" -e \"$PWD/h.sh\""
        ),
        &[("h.sh", h.as_bytes())],
    )
}

fn function(name: &str, img: &Image, f: serde_json::Value) -> Workload {
    let mut w = workload(name, img);
    w.function = Some(serde_json::from_value(f).expect("function"));
    w
}

fn deploy(w: &World, revision: u64, workloads: Vec<Workload>) {
    let s = state(&w.agent.device, revision, workloads);
    w.hub.publish_desired(w.keys.sign_state(&s));
}

/// One HTTP/1.1 request; the status and body of the answer.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    // A refused body may be answered before it is all sent.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Waits until the listener routes `path` to a function (the image pulled, the plan served).
fn wait_served(w: &World, path: &str) {
    eventually(30, &format!("a function served at {path}"), || {
        let ok = std::net::TcpStream::connect(("127.0.0.1", w.listen)).is_ok()
            && http(w.listen, "OPTIONS", "/no-such-route", b"").0 == 404
            && w.hub.last_status().is_some_and(|s| {
                s.workloads
                    .iter()
                    .all(|x| x.phase == WorkloadPhase::Running)
                    && !s.workloads.is_empty()
            });
        ok.then_some(())
    });
}

/// Function instances alive now (their records under `functions/`, their pids in /proc).
fn alive_instances(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for sub in ["functions/runtime", "functions/oci"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(
                &std::fs::read(e.path()).unwrap_or_default(),
            ) else {
                continue;
            };
            if let Some(pid) = v["instance"]["state"]["Running"]["pid"].as_u64() {
                let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| !s.contains(") Z "))
                    .unwrap_or(false);
                if alive {
                    out.push((
                        v["instance"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        v["instance"]["digest"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ));
                }
            }
        }
    }
    out
}

fn stats(w: &World, name: &str) -> Option<FunctionStats> {
    w.hub
        .last_status()?
        .functions
        .into_iter()
        .find(|f| f.name.as_str() == name)
}

#[test]
fn an_http_invocation_cold_starts_an_instance_and_idle_ones_are_stopped() {
    let w = world("gw-fn-cold", false);
    let img = fn_image("v1", 0);
    w.blobs.add(&img);
    let f = function(
        "hello",
        &img,
        serde_json::json!({"triggers": [{"type": "http", "route": "/hello"}], "idle_timeout_secs": 1}),
    );
    deploy(&w, 1, vec![f]);
    wait_served(&w, "/hello");
    assert!(
        alive_instances(&w.agent.dir).is_empty(),
        "scaled to zero before any event"
    );

    let (status, body) = http(w.listen, "POST", "/hello/world?x=1", b"ping");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "v1 POST /hello/world?x=1 topic= body=ping");
    assert_eq!(alive_instances(&w.agent.dir).len(), 1);
    // A second event finds the warm instance: no new start.
    assert_eq!(http(w.listen, "POST", "/hello", b"again").0, 200);
    assert_eq!(
        w.agent.rootfs_file(&img.digest, "starts.log").as_deref(),
        Some("start\n")
    );

    eventually(10, "the idle instance stopped", || {
        alive_instances(&w.agent.dir).is_empty().then_some(())
    });
    let s = eventually(10, "counters in the status report", || {
        stats(&w, "hello").filter(|s| s.invocations == 2 && s.instances == 0)
    });
    assert_eq!((s.cold_starts, s.errors, s.queue_drops), (1, 0, 0), "{s:?}");
    // And it starts again on demand.
    assert_eq!(http(w.listen, "GET", "/hello", b"").0, 200);
}

#[test]
fn a_burst_scales_up_to_max_instances_never_past_it_and_overflow_is_refused() {
    let w = world("gw-fn-burst", false);
    // Instances take half a second to listen, so the whole burst arrives while they start.
    let img = slow_starting("v1", 1, "0.5");
    w.blobs.add(&img);
    let f = function(
        "burst",
        &img,
        serde_json::json!({
            "triggers": [{"type": "http", "route": "/burst"}],
            "max_instances": 3, "queue_len": 6, "timeout_ms": 20000
        }),
    );
    deploy(&w, 1, vec![f]);
    wait_served(&w, "/burst");

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, peak, dir) = (stop.clone(), peak.clone(), w.agent.dir.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(alive_instances(&dir).len(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let listen = w.listen;
    let callers: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || http(listen, "POST", "/burst", format!("{i}").as_bytes()))
        })
        .collect();
    let results: Vec<(u16, String)> = callers
        .into_iter()
        .map(|c| c.join().expect("caller"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");

    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused = results.iter().filter(|r| r.0 == 429).count();
    assert_eq!((ok, refused), (6, 4), "{results:?}");
    assert_eq!(
        peak.load(Ordering::Relaxed),
        3,
        "scaled to max_instances, never past it"
    );
    let s = eventually(10, "the drops counted", || {
        stats(&w, "burst").filter(|s| s.invocations == 6)
    });
    assert_eq!((s.queue_drops, s.cold_starts, s.errors), (4, 3, 0), "{s:?}");
}

#[test]
fn a_hanging_invocation_is_killed_at_its_timeout() {
    let w = world("gw-fn-hang", false);
    let img = fn_image("slow", 60);
    w.blobs.add(&img);
    let f = function(
        "hang",
        &img,
        serde_json::json!({"triggers": [{"type": "http", "route": "/hang"}], "timeout_ms": 1500}),
    );
    deploy(&w, 1, vec![f]);
    wait_served(&w, "/hang");
    let t = Instant::now();
    let (status, body) = http(w.listen, "POST", "/hang", b"x");
    assert_eq!(status, 504, "{body}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    eventually(10, "the hanging instance killed", || {
        alive_instances(&w.agent.dir).is_empty().then_some(())
    });
    let s = eventually(10, "the timeout counted", || {
        stats(&w, "hang").filter(|s| s.timeouts == 1)
    });
    assert_eq!(s.errors, 1, "{s:?}");
}

#[test]
fn bad_input_gets_clear_errors_and_disturbs_nothing() {
    let w = world("gw-fn-bad", false);
    let img = fn_image("v1", 0);
    w.blobs.add(&img);
    let f = function(
        "small",
        &img,
        serde_json::json!({"triggers": [{"type": "http", "route": "/small"}], "max_body_bytes": 1024}),
    );
    deploy(&w, 1, vec![f]);
    wait_served(&w, "/small");
    let (status, body) = http(w.listen, "POST", "/small", &vec![b'a'; 4096]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 1024"), "{body}");
    let (status, body) = http(w.listen, "POST", "/smaller", b"x");
    assert_eq!(status, 404, "{body}");
    assert!(
        alive_instances(&w.agent.dir).is_empty(),
        "nothing started for bad input"
    );
    let (status, body) = http(w.listen, "POST", "/small", b"fine");
    assert_eq!(
        (status, body.as_str()),
        (200, "v1 POST /small topic= body=fine")
    );
    let s = eventually(10, "counters", || {
        stats(&w, "small").filter(|s| s.invocations == 1)
    });
    assert_eq!((s.errors, s.cold_starts), (0, 1), "{s:?}");
}

#[test]
fn an_mqtt_triggered_function_publishes_its_reply() {
    use rumqttc::{Client, Event as MEvent, MqttOptions, Packet, QoS};
    let w = world("gw-fn-mqtt", true);
    let img = fn_image("v1", 0);
    w.blobs.add(&img);
    let f = function(
        "temp",
        &img,
        serde_json::json!({"triggers": [
            {"type": "mqtt", "topic": "sensors/+/temp", "reply_topic": "replies/temp"}]}),
    );
    deploy(&w, 1, vec![f]);
    eventually(30, "the function deployed", || {
        w.hub
            .last_status()
            .is_some_and(|s| s.convergence == Convergence::Converged)
            .then_some(())
    });
    let port = w.bus.as_ref().expect("bus").port;
    let (client, mut conn) = Client::new(MqttOptions::new("sensor", "127.0.0.1", port), 10);
    client
        .subscribe("replies/temp", QoS::AtLeastOnce)
        .expect("subscribe");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for n in conn.iter() {
            if let Ok(MEvent::Incoming(Packet::Publish(p))) = n {
                let _ = tx.send(String::from_utf8_lossy(&p.payload).to_string());
            }
        }
    });
    // The agent's bus client subscribes shortly after the plan: publish until a reply comes.
    let reply = eventually(20, "a reply on replies/temp", || {
        client
            .publish("sensors/kitchen/temp", QoS::AtLeastOnce, false, "21.5")
            .expect("publish");
        rx.recv_timeout(Duration::from_millis(500)).ok()
    });
    assert_eq!(reply, "v1 POST / topic=sensors/kitchen/temp body=21.5");
}

#[test]
fn bus_messages_past_a_full_queue_go_to_the_dead_letter_topic_unchanged() {
    use rumqttc::{Client, Event as MEvent, MqttOptions, Packet, QoS};
    let w = world("gw-fn-dead", true);
    let img = fn_image("v1", 2);
    w.blobs.add(&img);
    let f = function(
        "slow",
        &img,
        serde_json::json!({"triggers": [{"type": "mqtt", "topic": "sensors/door"}],
            "queue_len": 1, "timeout_ms": 20000}),
    );
    deploy(&w, 1, vec![f]);
    eventually(30, "the function deployed", || {
        w.hub
            .last_status()
            .is_some_and(|s| s.convergence == Convergence::Converged)
            .then_some(())
    });
    let port = w.bus.as_ref().expect("bus").port;
    let (client, mut conn) = Client::new(MqttOptions::new("sensor", "127.0.0.1", port), 10);
    client
        .subscribe("fleet/dead-letter/slow", QoS::AtLeastOnce)
        .expect("subscribe");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for n in conn.iter() {
            if let Ok(MEvent::Incoming(Packet::Publish(p))) = n {
                let _ = tx.send(String::from_utf8_lossy(&p.payload).to_string());
            }
        }
    });
    // Wait until the agent's bus client takes messages (the first one starts an instance).
    eventually(20, "the first message taken", || {
        client
            .publish("sensors/door", QoS::AtLeastOnce, false, "open-0")
            .expect("publish");
        std::thread::sleep(Duration::from_millis(300));
        stats(&w, "slow").filter(|s| s.cold_starts >= 1)
    });
    for i in 1..=3 {
        client
            .publish("sensors/door", QoS::AtLeastOnce, false, format!("open-{i}"))
            .expect("publish");
    }
    let dead = eventually(10, "dead letters", || {
        let got: Vec<String> = rx.try_iter().collect();
        (!got.is_empty()).then_some(got)
    });
    assert!(
        dead.iter().all(|d| d.starts_with("open-")),
        "the original payloads: {dead:?}"
    );
    // Every dead letter here is a refused message, and each is counted.
    eventually(10, "the drops counted", || {
        stats(&w, "slow").filter(|s| s.queue_drops as usize >= dead.len())
    });
}

#[test]
fn an_update_lets_the_invocation_in_flight_finish_on_the_old_version() {
    let w = world("gw-fn-swap", false);
    let (v1, v2) = (fn_image("v1", 5), fn_image("v2", 0));
    w.blobs.add(&v1);
    w.blobs.add(&v2);
    let spec =
        serde_json::json!({"triggers": [{"type": "http", "route": "/f"}], "max_instances": 2});
    deploy(&w, 1, vec![function("f", &v1, spec.clone())]);
    wait_served(&w, "/f");
    let listen = w.listen;
    let in_flight = std::thread::spawn(move || http(listen, "POST", "/f", b"old"));
    eventually(10, "the v1 instance working", || {
        (alive_instances(&w.agent.dir).len() == 1).then_some(())
    });
    deploy(&w, 2, vec![function("f", &v2, spec)]);
    eventually(20, "v2 served", || {
        w.hub
            .last_status()
            .is_some_and(|s| s.workloads.iter().any(|x| x.digest == v2.digest))
            .then_some(())
    });
    let (status, body) = http(w.listen, "POST", "/f", b"new");
    assert_eq!((status, body.as_str()), (200, "v2 POST /f topic= body=new"));
    let (status, body) = in_flight.join().expect("caller");
    assert_eq!((status, body.as_str()), (200, "v1 POST /f topic= body=old"));
    eventually(10, "the old instance stopped once it finished", || {
        let alive = alive_instances(&w.agent.dir);
        alive
            .iter()
            .all(|(_, d)| *d == v2.digest.to_string())
            .then_some(())
    });
}

#[test]
fn a_new_version_that_crashes_at_start_is_reported_and_the_previous_restored() {
    let w = world("gw-fn-crash", false);
    let v1 = fn_image("v1", 0);
    let broken = Image::with_script("echo broken >&2\nexit 3", &[]);
    w.blobs.add(&v1);
    w.blobs.add(&broken);
    let spec = serde_json::json!({"triggers": [{"type": "http", "route": "/c"}]});
    deploy(&w, 1, vec![function("c", &v1, spec.clone())]);
    wait_served(&w, "/c");
    assert_eq!(http(w.listen, "POST", "/c", b"1").0, 200);
    deploy(&w, 2, vec![function("c", &broken, spec)]);
    eventually(20, "the broken version served", || {
        w.hub
            .last_status()
            .is_some_and(|s| s.workloads.iter().any(|x| x.digest == broken.digest))
            .then_some(())
    });
    // The event that meets the crash is answered by the restored version.
    let (status, body) = http(w.listen, "POST", "/c", b"2");
    assert_eq!((status, body.as_str()), (200, "v1 POST /c topic= body=2"));
    eventually(20, "update_failed and rolled_back reported", || {
        (w.hub.has_event(|e| {
            matches!(e, EventBody::UpdateFailed { revision: 2, workload: Some(n), reason }
                if n.as_str() == "c" && reason.contains("failed at start"))
        }) && w.hub.has_event(|e| {
            matches!(e, EventBody::RolledBack { revision: 2, digest, .. } if *digest == v1.digest)
        }))
        .then_some(())
    });
    let s = eventually(20, "the device reports the failed update", || {
        w.hub
            .last_status()
            .filter(|s| s.convergence == Convergence::Failed)
    });
    assert!(s.workloads.iter().any(|x| x.digest == v1.digest), "{s:?}");
    assert_eq!(
        http(w.listen, "POST", "/c", b"3").1,
        "v1 POST /c topic= body=3"
    );
}

#[test]
fn an_oci_function_cold_starts_in_a_container_and_answers() {
    let Some(runc) = edge_agent::runtime::OciRuntime::detect() else {
        eprintln!("skipped: no usable OCI runtime (runc) on this host");
        return;
    };
    let _ = runc;
    let w = world("gw-fn-oci", false);
    // A root of busybox-static: the container sees nothing of the host.
    let bb = std::fs::read(
        ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox-static is installed"),
    )
    .expect("read busybox");
    let h = handler("oci", 0);
    let img = Image::with_script(
        "PATH=/bin\nexec busybox nc -ll -p \"$FLEET_FUNCTION_PORT\" -e /h.sh",
        &[
            ("h.sh", h.as_bytes()),
            ("bin/busybox", &bb),
            ("bin/sh", &bb),
        ],
    );
    w.blobs.add(&img);
    let mut f = function(
        "boxed",
        &img,
        serde_json::json!({"triggers": [{"type": "http", "route": "/boxed"}], "idle_timeout_secs": 1}),
    );
    f.runtime = RuntimeKind::Oci;
    deploy(&w, 1, vec![f]);
    wait_served(&w, "/boxed");
    let (status, body) = http(w.listen, "POST", "/boxed", b"in a box");
    if status != 200 {
        eprintln!(
            "container log: {:?}",
            std::fs::read_to_string(w.agent.dir.join("logs/boxed.log"))
        );
    }
    assert_eq!(
        (status, body.as_str()),
        (200, "oci POST /boxed topic= body=in a box")
    );
    eventually(15, "the idle container stopped", || {
        alive_instances(&w.agent.dir).is_empty().then_some(())
    });
}

#[test]
fn a_stdio_function_answers_from_its_stdout() {
    let w = world("gw-fn-stdio", false);
    let img = Image::with_script(
        "printf 'got:'; cat; printf ' path=%s' \"$FLEET_FUNCTION_PATH\"",
        &[],
    );
    w.blobs.add(&img);
    let f = function(
        "oneshot",
        &img,
        serde_json::json!({"mode": "stdio", "triggers": [{"type": "http", "route": "/once"}]}),
    );
    deploy(&w, 1, vec![f]);
    wait_served(&w, "/once");
    let (status, body) = http(w.listen, "POST", "/once", b"abc");
    assert_eq!((status, body.as_str()), (200, "got:abc path=/once"));
    assert!(alive_instances(&w.agent.dir).is_empty());
}

#[test]
fn instances_left_by_an_agent_killed_9_are_stopped_when_it_starts_again() {
    let mut w = world("gw-fn-kill9", false);
    let img = fn_image("v1", 0);
    w.blobs.add(&img);
    let f = function(
        "left",
        &img,
        serde_json::json!({"triggers": [{"type": "http", "route": "/left"}]}),
    );
    deploy(&w, 1, vec![f]);
    wait_served(&w, "/left");
    assert_eq!(http(w.listen, "POST", "/left", b"1").0, 200);
    let before = alive_instances(&w.agent.dir);
    assert_eq!(before.len(), 1);
    w.agent.proc.kill9();
    assert_eq!(
        alive_instances(&w.agent.dir),
        before,
        "instances outlive a kill -9"
    );
    w.agent.start();
    eventually(20, "the orphaned instance stopped", || {
        alive_instances(&w.agent.dir).is_empty().then_some(())
    });
    eventually(20, "the function served again", || {
        let (status, body) = http(w.listen, "POST", "/left", b"2");
        (status == 200).then_some(body)
    });
    assert_eq!(alive_instances(&w.agent.dir).len(), 1, "one new instance");
}
