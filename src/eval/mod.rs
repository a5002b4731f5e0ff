//! `aestream eval`: corrupt each clean image of a folder, run the model, measure.
//!
//! The corrupted input is quantised to 8 bits (as a noisy file would be) and so is the model's
//! output (as the pipeline writes it), so the numbers are those of the files a user gets.
//!
//! One file per task ([`denoise`], [`reconstruct`], [`segment`]); [`montage`] draws the
//! pictures, [`score`] holds the scores that training's validation shares. Evaluation reads
//! its data through [`crate::data`] and never depends on `train`.

pub mod analysis;
mod denoise;
pub mod instances;
pub mod montage;
mod reconstruct;
pub mod score;
mod segment;
pub mod text;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::PipelineConfig;
use crate::error::Result;
use crate::model::{Model, Task};
use crate::stage::corrupt;
pub use montage::{write_montage, Tile};

/// A corruption given on the command line: `gaussian:SIGMA`, `salt-pepper:P`, `mask:P`, `none`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Noise {
    None,
    Gaussian { sigma: f32 },
    SaltPepper { p: f32 },
    Mask { p: f32 },
}

impl std::str::FromStr for Noise {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "none" {
            return Ok(Noise::None);
        }
        let (kind, v) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected KIND:VALUE, e.g. gaussian:25"))?;
        let v: f32 = v
            .parse()
            .map_err(|_| format!("{s:?}: {v:?} is not a number"))?;
        let unit = |v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(format!("{s:?}: the fraction must be between 0 and 1"))
            }
        };
        match kind {
            "gaussian" if v >= 0.0 && v.is_finite() => Ok(Noise::Gaussian { sigma: v }),
            "gaussian" => Err(format!("{s:?}: σ must be ≥ 0")),
            "salt-pepper" => Ok(Noise::SaltPepper { p: unit(v)? }),
            "mask" => Ok(Noise::Mask { p: unit(v)? }),
            _ => Err(format!(
                "{s:?}: unknown noise {kind:?} (gaussian, salt-pepper, mask, none)"
            )),
        }
    }
}

impl Noise {
    fn apply<R: rand::Rng>(&self, plane: &mut [f32], rng: &mut R) {
        match *self {
            Noise::None => {}
            Noise::Gaussian { sigma } => corrupt::gaussian(plane, sigma, true, rng),
            Noise::SaltPepper { p } => corrupt::salt_pepper(plane, p, rng),
            Noise::Mask { p } => {
                corrupt::mask(plane, p, rng);
            }
        }
    }

    /// The montage's name for a row of frames with this corruption applied.
    fn row_label(&self) -> &'static str {
        match self {
            Noise::None => "input",
            Noise::Gaussian { .. } | Noise::SaltPepper { .. } => "noisy",
            Noise::Mask { .. } => "masked",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageScore {
    pub name: String,
    pub width: usize,
    pub height: usize,
    pub psnr_input: f64,
    pub psnr: f64,
    pub ssim_input: f64,
    pub ssim: f64,
}

/// The JSON `aestream eval --json` prints: common fields, then the task's scores.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub pipeline: String,
    pub data: String,
    pub noise: Noise,
    pub frames: usize,
    /// Mean squared error per pixel of the output against the clean frame, [0, 1] scale.
    pub mse: f64,
    pub seconds: f64,
    pub seconds_per_frame: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub denoise: Option<DenoiseScores>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub reconstruct: Option<ReconScores>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentScores>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DenoiseScores {
    pub grey: bool,
    pub psnr_input: f64,
    pub psnr: f64,
    pub ssim_input: f64,
    pub ssim: f64,
    pub images: Vec<ImageScore>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconScores {
    /// Values per frame in the code.
    pub code_len: usize,
    /// MSE of a PCA with `code_len` components fitted on `--pca-fit`, and `mse / pca_mse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pca_mse: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pca_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pca_fit: Option<String>,
    /// Fraction of code values with |h| < 0.01 over all frames.
    pub sparsity: f64,
    /// Mean fraction of units active (|h| ≥ 0.01) per frame.
    pub active_per_frame: f64,
    /// 5-NN accuracy on the codes, fitted on `knn_fit`'s codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn5_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_fit: Option<String>,
    /// The same classifier on raw pixels (the resized frames), for comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn5_accuracy_pixels: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentScores {
    pub iou: f64,
    pub dice: f64,
    /// Fraction of pixels labelled correctly.
    pub pixel_accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<[usize; 4]>,
    /// With `--instances`: objects matched one-to-one at IoU > 0.5.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<instances::InstanceScores>,
}

pub struct EvalArgs {
    pub data: PathBuf,
    /// `None`: the task's default (Gaussian σ=25 for denoisers, none otherwise).
    pub noise: Option<Noise>,
    pub seed: u64,
    /// Turn colour images grey before corrupting them (as the PEERS table does).
    pub grey: bool,
    pub progress: bool,
    pub pca_fit: Option<PathBuf>,
    /// Labels for a folder of frames: a CSV of `relative/path,label` lines.
    pub labels: Option<PathBuf>,
    /// Where the k-NN classifier's labelled codes come from (default: the training split of
    /// labelled CSV data).
    pub knn_fit: Option<PathBuf>,
    pub masks: Option<PathBuf>,
    /// Segmentation: object label maps (a file, or a folder named as the images).
    pub instances: Option<PathBuf>,
    pub crop: Option<[usize; 4]>,
    pub montage: Option<PathBuf>,
}

pub(crate) fn quantise(p: &mut [f32]) {
    p.iter_mut()
        .for_each(|v| *v = (v.clamp(0.0, 1.0) * 255.0).round() / 255.0);
}

/// Evaluates a pipeline's model on `args.data` as its task calls for.
pub fn evaluate(cfg: &PipelineConfig, model: &dyn Model, args: &EvalArgs) -> Result<EvalReport> {
    match model.spec().task {
        Task::Denoise => denoise::evaluate_denoise(cfg, model, args),
        Task::Reconstruct => reconstruct::evaluate_reconstruct(cfg, model, args),
        Task::Segment => segment::evaluate_segment(cfg, model, args),
    }
}

pub(crate) fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_specs_parse_and_reject() {
        assert_eq!("gaussian:25".parse(), Ok(Noise::Gaussian { sigma: 25.0 }));
        assert_eq!("mask:0.5".parse(), Ok(Noise::Mask { p: 0.5 }));
        assert_eq!("none".parse(), Ok(Noise::None));
        assert!("gaussian".parse::<Noise>().is_err());
        assert!("mask:2".parse::<Noise>().is_err());
        assert!("blur:3".parse::<Noise>().is_err());
    }
}
