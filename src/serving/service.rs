//! Running under a service manager: the systemd notify protocol (READY, STATUS, RELOADING with
//! MONOTONIC_USEC, STOPPING, WATCHDOG) and the HTTP endpoint (`/metrics`, `/healthz`,
//! `/readyz`).
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every notification is a no-op.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::error::{Error, Result};
use crate::runtime::{Stop, Telemetry};

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Start-up (or a reload) is complete.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (`Type=notify-reload` needs MONOTONIC_USEC with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutdown begins: the frames in flight are being finished.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining frames in flight"),
    ]);
}

pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// With `WATCHDOG_USEC` set, pings at half of it for as long as the pipeline shows signs of
/// life (its last beat is younger than the watchdog period), until `stop`. A hung model stops
/// the beats, the pings stop, and systemd restarts the service.
pub fn spawn_watchdog(telemetry: Arc<Telemetry>, stop: Stop) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(10));
    tracing::info!("watchdog: pinging every {every:?}");
    let _ = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while !stop.requested() {
                if telemetry.since_beat() < period {
                    send(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!(
                        "watchdog: no progress for {:?}; not pinging",
                        telemetry.since_beat()
                    );
                }
                std::thread::sleep(every);
            }
        });
}

/// Serves `/metrics` (Prometheus text), `/healthz` (200 while the process runs) and
/// `/readyz` (200 when the model is loaded and the source is running, else 503) on `addr`.
pub fn serve_http(addr: SocketAddr, telemetry: Arc<Telemetry>) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| Error::Other(format!("--metrics {addr}: cannot listen: {e}")))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::Other(format!("--metrics {addr}: not an IP listener")))?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("").to_string();
                let (code, body, ctype) = match path.as_str() {
                    "/metrics" => (
                        200,
                        telemetry.render(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                    "/healthz" => (200, "ok\n".to_string(), "text/plain"),
                    "/readyz" if telemetry.is_ready() => (200, "ready\n".into(), "text/plain"),
                    "/readyz" => (503, "not ready\n".into(), "text/plain"),
                    _ => (404, "not found\n".into(), "text/plain"),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", ctype)
                    .expect("static header is valid");
                let resp = tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(header);
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| Error::Other(format!("cannot start the http thread: {e}")))?;
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(bound)
}
