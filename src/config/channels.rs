//! `[channels]`: the capacities of the bounded channels between stages (the backpressure
//! knobs) and what a stream source does when they are full.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

/// Most frames one channel holds. Each channel allocates its slots up front, so this bounds
/// memory before any frame arrives (and 1e12 would abort the process).
pub const MAX_CAPACITY: usize = 1024;

/// Capacities of the bounded channels between stages: the backpressure knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    pub capacity: usize,
    /// What a stream source (stdin) does when the pipeline is full. Folder sources always
    /// block: their files wait safely on disk.
    pub overload: Overload,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            capacity: 8,
            overload: Overload::Block,
        }
    }
}

impl ChannelConfig {
    /// A channel holds at least one frame and at most [`MAX_CAPACITY`].
    pub fn validate(&self) -> Result<(), Invalid> {
        within("channels.capacity", self.capacity, 1, MAX_CAPACITY)
    }
}

/// Overload policy of stream sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Overload {
    /// Wait for room: lossless, the writer of the stream is slowed down.
    #[default]
    Block,
    /// Drop the oldest waiting frame to make room (counted in `aestream_dropped_total`).
    DropOldest,
}
