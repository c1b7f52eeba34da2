//! The `[metrics]` listener: `GET /metrics` (Prometheus text) and `GET /status` (the
//! document `tandem status --json` prints), on one thread of its own.
//!
//! tiny_http rather than axum or hyper: the status document is built with blocking
//! calls (the resource manager's channel, a call to the disk service), which cannot
//! run inside a tokio task; the daemon is threads; and a
//! scrape every few seconds needs no more than one thread. tiny_http is the server of
//! the `prometheus_exporter` crate, adds four small crates and builds in seconds on a
//! two-core machine, where axum's stack (hyper, tower, http-body …) takes minutes.
//! Requests are answered one at a time, so a flood of scrapes costs one status build
//! at a time, never more (docs/operations.md).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use super::metrics::{self, Peer};

/// Builds the status document (the control socket's `status` answer).
pub type StatusFn = Arc<dyn Fn() -> crate::control::Response + Send + Sync>;

/// Binds `addr` and serves it on a thread until the process exits.
pub fn spawn(addr: SocketAddr, status: StatusFn, peer: Option<Peer>) -> anyhow::Result<()> {
    let server = Server::http(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("listen on {addr} for [metrics]"))?;
    tracing::info!(%addr, "serving /metrics and /status");
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                answer(request, &status, peer.as_ref());
            }
        })
        .context("start the metrics thread")?;
    Ok(())
}

fn answer(request: Request, status: &StatusFn, peer: Option<&Peer>) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let (code, content_type, body) = if *request.method() != Method::Get {
        (405, "text/plain", "only GET\n".to_string())
    } else {
        match path.as_str() {
            "/metrics" | "/status" => match status() {
                crate::control::Response { error: None, body } if path == "/status" => (
                    200,
                    "application/json",
                    serde_json::to_string_pretty(&body).unwrap_or_default() + "\n",
                ),
                crate::control::Response { error: None, body } => (
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics::render(&body, peer),
                ),
                crate::control::Response {
                    error: Some(why), ..
                } => (503, "text/plain", format!("{why}\n")),
            },
            _ => (
                404,
                "text/plain",
                "not found: try /metrics or /status\n".into(),
            ),
        }
    };
    let header = Header::from_bytes("Content-Type", content_type).expect("a valid header");
    let response = Response::from_string(body)
        .with_status_code(StatusCode(code))
        .with_header(header);
    if let Err(err) = request.respond(response) {
        tracing::debug!("metrics: answer not sent: {err}");
    }
}
