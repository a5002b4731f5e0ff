//! `[postprocess]`: what happens to the model's output before it is quantised.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostprocessConfig {
    /// Clip model outputs to [0, 1] before quantising.
    pub clip: bool,
}

impl Default for PostprocessConfig {
    fn default() -> Self {
        Self { clip: true }
    }
}
