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

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_hubs_secrets_and_state_are_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    // A data directory left world-readable by an earlier version is tightened.
    let data = dir.path().join("hub");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let hub = Hub::start(dir.path()).await;
    // Something written, so the WAL exists.
    hub.enroll_token(serde_json::json!({}), 60).await;
    for d in ["", "keys", "blobs"] {
        assert_eq!(mode(&hub.dir.join(d)), 0o700, "directory {d:?}");
    }
    for f in [
        "hub.db",
        "hub.db-wal",
        "hub.db-shm",
        "admin.token",
        "keys/online.key",
        "keys/root.key",
    ] {
        let p = hub.dir.join(f);
        if f.starts_with("hub.db-") && !p.exists() {
            continue;
        }
        assert_eq!(mode(&p), 0o600, "file {f}");
    }
}

/// Posts an enrollment request given as JSON; returns the status and body.
async fn enroll_json(hub: &Hub, req: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/enroll", hub.http))
        .json(&req)
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// A valid enrollment request for `id` with `labels`, as JSON (so tests can break it).
fn enroll_request(token: &str, id: &str, labels: serde_json::Value) -> serde_json::Value {
    let key = protocol::KeyPair::from_seed([7; 32]);
    let req = protocol::enroll::EnrollRequest {
        proof: protocol::enroll::EnrollRequest::prove(&key, token),
        token: token.into(),
        public_key: key.public(),
        device_id: Some(protocol::DeviceId::new("placeholder").expect("id")),
        profile: "local-dev".into(),
        arch: protocol::Arch::host().expect("arch"),
        runtimes: vec![protocol::RuntimeKind::Process],
        agent_version: "test".into(),
        labels: Default::default(),
    };
    let mut v = serde_json::to_value(req).expect("json");
    v["device_id"] = id.into();
    v["labels"] = labels;
    v
}

#[tokio::test]
async fn devices_cannot_enroll_as_the_hub_nor_choose_their_own_labels() {
    use serde_json::json;
    let dir = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(dir.path()).await;
    let token = hub.enroll_token(json!({"site": "north"}), 600).await;
    // The hub's broker username and client id are not device ids.
    for id in ["hub", &protocol::hub_client_id(4242)] {
        let (status, v) = enroll_json(&hub, enroll_request(&token, id, json!({}))).await;
        assert_eq!(status, 400, "{id}: {v}");
    }
    // Labels the token did not set, or set otherwise, are refused and the token stays unused.
    for labels in [json!({"group": "canary"}), json!({"site": "south"})] {
        let (status, v) = enroll_json(&hub, enroll_request(&token, "gw-1", labels.clone())).await;
        assert_eq!(status, 403, "{labels}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or("")
                .contains("labels come from the token"),
            "{v}"
        );
    }
    // Oversized labels are refused before anything is looked up.
    let huge = json!({"k": "v".repeat(10_000)});
    assert_eq!(
        enroll_json(&hub, enroll_request(&token, "gw-1", huge))
            .await
            .0,
        400
    );
    let (status, v) = hub
        .call(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&hub.token),
            Some(json!({"kind": "enroll", "labels": {"k": "v".repeat(300)}})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    // Proposing exactly the token's labels, or none, is fine; the device has the token's.
    let (status, v) = enroll_json(
        &hub,
        enroll_request(&token, "gw-1", json!({"site": "north"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let d = hub
        .admin(reqwest::Method::GET, "/api/v1/devices/gw-1", None)
        .await;
    assert_eq!(d["labels"], json!({"site": "north"}), "{d}");
}

#[tokio::test]
async fn idle_broker_connections_past_the_file_limit_neither_exhaust_nor_flood_the_hub() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, "[limits]\nmqtt_connect_timeout_secs = 2\n").expect("config");
    let cfg = cfg.display().to_string();
    // 512 descriptors in all: the caps shrink to fit, 1000 idle clients would not.
    let hub = Hub::start_wrapped(
        dir.path(),
        &["prlimit", "--nofile=512:512", "--"],
        &["--config", &cfg],
    )
    .await;
    let token = hub.enroll_token(serde_json::json!({}), 600).await;
    let (_, enrolled) = hub.enroll(&token, "gw-1", 3).await.expect("enroll");
    let log = dir.path().join("hub.log");
    let size = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let before = size();
    let addr = format!("127.0.0.1:{}", hub.mqtt_port);
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(s) = TcpStream::connect(&addr).await {
            idle.push(s);
        }
    }
    // While they sit there, a device still gets in (silent ones are dropped after 2 s) and
    // the API answers.
    let password = enrolled.mqtt.password.clone();
    common::eventually_async(60, "the device connects past the idle clients", || async {
        let mut d = common::Device::connect(hub.mqtt_port, "gw-1", "gw-1", &password);
        let ok = d.connected().await;
        let _ = d.client.disconnect().await;
        ok.then_some(())
    })
    .await;
    let (status, _) = hub
        .call(
            reqwest::Method::GET,
            "/api/v1/devices",
            Some(&hub.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    drop(idle);
    // A spinning accept loop writes megabytes a second; this hub wrote a few lines.
    let grown = size() - before;
    assert!(grown < 256 * 1024, "the log grew {grown} bytes");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        !text.contains("Too many open files"),
        "the hub ran out of descriptors"
    );
}

#[tokio::test]
async fn an_image_whose_links_together_leave_the_root_is_refused_at_upload() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(dir.path()).await;
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, to) in [
        ("d/", tar::EntryType::Directory, ""),
        ("d/up", tar::EntryType::Symlink, ".."),
        ("top", tar::EntryType::Symlink, "d/up/.."),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o755);
        if !to.is_empty() {
            h.set_link_name(to).expect("link");
        }
        h.set_cksum();
        b.append_data(&mut h, path, std::io::empty())
            .expect("append");
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/images?name=chain", hub.http))
        .bearer_auth(&hub.token)
        .body(b.into_inner().expect("tar"))
        .send()
        .await
        .expect("upload");
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("symlink"), "{v}");
    let images = hub
        .admin(reqwest::Method::GET, "/api/v1/images", None)
        .await;
    assert_eq!(images, serde_json::json!([]), "nothing stored");
}

#[tokio::test]
async fn an_import_stops_when_its_client_goes_away() {
    let dir = tempfile::tempdir().expect("tmp");
    let hub = Hub::start(dir.path()).await;
    // Enough entries that the import takes seconds, far fewer than the limit.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..90_000 {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("d{}/f{i}", i % 64), std::io::empty())
            .expect("append");
    }
    let body = b.into_inner().expect("tar");
    let addr = hub.http.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/images?name=big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\n\r\n",
        hub.token,
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(&body).await.expect("body");
    // The upload is on disk and the import under way; then the client leaves.
    let log = dir.path().join("hub.log");
    common::eventually_async(30, "the import started", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("importing an image").then_some(())
    })
    .await;
    drop(s);
    common::eventually_async(20, "the import noticed its client left", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("import cancelled: the client went away")
            .then_some(())
    })
    .await;
    let images = hub
        .admin(reqwest::Method::GET, "/api/v1/images", None)
        .await;
    assert_eq!(images, serde_json::json!([]), "nothing stored");
}
