//! The local invocation listener: `METHOD /route/...` goes to the function whose route it is,
//! with its body (bounded by the function's `max_body_bytes`: 413 above it), and the function's
//! answer comes back. No function at the path: 404; queue full: 429; timeout: 504; the function
//! failed or could not start: 502. Errors are JSON `{"error": ...}`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::{Activator, Event, InvokeError};

/// Request headers passed on to the instance.
const PASSED: [&str; 3] = ["content-type", "accept", "user-agent"];

/// Serves connections until `cancel`.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    act: Activator,
    cancel: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "function listener accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let act = act.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let act = act.clone();
                async move { Ok::<_, Infallible>(handle(&act, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(act: &Activator, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some(pool) = act.route(&path) else {
        return error(StatusCode::NOT_FOUND, &format!("no function at {path}"));
    };
    let limit = pool.max_body_bytes();
    let announced = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than {limit} bytes"),
        );
    }
    let method = req.method().clone();
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or(path);
    let headers: Vec<(String, String)> = PASSED
        .iter()
        .filter_map(|h| {
            let v = req.headers().get(*h)?.to_str().ok()?;
            Some((h.to_string(), v.to_string()))
        })
        .collect();
    let body = match Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body larger than {limit} bytes"),
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not supported");
    };
    let ev = Event {
        method,
        path: path_q,
        headers,
        body,
    };
    match pool.invoke(ev).await {
        Ok(r) => {
            let mut resp = Response::new(Full::new(r.body));
            *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = r
                .content_type
                .and_then(|c| hyper::header::HeaderValue::from_str(&c).ok())
            {
                resp.headers_mut().insert(hyper::header::CONTENT_TYPE, ct);
            }
            resp
        }
        Err(e) => {
            let status = match e {
                InvokeError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
                InvokeError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                InvokeError::StartFailed(_) | InvokeError::Failed(_) => StatusCode::BAD_GATEWAY,
            };
            error(status, &e.to_string())
        }
    }
}
