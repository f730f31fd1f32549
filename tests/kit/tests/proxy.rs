//! The fault-injecting proxy does what each mode says, against a real echo server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fleet_test_kit::proxy::{Direction, Mode, Proxy};

fn echo_server() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn roundtrip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(wait)).expect("timeout");
    s.write_all(msg).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < msg.len() {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(got)
}

#[test]
fn pass_cut_and_heal() {
    let p = Proxy::start(echo_server()).expect("proxy");
    let mut s = TcpStream::connect(p.addr).expect("connect");
    assert_eq!(
        roundtrip(&mut s, b"hello", Duration::from_secs(5)).as_deref(),
        Some(&b"hello"[..])
    );
    p.cut();
    assert!(
        roundtrip(&mut s, b"x", Duration::from_secs(2)).is_none(),
        "cut kept the connection"
    );
    let mut s2 = TcpStream::connect(p.addr).expect("the listener still accepts");
    assert!(
        roundtrip(&mut s2, b"x", Duration::from_secs(1)).is_none(),
        "cut let a new connection through"
    );
    p.heal();
    let mut s3 = TcpStream::connect(p.addr).expect("connect");
    assert_eq!(
        roundtrip(&mut s3, b"back", Duration::from_secs(5)).as_deref(),
        Some(&b"back"[..])
    );
}

#[test]
fn blackhole_holds_bytes_until_healed() {
    let p = Proxy::start(echo_server()).expect("proxy");
    let mut s = TcpStream::connect(p.addr).expect("connect");
    assert!(roundtrip(&mut s, b"a", Duration::from_secs(5)).is_some());
    p.blackhole();
    assert!(
        roundtrip(&mut s, b"held", Duration::from_millis(500)).is_none(),
        "blackhole forwarded"
    );
    p.heal();
    let mut buf = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = s.read(&mut buf).expect("delivered after heal");
    assert_eq!(&buf[..n], b"held");
}

#[test]
fn one_direction_blackhole_lets_the_other_through() {
    let p = Proxy::start(echo_server()).expect("proxy");
    let mut s = TcpStream::connect(p.addr).expect("connect");
    assert!(roundtrip(&mut s, b"a", Duration::from_secs(5)).is_some());
    let up_before = p.bytes_up();
    p.set(Mode::Blackhole(Direction::Downstream));
    assert!(roundtrip(&mut s, b"ping", Duration::from_millis(500)).is_none());
    assert_eq!(p.bytes_up(), up_before + 4, "upstream bytes still flow");
}

#[test]
fn throttle_and_delay_slow_the_stream_down() {
    let p = Proxy::start(echo_server()).expect("proxy");
    let mut s = TcpStream::connect(p.addr).expect("connect");
    p.set(Mode::Delay(Duration::from_millis(300)));
    let t = Instant::now();
    assert!(roundtrip(&mut s, b"slow", Duration::from_secs(5)).is_some());
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "two delayed legs"
    );
    p.set(Mode::Throttle(2_000));
    let t = Instant::now();
    let msg = vec![7u8; 1_000];
    assert_eq!(
        roundtrip(&mut s, &msg, Duration::from_secs(10)).map(|v| v.len()),
        Some(1_000)
    );
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "1000 bytes each way at 2000 B/s"
    );
}

/// The MQTT proxy frames packets: a flood injected into a real subscriber's connection arrives
/// as messages, and publishes from the broker arrive twice while duplication is on.
#[test]
fn mqtt_proxy_injects_a_flood_and_duplicates_publishes_for_a_real_subscriber() {
    use fleet_test_kit::mosquitto::Mosquitto;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = fleet_test_kit::free_port();
    let _m = Mosquitto::anonymous(dir.path(), port, 1 << 20);
    let p = Proxy::start_mqtt(([127, 0, 0, 1], port).into()).expect("proxy");
    let sub = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &p.addr.port().to_string()])
        .args(["-t", "t/#", "-C", "7", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    fleet_test_kit::eventually(10, "the subscriber connected", || {
        (p.accepted() == 1 && p.bytes_down() > 0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.mqtt().flood("t/flood", b"x", 5), 1);
    fleet_test_kit::eventually(10, "the flood was injected", || {
        (p.mqtt().injected() == 5).then_some(())
    });
    p.mqtt().duplicate_publishes(true);
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "t/real", "-m", "y"])
        .status()
        .expect("mosquitto_pub");
    assert!(status.success());
    let out = sub.wait_with_output().expect("subscriber output");
    let mut lines: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    // The injected flood and the broker's (duplicated) publish travel separate paths into the
    // subscriber's connection: what arrives is counted, not ordered.
    lines.sort();
    assert_eq!(lines, ["x", "x", "x", "x", "x", "y", "y"]);
    assert_eq!(p.mqtt().injected(), 5);
    assert_eq!(p.mqtt().publishes_duplicated(), 1);
}
