//! `[finetune]`: online fine-tuning while the daemon serves — the replay buffer, the
//! trainer's share of the CPU, and when a candidate may replace the serving model.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

/// Online fine-tuning while the daemon runs (`--finetune` or `enabled = true`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    pub enabled: bool,
    /// `clean`: incoming frames are clean, the model learns corrupted → frame. `noisy`: they
    /// are already noisy; Neighbor2Neighbor (self-supervised) is used.
    pub target: FinetuneTarget,
    /// Frames kept in the replay buffer (reservoir sampling over the whole stream).
    pub buffer: usize,
    /// Frames held back for validation (every 8th offered frame goes to their reservoir).
    pub holdout: usize,
    /// Frames needed in the buffer before training starts.
    pub min_frames: usize,
    pub patch: usize,
    pub batch: usize,
    pub lr: f64,
    /// Threads of the trainer's own pool (the serving pipeline keeps the rest).
    pub threads: usize,
    /// Threads while the pipeline holds no frame (0: one per core): idle CPU is not wasted.
    pub idle_threads: usize,
    /// While frames are being served, the trainer is busy at most this share of the time
    /// (it sleeps between steps), so serving keeps most of its throughput.
    pub busy_share: f64,
    /// Upper bound on the trainer's pace.
    pub max_steps_per_minute: usize,
    /// Steps per round; after each round the candidate is validated.
    pub round_steps: usize,
    /// A candidate replaces the serving model only if its validation loss is lower by at
    /// least this fraction.
    pub min_improvement: f64,
    /// Noise of the clean target: σ uniform in [0, sigma_max] (0-255 scale).
    pub sigma_max: f32,
    /// Validation noise (clean target), 0-255 scale.
    pub val_sigma: f32,
    /// `target = "noisy"`: σ of the stream's own noise (0-255 scale), for the validation
    /// estimate; 0 = estimated from the held-out frames.
    pub stream_sigma: f32,
    /// Patches in the validation set.
    pub val_patches: usize,
    /// Checkpoints kept (`--checkpoints DIR`).
    pub keep: usize,
    /// The candidate is an exponential moving average of the shadow's weights with this
    /// decay per step (0 = the shadow itself): small-batch steps are noisy, their average
    /// validates better and is what gets swapped in.
    pub ema: f64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            target: FinetuneTarget::Clean,
            buffer: 256,
            holdout: 32,
            min_frames: 8,
            patch: 64,
            batch: 4,
            lr: 3e-4,
            threads: 1,
            idle_threads: 0,
            busy_share: 0.4,
            max_steps_per_minute: 600,
            round_steps: 40,
            min_improvement: 0.002,
            sigma_max: 50.0,
            val_sigma: 25.0,
            stream_sigma: 0.0,
            val_patches: 16,
            keep: 5,
            ema: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FinetuneTarget {
    #[default]
    Clean,
    Noisy,
}

impl FinetuneConfig {
    /// Patches are big enough to learn from and fit the model (`multiple`: the model's size
    /// multiple); every count the trainer divides by or draws from is at least 1, and every
    /// count and share is bounded.
    pub fn validate(&self, multiple: usize) -> Result<(), Invalid> {
        if !(16..=1024).contains(&self.patch) || !self.patch.is_multiple_of(multiple) {
            return Err(Invalid::new(
                "finetune.patch",
                self.patch,
                format!("must be 16 to 1024 and a multiple of {multiple}"),
            ));
        }
        for (key, v, hi) in [
            ("finetune.buffer", self.buffer, 65_536),
            ("finetune.holdout", self.holdout, 4096),
            ("finetune.batch", self.batch, 256),
            ("finetune.threads", self.threads, 256),
            ("finetune.round_steps", self.round_steps, 1_000_000),
            (
                "finetune.max_steps_per_minute",
                self.max_steps_per_minute,
                60_000,
            ),
            ("finetune.val_patches", self.val_patches, 4096),
            ("finetune.keep", self.keep, 1000),
        ] {
            within(key, v, 1, hi)?;
        }
        within("finetune.idle_threads", self.idle_threads, 0, 256)?;
        within("finetune.min_frames", self.min_frames, 0, self.buffer)?;
        within("finetune.lr", self.lr, f64::MIN_POSITIVE, 1.0)?;
        within("finetune.busy_share", self.busy_share, 0.01, 1.0)?;
        within("finetune.min_improvement", self.min_improvement, -1.0, 0.99)?;
        within("finetune.ema", self.ema, 0.0, 0.9999)?;
        for (key, v) in [
            ("finetune.sigma_max", self.sigma_max),
            ("finetune.val_sigma", self.val_sigma),
            ("finetune.stream_sigma", self.stream_sigma),
        ] {
            within(key, v, 0.0, 255.0)?;
        }
        Ok(())
    }
}
