//! The HTTP server (`run --http ADDR`): inference requests (`POST /v1/infer`), the status
//! (`GET /v1/status`) and its live page (`GET /`), beside `/metrics`, `/healthz`, `/readyz`.
//!
//! It runs on its own small tokio runtime on its own threads, apart from the pipeline's
//! threads, so that a busy model never keeps `/healthz` from answering. Requests enter the
//! pipeline through [`crate::source::http::Requests`] and their answers come back through the
//! reply sink; the server itself only speaks HTTP. [`listener`] bounds what clients can make
//! it hold; [`board`] keeps what the page shows.

pub mod board;
mod guard;
mod listener;
mod page;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use board::Board;
pub use routes::Info;

use crate::config::HttpConfig;
use crate::error::{Error, Result};
use crate::runtime::Telemetry;
use crate::source::http::Requests;

/// A running server; dropping it (or [`HttpServer::stop`]) shuts it down.
pub struct HttpServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the server serves.
pub struct Parts {
    pub telemetry: Arc<Telemetry>,
    pub board: Arc<Board>,
    /// The gateway into the pipeline; `None` serves the status only.
    pub requests: Option<Requests>,
    pub info: Info,
    pub cfg: HttpConfig,
}

/// Binds `addr` now (so a taken port is an error at start, naming the address) and serves on
/// two threads of its own until stopped.
pub fn start(addr: SocketAddr, parts: Parts) -> Result<HttpServer> {
    let cant = |what: &str, e: std::io::Error| Error::Other(format!("--http {addr}: {what}: {e}"));
    listener::raise_fd_limit();
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| cant("cannot listen", e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| cant("cannot listen", e))?;
    let bound = std_listener
        .local_addr()
        .map_err(|e| cant("cannot listen", e))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(parts.cfg.max_pending + 8)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| cant("cannot start the server's runtime", e))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let conns = Arc::new(listener::ConnStats::default());
    let app = routes::App {
        tel: parts.telemetry.clone(),
        board: parts.board.clone(),
        requests: parts.requests,
        info: Arc::new(parts.info),
        cfg: parts.cfg.clone(),
        conns: conns.clone(),
    };
    let cfg = parts.cfg;
    let thread = std::thread::Builder::new()
        .name("http-server".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("--http {bound}: {e}");
                        return;
                    }
                };
                // One sample of history a second for the page's charts.
                let (board, tel) = (parts.board.clone(), parts.telemetry.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        board.sample(&tel);
                    }
                });
                let shutdown = async {
                    let _ = rx.await;
                };
                listener::serve(listener, routes::router(app), cfg, conns, shutdown).await;
            });
            // Connections still open are dropped with the runtime.
            rt.shutdown_timeout(Duration::from_millis(200));
        })
        .map_err(|e| cant("cannot start the server thread", e))?;
    tracing::info!("http on http://{bound}/ (status page), /v1/infer, /metrics");
    Ok(HttpServer {
        addr: bound,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

impl HttpServer {
    /// Stops accepting, and returns once the server's threads have ended.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.halt();
    }
}
