//! `[model]`: which network runs, with which weights, and how large frames are tiled.
//!
//! The file keeps one flat table for every architecture (`arch = "unet-denoiser"` next to
//! `channels`, `blocks`, …), so pipeline files read as they always have. That table is read as
//! a [`ModelSection`] and turned, in this one place, into a [`ModelConfig`] whose [`Arch`]
//! carries only what its architecture takes: after loading, nothing in aestream compares
//! architecture names, and a `match` over them that forgets one does not compile. An unknown
//! name, or a fixed-size autoencoder without a `size`, fails right here with the key named.
//!
//! Keys that an architecture does not take (`layers` on a U-Net, say) are accepted and
//! ignored, as they always were — except `size`, which would silently change what a fully
//! convolutional model is fed, and is refused.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

/// Most feature channels of one level (and code channels).
pub const MAX_CHANNELS: usize = 1024;
/// Most residual blocks of one level.
pub const MAX_BLOCKS: usize = 32;
/// Largest tile side, and largest overlap.
pub const MAX_TILE: usize = 8192;
pub const MAX_OVERLAP: usize = 1024;
/// Most weights of a dense autoencoder (1 GiB of f32): a fresh one is allocated at once.
pub const MAX_DENSE_WEIGHTS: usize = 1 << 28;
use crate::model::conv_ae::ConvAeConfig;
use crate::model::denoise::DenoiserConfig;
use crate::model::dense::{CodeActivation, DenseAeConfig, OutputActivation};
use crate::model::unet::UNetConfig;
use crate::model::{Arch, ArchKind};

/// The network and its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelSection", into = "ModelSection")]
pub struct ModelConfig {
    /// The architecture with its own settings.
    pub arch: Arch,
    /// Safetensors file: a path relative to the pipeline file, or a built-in weight name.
    pub weights: String,
    /// Frames larger than this (either side) are processed in overlapping square tiles.
    pub tile: usize,
    /// Context, in pixels, each tile sees beyond the part of it that is kept.
    pub tile_overlap: usize,
}

/// `[model]` as written in a pipeline file: every key any architecture takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Architecture: `unet-denoiser`, `unet-inpaint`, `dense-ae`, `conv-ae` or `unet-segment`.
    pub arch: String,
    pub weights: String,
    /// U-Nets and `conv-ae`: feature channels per level.
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// `unet-denoiser`, `unet-inpaint`: residual blocks per level.
    #[serde(default = "default_blocks")]
    pub blocks: Vec<usize>,
    #[serde(default = "default_tile")]
    pub tile: usize,
    #[serde(default = "default_overlap")]
    pub tile_overlap: usize,
    /// Fixed input size `[width, height]` of `dense-ae` and `conv-ae`: frames are turned grey
    /// and resized to it.
    #[serde(default)]
    pub size: Option<[usize; 2]>,
    /// `dense-ae`: layer widths from the input to the code, e.g. `[625, 2000, 1000, 500, 30]`.
    #[serde(default)]
    pub layers: Vec<usize>,
    /// `dense-ae`: linear paths beside the encoder and decoder.
    #[serde(default)]
    pub bypass: bool,
    /// `dense-ae`: keep only the k largest code units per frame (0 = all).
    #[serde(default)]
    pub topk: usize,
    #[serde(default)]
    pub code_activation: CodeActivation,
    #[serde(default)]
    pub output_activation: OutputActivation,
    /// `conv-ae`: depth of the latent feature map.
    #[serde(default)]
    pub code_channels: usize,
    /// `unet-denoiser`: `[channels, blocks]` of a refinement stage at full resolution after
    /// the U-Net (`[0, 0]`: none). It restores the fine texture the half-resolution U-Net
    /// smooths away at low noise.
    #[serde(default)]
    pub full_res: [usize; 2],
}

fn default_channels() -> Vec<usize> {
    DenoiserConfig::default().channels
}
fn default_blocks() -> Vec<usize> {
    DenoiserConfig::default().blocks
}
fn default_tile() -> usize {
    512
}
fn default_overlap() -> usize {
    32
}

impl TryFrom<ModelSection> for ModelConfig {
    type Error = Invalid;

    fn try_from(m: ModelSection) -> Result<Self, Invalid> {
        let kind = ArchKind::from_name(&m.arch).ok_or_else(|| {
            let names: Vec<_> = ArchKind::ALL.iter().map(|k| k.name()).collect();
            Invalid::new(
                "model.arch",
                &m.arch,
                format!("unknown architecture (known: {})", names.join(", ")),
            )
        })?;
        let fixed_size = || {
            m.size.ok_or_else(|| {
                Invalid::missing(
                    "model.size",
                    format!("{} needs `size = [width, height]`", kind.name()),
                )
            })
        };
        let denoiser = |extra_inputs| DenoiserConfig {
            image_channels: 1,
            extra_inputs,
            channels: m.channels.clone(),
            blocks: m.blocks.clone(),
            full_res: m.full_res,
        };
        let arch = match kind {
            ArchKind::UnetDenoiser => Arch::UnetDenoiser(denoiser(0)),
            // The inpainter also sees the known-pixel mask and the holed frame.
            ArchKind::UnetInpaint => Arch::UnetInpaint(denoiser(2)),
            ArchKind::DenseAe => Arch::DenseAe {
                size: fixed_size()?,
                net: DenseAeConfig {
                    layers: m.layers.clone(),
                    code: m.code_activation,
                    output: m.output_activation,
                    bypass: m.bypass,
                    topk: m.topk,
                },
            },
            ArchKind::ConvAe => Arch::ConvAe {
                size: fixed_size()?,
                net: ConvAeConfig {
                    channels: m.channels.clone(),
                    code_channels: m.code_channels,
                },
            },
            ArchKind::UnetSegment => Arch::UnetSegment(UNetConfig {
                channels: m.channels.clone(),
            }),
        };
        if let (None, Some(size)) = (arch.fixed_size(), m.size) {
            return Err(Invalid::new(
                "model.size",
                size,
                format!(
                    "only dense-ae and conv-ae resize frames to a fixed size; {} takes frames \
                     of any size",
                    kind.name()
                ),
            ));
        }
        Ok(ModelConfig {
            arch,
            weights: m.weights,
            tile: m.tile,
            tile_overlap: m.tile_overlap,
        })
    }
}

impl From<ModelConfig> for ModelSection {
    /// Keys the architecture does not take are written with their defaults: a pipeline
    /// serialises as it did when `[model]` was one flat struct, so the settings hash in its
    /// model version (and the `model` object in training metadata) stays what it was.
    fn from(m: ModelConfig) -> Self {
        let mut s = ModelSection {
            arch: m.arch.name().to_string(),
            weights: m.weights,
            channels: default_channels(),
            blocks: default_blocks(),
            tile: m.tile,
            tile_overlap: m.tile_overlap,
            size: None,
            layers: vec![],
            bypass: false,
            topk: 0,
            code_activation: CodeActivation::default(),
            output_activation: OutputActivation::default(),
            code_channels: 0,
            full_res: [0, 0],
        };
        match m.arch {
            Arch::UnetDenoiser(d) | Arch::UnetInpaint(d) => {
                (s.channels, s.blocks, s.full_res) = (d.channels, d.blocks, d.full_res);
            }
            Arch::DenseAe { size, net } => {
                s.size = Some(size);
                s.layers = net.layers;
                s.bypass = net.bypass;
                s.topk = net.topk;
                s.code_activation = net.code;
                s.output_activation = net.output;
            }
            Arch::ConvAe { size, net } => {
                s.size = Some(size);
                s.channels = net.channels;
                s.code_channels = net.code_channels;
            }
            Arch::UnetSegment(u) => s.channels = u.channels,
        }
        s
    }
}

/// 1 to 6 levels of 1 to [`MAX_CHANNELS`] feature channels.
fn levels(channels: &[usize]) -> Result<(), Invalid> {
    if channels.is_empty() || channels.len() > 6 {
        return Err(Invalid::new(
            "model.channels",
            channels,
            "must have 1 to 6 levels",
        ));
    }
    if channels.iter().any(|c| !(1..=MAX_CHANNELS).contains(c)) {
        return Err(Invalid::new(
            "model.channels",
            channels,
            format!("each level must have 1 to {MAX_CHANNELS} channels"),
        ));
    }
    Ok(())
}

impl ModelConfig {
    /// Each architecture's settings fit together, a fixed frame size is sane, and tiles are a
    /// multiple of the model's size multiple with room for their overlap on both sides.
    pub fn validate(&self) -> Result<(), Invalid> {
        match &self.arch {
            Arch::UnetDenoiser(d) | Arch::UnetInpaint(d) => {
                levels(&d.channels)?;
                if d.channels.len() != d.blocks.len() || d.blocks.iter().any(|&b| b > MAX_BLOCKS) {
                    return Err(Invalid::new(
                        "model.blocks",
                        &d.blocks,
                        format!(
                            "must have one entry (at most {MAX_BLOCKS}) per entry of \
                             `model.channels` (1 to 6 levels)"
                        ),
                    ));
                }
                let [c, b] = d.full_res;
                if c > MAX_CHANNELS || b > MAX_BLOCKS {
                    return Err(Invalid::new(
                        "model.full_res",
                        d.full_res,
                        format!("must be [channels ≤ {MAX_CHANNELS}, blocks ≤ {MAX_BLOCKS}]"),
                    ));
                }
            }
            Arch::DenseAe { size, net } => {
                fixed_size(*size)?;
                let input = size[0] * size[1];
                let l = &net.layers;
                let weights = l
                    .windows(2)
                    .try_fold(0usize, |n, w| n.checked_add(w[0].checked_mul(w[1])?));
                if weights.is_none_or(|n| n > MAX_DENSE_WEIGHTS) {
                    return Err(Invalid::new(
                        "model.layers",
                        l,
                        format!("must have at most {MAX_DENSE_WEIGHTS} weights"),
                    ));
                }
                if l.len() < 2 || l[0] != input || l.contains(&0) {
                    return Err(Invalid::new(
                        "model.layers",
                        l,
                        format!(
                            "must start with width × height = {input} and end with the code width"
                        ),
                    ));
                }
                if net.topk != 0 && net.topk >= l[l.len() - 1] {
                    return Err(Invalid::new(
                        "model.topk",
                        net.topk,
                        "must be smaller than the code width",
                    ));
                }
            }
            Arch::ConvAe { size, net } => {
                levels(&net.channels)?;
                fixed_size(*size)?;
                let multiple = self.arch.size_multiple();
                if !size.iter().all(|s| s.is_multiple_of(multiple)) {
                    return Err(Invalid::new(
                        "model.size",
                        size,
                        format!("must be a multiple of {multiple}"),
                    ));
                }
                within("model.code_channels", net.code_channels, 1, MAX_CHANNELS)?;
            }
            Arch::UnetSegment(u) => levels(&u.channels)?,
        }
        within("model.tile_overlap", self.tile_overlap, 0, MAX_OVERLAP)?;
        within("model.tile", self.tile, 1, MAX_TILE)?;
        let multiple = self.arch.size_multiple();
        if self.tile < 2 * self.tile_overlap + multiple || !self.tile.is_multiple_of(multiple) {
            return Err(Invalid::new(
                "model.tile",
                self.tile,
                format!(
                    "must be a multiple of {multiple} and larger than twice `tile_overlap` ({})",
                    self.tile_overlap
                ),
            ));
        }
        Ok(())
    }
}

/// A fixed frame size is positive and at most 2048×2048 pixels.
fn fixed_size(size: [usize; 2]) -> Result<(), Invalid> {
    let [w, h] = size;
    if w == 0 || h == 0 || w.checked_mul(h).is_none_or(|p| p > 1 << 22) {
        return Err(Invalid::new(
            "model.size",
            size,
            "must be positive and at most 2048×2048",
        ));
    }
    Ok(())
}
