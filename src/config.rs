//! Pipeline files: TOML → typed configuration.
//!
//! A pipeline names its decode limits, corruption, normalisation, model and weights,
//! post-processing, outputs, batching and channel capacities. Unknown keys are errors, and every
//! error names the file, the key and what is wrong. The shipped pipelines (and their weights) are
//! embedded in the binary so `aestream run denoise` works from any directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::conv_ae::ConvAeConfig;
use crate::model::denoise::DenoiserConfig;
use crate::model::dense::{CodeActivation, DenseAeConfig, OutputActivation};
use crate::model::unet::UNetConfig;
use crate::model::Task;

/// The pipelines built into the binary: (name, TOML text).
pub const BUILTIN_PIPELINES: &[(&str, &str)] = &[
    ("denoise", include_str!("../pipelines/denoise.toml")),
    (
        "denoise-fast",
        include_str!("../pipelines/denoise-fast.toml"),
    ),
    ("inpaint", include_str!("../pipelines/inpaint.toml")),
    ("faces", include_str!("../pipelines/faces.toml")),
    (
        "digits-sparse",
        include_str!("../pipelines/digits-sparse.toml"),
    ),
    ("conv-ae", include_str!("../pipelines/conv-ae.toml")),
    (
        "segment-nuclei",
        include_str!("../pipelines/segment-nuclei.toml"),
    ),
];

/// The weights built into the binary: (file name as written in a pipeline, bytes).
pub const BUILTIN_WEIGHTS: &[(&str, &[u8])] = &[
    (
        "denoise.safetensors",
        include_bytes!("../weights/denoise.safetensors"),
    ),
    (
        "inpaint.safetensors",
        include_bytes!("../weights/inpaint.safetensors"),
    ),
    (
        "faces.safetensors",
        include_bytes!("../weights/faces.safetensors"),
    ),
    (
        "digits-sparse.safetensors",
        include_bytes!("../weights/digits-sparse.safetensors"),
    ),
    (
        "conv-ae.safetensors",
        include_bytes!("../weights/conv-ae.safetensors"),
    ),
    (
        "segment-nuclei.safetensors",
        include_bytes!("../weights/segment-nuclei.safetensors"),
    ),
];

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
    #[serde(default)]
    pub finetune: FinetuneConfig,
    /// A queue to read frames from (`[source] kind = "redis"`), used when `--input` is a queue
    /// address or is not given.
    #[serde(default)]
    pub source: QueueSourceConfig,
    /// A queue to write results to (`[sink] kind = "redis"`).
    #[serde(default)]
    pub sink: QueueSinkConfig,
    /// Where the file came from (set on load; a path, or `builtin:NAME`).
    #[serde(skip)]
    pub origin: String,
    /// Folder that relative weight paths are resolved against (None for built-ins).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    /// Inpainting run with `--masks DIR`: each input's mask image at its relative path there
    /// (black = missing).
    #[serde(skip)]
    pub mask_dir: Option<PathBuf>,
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
    /// Contrast stretch before the model (dim 16-bit microscopy frames need one).
    pub stretch: Stretch,
    /// Low and high percentile mapped to 0 and 1 by `stretch = "percentile"`.
    pub percentiles: [f32; 2],
}

impl Default for NormaliseConfig {
    fn default() -> Self {
        Self {
            colour: ColourMode::PerChannel,
            pad: PadMode::Reflect,
            stretch: Stretch::None,
            percentiles: [1.0, 99.8],
        }
    }
}

/// Per-frame intensity normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stretch {
    None,
    /// Map the frame's low/high percentiles to 0/1 (as stardist/csbdeep normalise).
    Percentile,
}

/// The network and its weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture: `unet-denoiser`, `unet-inpaint`, `dense-ae`, `conv-ae` or `unet-segment`.
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

impl ModelConfig {
    /// What the architecture is for; unknown names are rejected when the file is loaded.
    pub fn task(&self) -> Task {
        match self.arch.as_str() {
            "dense-ae" | "conv-ae" => Task::Reconstruct,
            "unet-segment" => Task::Segment,
            _ => Task::Denoise,
        }
    }

    pub fn dense(&self) -> DenseAeConfig {
        DenseAeConfig {
            layers: self.layers.clone(),
            code: self.code_activation,
            output: self.output_activation,
            bypass: self.bypass,
            topk: self.topk,
        }
    }

    pub fn conv_ae(&self) -> ConvAeConfig {
        ConvAeConfig {
            channels: self.channels.clone(),
            code_channels: self.code_channels,
        }
    }

    pub fn unet(&self) -> UNetConfig {
        UNetConfig {
            channels: self.channels.clone(),
        }
    }

    /// H and W of a model input must be a multiple of this.
    pub fn size_multiple(&self) -> usize {
        match self.arch.as_str() {
            "dense-ae" => 1,
            "unet-segment" => 1 << self.channels.len().saturating_sub(1),
            _ => 1 << self.channels.len(),
        }
    }

    pub fn denoiser(&self) -> DenoiserConfig {
        DenoiserConfig {
            image_channels: 1,
            // The inpainter also sees the known-pixel mask and the holed frame.
            extra_inputs: if self.arch == "unet-inpaint" { 2 } else { 0 },
            channels: self.channels.clone(),
            blocks: self.blocks.clone(),
            full_res: self.full_res,
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
    /// Denoisers: blend output and input block by block where Stein's unbiased risk estimate
    /// says the model took detail for noise (one more model pass per frame).
    pub sure_blend: bool,
    /// The frames' noise σ (0–255 scale) for the SURE blend, where it is known (a fixed
    /// camera gain); 0 = estimate it per plane.
    pub noise_sigma: f32,
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
    /// The denoised (or inpainted) frame, same size as the input.
    Denoised,
    /// An autoencoder's reconstruction, at the model's size.
    Reconstruction,
    /// The code: `.npy` per frame in a folder, JSON lines on stdout.
    Latent,
    /// 8-bit PNG label map: value = class index, 0 background.
    Segmentation,
    /// The input with the segmentation drawn over it.
    Overlay,
}

impl OutputKind {
    pub const ALL: [OutputKind; 5] = [
        OutputKind::Denoised,
        OutputKind::Reconstruction,
        OutputKind::Latent,
        OutputKind::Segmentation,
        OutputKind::Overlay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Denoised => "denoised",
            OutputKind::Reconstruction => "reconstruction",
            OutputKind::Latent => "latent",
            OutputKind::Segmentation => "segmentation",
            OutputKind::Overlay => "overlay",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputKind::Latent => "npy",
            _ => "png",
        }
    }

    /// The kinds a model of this task can produce.
    pub fn for_task(task: Task) -> &'static [OutputKind] {
        match task {
            Task::Denoise => &[OutputKind::Denoised],
            Task::Reconstruct => &[OutputKind::Reconstruction, OutputKind::Latent],
            Task::Segment => &[OutputKind::Segmentation, OutputKind::Overlay],
        }
    }
}

impl std::str::FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        OutputKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = OutputKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown output kind {s:?} (known: {})", names.join(", "))
            })
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
    /// What a stream source (stdin) does when the pipeline is full. Folder sources always
    /// block: their files wait safely on disk.
    pub overload: Overload,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            capacity: 8,
            overload: Overload::Block,
        }
    }
}

/// Queue engines a `[source]` or `[sink]` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueKind {
    #[default]
    Redis,
}

/// A queue source: `redis://HOST:PORT/STREAM` plus consumer-group settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSourceConfig {
    pub kind: QueueKind,
    /// `redis://HOST:PORT/STREAM`; `--input` overrides it.
    pub url: Option<String>,
    /// Consumer group; created (with the stream) if missing.
    pub group: String,
    /// Consumer name; default host name + process id.
    pub consumer: Option<String>,
    /// Entries pending this long on a consumer (it died) are taken over.
    pub claim_idle_ms: u64,
    /// An entry delivered more often than this goes to the dead-letter stream `STREAM:dead`.
    pub max_deliveries: u64,
    /// Most entries read at once (never more than the pipeline has room for).
    pub batch: usize,
    /// Largest inline `data` field accepted.
    pub max_inline_bytes: u64,
    /// How long one read waits for new entries.
    pub block_ms: u64,
}

impl Default for QueueSourceConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Redis,
            url: None,
            group: "aestream".into(),
            consumer: None,
            claim_idle_ms: 10_000,
            max_deliveries: 5,
            batch: 16,
            max_inline_bytes: 32 << 20,
            block_ms: 1000,
        }
    }
}

/// A queue sink: one entry per result in `redis://HOST:PORT/STREAM`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSinkConfig {
    pub kind: QueueKind,
    /// `redis://HOST:PORT/STREAM`; `--output` overrides it.
    pub url: Option<String>,
    /// Approximate cap on the result stream's length (XADD MAXLEN ~); 0 = none.
    pub maxlen: u64,
}

impl Default for QueueSinkConfig {
    fn default() -> Self {
        Self {
            kind: QueueKind::Redis,
            url: None,
            maxlen: 100_000,
        }
    }
}

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

/// Overload policy of stream sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Overload {
    /// Wait for room: lossless, the writer of the stream is slowed down.
    #[default]
    Block,
    /// Drop the oldest waiting frame to make room (counted in `aestream_dropped_total`).
    DropOldest,
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
    /// Denoising: each patch's loss is weighted by (25 / max(σ, 5))^p. With p = 0 (plain
    /// MSE) the strongest noise dominates the loss and a blind model learns to smooth fine
    /// texture away at low σ; p ≈ 1.5 weighs every σ about equally in PSNR terms.
    pub sigma_weight_power: f32,
    /// Denoising and inpainting: the training photos are also used downscaled by each of these
    /// factors (antialiased): finer texture than the originals show, and less of their own
    /// noise and JPEG artefacts. `[1.0]`: the photos as they are.
    pub scales: Vec<f32>,
    /// Fraction of the training images held out for validation when no `--val` is given.
    pub val_fraction: f64,
    /// Write a checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Loss between output and target: `mse`, or `bce` (binary cross-entropy on the logits,
    /// computed in a numerically stable form; for sigmoid outputs).
    pub loss: Loss,
    /// Sparsity penalty λ: adds λ·Σ|h_i| of the code, averaged over frames.
    pub l1: f64,
    /// Augmentation of fixed-size training frames: random rotation (±degrees), scale
    /// (1 ± jitter), shift (± fraction of the size) and left-right flips.
    pub rotate_deg: f32,
    pub scale_jitter: f32,
    pub shift: f32,
    pub hflip: bool,
    /// Random contrast (1 ± jitter) and brightness (± jitter/2) of augmented frames.
    pub intensity_jitter: f32,
    /// Path components left out of `--data` (e.g. the held-out persons `s31` … `s40`).
    pub exclude: Vec<String>,
    /// Labelled CSV data (rows sorted by class): the first this many rows of each class
    /// train, the rest validate. 0 = use `val_fraction`.
    pub per_class_train: usize,
    /// Segmentation: the region `[x, y, width, height]` of each image trained on; the rest of
    /// the image validates.
    pub region: Option<[usize; 4]>,
    /// `dense-ae` with `bypass`: start from a PCA of the (augmented) training frames.
    pub pca_init: bool,
    /// Inpainting: each training patch loses a fraction of its pixels drawn uniformly from
    /// `[mask_min, mask_max]`; validation uses `val_mask`.
    pub mask_min: f32,
    pub mask_max: f32,
    pub val_mask: f32,
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
            sigma_weight_power: 0.0,
            scales: vec![1.0],
            val_fraction: 0.1,
            checkpoint_every: 100,
            loss: Loss::Mse,
            l1: 0.0,
            rotate_deg: 0.0,
            scale_jitter: 0.0,
            shift: 0.0,
            hflip: false,
            intensity_jitter: 0.0,
            exclude: vec![],
            per_class_train: 0,
            region: None,
            pca_init: false,
            mask_min: 0.0,
            mask_max: 0.0,
            val_mask: 0.3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    Mse,
    Bce,
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
        const ARCHS: [&str; 5] = [
            "unet-denoiser",
            "unet-inpaint",
            "dense-ae",
            "conv-ae",
            "unet-segment",
        ];
        let m = &self.model;
        if !ARCHS.contains(&m.arch.as_str()) {
            return Err(bad(
                "model.arch",
                format!(
                    "unknown architecture {:?} (known: {})",
                    m.arch,
                    ARCHS.join(", ")
                ),
            ));
        }
        let multiple = m.size_multiple();
        match m.arch.as_str() {
            "unet-denoiser" | "unet-inpaint" => {
                if m.channels.is_empty()
                    || m.channels.len() > 6
                    || m.channels.len() != m.blocks.len()
                {
                    return Err(bad(
                        "model.blocks",
                        "must have one entry per entry of `model.channels` (1 to 6 levels)".into(),
                    ));
                }
            }
            "dense-ae" => {
                let Some([w, h]) = m.size else {
                    return Err(bad(
                        "model.size",
                        "dense-ae needs `size = [width, height]`".into(),
                    ));
                };
                if m.layers.len() < 2 || m.layers[0] != w * h || m.layers.contains(&0) {
                    return Err(bad(
                        "model.layers",
                        format!(
                            "must start with width × height = {} and end with the code width",
                            w * h
                        ),
                    ));
                }
                if m.topk >= *m.layers.last().unwrap_or(&0) && m.topk != 0 {
                    return Err(bad(
                        "model.topk",
                        "must be smaller than the code width".into(),
                    ));
                }
            }
            _ => {
                if m.channels.is_empty() || m.channels.len() > 6 {
                    return Err(bad("model.channels", "must have 1 to 6 levels".into()));
                }
                if m.arch == "conv-ae" {
                    let Some([w, h]) = m.size else {
                        return Err(bad(
                            "model.size",
                            "conv-ae needs `size = [width, height]`".into(),
                        ));
                    };
                    if w == 0
                        || h == 0
                        || !w.is_multiple_of(multiple)
                        || !h.is_multiple_of(multiple)
                    {
                        return Err(bad(
                            "model.size",
                            format!("must be a multiple of {multiple}"),
                        ));
                    }
                    if m.code_channels == 0 {
                        return Err(bad("model.code_channels", "must be at least 1".into()));
                    }
                }
            }
        }
        if let Some([w, h]) = m.size {
            if w == 0 || h == 0 || w * h > 1 << 22 {
                return Err(bad(
                    "model.size",
                    "must be positive and at most 2048×2048".into(),
                ));
            }
        }
        if m.tile < 2 * m.tile_overlap + multiple || !m.tile.is_multiple_of(multiple) {
            return Err(bad(
                "model.tile",
                format!(
                    "must be a multiple of {multiple} and larger than twice `tile_overlap` ({})",
                    m.tile_overlap
                ),
            ));
        }
        let allowed = OutputKind::for_task(m.task());
        if let Some(k) = self.output.kinds.iter().find(|k| !allowed.contains(k)) {
            let names: Vec<_> = allowed.iter().map(|k| k.name()).collect();
            return Err(bad(
                "output.kinds",
                format!(
                    "{} cannot emit {:?} (it can: {})",
                    m.arch,
                    k.name(),
                    names.join(", ")
                ),
            ));
        }
        let [lo, hi] = self.normalise.percentiles;
        if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) || lo >= hi {
            return Err(bad(
                "normalise.percentiles",
                "must be [low, high] with 0 ≤ low < high ≤ 100".into(),
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
        if !(0.0..=255.0).contains(&self.infer.noise_sigma) {
            return Err(bad(
                "infer.noise_sigma",
                "must be between 0 (estimate) and 255".into(),
            ));
        }
        if self.infer.sure_blend && m.arch != "unet-denoiser" {
            return Err(bad(
                "infer.sure_blend",
                format!("needs a Gaussian denoiser (unet-denoiser), not {}", m.arch),
            ));
        }
        if self.channels.capacity == 0 {
            return Err(bad("channels.capacity", "must be at least 1".into()));
        }
        let sc = &self.train.scales;
        if sc.is_empty() || sc.iter().any(|&s| !(s > 0.05 && s <= 1.0)) {
            return Err(bad(
                "train.scales",
                "must be a non-empty list of factors in (0.05, 1]".into(),
            ));
        }
        let f = &self.finetune;
        let multiple = self.model.size_multiple().max(1);
        if f.patch < 16 || !f.patch.is_multiple_of(multiple) {
            return Err(bad(
                "finetune.patch",
                format!("must be at least 16 and a multiple of {multiple}"),
            ));
        }
        for (key, v) in [
            ("finetune.buffer", f.buffer),
            ("finetune.holdout", f.holdout),
            ("finetune.batch", f.batch),
            ("finetune.threads", f.threads),
            ("finetune.round_steps", f.round_steps),
            ("finetune.max_steps_per_minute", f.max_steps_per_minute),
            ("finetune.val_patches", f.val_patches),
            ("finetune.keep", f.keep),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
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
        if self.train.l1 < 0.0 || !self.train.l1.is_finite() {
            return Err(bad("train.l1", "must be ≥ 0".into()));
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
        for scales in ["[]", "[0.0]", "[1.5]", "[1.0, -0.5]"] {
            let text = BUILTIN_PIPELINES[0]
                .1
                .replace("[train]", &format!("[train]\nscales = {scales}"));
            let err = PipelineConfig::from_toml(&text, "z.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains("train.scales"), "{scales}: {err}");
        }
    }
}
