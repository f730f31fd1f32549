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
