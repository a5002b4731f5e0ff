//! `aestream eval`: corrupts clean frames, runs the model and scores it — PSNR/SSIM for
//! denoisers, reconstruction MSE against PCA, sparsity and k-NN accuracy for autoencoders,
//! IoU/Dice (and object F1 with `--instances`) for segmentation — as a summary line or one
//! JSON object.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use aestream::config::PipelineConfig;
use aestream::eval::{EvalArgs, Noise};

use super::with_ensemble;

/// Measure a pipeline's model: PSNR/SSIM (denoise), reconstruction MSE against PCA, code
/// sparsity and k-NN accuracy (autoencoders), IoU/Dice (segmentation).
#[derive(Args)]
pub struct EvalCmd {
    pub pipeline: String,
    /// Clean frames: a folder of images (recursive), a .csv[.gz] of digit rows or an IDX
    /// images file; for segmentation an image file or folder.
    #[arg(long)]
    pub data: PathBuf,
    /// gaussian:SIGMA (0-255 scale), salt-pepper:P, mask:P or none (default: gaussian:25
    /// for denoisers, none for the others).
    #[arg(long)]
    pub noise: Option<String>,
    /// Fit a PCA with as many components as the code on these frames and compare.
    #[arg(long)]
    pub pca_fit: Option<PathBuf>,
    /// Labels of a folder of frames: CSV lines `relative/path,label`.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Labelled frames the k-NN classifier is fitted on (default: the training split).
    #[arg(long)]
    pub knn_fit: Option<PathBuf>,
    /// Segmentation: ground-truth mask file, or folder of masks named as the images.
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// Segmentation: true object label maps (grey, each object one value, 0 = background):
    /// a file, or a folder named as the images. Adds object precision, recall and F1.
    #[arg(long)]
    pub instances: Option<PathBuf>,
    /// Score only this region of each frame: X,Y,WIDTH,HEIGHT.
    #[arg(long, value_delimiter = ',')]
    pub crop: Option<Vec<usize>>,
    /// Write a picture: a row of inputs, of corrupted inputs, of outputs, of PCA
    /// reconstructions (where they apply), each named at its left.
    #[arg(long)]
    pub montage: Option<PathBuf>,
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Print one JSON object (otherwise a short summary).
    #[arg(long)]
    pub json: bool,
    /// Turn colour images grey first.
    #[arg(long)]
    pub grey: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Average 1, 2, 4 or 8 flipped (8: and transposed) views (overrides `infer.ensemble`).
    #[arg(long, value_parser = super::ensemble_arg)]
    pub ensemble: Option<usize>,
    /// cpu, cuda (= cuda:0), cuda:N, or auto: the first GPU when built with CUDA and one is
    /// there, else the CPU.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(a: EvalCmd) -> anyhow::Result<()> {
    let cfg = with_ensemble(PipelineConfig::load(&a.pipeline)?, a.ensemble)?;
    let noise: Option<Noise> =
        a.noise
            .map(|n| n.parse())
            .transpose()
            .map_err(|m| aestream::Error::Config {
                origin: "--noise".into(),
                message: m,
            })?;
    let crop = match a.crop.as_deref() {
        None => None,
        Some(&[x, y, w, h]) => Some([x, y, w, h]),
        Some(_) => {
            return Err(aestream::Error::Config {
                origin: "--crop".into(),
                message: "expected X,Y,WIDTH,HEIGHT".into(),
            }
            .into())
        }
    };
    let device = aestream::model::select_device(&a.device)?;
    let model = cfg.load_model(a.weights.as_deref(), &device)?;
    let args = EvalArgs {
        data: a.data,
        noise,
        seed: a.seed,
        grey: a.grey,
        progress: std::io::stderr().is_terminal(),
        pca_fit: a.pca_fit,
        labels: a.labels,
        knn_fit: a.knn_fit,
        masks: a.masks,
        instances: a.instances,
        crop,
        montage: a.montage,
    };
    let r = aestream::eval::evaluate(&cfg, model.as_ref(), &args)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_summary(&r);
    }
    Ok(())
}

/// The human-readable one-line (or few-line) form of an eval report.
fn print_summary(r: &aestream::eval::EvalReport) {
    if let Some(d) = &r.denoise {
        println!(
            "{} frames: PSNR {:.2} dB (input {:.2} dB), SSIM {:.4} (input {:.4}), {:.3} s/frame",
            r.frames, d.psnr, d.psnr_input, d.ssim, d.ssim_input, r.seconds_per_frame
        );
    }
    if let Some(c) = &r.reconstruct {
        print!(
            "{} frames: MSE {:.5} per pixel, code {}",
            r.frames, r.mse, c.code_len
        );
        if let (Some(p), Some(q)) = (c.pca_mse, c.pca_ratio) {
            print!(", PCA MSE {p:.5} (ratio {q:.3})");
        }
        print!(", {:.1}% of |h| < 0.01", 100.0 * c.sparsity);
        if let Some(a) = c.knn5_accuracy {
            print!(", 5-NN accuracy {a:.3}");
        }
        println!();
    }
    if let Some(s) = &r.segment {
        println!(
            "{} frames: IoU {:.4}, Dice {:.4}, pixel accuracy {:.4}",
            r.frames, s.iou, s.dice, s.pixel_accuracy
        );
        if let Some(o) = &s.instances {
            println!(
                "objects: F1 {:.4}, precision {:.4}, recall {:.4} ({} of {} true found, {} predicted)",
                o.f1, o.precision, o.recall, o.matched, o.truth, o.predicted
            );
        }
    }
}
