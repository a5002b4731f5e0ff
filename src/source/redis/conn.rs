//! Redis connections shared by the Redis source and sink: `redis://HOST:PORT/STREAM`
//! addresses, and a connection that comes back after the server went away (with backoff, and
//! no connect attempt per call while it is down).

use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};

use crate::error::{Error, Result};

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
