//! `[decode]`: how much a decoder may take on for one frame. The limits guard against
//! decompression bombs (a small file that expands to gigabytes of pixels). A limit of 0 would
//! refuse (and quarantine) every input, so each has a floor as well as a ceiling.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

/// Bounds of `max_pixels`: a 16×16 frame at least, 1 gigapixel at most.
pub const MAX_PIXELS: (u64, u64) = (256, 1_000_000_000);
/// Bounds of `max_alloc_mib`: 1 MiB to 64 GiB.
pub const MAX_ALLOC_MIB: (u64, u64) = (1, 65_536);

/// Decoder limits per frame; guard against decompression bombs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Largest accepted frame, in pixels (width × height).
    pub max_pixels: u64,
    /// Largest memory the decoder may allocate for one frame, in MiB.
    pub max_alloc_mib: u64,
}

impl DecodeConfig {
    /// Each limit lets a real frame through and stays within what a machine has.
    pub fn validate(&self) -> Result<(), Invalid> {
        let (lo, hi) = MAX_PIXELS;
        within("decode.max_pixels", self.max_pixels, lo, hi)?;
        let (lo, hi) = MAX_ALLOC_MIB;
        within("decode.max_alloc_mib", self.max_alloc_mib, lo, hi)
    }
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            max_pixels: 16_000_000,
            max_alloc_mib: 1024,
        }
    }
}
