//! A frame read from a message queue: which queue ([`QueueOrigin`]), the engine's id, the
//! name its outputs get, and how often it was delivered. Engine-neutral (Redis Streams today;
//! NATS JetStream or Kafka the same way), so frames, sinks and the wiring can name a queued
//! frame without knowing the engine.

use std::path::PathBuf;
use std::sync::Arc;

/// The queue a frame was read from: the server (without credentials), stream and group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueOrigin {
    /// `host:port/db`, as given in the URL (credentials left out so it can be logged).
    pub server: String,
    pub stream: String,
    pub group: String,
}

/// A frame read from a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub origin: Arc<QueueOrigin>,
    /// The engine's id for the entry (Redis: `1700000000000-0`).
    pub id: String,
    /// The frame's name, for output file names: its `id` field, else its path's file name, else
    /// the entry id. Made safe for a file name (no folders, no dot-files).
    pub name: String,
    /// The shared-storage path the entry referred to, if it carried one.
    pub path: Option<PathBuf>,
    /// How many times the queue has delivered it (1 the first time).
    pub deliveries: u64,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} entry {} ({})",
            self.origin.server, self.origin.stream, self.id, self.name
        )
    }
}

/// Makes `raw` usable as a file name: letters, digits, `-`, `_`, `.` kept, anything else
/// (folder separators included) becomes `_`; no leading dot; never empty.
pub fn safe_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    s.truncate(200);
    if s.is_empty() {
        s.push('_');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_output_folder() {
        for raw in ["../../etc/passwd", "/abs/x.png", "..", ".hidden", "a\\b"] {
            let s = safe_name(raw);
            assert!(
                !s.contains('/') && !s.contains('\\') && !s.starts_with('.'),
                "{s}"
            );
        }
        assert_eq!(safe_name(".hidden"), "_hidden");
        assert_eq!(safe_name(""), "_");
        assert_eq!(safe_name("cam1-000042.png"), "cam1-000042.png");
        assert_eq!(safe_name("1700000000000-0"), "1700000000000-0");
        assert!(safe_name(&"x".repeat(1000)).len() <= 200);
    }
}
