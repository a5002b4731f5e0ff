//! The accept loop, written out rather than `axum::serve`, because every resource a client can
//! make the server hold has to be bounded, and `axum::serve` exposes none of these knobs:
//!
//! - **connections**: at most `max_connections` at once (a semaphore). One over is accepted
//!   and closed at once, so the kernel's backlog never fills with clients nobody will serve,
//!   and the loop itself never stops: a failed `accept` (out of file descriptors) is logged
//!   and retried after a pause, never returned. (The old server ran one thread per connection;
//!   exhausting threads killed its accept thread for good.)
//! - **head size**: hyper's read buffer is capped at `max_header_bytes`; a longer request
//!   line or header block gets 431 and the connection is closed, so a 1 GiB header costs us
//!   16 KiB, not 1 GiB.
//! - **time**: the head must arrive within `header_timeout_ms`; an idle connection (no
//!   request in progress) that sends nothing for `io_timeout_ms`, and any write that makes no
//!   progress that long, close the connection ([`super::guard`]). That covers idle keep-alive
//!   connections and pipelining clients that never read their replies (their writes stall,
//!   their connection is closed, nobody else waits); a slow body is cut by the handler.
//!
//! Each connection is its own task on the runtime, so a slow one holds only itself up:
//! `/healthz` is answered on a fresh connection whatever the others do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::guard::{Busy, Guarded};

use crate::config::HttpConfig;

/// Counters of the accept loop, shown on `/v1/status`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub accepted: AtomicU64,
    /// Closed at once: `max_connections` were open.
    pub refused: AtomicU64,
    pub open: AtomicU64,
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    cfg: HttpConfig,
    stats: Arc<ConnStats>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let io_timeout = Duration::from_millis(cfg.io_timeout_ms);
    let header_timeout = Duration::from_millis(cfg.header_timeout_ms);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE/ENFILE and friends: the next accept may succeed once connections
                // close. Pause so a persistent error does not spin a core.
                tracing::warn!("http: accept failed: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let busy = Busy::default();
        let io = TokioIo::new(Guarded::new(stream, busy.clone(), io_timeout));
        // Each request marks the connection busy while it is worked on, so that the idle
        // read timeout does not cut a long inference short.
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let working = busy.start();
            let mut app = app.clone();
            async move {
                let resp = tower_service::Service::call(&mut app, req).await;
                drop(working);
                resp
            }
        });
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .max_buf_size(cfg.max_header_bytes)
                .header_read_timeout(header_timeout)
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!("http: connection ended: {e}");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Raises this process's open-file limit to its hard limit, so that `max_connections`
/// sockets fit beside the daemon's own files. Failing is not fatal: fewer connections fit,
/// and the accept loop copes with running out.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
