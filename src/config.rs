//! Pipeline files: TOML → typed configuration.
//!
//! A pipeline names its decode limits, corruption, normalisation, model and weights,
//! post-processing, outputs, batching and channel capacities. Unknown keys are errors, and every
//! error names the file, the key and what is wrong. The shipped pipelines (and their weights) are
//! embedded in the binary so `aestream run denoise` works from any directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::denoise::DenoiserConfig;

/// The pipelines built into the binary: (name, TOML text).
pub const BUILTIN_PIPELINES: &[(&str, &str)] = &[
    ("denoise", include_str!("../pipelines/denoise.toml")),
    (
        "denoise-fast",
        include_str!("../pipelines/denoise-fast.toml"),
    ),
];

/// The weights built into the binary: (file name as written in a pipeline, bytes).
pub const BUILTIN_WEIGHTS: &[(&str, &[u8])] = &[(
    "denoise.safetensors",
    include_bytes!("../weights/denoise.safetensors"),
)];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Short name; used in logs and metadata.
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub decode: DecodeConfig,
    #[serde(default)]
    pub corrupt: CorruptConfig,
    #[serde(default)]
    pub normalise: NormaliseConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub infer: InferConfig,
    #[serde(default)]
    pub postprocess: PostprocessConfig,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub channels: ChannelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    /// Where the file came from (set on load; a path, or `builtin:NAME`).
    #[serde(skip)]
    pub origin: String,
    /// Folder that relative weight paths are resolved against (None for built-ins).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

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
}

/// How colour reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColourMode {
    /// Each channel of a colour frame goes through the (grey) model on its own.
    PerChannel,
    /// Everything is turned grey; the output is grey.
    Grey,
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
}

impl Default for NormaliseConfig {
    fn default() -> Self {
        Self {
            colour: ColourMode::PerChannel,
            pad: PadMode::Reflect,
        }
    }
}

/// The network and its weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture: `unet-denoiser`.
    pub arch: String,
    /// Safetensors file: a path relative to the pipeline file, or a built-in weight name.
    pub weights: String,
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    #[serde(default = "default_blocks")]
    pub blocks: Vec<usize>,
    /// Frames larger than this (either side) are processed in overlapping square tiles.
    #[serde(default = "default_tile")]
    pub tile: usize,
    /// Context, in pixels, each tile sees beyond the part of it that is kept.
    #[serde(default = "default_overlap")]
    pub tile_overlap: usize,
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

impl ModelConfig {
    pub fn denoiser(&self) -> DenoiserConfig {
        DenoiserConfig {
            image_channels: 1,
            channels: self.channels.clone(),
            blocks: self.blocks.clone(),
        }
    }
}

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
    /// Self-ensemble: 1 (off), 2 or 4 flipped views averaged (slower, slightly better).
    pub ensemble: usize,
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_batch_pixels: 1 << 19,
            max_wait_ms: 10,
            workers: 0,
            ensemble: 1,
        }
    }
}

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

/// What the pipeline writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    Denoised,
}

impl OutputKind {
    pub fn extension(self) -> &'static str {
        match self {
            OutputKind::Denoised => "png",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    pub kinds: Vec<OutputKind>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            kinds: vec![OutputKind::Denoised],
        }
    }
}

/// Capacities of the bounded channels between stages: the backpressure knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    pub capacity: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self { capacity: 8 }
    }
}

/// Offline training settings (`aestream train`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Square patch side in pixels (a multiple of the model's size multiple).
    pub patch: usize,
    pub batch: usize,
    pub steps_per_epoch: usize,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Training noise: σ drawn uniformly from [0, sigma_max] (0–255 scale) per patch.
    pub sigma_max: f32,
    /// σ used for the validation PSNR.
    pub val_sigma: f32,
    /// Fraction of the training images held out for validation when no `--val` is given.
    pub val_fraction: f64,
    /// Write a checkpoint every this many steps.
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            patch: 64,
            batch: 8,
            steps_per_epoch: 500,
            epochs: 14,
            lr: 1e-3,
            weight_decay: 1e-4,
            sigma_max: 50.0,
            val_sigma: 25.0,
            val_fraction: 0.1,
            checkpoint_every: 100,
        }
    }
}

impl PipelineConfig {
    /// Parses pipeline TOML; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let mut cfg: PipelineConfig = toml::from_str(text).map_err(|e| Error::Config {
            origin: origin.to_string(),
            message: describe_toml_error(&e, text),
        })?;
        cfg.origin = origin.to_string();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads a pipeline by built-in name or by path to a `.toml` file.
    pub fn load(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        let looks_like_path = spec.ends_with(".toml") || spec.contains('/') || path.exists();
        if !looks_like_path {
            if let Some((_, text)) = BUILTIN_PIPELINES.iter().find(|(n, _)| *n == spec) {
                return Self::from_toml(text, &format!("builtin:{spec}"));
            }
            let names: Vec<_> = BUILTIN_PIPELINES.iter().map(|(n, _)| *n).collect();
            return Err(Error::Config {
                origin: spec.to_string(),
                message: format!(
                    "no built-in pipeline of that name (built in: {}), and no such .toml file",
                    names.join(", ")
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut cfg = Self::from_toml(&text, &path.display().to_string())?;
        cfg.base_dir = path.parent().map(Path::to_path_buf);
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| Error::Config {
            origin: self.origin.clone(),
            message: format!("key `{key}`: {message}"),
        };
        if self.model.arch != "unet-denoiser" {
            return Err(bad(
                "model.arch",
                format!(
                    "unknown architecture {:?} (known: unet-denoiser)",
                    self.model.arch
                ),
            ));
        }
        if self.model.channels.is_empty()
            || self.model.channels.len() > 6
            || self.model.channels.len() != self.model.blocks.len()
        {
            return Err(bad(
                "model.blocks",
                "must have one entry per entry of `model.channels` (1 to 6 levels)".into(),
            ));
        }
        let multiple = 1usize << self.model.channels.len();
        if self.model.tile < 2 * self.model.tile_overlap + multiple
            || !self.model.tile.is_multiple_of(multiple)
        {
            return Err(bad(
                "model.tile",
                format!(
                    "must be a multiple of {multiple} and larger than twice `tile_overlap` ({})",
                    self.model.tile_overlap
                ),
            ));
        }
        if self.infer.max_batch == 0 {
            return Err(bad("infer.max_batch", "must be at least 1".into()));
        }
        if self.infer.max_wait_ms > 60_000 {
            return Err(bad("infer.max_wait_ms", "must be at most 60000".into()));
        }
        if ![1, 2, 4].contains(&self.infer.ensemble) {
            return Err(bad("infer.ensemble", "must be 1, 2 or 4".into()));
        }
        if self.channels.capacity == 0 {
            return Err(bad("channels.capacity", "must be at least 1".into()));
        }
        for (key, v) in [
            ("corrupt.salt_pepper", self.corrupt.salt_pepper),
            ("corrupt.mask", self.corrupt.mask),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(key, format!("must be between 0 and 1, got {v}")));
            }
        }
        if self.corrupt.gaussian_sigma < 0.0 || !self.corrupt.gaussian_sigma.is_finite() {
            return Err(bad("corrupt.gaussian_sigma", "must be ≥ 0".into()));
        }
        if !self.train.patch.is_multiple_of(multiple) || self.train.patch == 0 {
            return Err(bad(
                "train.patch",
                format!("must be a positive multiple of {multiple}"),
            ));
        }
        if self.output.kinds.is_empty() {
            return Err(bad("output.kinds", "must name at least one output".into()));
        }
        Ok(())
    }

    /// The weights' bytes: a file beside the pipeline, any path, or a built-in.
    pub fn weights_bytes(&self, override_path: Option<&Path>) -> Result<Vec<u8>> {
        if let Some(p) = override_path {
            return std::fs::read(p).map_err(|e| Error::Io {
                path: p.to_path_buf(),
                source: e,
            });
        }
        let rel = Path::new(&self.model.weights);
        let candidates: Vec<PathBuf> = match &self.base_dir {
            Some(base) => vec![base.join(rel), base.join("../weights").join(rel)],
            None => vec![],
        };
        if let Some(c) = candidates.iter().find(|c| c.is_file()) {
            return std::fs::read(c).map_err(|e| Error::Io {
                path: c.clone(),
                source: e,
            });
        }
        if let Some((_, bytes)) = BUILTIN_WEIGHTS
            .iter()
            .find(|(n, _)| *n == self.model.weights)
        {
            return Ok(bytes.to_vec());
        }
        Err(Error::Config {
            origin: self.origin.clone(),
            message: format!(
                "key `model.weights`: {:?} is neither a file beside the pipeline nor a built-in weight",
                self.model.weights
            ),
        })
    }
}

/// Turns a toml error into one line naming the key and the cause, with line:column.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            let key = text.get(span.clone()).unwrap_or("").trim();
            if key.is_empty() {
                format!("line {line}: {msg}")
            } else {
                format!("line {line}, at `{key}`: {msg}")
            }
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_pipelines_parse() {
        for (name, _) in BUILTIN_PIPELINES {
            let cfg = PipelineConfig::load(name).expect("built-in parses");
            assert_eq!(&cfg.name, name);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = BUILTIN_PIPELINES[0]
            .1
            .replace("[infer]", "[infer]\nmax_bacth = 3");
        let err = PipelineConfig::from_toml(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml"), "{err}");
        assert!(err.contains("max_bacth"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let text = BUILTIN_PIPELINES[0]
            .1
            .replace("max_batch = 8", "max_batch = 0");
        let err = PipelineConfig::from_toml(&text, "y.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("infer.max_batch"), "{err}");
    }
}
