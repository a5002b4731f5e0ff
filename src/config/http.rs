//! `[http]`: the limits of the HTTP server (`run --http ADDR`): how big a request may be, how
//! long a client may take, how many connections and requests it holds at once.
//!
//! Every limit is finite on purpose. A server that waits for a slow client without a timeout,
//! or reads a header line without a cap, can be taken down by one local process; these keys
//! bound what any client can make the daemon hold (see `serving/http/listener.rs`).

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

/// Limits of the HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body (an image to infer), in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers), in bytes; larger closes the
    /// connection with 431.
    pub max_header_bytes: usize,
    /// Connections held at once; a connection over this is closed at once (the accept loop
    /// never stops).
    pub max_connections: usize,
    /// A client has this long to send a whole request head.
    pub header_timeout_ms: u64,
    /// A connection that neither reads nor writes for this long is closed (idle keep-alive
    /// connections, clients that stop reading their replies).
    pub io_timeout_ms: u64,
    /// Inference requests in the pipeline at once; one more gets 503 with `Retry-After`.
    pub max_pending: usize,
    /// How long a request may wait for a place in the pipeline's queue before it gets 503.
    pub admission_wait_ms: u64,
    /// A request not answered within this gets 504.
    pub deadline_ms: u64,
    /// Keep before/after thumbnails of recent frames for the status page.
    pub thumbnails: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_header_bytes: 16 << 10,
            max_connections: 2048,
            header_timeout_ms: 10_000,
            io_timeout_ms: 30_000,
            max_pending: 64,
            admission_wait_ms: 2_000,
            deadline_ms: 60_000,
            thumbnails: true,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        within("http.max_body_bytes", self.max_body_bytes, 1 << 10, 1 << 30)?;
        // hyper's read buffer cannot be smaller than 8 KiB.
        within(
            "http.max_header_bytes",
            self.max_header_bytes,
            8 << 10,
            1 << 20,
        )?;
        within("http.max_connections", self.max_connections, 1, 65_536)?;
        within(
            "http.header_timeout_ms",
            self.header_timeout_ms,
            100,
            600_000,
        )?;
        within("http.io_timeout_ms", self.io_timeout_ms, 100, 3_600_000)?;
        within("http.max_pending", self.max_pending, 1, 4096)?;
        within("http.admission_wait_ms", self.admission_wait_ms, 0, 600_000)?;
        within("http.deadline_ms", self.deadline_ms, 100, 3_600_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        HttpConfig::default().validate().unwrap();
        let bad = HttpConfig {
            max_header_bytes: 100,
            ..Default::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.key, "http.max_header_bytes");
        let bad = HttpConfig {
            max_connections: 0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "http.max_connections");
    }
}
