//! `[normalise]`: how a decoded frame's planes reach the model — colour handling, padding up
//! to the model's size multiple, and an optional per-frame contrast stretch.

use serde::{Deserialize, Serialize};

use super::Invalid;

/// How colour reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColourMode {
    /// Each channel of a colour frame goes through the (grey) model on its own.
    PerChannel,
    /// Everything is turned grey; the output is grey.
    Grey,
    /// As `PerChannel`, but a YUV4MPEG2 frame goes through the model as RGB (chroma
    /// upsampled) and is converted back to its layout: better on camera-like noise, about
    /// twice the model time (docs/video.md).
    Rgb,
}

/// How a frame is padded up to the model's size multiple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PadMode {
    Reflect,
    Zero,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormaliseConfig {
    pub colour: ColourMode,
    pub pad: PadMode,
    /// Contrast stretch before the model (dim 16-bit microscopy frames need one); undone on
    /// image outputs.
    pub stretch: Stretch,
    /// Low and high percentile mapped to 0 and 1 by `stretch = "percentile"`; the high one is
    /// also what `"auto"` brings to 1.
    pub percentiles: [f32; 2],
}

impl Default for NormaliseConfig {
    fn default() -> Self {
        Self {
            colour: ColourMode::PerChannel,
            pad: PadMode::Reflect,
            stretch: Stretch::Auto,
            percentiles: [1.0, 99.8],
        }
    }
}

/// Per-frame intensity normalisation, applied before the model and undone on its image
/// outputs (denoised frames, reconstructions), so these keep the input's intensities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stretch {
    /// The frame as decoded.
    None,
    /// 16-bit frames are brightened so their high percentile sits at 1 (a dark frame using
    /// 232 of 65535 levels would otherwise reach the model as black); 8-bit frames go as
    /// decoded. A gain only: black stays black, so an inpainter's missing pixels stay 0.
    Auto,
    /// Map the frame's low/high percentiles to 0/1 (as stardist/csbdeep normalise).
    Percentile,
}

impl NormaliseConfig {
    /// The stretch's percentiles are an increasing pair within [0, 100].
    pub fn validate(&self) -> Result<(), Invalid> {
        let [lo, hi] = self.percentiles;
        if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) || lo >= hi {
            return Err(Invalid::new(
                "normalise.percentiles",
                self.percentiles,
                "must be [low, high] with 0 ≤ low < high ≤ 100",
            ));
        }
        Ok(())
    }
}
