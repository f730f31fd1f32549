//! The metrics listener: one `GET /metrics` per connection, one connection at a time, a head of
//! at most 4 KiB read within 5 s. Anything else gets a 404 or 405 and the connection closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Time a scraper has to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_HEAD: usize = 4096;

/// Binds `addr` (so a taken port fails the start) and returns the loop serving it until
/// `cancel`.
pub async fn serve(
    addr: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    let local = listener.local_addr()?;
    super::ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(addr = %local, "serving metrics at /metrics");
    Ok(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => return,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            match tokio::time::timeout(DEADLINE, answer(stream)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics request failed"),
                Err(_) => tracing::debug!("metrics request too slow; closed"),
            }
        }
    })
}

async fn answer(mut s: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(&mut s, "431 Request Header Fields Too Large", "too large\n").await;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    match (parts.next(), parts.next()) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let (content_type, body) = super::encode();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(body.as_bytes()).await?;
            s.shutdown().await
        }
        (Some(b"GET"), _) => respond(&mut s, "404 Not Found", "not found\n").await,
        _ => respond(&mut s, "405 Method Not Allowed", "method not allowed\n").await,
    }
}

async fn respond(s: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(text.as_bytes()).await?;
    s.shutdown().await
}
