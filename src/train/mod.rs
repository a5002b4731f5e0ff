//! Offline training (`aestream train`): the loop, validation, checkpoints and `--resume`.
//!
//! Checkpoints hold the weights, the AdamW moments and the step, written atomically every
//! `checkpoint_every` steps; the data of step `k` is drawn from an RNG seeded by `(seed, k)`, so
//! a resumed run continues exactly as the uninterrupted one would have.

pub mod adamw;
pub mod data;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use serde::Serialize;

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{denoise::Denoiser, DenoiseModel, Model};
use crate::sink::folder::write_atomic;
use crate::stage::{corrupt, infer, tiling::TilePlan};
use adamw::{AdamW, AdamWParams};
use data::{load_folder, PatchSampler, TrainImage};

/// What `aestream train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainArgs {
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub out: PathBuf,
    pub seed: u64,
    pub resume: bool,
    pub progress: bool,
    /// Overrides `train.steps_per_epoch` (small runs in tests).
    pub steps_per_epoch: Option<usize>,
    pub device: Device,
    pub command: String,
}

/// Written beside the weights as `<out>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub pipeline: String,
    pub arch: String,
    pub channels: Vec<usize>,
    pub blocks: Vec<usize>,
    pub data: String,
    pub train_images: Vec<String>,
    pub val_images: Vec<String>,
    pub epochs: usize,
    pub steps: usize,
    pub batch: usize,
    pub patch: usize,
    pub sigma_max: f32,
    pub seed: u64,
    pub final_train_loss: f64,
    pub val_loss: f64,
    pub val_sigma: f32,
    pub val_psnr_input: f64,
    pub val_psnr: f64,
    pub seconds: f64,
    pub command: String,
}

/// Path of the checkpoint that belongs to a weights file.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let bytes = safetensors::serialize(
        tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>(),
        None,
    )
    .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

fn model_tensors(vm: &VarMap) -> HashMap<String, Tensor> {
    let data = vm.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Validation: PSNR of the model on each val image's luma at σ = `sigma` (fixed noise seed).
pub struct ValResult {
    pub loss: f64,
    pub psnr_input: f64,
    pub psnr: f64,
}

pub fn validate(
    model: &dyn Model,
    images: &[TrainImage],
    sigma: f32,
    plan: &TilePlan,
) -> Result<ValResult> {
    let (mut loss, mut pin, mut pout) = (0.0, 0.0, 0.0);
    for (i, img) in images.iter().enumerate() {
        let clean = &img.planes[0];
        let mut noisy = clean.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + i as u64);
        corrupt::gaussian(&mut noisy, sigma, true, &mut rng);
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

/// Trains the pipeline's denoiser and writes `args.out` (+ `.json` metadata, + `.ckpt`).
pub fn train(cfg: &PipelineConfig, args: &TrainArgs) -> Result<TrainReport> {
    let started = Instant::now();
    let tc = &cfg.train;
    let mut train_imgs = load_folder(&args.data)?;
    let val_imgs = match &args.val {
        Some(dir) => load_folder(dir)?,
        None => {
            // Hold out every k-th image (at least one) when no validation folder is given.
            let k = ((1.0 / tc.val_fraction.max(1e-3)).round() as usize).max(2);
            let mut val = Vec::new();
            let mut keep = Vec::new();
            for (i, img) in train_imgs.into_iter().enumerate() {
                if i % k == k - 1 {
                    val.push(img)
                } else {
                    keep.push(img)
                }
            }
            if keep.is_empty() {
                keep = std::mem::take(&mut val);
                val = Vec::new();
            }
            train_imgs = keep;
            val
        }
    };
    let sampler = PatchSampler::new(&train_imgs, tc.patch)?;
    let epochs = args.epochs.unwrap_or(tc.epochs);
    let spe = args.steps_per_epoch.unwrap_or(tc.steps_per_epoch);
    let total = epochs * spe;

    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &args.device);
    let net = Denoiser::new(vb, &cfg.model.denoiser())?;
    let vars: Vec<(String, candle_core::Var)> = {
        let d = vm.data().lock().expect("varmap lock");
        d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut opt = AdamW::new(
        vars,
        AdamWParams {
            lr: tc.lr,
            weight_decay: tc.weight_decay,
            ..Default::default()
        },
    )?;
    let ckpt = checkpoint_path(&args.out);
    if args.resume && ckpt.is_file() {
        let state = candle_core::safetensors::load(&ckpt, &args.device)?;
        let step = state
            .get("train.step")
            .ok_or_else(|| Error::Other(format!("{}: no train.step", ckpt.display())))?
            .to_vec1::<f32>()?[0] as usize;
        {
            let d = vm.data().lock().expect("varmap lock");
            for (k, v) in d.iter() {
                let t = state.get(k).ok_or_else(|| {
                    Error::Other(format!("{}: checkpoint lacks {k}", ckpt.display()))
                })?;
                v.set(t)?;
            }
        }
        opt.load_state(&state, step)?;
        tracing::info!("resumed from {} at step {step}", ckpt.display());
    } else if args.resume {
        tracing::warn!(
            "--resume: no checkpoint at {}, starting fresh",
            ckpt.display()
        );
    }
    let model = DenoiseModel::from_net(net.clone(), args.device.clone());
    let plan = TilePlan {
        multiple: net.size_multiple(),
        tile: cfg.model.tile,
        overlap: cfg.model.tile_overlap,
        pad: cfg.normalise.pad,
    };

    let bar = if args.progress {
        let b = indicatif::ProgressBar::new(total as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
                .expect("valid template"),
        );
        b.set_position(opt.step as u64);
        Some(b)
    } else {
        None
    };
    let save_ckpt = |opt: &AdamW| -> Result<()> {
        let mut t = model_tensors(&vm);
        t.extend(opt.state());
        t.insert(
            "train.step".into(),
            Tensor::new(&[opt.step as f32], &Device::Cpu)?,
        );
        save_tensors(&ckpt, &t)
    };
    let mut ema_loss = f64::NAN;
    let p = tc.patch;
    let warmup = 50.min(total / 10 + 1);
    while opt.step < total {
        let step = opt.step;
        let lr = if step < warmup {
            tc.lr * (step + 1) as f64 / warmup as f64
        } else {
            let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
            tc.lr * (0.02 + 0.98 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
        };
        opt.set_lr(lr);
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003) ^ step as u64);
        let (noisy, clean) = sampler.batch(&mut rng, tc.batch, tc.sigma_max);
        let x = Tensor::from_vec(noisy, (tc.batch, p, p, 1), &args.device)?;
        let y = Tensor::from_vec(clean, (tc.batch, p, p, 1), &args.device)?;
        let t0 = Instant::now();
        let loss = (net_forward(&net, &x)? - &y)?.sqr()?.mean_all()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        tracing::debug!(
            "forward {:.0} ms, backward {:.0} ms, optimizer {:.0} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            t2.elapsed().as_secs_f64() * 1e3
        );
        let l = loss.to_scalar::<f32>()? as f64;
        ema_loss = if ema_loss.is_nan() {
            l
        } else {
            0.98 * ema_loss + 0.02 * l
        };
        let done = opt.step;
        if let Some(b) = &bar {
            b.set_position(done as u64);
            b.set_message(format!(
                "loss {:.3e} (≈{:.2} dB)",
                ema_loss,
                -10.0 * ema_loss.log10()
            ));
        } else if done % 20 == 0 {
            tracing::info!(
                "step {done}/{total} loss {ema_loss:.4e} (≈{:.2} dB) lr {lr:.2e} {:.1}s",
                -10.0 * ema_loss.log10(),
                started.elapsed().as_secs_f64()
            );
        }
        if done % tc.checkpoint_every == 0 || done == total {
            save_ckpt(&opt)?;
        }
        if (done % spe == 0 || done == total) && !val_imgs.is_empty() {
            let v = validate(&model, &val_imgs, tc.val_sigma, &plan)?;
            let line = format!(
                "epoch {}/{epochs}: train loss {ema_loss:.4e}, val σ={} PSNR {:.2} dB (input {:.2} dB)",
                done / spe, tc.val_sigma, v.psnr, v.psnr_input
            );
            match &bar {
                Some(b) => b.println(line),
                None => tracing::info!("{line}"),
            }
            // Keep usable weights on disk after every epoch.
            save_tensors(&args.out, &model_tensors(&vm))?;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    save_tensors(&args.out, &model_tensors(&vm))?;
    let v = if val_imgs.is_empty() {
        ValResult {
            loss: f64::NAN,
            psnr_input: f64::NAN,
            psnr: f64::NAN,
        }
    } else {
        validate(&model, &val_imgs, tc.val_sigma, &plan)?
    };
    let names = |v: &[TrainImage]| {
        v.iter()
            .map(|i| {
                i.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    let report = TrainReport {
        pipeline: cfg.name.clone(),
        arch: cfg.model.arch.clone(),
        channels: cfg.model.channels.clone(),
        blocks: cfg.model.blocks.clone(),
        data: args.data.display().to_string(),
        train_images: names(&train_imgs),
        val_images: names(&val_imgs),
        epochs,
        steps: opt.step,
        batch: tc.batch,
        patch: tc.patch,
        sigma_max: tc.sigma_max,
        seed: args.seed,
        final_train_loss: ema_loss,
        val_loss: v.loss,
        val_sigma: tc.val_sigma,
        val_psnr_input: v.psnr_input,
        val_psnr: v.psnr,
        seconds: started.elapsed().as_secs_f64(),
        command: args.command.clone(),
    };
    let mut meta = args.out.as_os_str().to_owned();
    meta.push(".json");
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(Path::new(&meta), &json)?;
    Ok(report)
}

fn net_forward(net: &Denoiser, x: &Tensor) -> candle_core::Result<Tensor> {
    use candle_core::Module;
    net.forward(x)
}
