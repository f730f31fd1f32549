//! Function activator benchmark (`docs/BENCHMARKS.md`, "Functions"):
//!
//! - cold start, `process`: event sent → the new instance has read it (the instance answers
//!   with the instant it read the request; same host clock), p50/p90 over fresh pools;
//! - cold start, `oci` (when runc can run): event sent → answer from a new busybox-httpd
//!   container (a round trip, so an upper bound of event → instance);
//! - warm overhead: the same warm instance called through the agent's listener and directly,
//!   alternating in one run, p50 of each;
//! - ten deployed functions at rest: function processes running.
//!
//! `cargo bench -p edge-agent --bench functions`. The activator runs on its own current-thread
//! runtime, as in the agent; the client on another thread.
//!
//! Started with `FLEET_FUNCTION_PORT` set, this same binary is the function: a minimal HTTP/1.1
//! server answering `<unix nanos when the request was read> <port>`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_agent::functions::{Activator, Served, Version};
use edge_agent::layout::Layout;
use protocol::{Digest, RuntimeKind, Workload};

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The function side: serve until killed.
fn serve(port: u16) -> ! {
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut r = BufReader::new(match s.try_clone() {
                Ok(c) => c,
                Err(_) => return,
            });
            let mut w = s;
            loop {
                let mut len = 0usize;
                let mut line = String::new();
                let mut first = true;
                let mut read_at = 0;
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if first {
                        read_at = nanos();
                        first = false;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let msg = format!("{read_at} {port}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{msg}",
                    msg.len()
                );
                if w.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
    std::process::exit(0)
}

fn function_workload(
    name: &str,
    runtime: RuntimeKind,
    command: Vec<String>,
    route: &str,
) -> Workload {
    let json = serde_json::json!({
        "name": name,
        "image": {"digest": Digest::of(name.as_bytes()).to_string(), "size": 1, "arch": "x86_64"},
        "runtime": runtime.as_str(),
        "command": command,
        "function": {"triggers": [{"type": "http", "route": route}], "idle_timeout_secs": 600}
    });
    serde_json::from_value(json).expect("workload")
}

fn served(w: Workload, rootfs: &Path) -> Served {
    Served {
        current: Version {
            digest: w.image.digest,
            workload: w,
            rootfs: rootfs.to_path_buf(),
        },
        fallback: None,
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The activator on its own current-thread runtime, as in the agent.
fn activator(dir: &Path, listen: &str) -> Activator {
    let layout = Layout::new(dir);
    std::fs::create_dir_all(dir).expect("mkdir");
    let (act, _rx) = Activator::open(&layout, 1 << 20).expect("activator");
    let (a2, listen) = (act.clone(), listen.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let cancel = tokio_util::sync::CancellationToken::new();
            a2.spawn(Some(&listen), None, "bench", cancel.clone())
                .await
                .expect("spawn");
            let _ = ready_tx.send(());
            std::future::pending::<()>().await;
        });
    });
    ready_rx.recv().expect("activator started");
    act
}

fn busybox_root(dir: &Path) -> Option<PathBuf> {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let root = dir.join("oci-root");
    std::fs::create_dir_all(root.join("bin")).ok()?;
    // The agent passes the full path on: `/oci/index.html`.
    std::fs::create_dir_all(root.join("www/oci")).ok()?;
    std::fs::copy(bb, root.join("bin/busybox")).ok()?;
    std::fs::write(root.join("www/oci/index.html"), "ok").ok()?;
    Some(root)
}

fn main() {
    if let Ok(p) = std::env::var("FLEET_FUNCTION_PORT") {
        serve(p.parse().expect("port"));
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let base = format!("http://127.0.0.1:{port}");
    let act = activator(&tmp.path().join("data"), &format!("127.0.0.1:{port}"));
    let me = std::env::current_exe().expect("exe").display().to_string();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let client = reqwest::blocking_client();

    // Cold starts, process: a fresh pool each time (the set without, then with the function).
    let rounds = 40;
    let mut cold = Vec::new();
    let mut cold_rt = Vec::new();
    for i in 0..rounds {
        let name = format!("cold-{i}");
        act.set(vec![served(
            function_workload(&name, RuntimeKind::Process, vec![me.clone()], "/cold"),
            &root,
        )]);
        let t0 = nanos();
        let s = Instant::now();
        let body = client.post(format!("{base}/cold"), "x");
        cold_rt.push(s.elapsed().as_secs_f64() * 1e3);
        let read_at: u128 = body
            .split(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        cold.push((read_at.saturating_sub(t0)) as f64 / 1e6);
        act.set(vec![]);
    }
    println!(
        "cold start, process: event → instance read it p50 {:.2} ms p90 {:.2} ms (round trip p50 {:.2} ms), {rounds} starts",
        pct(&mut cold, 0.5),
        pct(&mut cold, 0.9),
        pct(&mut cold_rt, 0.5)
    );

    // Cold starts, oci.
    match (
        edge_agent::runtime::OciRuntime::detect(),
        busybox_root(tmp.path()),
    ) {
        (Some(_), Some(oci_root)) => {
            let mut rt = Vec::new();
            for i in 0..20 {
                let name = format!("oci-{i}");
                // httpd takes its port as an argument: a shell expands it.
                let cmd = vec![
                    "/bin/busybox".into(),
                    "sh".into(),
                    "-c".into(),
                    "exec /bin/busybox httpd -f -h /www -p 127.0.0.1:$FLEET_FUNCTION_PORT".into(),
                ];
                let w = function_workload(&name, RuntimeKind::Oci, cmd, "/oci");
                act.set(vec![served(w, &oci_root)]);
                let s = Instant::now();
                let body = client.get(format!("{base}/oci/index.html"));
                assert_eq!(body, "ok", "the container answered");
                rt.push(s.elapsed().as_secs_f64() * 1e3);
                act.set(vec![]);
            }
            println!(
                "cold start, oci (runc, busybox httpd): event → answer p50 {:.1} ms p90 {:.1} ms, {} starts",
                pct(&mut rt, 0.5),
                pct(&mut rt, 0.9),
                rt.len()
            );
        }
        _ => println!("cold start, oci: skipped (no usable runc or busybox)"),
    }

    // Warm overhead: one warm instance, through the agent and directly, alternating.
    act.set(vec![served(
        function_workload("warm", RuntimeKind::Process, vec![me.clone()], "/warm"),
        &root,
    )]);
    let body = client.post(format!("{base}/warm"), "x");
    let direct_port: u16 = body
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("port");
    let direct = format!("http://127.0.0.1:{direct_port}/warm");
    let (mut via, mut dir) = (Vec::new(), Vec::new());
    for _ in 0..2000 {
        let s = Instant::now();
        client.post(format!("{base}/warm"), "x");
        via.push(s.elapsed().as_secs_f64() * 1e3);
        let s = Instant::now();
        client.post(direct.clone(), "x");
        dir.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let (pv, pd) = (pct(&mut via, 0.5), pct(&mut dir, 0.5));
    println!(
        "warm invocation: through the agent p50 {:.3} ms, direct p50 {:.3} ms, overhead p50 {:.3} ms (2000 each, alternating)",
        pv,
        pd,
        pv - pd
    );

    // At rest: ten functions deployed, none invoked.
    let ten: Vec<Served> = (0..10)
        .map(|i| {
            served(
                function_workload(
                    &format!("idle-{i}"),
                    RuntimeKind::Process,
                    vec![me.clone()],
                    &format!("/idle{i}"),
                ),
                &root,
            )
        })
        .collect();
    act.set(ten);
    std::thread::sleep(Duration::from_secs(3));
    let running: u32 = act.stats().iter().map(|s| s.instances).sum();
    let procs = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    // Processes only (not `self`, `thread-self`), and not this one.
                    let pid = e.file_name().to_string_lossy().parse::<u32>().ok();
                    pid.is_some_and(|p| p != std::process::id())
                        && std::fs::read_link(e.path().join("exe"))
                            .is_ok_and(|p| p.display().to_string() == me)
                })
                .count()
        })
        .unwrap_or(0);
    println!(
        "at rest, 10 functions deployed: {running} instances; processes of the function binary besides this one: {procs}"
    );
}

/// A blocking HTTP client with keep-alive, on its own runtime (reqwest without `blocking`).
mod reqwest {
    pub fn blocking_client() -> Client {
        Client {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            inner: ::reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    pub struct Client {
        rt: tokio::runtime::Runtime,
        inner: ::reqwest::Client,
    }

    impl Client {
        pub fn post(&self, url: String, body: &'static str) -> String {
            self.rt.block_on(async {
                let r = self.inner.post(url).body(body).send().await.expect("send");
                assert!(r.status().is_success(), "status {}", r.status());
                r.text().await.expect("body")
            })
        }

        pub fn get(&self, url: String) -> String {
            self.rt.block_on(async {
                let r = self.inner.get(url).send().await.expect("send");
                assert!(r.status().is_success(), "status {}", r.status());
                r.text().await.expect("body")
            })
        }
    }
}
