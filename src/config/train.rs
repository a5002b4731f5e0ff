//! `[train]`: offline training (`aestream train`) — patches, batches, schedule, loss,
//! augmentation and how the data is split.

use serde::{Deserialize, Serialize};

use super::{within, Invalid};

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
    // The keys below are left out of the settings hash (a model's version) at their
    // defaults, so the versions of pipelines that do not set them stay what they were.
    /// `dense-ae` without `bypass`: AdamW steps of layer-wise pretraining per encoder layer
    /// (with its mirrored decoder layer) before the whole network is trained; 0 = none. See
    /// `train::pretrain`.
    #[serde(skip_serializing_if = "is_default")]
    pub pretrain_steps: usize,
    /// Pretraining: the fraction of each layer's inputs set to zero (masking noise: stacked
    /// denoising autoencoders); 0 = plain stacked autoencoders.
    #[serde(skip_serializing_if = "is_default")]
    pub pretrain_noise: f32,
    /// Pretraining: what each layer pair learns to reconstruct.
    #[serde(skip_serializing_if = "is_default")]
    pub pretrain_target: PretrainTarget,
    /// Pretraining's learning rate (default: `lr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrain_lr: Option<f64>,
    /// How the weights file is stored: `f32`, or `f16` (half the size; converted back to the
    /// computing type when loaded). Checkpoints stay f32.
    #[serde(skip_serializing_if = "is_default")]
    pub weights_dtype: WeightsDtype,
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
            pretrain_steps: 0,
            pretrain_noise: 0.0,
            pretrain_target: PretrainTarget::Layer,
            pretrain_lr: None,
            weights_dtype: WeightsDtype::F32,
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

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// What a layer pair learns to reconstruct in layer-wise pretraining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PretrainTarget {
    /// Its own input, the output of the layers below (stacked denoising autoencoders).
    #[default]
    Layer,
    /// The frames themselves, its reconstruction passed on through the decoder layers
    /// already pretrained (fixed).
    Input,
}

/// The type a trained weights file is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightsDtype {
    #[default]
    F32,
    F16,
}

impl WeightsDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            WeightsDtype::F32 => candle_core::DType::F32,
            WeightsDtype::F16 => candle_core::DType::F16,
        }
    }
}

impl TrainConfig {
    /// Scales are factors the photos can be shrunk by; the L1 weight is a finite
    /// non-negative number; patches fit the model (`multiple`: its size multiple).
    pub fn validate(&self, multiple: usize) -> Result<(), Invalid> {
        let sc = &self.scales;
        if sc.is_empty() || sc.iter().any(|&s| !(s > 0.05 && s <= 1.0)) {
            return Err(Invalid::new(
                "train.scales",
                sc,
                "must be a non-empty list of factors in (0.05, 1]",
            ));
        }
        if self.l1 < 0.0 || !self.l1.is_finite() {
            return Err(Invalid::new("train.l1", self.l1, "must be ≥ 0"));
        }
        within("train.batch", self.batch, 1, 4096)?;
        within("train.steps_per_epoch", self.steps_per_epoch, 1, 10_000_000)?;
        within("train.epochs", self.epochs, 1, 100_000)?;
        within(
            "train.checkpoint_every",
            self.checkpoint_every,
            1,
            usize::MAX,
        )?;
        within("train.lr", self.lr, f64::MIN_POSITIVE, 10.0)?;
        within("train.weight_decay", self.weight_decay, 0.0, 1.0)?;
        within("train.sigma_max", self.sigma_max, 0.0, 255.0)?;
        within("train.val_sigma", self.val_sigma, 0.0, 255.0)?;
        within(
            "train.sigma_weight_power",
            self.sigma_weight_power,
            0.0,
            4.0,
        )?;
        within("train.val_fraction", self.val_fraction, 0.0, 0.99)?;
        within("train.rotate_deg", self.rotate_deg, 0.0, 180.0)?;
        within("train.scale_jitter", self.scale_jitter, 0.0, 0.9)?;
        within("train.shift", self.shift, 0.0, 1.0)?;
        within("train.intensity_jitter", self.intensity_jitter, 0.0, 1.0)?;
        within("train.mask_min", self.mask_min, 0.0, 1.0)?;
        within(
            "train.mask_max",
            self.mask_max,
            self.mask_min.clamp(0.0, 1.0),
            1.0,
        )?;
        within("train.val_mask", self.val_mask, 0.0, 1.0)?;
        within("train.pretrain_steps", self.pretrain_steps, 0, 10_000_000)?;
        within("train.pretrain_noise", self.pretrain_noise, 0.0, 0.9)?;
        if let Some(lr) = self.pretrain_lr {
            within("train.pretrain_lr", lr, f64::MIN_POSITIVE, 10.0)?;
        }
        if let Some(r) = self.region {
            if r[2] == 0 || r[3] == 0 || r.iter().any(|&v| v > 1 << 20) {
                return Err(Invalid::new(
                    "train.region",
                    r,
                    "must be [x, y, width, height] with a positive size, each at most 1048576",
                ));
            }
        }
        if !self.patch.is_multiple_of(multiple) || self.patch == 0 || self.patch > 2048 {
            return Err(Invalid::new(
                "train.patch",
                self.patch,
                format!("must be a positive multiple of {multiple}, at most 2048"),
            ));
        }
        Ok(())
    }
}
