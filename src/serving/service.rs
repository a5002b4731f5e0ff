//! Running under a service manager: the systemd notify protocol (READY, STATUS, RELOADING with
//! MONOTONIC_USEC, STOPPING, WATCHDOG). The HTTP endpoint is [`super::http`].
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every notification is a no-op.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sd_notify::NotifyState;

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
