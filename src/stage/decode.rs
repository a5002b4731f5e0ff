//! The decode stage: bytes → float planes, within the pipeline's decode limits.

use crate::config::DecodeConfig;
use crate::error::Result;
use crate::frame::{decode, DecodeLimits, FrameId, Planes};

pub fn limits(cfg: &DecodeConfig) -> DecodeLimits {
    DecodeLimits {
        max_pixels: cfg.max_pixels,
        max_alloc_bytes: cfg.max_alloc_mib.saturating_mul(1 << 20),
    }
}

/// Decodes one frame; the error names the frame (file path or stream sequence and offset).
pub fn run(bytes: &[u8], id: &FrameId, cfg: &DecodeConfig) -> Result<Planes> {
    decode(bytes, limits(cfg), &id.to_string())
}
