//! Training the denoiser (and the inpainter): random patches of the training photos with
//! Gaussian noise of random σ (or random missing pixels), validated by PSNR on whole held-out
//! images at a fixed σ through the same tiled inference the pipeline runs.

use std::collections::BTreeMap;

use candle_core::Tensor;
use rand::SeedableRng;

use super::loss::{loss_of, sigma_weights, weighted_mse};
use super::{names_of, Job, TrainArgs, Val};
use crate::config::PipelineConfig;
use crate::data::dataset;
use crate::data::patches::{self, load_folder, PatchSampler, TrainImage};
use crate::error::Result;
use crate::metrics;
use crate::model::{Model, Net, NetModel};
use crate::stage::{corrupt, infer, tiling::TilePlan};

/// Validation: PSNR of the model on each val image's luma at σ = `sigma` (fixed noise seed).
pub struct ValResult {
    pub loss: f64,
    pub psnr_input: f64,
    pub psnr: f64,
}

/// How validation frames are corrupted.
#[derive(Debug, Clone, Copy)]
pub enum ValCorruption {
    /// Gaussian noise, σ on the 0–255 scale.
    Gaussian(f32),
    /// This fraction of pixels missing (set to 0).
    Mask(f32),
}

pub fn validate(
    model: &dyn Model,
    images: &[TrainImage],
    corruption: ValCorruption,
    plan: &TilePlan,
) -> Result<ValResult> {
    let (mut loss, mut pin, mut pout) = (0.0, 0.0, 0.0);
    for (i, img) in images.iter().enumerate() {
        let clean = &img.planes[0];
        let mut noisy = clean.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + i as u64);
        match corruption {
            ValCorruption::Gaussian(sigma) => corrupt::gaussian(&mut noisy, sigma, true, &mut rng),
            ValCorruption::Mask(p) => {
                corrupt::mask(&mut noisy, p, &mut rng);
            }
        }
        let out = infer::run_plane(
            model,
            &noisy,
            img.w,
            img.h,
            plan,
            infer::RunOpts {
                max_batch: 4,
                max_batch_pixels: 1 << 19,
                ensemble: 1,
                sure_blend: false,
                noise_sigma: None,
            },
        )?;
        let out: Vec<f32> = out
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() / 255.0)
            .collect();
        loss += metrics::mse(&out, clean);
        pin += metrics::psnr(&noisy, clean);
        pout += metrics::psnr(&out, clean);
    }
    let n = images.len().max(1) as f64;
    Ok(ValResult {
        loss: loss / n,
        psnr_input: pin / n,
        psnr: pout / n,
    })
}

/// The denoiser: random patches of the training photos, Gaussian noise of random σ.
pub(super) fn denoise_job<'a>(
    cfg: &'a PipelineConfig,
    args: &'a TrainArgs,
    net: &'a Net,
    model: &'a NetModel,
) -> Result<Job<'a>> {
    let tc = &cfg.train;
    let (train_imgs, val_imgs) = match &args.val {
        Some(dir) => (load_folder(&args.data)?, load_folder(dir)?),
        // Hold out every k-th image when no validation folder is given.
        None => dataset::every_kth(load_folder(&args.data)?, tc.val_fraction),
    };
    let (train_names, val_names) = (names_of(&train_imgs), names_of(&val_imgs));
    let train_imgs = patches::with_scales(train_imgs, &tc.scales, tc.patch);
    // Fail before training starts if no image is large enough.
    PatchSampler::new(&train_imgs, tc.patch)?;
    let plan = TilePlan::for_pipeline(cfg, net.size_multiple());
    let dev = args.device.clone();
    let p = tc.patch;
    Ok(Job {
        step_loss: Box::new(move |rng| {
            let sampler = PatchSampler::new(&train_imgs, p)?;
            let (noisy, clean, sigmas) = if tc.mask_max > 0.0 {
                let (m, c) = sampler.masked_batch(rng, tc.batch, tc.mask_min, tc.mask_max);
                (m, c, vec![])
            } else {
                sampler.batch_with_sigmas(rng, tc.batch, tc.sigma_max)
            };
            let x = Tensor::from_vec(noisy, (tc.batch, p, p, 1), &dev)?;
            let y = Tensor::from_vec(clean, (tc.batch, p, p, 1), &dev)?;
            let raw = net.forward_raw(&x)?.raw;
            if tc.sigma_weight_power > 0.0 && !sigmas.is_empty() {
                let w = sigma_weights(&sigmas, tc.sigma_weight_power);
                let w = Tensor::from_vec(w, tc.batch, &dev)?;
                return Ok(weighted_mse(&net.activate(&raw)?, &y, &w)?);
            }
            Ok(loss_of(net, tc.loss, &raw, &y)?)
        }),
        validate: Box::new(move || {
            if val_imgs.is_empty() {
                return Ok(Val {
                    loss: f64::NAN,
                    measure: "MSE",
                    metrics: BTreeMap::new(),
                    line: "no validation images".into(),
                });
            }
            let corruption = if tc.mask_max > 0.0 {
                ValCorruption::Mask(tc.val_mask)
            } else {
                ValCorruption::Gaussian(tc.val_sigma)
            };
            let v = validate(model, &val_imgs, corruption, &plan)?;
            let what = match corruption {
                ValCorruption::Mask(p) => format!("{:.0}% missing", 100.0 * p),
                ValCorruption::Gaussian(s) => format!("σ={s}"),
            };
            Ok(Val {
                loss: v.loss,
                measure: "MSE",
                metrics: BTreeMap::from([
                    ("sigma".to_string(), tc.val_sigma as f64),
                    (
                        "mask".to_string(),
                        if tc.mask_max > 0.0 {
                            tc.val_mask as f64
                        } else {
                            0.0
                        },
                    ),
                    ("psnr_input".to_string(), v.psnr_input),
                    ("psnr".to_string(), v.psnr),
                ]),
                line: format!(
                    "val {what} PSNR {:.2} dB (input {:.2} dB)",
                    v.psnr, v.psnr_input
                ),
            })
        }),
        data: args.data.display().to_string(),
        train_names,
        val_names,
        pretrain: Vec::new(),
    })
}
