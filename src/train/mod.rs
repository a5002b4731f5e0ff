//! Offline training (`aestream train`): the loop, validation, checkpoints and `--resume`.
//!
//! Checkpoints hold the weights, the AdamW moments and the step, written atomically every
//! `checkpoint_every` steps; the data of step `k` is drawn from an RNG seeded by `(seed, k)`, so
//! a resumed run continues exactly as the uninterrupted one would have.

pub mod adamw;
pub mod data;
pub mod dataset;
pub mod init;
pub mod online;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::{Loss, PipelineConfig};
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{Arch, Model, Net, NetModel, Task};
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
    /// Warm start: weights whose names and shapes match are copied from this file.
    pub init: Option<PathBuf>,
    pub progress: bool,
    /// Overrides `train.steps_per_epoch` (small runs in tests).
    pub steps_per_epoch: Option<usize>,
    /// Segmentation: the mask file or folder that goes with `data`.
    pub masks: Option<PathBuf>,
    /// Stop once this many steps are done in all (the schedule still spans every epoch);
    /// continue later with `resume`.
    pub stop_after: Option<usize>,
    pub device: Device,
    pub command: String,
}

/// Written beside the weights as `<out>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub pipeline: String,
    pub arch: String,
    /// The pipeline's `[model]` section.
    pub model: serde_json::Value,
    pub data: String,
    pub train_items: usize,
    pub val_items: usize,
    /// Names of the training items (when there are few enough to list).
    pub train_names: Vec<String>,
    pub val_names: Vec<String>,
    pub epochs: usize,
    pub steps: usize,
    pub batch: usize,
    pub loss: String,
    pub seed: u64,
    pub final_train_loss: f64,
    pub val_loss: f64,
    /// Validation metrics of the final weights (PSNR, MSE, sparsity, k-NN accuracy, IoU, …).
    pub val: BTreeMap<String, f64>,
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

/// One validation pass: a loss, named metrics, and the line logged for it.
pub struct Val {
    pub loss: f64,
    pub metrics: BTreeMap<String, f64>,
    pub line: String,
}

/// Loss of one step on a fresh batch (the RNG is seeded by the step).
type StepLoss<'a> = Box<dyn FnMut(&mut rand::rngs::StdRng) -> Result<Tensor> + 'a>;

/// What a task's training supplies to the shared loop.
struct Job<'a> {
    step_loss: StepLoss<'a>,
    validate: Box<dyn FnMut() -> Result<Val> + 'a>,
    data: String,
    train_names: Vec<String>,
    val_names: Vec<String>,
}

/// Trains the pipeline's model and writes `args.out` (+ `.json` metadata, + `.ckpt`).
pub fn train(cfg: &PipelineConfig, args: &TrainArgs) -> Result<TrainReport> {
    let vm = VarMap::new();
    let vb = init::seeded_builder(&vm, args.seed, DType::F32, &args.device);
    let net = Net::new(vb, &cfg.model.arch)?;
    let fixed = cfg.model.arch.fixed_size();
    let model = NetModel::new(net.clone(), args.device.clone(), fixed);
    let job = match net.task() {
        Task::Denoise => denoise_job(cfg, args, &net, &model)?,
        Task::Reconstruct => reconstruct_job(cfg, args, &net, &model, &vm)?,
        Task::Segment => segment_job(cfg, args, &net, &model)?,
    };
    fit(cfg, args, &vm, job)
}

/// Copies every tensor of `path` whose name and shape match a variable of `vm`.
fn warm_start(vm: &VarMap, path: &Path, device: &Device) -> Result<()> {
    let state = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::Other(format!("--init {}: {e}", path.display())))?;
    let d = vm.data().lock().expect("varmap lock");
    let (mut copied, mut fresh) = (0, Vec::new());
    for (k, v) in d.iter() {
        match state.get(k) {
            Some(t) if t.dims() == v.dims() => {
                v.set(t)?;
                copied += 1;
            }
            _ => fresh.push(k.clone()),
        }
    }
    if copied == 0 {
        return Err(Error::Other(format!(
            "--init {}: no tensor matches this model",
            path.display()
        )));
    }
    fresh.sort();
    tracing::info!(
        "warm start from {}: {copied} tensors copied, {} fresh: {}",
        path.display(),
        fresh.len(),
        fresh.join(", ")
    );
    Ok(())
}

/// The shared loop: AdamW with warm-up and cosine decay, progress, checkpoints, validation
/// every epoch, weights and metadata at the end.
fn fit(cfg: &PipelineConfig, args: &TrainArgs, vm: &VarMap, mut job: Job) -> Result<TrainReport> {
    let started = Instant::now();
    let tc = &cfg.train;
    let epochs = args.epochs.unwrap_or(tc.epochs);
    let spe = args.steps_per_epoch.unwrap_or(tc.steps_per_epoch).max(1);
    let total = epochs * spe;
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
    } else {
        if args.resume {
            tracing::warn!(
                "--resume: no checkpoint at {}, starting fresh",
                ckpt.display()
            );
        }
        if let Some(init) = &args.init {
            warm_start(vm, init, &args.device)?;
        }
    }
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
        let mut t = model_tensors(vm);
        t.extend(opt.state());
        t.insert(
            "train.step".into(),
            Tensor::new(&[opt.step as f32], &Device::Cpu)?,
        );
        save_tensors(&ckpt, &t)
    };
    let mut ema_loss = f64::NAN;
    let warmup = 50.min(total / 10 + 1);
    let mut last_val: Option<Val> = None;
    let stop_at = args.stop_after.unwrap_or(total).min(total);
    while opt.step < stop_at {
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
        let loss = (job.step_loss)(&mut rng)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            return Err(Error::Other(format!(
                "training diverged at step {step} (loss {l}); lower train.lr"
            )));
        }
        ema_loss = if ema_loss.is_nan() {
            l
        } else {
            0.98 * ema_loss + 0.02 * l
        };
        let done = opt.step;
        if let Some(b) = &bar {
            b.set_position(done as u64);
            b.set_message(format!("loss {ema_loss:.4e}"));
        } else if done % 50 == 0 {
            tracing::info!(
                "step {done}/{total} loss {ema_loss:.4e} lr {lr:.2e} {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        if done % tc.checkpoint_every.max(1) == 0 || done == total || done == stop_at {
            save_ckpt(&opt)?;
        }
        if done % spe == 0 || done == total {
            let v = (job.validate)()?;
            let line = format!(
                "epoch {}/{epochs}: train loss {ema_loss:.4e}, {}",
                done.div_ceil(spe),
                v.line
            );
            match &bar {
                Some(b) => b.println(line),
                None => tracing::info!("{line}"),
            }
            // Keep usable weights on disk after every epoch.
            save_tensors(&args.out, &model_tensors(vm))?;
            last_val = Some(v);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    save_tensors(&args.out, &model_tensors(vm))?;
    let v = match last_val {
        Some(v) => v,
        None => (job.validate)()?,
    };
    let few = |v: Vec<String>| if v.len() <= 100 { v } else { vec![] };
    let report = TrainReport {
        pipeline: cfg.name.clone(),
        arch: cfg.model.arch.name().to_string(),
        model: serde_json::to_value(&cfg.model).map_err(|e| Error::Other(e.to_string()))?,
        data: job.data.clone(),
        train_items: job.train_names.len(),
        val_items: job.val_names.len(),
        train_names: few(job.train_names),
        val_names: few(job.val_names),
        epochs,
        steps: opt.step,
        batch: tc.batch,
        loss: format!("{:?}", tc.loss).to_lowercase(),
        seed: args.seed,
        final_train_loss: ema_loss,
        val_loss: v.loss,
        val: v.metrics,
        seconds: started.elapsed().as_secs_f64(),
        command: args.command.clone(),
    };
    let mut meta = args.out.as_os_str().to_owned();
    meta.push(".json");
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(Path::new(&meta), &json)?;
    Ok(report)
}

/// Mean loss between `raw` outputs and targets: MSE on the activated output, or BCE on logits
/// in the stable form `relu(z) − z·t + log(1 + exp(−|z|))`.
pub fn loss_of(
    net: &Net,
    loss: Loss,
    raw: &Tensor,
    target: &Tensor,
) -> candle_core::Result<Tensor> {
    match loss {
        Loss::Mse => (net.activate(raw)? - target)?.sqr()?.mean_all(),
        Loss::Bce if net.sigmoid_output() => {
            let softplus = (raw.abs()?.neg()?.exp()? + 1.0)?.log()?;
            ((raw.relu()? - (raw * target)?)? + softplus)?.mean_all()
        }
        Loss::Bce => candle_core::bail!("loss = \"bce\" needs a sigmoid output"),
    }
}

/// Per-patch loss weights (25 / max(σ, 5))^power: absolute, not normalised per batch, so a
/// batch of strong noise really counts less than one of weak noise.
pub fn sigma_weights(sigmas: &[f32], power: f32) -> Vec<f32> {
    sigmas
        .iter()
        .map(|s| (25.0 / s.max(5.0)).powf(power))
        .collect()
}

/// Mean over patches of `w_i` × the patch's MSE; `out`, `target` are `[n, …]`, `w` is `[n]`.
pub fn weighted_mse(out: &Tensor, target: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let n = out.dim(0)?;
    let per = (out - target)?.sqr()?.reshape((n, ()))?.mean(1)?;
    (per * w)?.mean_all()
}

fn names_of(v: &[TrainImage]) -> Vec<String> {
    v.iter()
        .map(|i| {
            i.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// The denoiser: random patches of the training photos, Gaussian noise of random σ.
fn denoise_job<'a>(
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
    let train_imgs = data::with_scales(train_imgs, &tc.scales, tc.patch);
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
    })
}

/// Autoencoders: whole frames resized to the model's size (augmented if asked), reconstruct
/// the input; an L1 penalty on the code when `train.l1` > 0.
fn reconstruct_job<'a>(
    cfg: &'a PipelineConfig,
    args: &'a TrainArgs,
    net: &'a Net,
    model: &'a NetModel,
    vm: &VarMap,
) -> Result<Job<'a>> {
    let tc = &cfg.train;
    let size = model
        .spec()
        .fixed_size
        .ok_or_else(|| Error::Other(format!("{}: the model needs `model.size`", cfg.origin)))?;
    let all = dataset::load_samples(&args.data, &tc.exclude)?;
    let (train_s, mut val_s) = match &args.val {
        Some(v) => (all, dataset::load_samples(v, &tc.exclude)?),
        None => dataset::split(all, tc.per_class_train, tc.val_fraction),
    };
    if train_s.is_empty() {
        return Err(Error::Other(format!(
            "{}: no training samples",
            args.data.display()
        )));
    }
    // Validation stays quick: at most 2000 frames.
    val_s.truncate(2000);
    let train_names: Vec<String> = train_s.iter().map(|s| s.name.clone()).collect();
    let val_names: Vec<String> = val_s.iter().map(|s| s.name.clone()).collect();
    let train_plain: Vec<Vec<f32>> = train_s.iter().map(|s| dataset::resized(s, size)).collect();
    let val_plain: Vec<Vec<f32>> = val_s.iter().map(|s| dataset::resized(s, size)).collect();
    let augment = dataset::augments(tc);
    if tc.pca_init {
        pca_init(cfg, vm, &train_s, size, args.seed)?;
    }
    let dev = args.device.clone();
    let (w, h) = size;
    let sparse = tc.l1 > 0.0 || matches!(net, Net::Dense(d) if d.config().topk > 0);
    let labels_train: Option<Vec<u8>> = train_s.iter().map(|s| s.label).collect();
    let labels_val: Option<Vec<u8>> = val_s.iter().map(|s| s.label).collect();
    let stack = move |frames: &[&Vec<f32>], dev: &Device| -> candle_core::Result<Tensor> {
        let n = frames.len();
        let data: Vec<f32> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        Tensor::from_vec(data, (n, h, w, 1), dev)
    };
    let train_plain = Arc::new(train_plain);
    let train_plain2 = train_plain.clone();
    Ok(Job {
        step_loss: Box::new(move |rng| {
            let frames: Vec<Vec<f32>> = (0..tc.batch)
                .map(|_| {
                    let i = rng.random_range(0..train_s.len());
                    if augment {
                        dataset::augmented(&train_s[i], size, tc, rng)
                    } else {
                        train_plain[i].clone()
                    }
                })
                .collect();
            let x = stack(&frames.iter().collect::<Vec<_>>(), &dev)?;
            let o = net.forward_raw(&x)?;
            let mut loss = loss_of(net, tc.loss, &o.raw, &x)?;
            if tc.l1 > 0.0 {
                if let Some(code) = &o.code {
                    let l1 = (code.abs()?.sum_all()? * (tc.l1 / tc.batch as f64))?;
                    loss = (loss + l1)?;
                }
            }
            Ok(loss)
        }),
        validate: Box::new(move || {
            let r = recon_stats(model, &val_plain, size)?;
            let mut metrics = BTreeMap::from([("mse".to_string(), r.mse)]);
            let mut line = format!("val MSE {:.5} per pixel", r.mse);
            if sparse {
                metrics.insert("sparsity".into(), r.sparsity);
                line += &format!(", {:.1}% of |h| < 0.01", 100.0 * r.sparsity);
                if let (Some(lt), Some(lv)) = (&labels_train, &labels_val) {
                    let fit = recon_stats(model, &train_plain2, size)?;
                    let acc = crate::analysis::knn_accuracy(&fit.codes, lt, &r.codes, lv, 5);
                    metrics.insert("knn5_accuracy".into(), acc);
                    line += &format!(", 5-NN accuracy {acc:.3}");
                }
            }
            Ok(Val {
                loss: r.mse,
                metrics,
                line,
            })
        }),
        data: args.data.display().to_string(),
        train_names,
        val_names,
    })
}

/// Starts a bypassed dense autoencoder as PCA: the linear paths get the principal directions
/// of the (augmented) training frames and the deep paths' last layers start at zero, so
/// training begins at PCA's reconstruction and the deep layers only add what it misses
/// (our stand-in for Hinton & Salakhutdinov's layer-wise pretraining).
fn pca_init(
    cfg: &PipelineConfig,
    vm: &VarMap,
    samples: &[dataset::Sample],
    size: (usize, usize),
    seed: u64,
) -> Result<()> {
    let tc = &cfg.train;
    // `n` layers of weights; the code's width `k` is the PCA's rank.
    let (n, k) =
        match &cfg.model.arch {
            Arch::DenseAe { net, .. } if net.bypass && net.layers.len() > 2 => {
                let n = net.layers.len() - 1;
                (n, net.layers[n])
            }
            _ => return Err(Error::Config {
                origin: cfg.origin.clone(),
                message:
                    "key `train.pca_init`: needs a dense-ae with `bypass = true` and hidden layers"
                        .into(),
            }),
        };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut rows: Vec<Vec<f32>> = samples.iter().map(|s| dataset::resized(s, size)).collect();
    if dataset::augments(tc) {
        for _ in 0..9 {
            rows.extend(
                samples
                    .iter()
                    .map(|s| dataset::augmented(s, size, tc, &mut rng)),
            );
        }
    }
    let pca = crate::analysis::Pca::fit(&rows, k)
        .ok_or_else(|| Error::Other("pca_init: too few training frames".into()))?;
    let d = pca.mean.len();
    let c: Vec<f32> = (0..d)
        .flat_map(|i| (0..k).map(move |j| (i, j)))
        .map(|(i, j)| pca.components[(i, j)] as f32)
        .collect();
    let comp = Tensor::from_vec(c, (d, k), &Device::Cpu)?; // d × k
    let mean = Tensor::from_vec(
        pca.mean.iter().map(|&m| m as f32).collect::<Vec<_>>(),
        d,
        &Device::Cpu,
    )?;
    let enc_w = comp.t()?.contiguous()?; // k × d: code = Cᵀ(x − μ)
    let enc_b = enc_w.matmul(&mean.unsqueeze(1)?)?.squeeze(1)?.neg()?;
    let set = |name: &str, t: &Tensor| -> Result<()> {
        let data = vm.data().lock().expect("varmap lock");
        let v = data
            .get(name)
            .ok_or_else(|| Error::Other(format!("pca_init: no variable {name}")))?;
        v.set(&t.to_device(v.device())?)?;
        Ok(())
    };
    set("enc_bypass.weight", &enc_w)?;
    set("enc_bypass.bias", &enc_b)?;
    set("dec_bypass.weight", &comp)?;
    set("dec_bypass.bias", &mean)?;
    for last in [format!("enc{}", n - 1), format!("dec{}", n - 1)] {
        for part in ["weight", "bias"] {
            let name = format!("{last}.{part}");
            let zeros = {
                let data = vm.data().lock().expect("varmap lock");
                data.get(&name)
                    .ok_or_else(|| Error::Other(format!("pca_init: no variable {name}")))?
                    .as_tensor()
                    .zeros_like()?
            };
            set(&name, &zeros)?;
        }
    }
    tracing::info!(
        "initialised from a {k}-component PCA of {} frames",
        rows.len()
    );
    Ok(())
}

/// Reconstruction MSE (per pixel, [0, 1] scale) of frames, their codes, and the fraction of
/// code entries with |h| < 0.01.
pub struct ReconStats {
    pub mse: f64,
    pub outputs: Vec<Vec<f32>>,
    pub codes: Vec<Vec<f32>>,
    pub sparsity: f64,
}

pub fn recon_stats(
    model: &dyn Model,
    frames: &[Vec<f32>],
    size: (usize, usize),
) -> Result<ReconStats> {
    let (w, h) = size;
    let (mut se, mut n, mut small, mut total) = (0.0f64, 0usize, 0usize, 0usize);
    let mut outputs = Vec::with_capacity(frames.len());
    let mut codes = Vec::with_capacity(frames.len());
    for chunk in frames.chunks(256) {
        let data: Vec<f32> = chunk.iter().flat_map(|f| f.iter().copied()).collect();
        let x = Tensor::from_vec(data, (chunk.len(), h, w, 1), model.device())?;
        let o = model.run(&x, true)?;
        let y = o.image.flatten_all()?.to_vec1::<f32>()?;
        for (k, f) in chunk.iter().enumerate() {
            let out = &y[k * w * h..(k + 1) * w * h];
            for (a, b) in out.iter().zip(f) {
                let d = (a.clamp(0.0, 1.0) - b) as f64;
                se += d * d;
            }
            n += f.len();
            outputs.push(out.to_vec());
        }
        if let Some(c) = o.code {
            let per = c.elem_count() / chunk.len();
            let flat = c.flatten_all()?.to_vec1::<f32>()?;
            small += flat.iter().filter(|v| v.abs() < 0.01).count();
            total += flat.len();
            codes.extend(flat.chunks(per).map(<[f32]>::to_vec));
        }
    }
    Ok(ReconStats {
        mse: se / n.max(1) as f64,
        outputs,
        codes,
        sparsity: small as f64 / total.max(1) as f64,
    })
}

/// Runs the segmentation model over each image/mask pair and tallies the pixels for which
/// `include(x, y)` holds; `each` sees every pair with its foreground probabilities.
pub fn score_segmentation(
    model: &dyn Model,
    pairs: &[dataset::Pair],
    plan: &TilePlan,
    opts: infer::RunOpts,
    include: impl Fn(usize, usize) -> bool,
    mut each: impl FnMut(&dataset::Pair, &[f32]),
) -> Result<crate::analysis::SegTally> {
    let mut tally = crate::analysis::SegTally::default();
    for pair in pairs {
        let prob = infer::run_plane(model, &pair.image, pair.w, pair.h, plan, opts)?;
        tally.add_frame(&prob, &pair.mask, pair.w, &include);
        each(pair, &prob);
    }
    Ok(tally)
}

/// Segmentation: random patches of the training region with their masks, BCE on the logits;
/// validated by IoU of the foreground outside the training region.
fn segment_job<'a>(
    cfg: &'a PipelineConfig,
    args: &'a TrainArgs,
    net: &'a Net,
    model: &'a NetModel,
) -> Result<Job<'a>> {
    let tc = &cfg.train;
    let masks = args.masks.as_ref().ok_or_else(|| Error::Config {
        origin: "--masks".into(),
        message: "segmentation training needs --masks (a mask file or folder)".into(),
    })?;
    let pairs = dataset::load_pairs(&args.data, masks, &cfg.normalise)?;
    let names: Vec<String> = pairs.iter().map(|p| p.name.clone()).collect();
    let pairs = Arc::new(pairs);
    let pairs2 = pairs.clone();
    let dev = args.device.clone();
    let p = tc.patch;
    let plan = TilePlan::for_pipeline(cfg, net.size_multiple());
    let region = tc.region;
    Ok(Job {
        step_loss: Box::new(move |rng| {
            let mut xs = Vec::with_capacity(tc.batch * p * p);
            let mut ys = Vec::with_capacity(tc.batch * p * p);
            for _ in 0..tc.batch {
                let (x, y) = dataset::pair_patch(&pairs, region, p, rng)?;
                xs.extend(x);
                ys.extend(y);
            }
            let x = Tensor::from_vec(xs, (tc.batch, p, p, 1), &dev)?;
            let y = Tensor::from_vec(ys, (tc.batch, p, p, 1), &dev)?;
            Ok(loss_of(net, tc.loss, &net.forward_raw(&x)?.raw, &y)?)
        }),
        validate: Box::new(move || {
            // With a training region, validate on everything outside it.
            let tally = score_segmentation(
                model,
                &pairs2,
                &plan,
                (&cfg.infer).into(),
                |x, y| region.is_none() || !dataset::in_region(region, x, y),
                |_, _| {},
            )?;
            let m = tally.overlap;
            Ok(Val {
                loss: 1.0 - m.iou(),
                metrics: BTreeMap::from([
                    ("iou".to_string(), m.iou()),
                    ("dice".to_string(), m.dice()),
                ]),
                line: format!("val IoU {:.4}, Dice {:.4}", m.iou(), m.dice()),
            })
        }),
        data: args.data.display().to_string(),
        train_names: names.clone(),
        val_names: names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conv_ae::ConvAeConfig;
    use crate::model::dense::{CodeActivation, DenseAeConfig, OutputActivation};
    use crate::model::unet::UNetConfig;
    use candle_core::Var;
    use candle_nn::VarBuilder;

    /// Small networks for 4×4 frames: the segmentation U-Net and the two autoencoders.
    fn small_archs() -> [Arch; 3] {
        [
            Arch::UnetSegment(UNetConfig {
                channels: vec![2, 3],
            }),
            Arch::ConvAe {
                size: [4, 4],
                net: ConvAeConfig {
                    channels: vec![2, 3],
                    code_channels: 2,
                },
            },
            Arch::DenseAe {
                size: [4, 4],
                net: DenseAeConfig {
                    layers: vec![16, 6, 3],
                    code: CodeActivation::Relu,
                    output: OutputActivation::Sigmoid,
                    bypass: false,
                    topk: 2,
                },
            },
        ]
    }

    /// BCE on logits is finite for huge logits and equals the textbook form for moderate ones
    /// (candle's `binary_cross_entropy_with_logit` gives NaN/inf there).
    #[test]
    fn bce_is_stable_and_correct() -> Result<()> {
        let vm = VarMap::new();
        let net = Net::new(
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            &small_archs()[0],
        )?;
        let z = Tensor::new(&[[-200f32, -3.0, 0.5, 150.0]], &Device::Cpu)?;
        let t = Tensor::new(&[[0f32, 1.0, 0.0, 1.0]], &Device::Cpu)?;
        let l = loss_of(&net, Loss::Bce, &z, &t)?.to_scalar::<f32>()?;
        assert!(l.is_finite());
        let naive = |z: f32, t: f32| {
            let p = 1.0 / (1.0 + (-z).exp());
            -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
        };
        // The two extreme entries contribute ~0; the moderate ones as the textbook says.
        let expect = (naive(-3.0, 1.0) + naive(0.5, 0.0)) / 4.0;
        assert!((l - expect).abs() < 1e-5, "{l} vs {expect}");
        Ok(())
    }

    /// Weak noise weighs more than strong noise (below the 5/255 floor all weigh the same),
    /// and the weighted loss is the weighted mean of per-patch MSEs.
    #[test]
    fn sigma_weighting() -> Result<()> {
        let w = sigma_weights(&[0.0, 5.0, 25.0, 50.0], 1.5);
        assert_eq!(w[0], w[1]);
        assert!((w[2] - 1.0).abs() < 1e-6);
        assert!(w[1] > w[2] && w[2] > w[3]);
        assert!((w[3] - 0.5f32.powf(1.5)).abs() < 1e-6);
        let out = Tensor::new(&[[1f32, 1.0], [0.0, 2.0]], &Device::Cpu)?;
        let y = Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?;
        let wt = Tensor::new(&[2f32, 0.5], &Device::Cpu)?;
        let l = weighted_mse(&out, &y, &wt)?.to_scalar::<f32>()?;
        // Patch MSEs 1.0 and 2.0 → (2·1 + 0.5·2) / 2.
        assert!((l - 1.5).abs() < 1e-6, "{l}");
        Ok(())
    }

    /// Backprop through each architecture and its loss agrees with finite differences: guards
    /// strided (transposed) convolutions, skip concatenation, top-k and BCE. (In f64 the 3×3
    /// convolutions take the generic path; `layers.rs` checks our f32 im2col op against it.)
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (arch, loss) in small_archs()
            .into_iter()
            .zip([Loss::Bce, Loss::Bce, Loss::Mse])
        {
            let vm = VarMap::new();
            let net = Net::new(
                VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu),
                &arch,
            )?;
            let x = Var::from_tensor(&Tensor::rand(0f64, 1., (2, 4, 4, 1), &Device::Cpu)?)?;
            let target = Tensor::rand(0f64, 1., (2, 4, 4, 1), &Device::Cpu)?;
            let f = |x: &Tensor| -> Result<f64> {
                Ok(loss_of(&net, loss, &net.forward_raw(x)?.raw, &target)?.to_scalar::<f64>()?)
            };
            let g =
                loss_of(&net, loss, &net.forward_raw(x.as_tensor())?.raw, &target)?.backward()?;
            let gx = g
                .get(x.as_tensor())
                .expect("input gradient")
                .flatten_all()?
                .to_vec1::<f64>()?;
            let x0 = x.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            let eps = 1e-6;
            for i in [0, 5, 13, 22, 31] {
                let mut xp = x0.clone();
                xp[i] += eps;
                let mut xm = x0.clone();
                xm[i] -= eps;
                let fp = f(&Tensor::from_vec(xp, (2, 4, 4, 1), &Device::Cpu)?)?;
                let fm = f(&Tensor::from_vec(xm, (2, 4, 4, 1), &Device::Cpu)?)?;
                let fd = (fp - fm) / (2.0 * eps);
                assert!(
                    (fd - gx[i]).abs() < 1e-6 + 1e-4 * fd.abs(),
                    "{}: d/dx[{i}] autograd {} vs finite difference {fd}",
                    arch.name(),
                    gx[i]
                );
            }
        }
        Ok(())
    }
}
