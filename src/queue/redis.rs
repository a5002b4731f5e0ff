//! Redis Streams plumbing shared by the Redis source and sink: `redis://HOST:PORT/STREAM`
//! addresses, a connection that comes back after the server went away, and the [`Settle`]
//! that acknowledges (XACK) or dead-letters (`STREAM:dead`) the entries a source handed over.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};

use super::{Entry, QueueOrigin, Settle};
use crate::error::{Error, Result};
use crate::pipeline::telemetry::Telemetry;

/// A parsed `redis://[USER:PASSWORD@]HOST[:PORT]/STREAM[?db=N]` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddress {
    /// What the redis crate connects to (credentials included).
    pub connect: String,
    /// `host:port/db`, safe to log and to compare (same server = same string).
    pub server: String,
    pub stream: String,
}

impl RedisAddress {
    /// Whether `s` names a Redis stream rather than a folder or `-`.
    pub fn is_redis(s: &str) -> bool {
        s.starts_with("redis://")
    }

    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config {
            origin: s.to_string(),
            message: format!("{why}; expected redis://HOST:PORT/STREAM"),
        };
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| bad("not a redis:// address"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, stream) = rest
            .split_once('/')
            .ok_or_else(|| bad("no stream name after the host"))?;
        if stream.is_empty() {
            return Err(bad("no stream name after the host"));
        }
        let (creds, hostport) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        if hostport.is_empty() {
            return Err(bad("no host"));
        }
        let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
            let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, ""));
            if host.is_empty() {
                return Err(bad("no host"));
            }
            if port.parse::<u16>().is_err() {
                return Err(bad(&format!("{port:?} is not a port")));
            }
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let mut db = 0u32;
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("db", v)) => {
                    db = v
                        .parse()
                        .map_err(|_| bad(&format!("db={v} is not a number")))?
                }
                _ => return Err(bad(&format!("unknown parameter {kv:?} (only db=N)"))),
            }
        }
        let connect = match creds {
            Some(c) => format!("redis://{c}@{hostport}/{db}"),
            None => format!("redis://{hostport}/{db}"),
        };
        Ok(Self {
            connect,
            server: format!("{hostport}/{db}"),
            stream: stream.to_string(),
        })
    }
}

/// Doubling waits between reconnection attempts, 100 ms up to 5 s.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    pub fn wait(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }
    pub fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

/// One connection that is dropped on any connection-level error and made again on the next
/// use, so a server restart costs a failed call, not the process.
pub struct Conn {
    client: redis::Client,
    con: Option<Connection>,
    /// The read timeout: longer than any BLOCK we send.
    timeout: Duration,
    /// When the server was first found unreachable (to log an outage once).
    down_since: Option<Instant>,
    /// No new connection attempt before this (each caller need not pay a connect timeout).
    retry_at: Option<Instant>,
    backoff: Backoff,
    what: String,
}

impl Conn {
    pub fn new(addr: &RedisAddress, timeout: Duration, what: &str) -> Result<Self> {
        let client = redis::Client::open(addr.connect.as_str()).map_err(|e| Error::Config {
            origin: addr.server.clone(),
            message: format!("bad Redis address: {e}"),
        })?;
        Ok(Self {
            client,
            con: None,
            timeout,
            down_since: None,
            retry_at: None,
            backoff: Backoff::default(),
            what: format!("{what} {}", addr.server),
        })
    }

    /// Runs `f` on the connection (connecting first if needed). A connection-level error drops
    /// the connection; a server reply error (wrong type, NOGROUP) keeps it.
    pub fn call<T>(&mut self, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> RedisResult<T> {
        if self.con.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "server unreachable; waiting to reconnect",
                )));
            }
            let c = match self.client.get_connection_with_timeout(self.timeout) {
                Ok(c) => c,
                Err(e) => {
                    self.retry_at = Some(Instant::now() + self.backoff.wait());
                    return Err(e);
                }
            };
            c.set_read_timeout(Some(self.timeout))?;
            c.set_write_timeout(Some(self.timeout))?;
            self.retry_at = None;
            self.backoff.reset();
            if let Some(t) = self.down_since.take() {
                tracing::info!(
                    "{}: connected again after {:.1} s",
                    self.what,
                    t.elapsed().as_secs_f64()
                );
            }
            self.con = Some(c);
        }
        let Some(c) = self.con.as_mut() else {
            unreachable!("connected above")
        };
        let r = f(c);
        if let Err(e) = &r {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.con = None;
            }
        }
        r
    }

    /// Notes a failed call: logs the first failure of an outage, then stays quiet.
    pub fn report(&mut self, e: &redis::RedisError) {
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!("{}: {e}; retrying with backoff", self.what);
        } else {
            tracing::debug!("{}: {e}", self.what);
        }
    }

    pub fn connected(&self) -> bool {
        self.con.is_some()
    }
}

/// Whether a reply error says the group (or the stream) is gone: the server lost its data.
pub fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

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

impl Settle for RedisSettler {
    fn done(&self, entry: &Entry) {
        self.untrack(&entry.id);
        self.owe(Owed::Ack(entry.id.clone()));
    }

    fn failed(&self, entry: &Entry, error: &str) {
        self.untrack(&entry.id);
        self.dead_letter(&entry.id, &entry.name, entry.deliveries, error);
    }

    fn retry_later(&self, entry: &Entry, error: &str) {
        self.untrack(&entry.id);
        self.note_error(&entry.id, error);
    }

    fn flush_within(&self, within: Duration) -> bool {
        RedisSettler::flush_within(self, within)
    }

    fn settled_elsewhere(&self, entry: &Entry) {
        self.forget(&entry.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a = RedisAddress::parse("redis://127.0.0.1:6390/frames").unwrap();
        assert_eq!(a.server, "127.0.0.1:6390/0");
        assert_eq!(a.stream, "frames");
        assert_eq!(a.connect, "redis://127.0.0.1:6390/0");
        let b = RedisAddress::parse("redis://u:secret@cache/in:cam1?db=2").unwrap();
        assert_eq!(b.server, "cache:6379/2");
        assert_eq!(b.stream, "in:cam1");
        assert!(!b.server.contains("secret"));
        assert_eq!(b.connect, "redis://u:secret@cache:6379/2");
        for bad in [
            "redis://host",
            "redis://host/",
            "redis://:1/x",
            "redis://h:port/x",
            "redis://h/x?foo=1",
            "http://h/x",
        ] {
            assert!(RedisAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..8).map(|_| b.wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.wait().as_millis(), 100);
    }
}
