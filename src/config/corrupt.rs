//! `[corrupt]`: synthetic damage done to frames before the model sees them — noise, salt and
//! pepper, missing pixels — for demos and training-style runs on clean inputs.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

/// Synthetic corruption applied before the model (for training-style runs and demos).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorruptConfig {
    /// Additive Gaussian noise, σ on the 0–255 scale; 0 = off.
    pub gaussian_sigma: f32,
    /// Fraction of pixels set to black or white at random; 0 = off.
    pub salt_pepper: f32,
    /// Fraction of pixels set to 0 (missing) at random; 0 = off.
    pub mask: f32,
    /// Seed for the corruption; frames get independent streams derived from it.
    pub seed: u64,
}

impl CorruptConfig {
    pub fn is_off(&self) -> bool {
        self.gaussian_sigma <= 0.0 && self.salt_pepper <= 0.0 && self.mask <= 0.0
    }

    /// Fractions lie in [0, 1]; σ is on the 0–255 scale.
    pub fn validate(&self) -> Result<(), Invalid> {
        within("corrupt.salt_pepper", self.salt_pepper, 0.0, 1.0)?;
        within("corrupt.mask", self.mask, 0.0, 1.0)?;
        within("corrupt.gaussian_sigma", self.gaussian_sigma, 0.0, 255.0)
    }
}
