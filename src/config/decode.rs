//! `[decode]`: how much a decoder may take on for one frame. The limits guard against
//! decompression bombs (a small file that expands to gigabytes of pixels); any value is a
//! valid limit, so the section has no rules of its own.

use serde::{Deserialize, Serialize};

/// Decoder limits per frame; guard against decompression bombs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Largest accepted frame, in pixels (width × height).
    pub max_pixels: u64,
    /// Largest memory the decoder may allocate for one frame, in MiB.
    pub max_alloc_mib: u64,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            max_pixels: 64_000_000,
            max_alloc_mib: 1024,
        }
    }
}
