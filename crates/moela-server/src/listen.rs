//! The accept loop: HTTP/1.1 connections with a header-read timeout (hyper starts it again
//! whenever a keep-alive connection falls idle, so it is the idle timeout too) and a cap on open
//! connections, so that slow or idle clients cannot exhaust file descriptors or workers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits on client connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Open connections at most; further clients wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, counted from the connection's start or
    /// from the end of the previous response (an idle keep-alive connection is closed then).
    pub header_timeout: Duration,
}

/// Connections allowed by default: 1,024, and never more than the open-file limit leaves room
/// for (64 descriptors are kept for model files, the engine and logging).
pub fn default_max_connections() -> usize {
    let soft = open_file_limit().unwrap_or(1024);
    soft.saturating_sub(64).clamp(16, 1024)
}

/// The soft open-file limit, from `/proc/self/limits` ("Max open files  SOFT  HARD  files").
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(usize::MAX),
        n => n.parse().ok(),
    }
}

/// Serves `app` on `listener` until the task is dropped.
pub async fn serve_connections(listener: TcpListener, app: Router, limits: ConnLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors or a reset before accept: try again shortly.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true); // streamed tokens go out as written
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
