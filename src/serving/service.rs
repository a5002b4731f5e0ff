//! Running under a service manager: the systemd notify protocol (READY, STATUS, RELOADING with
//! MONOTONIC_USEC, STOPPING, WATCHDOG) and the HTTP endpoint (`/metrics`, `/healthz`,
//! `/readyz`).
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every notification is a no-op.

use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::error::{Error, Result};
use crate::runtime::{Stop, Telemetry};

/// A notification, owned so it can wait in the notifier's queue.
enum Note {
    Ready(String),
    Reloading,
    Stopping,
    Status(String),
    Watchdog,
}

/// Notifications go through one thread with a small queue. A datagram to the notify socket
/// blocks while the socket's queue is full (`net.unix.max_dgram_qlen` is 10 on some machines,
/// and a manager that is slow to read fills it with watchdog pings in seconds); blocking the
/// signal thread there once kept a SIGTERM from ever reaching the pipeline. Here only the
/// notifier waits; when its own queue is full a notification is dropped, not waited for.
fn send(note: Note) {
    static QUEUE: OnceLock<Option<SyncSender<Note>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        std::env::var_os("NOTIFY_SOCKET")?;
        let (tx, rx) = sync_channel::<Note>(16);
        std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for note in rx {
                    deliver(note);
                }
            })
            .ok()?;
        Some(tx)
    });
    if let Some(tx) = queue {
        if tx.try_send(note).is_err() {
            tracing::debug!("service manager not reading: a notification was dropped");
        }
    }
}

fn deliver(note: Note) {
    let r = match &note {
        Note::Ready(status) => {
            sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)])
        }
        Note::Reloading => match NotifyState::monotonic_usec_now() {
            Ok(now) => sd_notify::notify(&[NotifyState::Reloading, now]),
            Err(_) => sd_notify::notify(&[NotifyState::Reloading]),
        },
        Note::Stopping => sd_notify::notify(&[
            NotifyState::Stopping,
            NotifyState::Status("draining frames in flight"),
        ]),
        Note::Status(text) => sd_notify::notify(&[NotifyState::Status(text)]),
        Note::Watchdog => sd_notify::notify(&[NotifyState::Watchdog]),
    };
    if let Err(e) = r {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Start-up (or a reload) is complete.
pub fn ready(status: &str) {
    send(Note::Ready(status.to_string()));
}

/// A reload begins (`Type=notify-reload` needs MONOTONIC_USEC with it).
pub fn reloading() {
    send(Note::Reloading);
}

/// Shutdown begins: the frames in flight are being finished.
pub fn stopping() {
    send(Note::Stopping);
}

pub fn status(text: &str) {
    send(Note::Status(text.to_string()));
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
                    send(Note::Watchdog);
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
