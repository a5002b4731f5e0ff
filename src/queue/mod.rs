//! Message-queue plumbing shared by queue sources and sinks, whatever the engine: what a queued
//! frame is ([`Entry`]), and how the pipeline tells the source what became of it ([`Settle`]):
//! acknowledged once its result is durable, dead-lettered when it can never succeed.
//!
//! An engine (Redis Streams today; NATS JetStream or Kafka the same way) provides a
//! [`crate::source::Source`] whose frames carry [`crate::frame::FrameId::Entry`], a `Settle`
//! the source hands to the pipeline, and optionally a [`crate::sink::Sink`] that settles the
//! input together with writing its result (see [`crate::sink::Sink::settles`]).

pub mod redis;

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

/// What a queue source needs to hear about the frames it handed over.
pub trait Settle: Send + Sync {
    /// The frame's results are durable (renamed into place, or in the result stream):
    /// acknowledge it. Must not fail the frame: a failed acknowledgement is retried, and at
    /// worst the entry is delivered again and its output replaced by the same result.
    fn done(&self, entry: &Entry);
    /// The frame can never succeed (it does not decode, the model rejects it): set it aside
    /// with its error (dead-letter stream) and acknowledge it.
    fn failed(&self, entry: &Entry, error: &str);
    /// Something other than the frame failed (the model, an output that could not be
    /// written): leave the entry pending so that it is delivered again later, and dead-lettered
    /// with this error once it has been delivered `max_deliveries` times.
    fn retry_later(&self, entry: &Entry, error: &str);
    /// The sink settled it together with writing its result (one transaction).
    fn settled_elsewhere(&self, _entry: &Entry) {}
    /// Sends what could not be sent yet, trying for at most `within`; false if some is left.
    fn flush_within(&self, _within: std::time::Duration) -> bool {
        true
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
