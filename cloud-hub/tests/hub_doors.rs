//! The hub's doors under abuse from outside (issue #15): bodies sent without credentials,
//! half-sent requests, identities and labels a device must not choose, files other local users
//! must not read, and images an agent would refuse.

mod common;

use std::time::Duration;

use common::Hub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a request head announcing `len` body bytes, sends none of them, and returns the status
/// the hub answers with (within 10 s).
async fn status_without_body(hub: &Hub, method: &str, path: &str, len: u64) -> u16 {
    let addr = hub.http.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer before the body was sent"))
        .expect("read");
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {line:?}"))
}

#[tokio::test]
async fn bodies_without_credentials_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(dir.path()).await;
    let big = 400 << 20;
    for (method, path) in cloud_hub::api::ROUTES {
        let method = method.to_uppercase();
        if method == "GET" {
            continue;
        }
        let path = path.replace("{id}", "gw-1").replace("{name}", "g");
        let got = status_without_body(&hub, &method, &path, big).await;
        // Past a route's limit it is 413 on the announced length; within it, 401 first.
        let want: &[u16] = match path.as_str() {
            "/api/v1/enroll" => &[413],
            "/api/v1/images" => &[401],
            _ => &[401, 413],
        };
        assert!(want.contains(&got), "{method} {path}: {got}");
    }
    // An upload larger than any image is refused before it is read, even with a token.
    let addr = hub.http.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/images?name=x HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\n\r\n",
        hub.token,
        4u64 << 30
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer before the body")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// A hub whose `[limits]` are `limits` (TOML lines).
async fn hub_with_limits(dir: &std::path::Path, limits: &str) -> Hub {
    let cfg = dir.join("hub.toml");
    std::fs::write(&cfg, format!("[limits]\n{limits}\n")).expect("config");
    let cfg = cfg.display().to_string();
    Hub::start_with(dir, &["--config", &cfg]).await
}

/// Whether the hub closed `s` within `secs` (end of stream, or a reset).
async fn closed_within(s: &mut TcpStream, secs: u64) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 or similar before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn half_sent_and_silent_connections_are_closed_and_the_api_keeps_answering() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = hub_with_limits(
        dir.path(),
        "http_header_timeout_secs = 2\nhttp_max_connections = 50",
    )
    .await;
    let addr = hub.http.trim_start_matches("http://").to_string();
    // Four times the cap: half-sent request heads, and connections that send nothing.
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        if i % 2 == 0 {
            s.write_all(b"POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nContent-Le")
                .await
                .expect("half a head");
        }
        slow.push(s);
    }
    // The API answers while they are open (within a few header timeouts, as they are closed).
    let started = tokio::time::Instant::now();
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(30),
        hub.call(
            reqwest::Method::GET,
            "/api/v1/devices",
            Some(&hub.token),
            None,
        ),
    )
    .await
    .expect("the API answered while slow clients were connected");
    assert_eq!(status, 200);
    eprintln!("answered after {:?}", started.elapsed());
    // Every slow connection is closed by the hub.
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(closed_within(s, 30).await, "connection {i} still open");
    }
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_cut_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = hub_with_limits(dir.path(), "http_body_timeout_secs = 2").await;
    let addr = hub.http.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /api/v1/groups/g HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        hub.token
    );
    s.write_all(head.as_bytes()).await.expect("head");
    // One byte a second would take 1000 s; the hub answers long before.
    let mut answered = false;
    for _ in 0..20 {
        let mut buf = [0u8; 512];
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            let n = r.unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 4"), "{text}");
            answered = true;
            break;
        }
        let _ = s.write_all(b" ").await;
    }
    assert!(answered, "a dribbling body held the request for 20 s");
    let (status, v) = hub
        .call(
            reqwest::Method::GET,
            "/api/v1/groups",
            Some(&hub.token),
            None,
        )
        .await;
    assert_eq!(
        (status, v),
        (200, serde_json::json!([])),
        "nothing was changed"
    );
}
