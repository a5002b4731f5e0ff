//! Settling a Redis source's entries: XACK once the result is durable, `STREAM:dead` for entries
//! that can never succeed, pending (for another delivery) for the rest. It runs on its own
//! connection (the source's is busy in blocking reads), and keeps what it could not send while
//! the server was away until it is back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};

use super::conn::{is_nogroup, Backoff, Conn, RedisAddress};
use crate::error::Result;
use crate::frame::entry::QueueOrigin;
use crate::frame::FrameId;
use crate::model::version::ModelVersion;
use crate::runtime::Telemetry;
use crate::source::{Completion, SetAside};

/// Something the settler owes the server.
#[derive(Debug, Clone)]
enum Owed {
    Ack(String),
    Dead {
        entry: String,
        name: String,
        deliveries: u64,
        error: String,
    },
}

/// Acknowledges and dead-letters entries of one stream and group on its own connection (the
/// source's is busy in blocking reads). What cannot be sent while the server is away is kept
/// and sent once it is back; at worst an entry is delivered again, and its output is replaced
/// by the same result.
pub struct RedisSettler {
    origin: Arc<QueueOrigin>,
    consumer: String,
    dead_stream: String,
    conn: Mutex<Conn>,
    owed: Mutex<Vec<Owed>>,
    /// Entries handed to the pipeline and not yet settled (the source keeps them claimed).
    in_flight: Mutex<HashSet<String>>,
    /// Why an entry failed here last time, for its dead letter if it comes to that.
    last_error: Mutex<HashMap<String, String>>,
    telemetry: Arc<Telemetry>,
}

impl RedisSettler {
    pub fn new(
        addr: &RedisAddress,
        origin: Arc<QueueOrigin>,
        consumer: String,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self> {
        Ok(Self {
            dead_stream: format!("{}:dead", origin.stream),
            origin,
            consumer,
            conn: Mutex::new(Conn::new(addr, Duration::from_secs(5), "redis settle")?),
            owed: Mutex::new(Vec::new()),
            in_flight: Mutex::new(HashSet::new()),
            last_error: Mutex::new(HashMap::new()),
            telemetry,
        })
    }

    pub fn dead_stream(&self) -> &str {
        &self.dead_stream
    }

    pub fn track(&self, id: &str) {
        lock(&self.in_flight).insert(id.to_string());
    }

    pub fn is_in_flight(&self, id: &str) -> bool {
        lock(&self.in_flight).contains(id)
    }

    pub fn in_flight(&self) -> Vec<String> {
        lock(&self.in_flight).iter().cloned().collect()
    }

    /// Notes why an entry failed here (it stays pending and comes back later).
    pub fn note_error(&self, id: &str, error: &str) {
        let mut m = lock(&self.last_error);
        // Bounded: entries that never come back must not pile up.
        if m.len() >= 10_000 {
            m.clear();
        }
        m.insert(id.to_string(), error.to_string());
    }

    /// The error noted for an entry, forgetting it.
    pub fn take_error(&self, id: &str) -> Option<String> {
        lock(&self.last_error).remove(id)
    }

    fn untrack(&self, id: &str) {
        lock(&self.in_flight).remove(id);
    }

    /// Sends what is owed; false if some of it is still owed.
    pub fn flush(&self) -> bool {
        let mut owed = lock(&self.owed);
        if owed.is_empty() {
            return true;
        }
        let mut conn = lock(&self.conn);
        while let Some(o) = owed.first().cloned() {
            let r = conn.call(|c| self.send(c, &o));
            match r {
                Ok(()) => {
                    owed.remove(0);
                }
                Err(e) if is_nogroup(&e) => {
                    // The server lost the stream (restarted without persistence): nothing
                    // is left to acknowledge.
                    tracing::warn!("{}: {e}; dropping the acknowledgement", self.origin.stream);
                    owed.remove(0);
                }
                Err(e) => {
                    conn.report(&e);
                    return false;
                }
            }
        }
        true
    }

    /// Flushes, retrying with backoff for at most `within`.
    pub fn flush_within(&self, within: Duration) -> bool {
        let t0 = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            if self.flush() {
                return true;
            }
            if t0.elapsed() >= within {
                tracing::warn!(
                    "{}: {} acknowledgements could not be sent; those entries will be delivered again",
                    self.origin.stream,
                    lock(&self.owed).len()
                );
                return false;
            }
            std::thread::sleep(backoff.wait());
        }
    }

    fn send(&self, c: &mut Connection, o: &Owed) -> RedisResult<()> {
        let (stream, group) = (&self.origin.stream, &self.origin.group);
        match o {
            Owed::Ack(id) => {
                let n: i64 = redis::cmd("XACK").arg(stream).arg(group).arg(id).query(c)?;
                if n == 1 {
                    self.telemetry.count(
                        "aestream_redis_acked_total",
                        "Entries acknowledged (XACK) after their result was durable.",
                        1.0,
                    );
                }
            }
            Owed::Dead {
                entry,
                name,
                deliveries,
                error,
            } => {
                // The dead letter and the XACK go together, or neither does.
                let (_, n): (String, i64) = redis::pipe()
                    .atomic()
                    .cmd("XADD")
                    .arg(&self.dead_stream)
                    .arg("*")
                    .arg("entry")
                    .arg(entry)
                    .arg("stream")
                    .arg(stream)
                    .arg("name")
                    .arg(name)
                    .arg("error")
                    .arg(error)
                    .arg("deliveries")
                    .arg(*deliveries)
                    .arg("consumer")
                    .arg(&self.consumer)
                    .cmd("XACK")
                    .arg(stream)
                    .arg(group)
                    .arg(entry)
                    .query(c)?;
                if n == 1 {
                    self.telemetry.count(
                        "aestream_redis_dead_lettered_total",
                        "Entries moved to the dead-letter stream.",
                        1.0,
                    );
                }
            }
        }
        Ok(())
    }

    fn owe(&self, o: Owed) {
        lock(&self.owed).push(o);
        self.flush();
    }

    /// Dead-letters an entry the source itself gave up on (delivered too often, unreadable).
    pub fn dead_letter(&self, entry: &str, name: &str, deliveries: u64, error: &str) {
        // Failures of the frame were logged with their error already.
        if error.contains(entry) {
            tracing::warn!("entry {entry} ({name}) moved to {}", self.dead_stream);
        } else {
            tracing::warn!(
                "{}/{} entry {entry} ({name}): {error}; moved to {}",
                self.origin.server,
                self.origin.stream,
                self.dead_stream
            );
        }
        self.owe(Owed::Dead {
            entry: entry.to_string(),
            name: name.to_string(),
            deliveries,
            error: error.to_string(),
        });
    }

    /// Acknowledges an entry the source found nothing to do for (trimmed from the stream).
    pub fn ack(&self, entry: &str) {
        self.owe(Owed::Ack(entry.to_string()));
    }

    /// The entry was settled by someone else (the Redis sink's transaction).
    pub fn forget(&self, entry: &str) {
        self.untrack(entry);
    }
}

/// A Redis source's frames are finished by acknowledging their entries once the result is
/// durable; bad ones go to the dead-letter stream; the rest stay pending for a retry.
impl Completion for RedisSettler {
    fn done(&self, id: &FrameId, _version: &ModelVersion, by_sink: bool) -> Result<()> {
        if let FrameId::Entry(entry) = id {
            if by_sink {
                // The sink acknowledged it in the same transaction as its result.
                self.forget(&entry.id);
            } else {
                // Must not fail the frame: a failed acknowledgement is owed and retried, and
                // at worst the entry is delivered again and its output replaced by the same.
                self.untrack(&entry.id);
                self.owe(Owed::Ack(entry.id.clone()));
            }
        }
        Ok(())
    }

    fn rejected(&self, id: &FrameId, error: &str) -> SetAside {
        let FrameId::Entry(entry) = id else {
            return SetAside::Reported;
        };
        self.untrack(&entry.id);
        self.dead_letter(&entry.id, &entry.name, entry.deliveries, error);
        SetAside::DeadLettered
    }

    fn failed(&self, id: &FrameId, error: &str) {
        if let FrameId::Entry(entry) = id {
            // Left pending: delivered again later, dead-lettered with this error once it has
            // been delivered `max_deliveries` times.
            self.untrack(&entry.id);
            self.note_error(&entry.id, error);
        }
    }

    fn flush_within(&self, within: Duration) -> bool {
        RedisSettler::flush_within(self, within)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
