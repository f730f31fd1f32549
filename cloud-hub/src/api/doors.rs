//! What every request meets before its handler: the route's body limit, checked against the
//! announced `Content-Length` before a byte of the body is read (413), and a deadline for
//! receiving the body (a JSON body; uploads are bounded by their silence instead, in
//! `upload.rs`). Only the receiving is timed: a handler that has its body runs to the end, so
//! a change is never cut half-way. Authentication then runs before any body extractor: each
//! handler takes `Auth<R>` ahead of its body, which a test checks for every route.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::{upload, ENROLL_BODY_LIMIT, IMAGE_BODY_LIMIT, JSON_BODY_LIMIT};
use crate::config::Limits;

/// The largest body a route takes, and whether it is an upload streamed to disk.
pub fn body_limit(method: &Method, path: &str) -> (usize, bool) {
    match (method, path) {
        (&Method::POST, "/api/v1/enroll") => (ENROLL_BODY_LIMIT, false),
        (&Method::POST, "/api/v1/images") => (IMAGE_BODY_LIMIT, true),
        _ => (JSON_BODY_LIMIT, false),
    }
}

/// The middleware: body limit by announced length, then the time bound.
pub(super) async fn guard(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let (max, streamed) = body_limit(req.method(), req.uri().path());
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return upload::too_large(max as u64).into_response();
    }
    if streamed {
        return next.run(req).await;
    }
    let total = Duration::from_secs(limits.http_body_timeout_secs);
    let req = req.map(|body| {
        Body::from_stream(Deadline {
            inner: body.into_data_stream(),
            sleep: Box::pin(tokio::time::sleep(total)),
            secs: total.as_secs(),
        })
    });
    next.run(req).await
}

/// A body stream that fails once its deadline passes.
struct Deadline<S> {
    inner: S,
    sleep: Pin<Box<tokio::time::Sleep>>,
    secs: u64,
}

impl<S: Stream<Item = Result<Bytes, axum::Error>> + Unpin> Stream for Deadline<S> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item.map(|r| r.map_err(std::io::Error::other)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            let msg = format!("request body not received within {} s", self.secs);
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                msg,
            ))));
        }
        Poll::Pending
    }
}
