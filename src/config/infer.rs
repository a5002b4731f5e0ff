//! `[infer]`: how frames are batched through the model, how many threads the CPU stages get,
//! and the optional self-ensemble and SURE blend.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};
use crate::model::Precision;

/// Most threads per CPU stage: five stages run this many each.
pub const MAX_WORKERS: usize = 64;
/// The self-ensemble sizes there are: off, + left-right flip, all four flips, and the four
/// flips each also transposed (`infer.ensemble`, `--ensemble`).
pub const ENSEMBLE_SIZES: [usize; 4] = [1, 2, 4, 8];

/// Where and how the model runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferConfig {
    /// Most frames (or tiles) run through the model at once.
    pub max_batch: usize,
    /// Most pixels in one forward pass; bounds the model's memory.
    pub max_batch_pixels: usize,
    /// Longest wait for a batch to fill once its first frame arrived.
    pub max_wait_ms: u64,
    /// Threads per CPU stage: decode, corrupt, normalise, post-process, encode
    /// (0 = one per core, at most 4).
    pub workers: usize,
    /// Self-ensemble: 1 (off), 2, 4 or 8 flipped (8: and transposed) views averaged (slower, slightly better).
    pub ensemble: usize,
    /// Denoisers: blend output and input block by block where Stein's unbiased risk estimate
    /// says the model took detail for noise (one more model pass per frame).
    pub sure_blend: bool,
    /// The frames' noise σ (0–255 scale) for the SURE blend, where it is known (a fixed
    /// camera gain); 0 = estimate it per plane.
    pub noise_sigma: f32,
    /// The type the model is served in: f32, or f16 / bf16 on a GPU. Absent from the settings
    /// hash at f32, so versions from before this key stay as they were.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub dtype: Precision,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_batch_pixels: 1 << 19,
            max_wait_ms: 10,
            workers: 0,
            ensemble: 1,
            sure_blend: false,
            noise_sigma: 0.0,
            dtype: Precision::F32,
        }
    }
}

impl InferConfig {
    /// Batches hold a frame; the batcher's wait and the threads are bounded; the ensemble is
    /// a size the flips support; a given σ is on the 0–255 scale. (Whether the model can blend at all
    /// is a rule across sections: `PipelineConfig::validate`.)
    pub fn validate(&self) -> Result<(), Invalid> {
        within("infer.max_batch", self.max_batch, 1, 1024)?;
        within(
            "infer.max_batch_pixels",
            self.max_batch_pixels,
            1 << 10,
            1 << 28,
        )?;
        within("infer.max_wait_ms", self.max_wait_ms, 0, 60_000)?;
        within("infer.workers", self.workers, 0, MAX_WORKERS)?;
        if !ENSEMBLE_SIZES.contains(&self.ensemble) {
            return Err(Invalid::new(
                "infer.ensemble",
                self.ensemble,
                "must be 1, 2, 4 or 8",
            ));
        }
        if !(0.0..=255.0).contains(&self.noise_sigma) {
            return Err(Invalid::new(
                "infer.noise_sigma",
                self.noise_sigma,
                "must be between 0 (estimate) and 255",
            ));
        }
        if self.sure_blend && self.dtype == Precision::Bf16 {
            // SURE's divergence is the model's response to a ±`sure::EPS` (0.002) probe, below
            // bf16's resolution near 1 (2⁻⁸ ≈ 0.004). f16 resolves it (2⁻¹¹), and scores as
            // f32 does (tests/device.rs).
            return Err(Invalid::new(
                "infer.dtype",
                self.dtype.name(),
                "the SURE blend (infer.sure_blend) needs f32 or f16: its probe is finer than \
                 bf16 resolves",
            ));
        }
        Ok(())
    }
}
