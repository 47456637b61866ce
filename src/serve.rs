//! The HTTP server's accept loop, bounded: at most `http.maxConnections` connections at once
//! (beyond, new ones wait in the listen backlog until one closes), every request head (and the
//! idle wait of a kept-alive connection) within `http.headerTimeoutMs`, request heads of at
//! most 64 KiB. Slow or idle clients (slowloris, thousands of idle connections) are closed in
//! bounded time and memory while other requests are answered. The routes are axum's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_service::Service;

use crate::metrics::{HTTP_CONNECTIONS, HTTP_HEADER_TIMEOUTS_TOTAL};

/// Largest request head (request line and headers) read before the connection is refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How a server bounds its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head must arrive within this (also the longest idle keep-alive wait).
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Limits {
    /// From `http.headerTimeoutMs` and `http.maxConnections`.
    pub fn of(cfg: &crate::config::HttpConfig) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(cfg.header_timeout_ms.max(100)),
            max_connections: cfg.max_connections.max(1),
        }
    }
}

/// Serves `app` on `listener` until the task is dropped or aborted (which closes every
/// connection it serves).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = metrics::gauge!(HTTP_CONNECTIONS);
    let mut conns = JoinSet::new();
    let mut warned: Option<Instant> = None;
    loop {
        // Finished connections are collected as they end, so the set stays small.
        while conns.try_join_next().is_some() {}
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        "HTTP: {} connections open (http.maxConnections); new ones wait until one closes",
                        limits.max_connections
                    );
                }
                let Ok(s) = slots.clone().acquire_owned().await else {
                    return;
                };
                s
            }
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!("HTTP: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Handlers that ask for the client's address (`ConnectInfo`) find it on the request.
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().call(req)
        });
        let open = open.clone();
        open.increment(1.0);
        conns.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_header_size(MAX_HEAD_BYTES)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    metrics::counter!(HTTP_HEADER_TIMEOUTS_TOTAL).increment(1);
                }
                tracing::debug!("HTTP connection: {e}");
            }
            open.decrement(1.0);
            drop(slot);
        });
    }
}

/// Raises this process's soft limit of open files to its hard limit (each connection is a file
/// descriptor; the usual soft limit, 1,024, is below `http.maxConnections`). Returns the limit
/// in force.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}
