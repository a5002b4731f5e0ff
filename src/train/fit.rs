//! The loop every task shares: AdamW with warm-up and cosine decay, a progress bar or log
//! lines, a [`Checkpoint`] every `checkpoint_every` steps (and at a stop), validation every
//! epoch, and the weights and `<out>.json` report at the end. After every epoch and at the end
//! the loss curve is drawn beside the weights ([`super::curve`]).
//!
//! `--resume` loads the checkpoint and continues at its step; since the data of step `k` is
//! drawn from an RNG seeded by `(seed, k)`, the resumed run continues exactly as the
//! uninterrupted one would have; the checkpoint carries the loss history, so the resumed run's
//! curve and moving average continue the interrupted run's.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;

use super::adamw::{AdamW, AdamWParams};
use super::curve::{curve_path, smooth, write_curve, History};
use super::{checkpoint_path, Job, TrainArgs, TrainReport, Val};
use crate::config::{PipelineConfig, WeightsDtype};
use crate::error::{Error, Result};
use crate::model::checkpoint::{save_tensors, Checkpoint, OptimizerState};
use crate::model::{weights, Arch};
use crate::runtime::write_atomic;

/// `--init`: copies every tensor of `path` whose name and shape match a variable of `vm`.
fn warm_start(vm: &VarMap, arch: &Arch, path: &Path, device: &Device) -> Result<()> {
    let mut state = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::Other(format!("--init {}: {e}", path.display())))?;
    // A file of another (smaller) network cannot be converted as a whole: then its kernels
    // are copied only where names and shapes match, as for any other file.
    if let Err(e) = weights::upgrade(arch, &mut state) {
        tracing::debug!("--init {}: not converted: {e}", path.display());
    }
    let d = vm.data().lock().expect("varmap lock");
    let (mut copied, mut fresh) = (0, Vec::new());
    for (k, v) in d.iter() {
        match state.get(k) {
            Some(t) if t.dims() == v.dims() => {
                // The file may store another type (`train.weights_dtype = "f16"`).
                v.set(&t.to_dtype(v.dtype())?)?;
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

/// The weights as the weights file stores them (`train.weights_dtype`); loading converts them
/// back to the type the model computes in.
fn stored(vm: &VarMap, dtype: WeightsDtype) -> Result<HashMap<String, Tensor>> {
    weights::tensors(vm)
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype.dtype())?)))
        .collect()
}

/// The learning rate of step `step` of `total`: a linear warm-up over the first 50 steps (a
/// tenth of a short run), then a cosine decay to 2 % of `base`.
pub(super) fn lr_at(base: f64, step: usize, total: usize) -> f64 {
    let warmup = 50.min(total / 10 + 1);
    if step < warmup {
        base * (step + 1) as f64 / warmup as f64
    } else {
        let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        base * (0.02 + 0.98 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// The shared loop: AdamW with warm-up and cosine decay, progress, checkpoints, validation
/// every epoch, weights and metadata at the end.
pub(super) fn fit(
    cfg: &PipelineConfig,
    args: &TrainArgs,
    vm: &VarMap,
    mut job: Job,
) -> Result<TrainReport> {
    let started = Instant::now();
    let tc = &cfg.train;
    let epochs = args.epochs.unwrap_or(tc.epochs);
    let spe = args.steps_per_epoch.unwrap_or(tc.steps_per_epoch).max(1);
    let total = epochs * spe;
    let mut opt = AdamW::new(
        weights::vars(vm),
        AdamWParams {
            lr: tc.lr,
            weight_decay: tc.weight_decay,
            ..Default::default()
        },
    )?;
    let ckpt = checkpoint_path(&args.out);
    let mut history = History::default();
    let mut ema_loss = f64::NAN;
    if args.resume && ckpt.is_file() {
        let mut c = Checkpoint::<History>::load(&ckpt, &args.device)?;
        c.upgrade(&cfg.model.arch)?;
        let o = c
            .optimizer
            .ok_or_else(|| Error::Other(format!("{}: no optimizer state", ckpt.display())))?;
        weights::set_vars(vm, &c.weights, &ckpt.display().to_string())?;
        let step = o.step as usize;
        opt.load_state(&o.moments, step)?;
        // Metadata is written after the tensors: if a crash fell between them it is older
        // than the weights (the steps between are unknown), never newer than the step.
        history = c.meta.unwrap_or_default();
        history.truncate(step);
        ema_loss = history.ema();
        tracing::info!("resumed from {} at step {step}", ckpt.display());
    } else {
        if args.resume {
            tracing::warn!(
                "--resume: no checkpoint at {}, starting fresh",
                ckpt.display()
            );
        }
        if let Some(init) = &args.init {
            warm_start(vm, &cfg.model.arch, init, &args.device)?;
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
    let save_ckpt = |opt: &AdamW, history: &History| -> Result<()> {
        Checkpoint {
            weights: weights::tensors(vm),
            optimizer: Some(OptimizerState {
                step: opt.step as u64,
                moments: opt.state(),
            }),
            meta: Some(history.clone()),
        }
        .save(&ckpt)
    };
    let curve = curve_path(&args.out);
    let title = format!(
        "{}: training loss ({})",
        cfg.name,
        format!("{:?}", tc.loss).to_lowercase()
    );
    // The picture is for people: a failure to draw it is reported, never fatal to training.
    let draw = |history: &History| {
        if let Err(e) = write_curve(&curve, history, &title) {
            tracing::warn!("training curve not written: {e}");
        }
    };
    let mut last_val: Option<Val> = None;
    let stop_at = args.stop_after.unwrap_or(total).min(total);
    while opt.step < stop_at {
        let step = opt.step;
        let lr = lr_at(tc.lr, step, total);
        opt.set_lr(lr);
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003) ^ step as u64);
        let loss = (job.step_loss)(&mut rng)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        let l32 = loss.to_scalar::<f32>()?;
        let l = f64::from(l32);
        if !l.is_finite() {
            return Err(Error::Other(format!(
                "training diverged at step {step} (loss {l}); lower train.lr"
            )));
        }
        ema_loss = smooth(ema_loss, l);
        let done = opt.step;
        history.push_train(done, l32);
        if let Some(b) = &bar {
            b.set_position(done as u64);
            b.set_message(format!("loss {ema_loss:.4e}"));
        } else if done % 50 == 0 {
            tracing::info!(
                "step {done}/{total} loss {ema_loss:.4e} lr {lr:.2e} {:.1}s",
                started.elapsed().as_secs_f64()
            );
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
            // Keep usable weights on disk after every epoch, and the curve beside them.
            save_tensors(&args.out, &stored(vm, tc.weights_dtype)?)?;
            history.push_val(done, v.loss);
            history.val_measure = v.measure.to_string();
            draw(&history);
            last_val = Some(v);
        }
        // After the epoch's validation, so that the history it carries holds it.
        if done % tc.checkpoint_every.max(1) == 0 || done == total || done == stop_at {
            save_ckpt(&opt, &history)?;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    save_tensors(&args.out, &stored(vm, tc.weights_dtype)?)?;
    draw(&history);
    tracing::info!("training curve: {}", curve.display());
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
        seconds: started.elapsed().as_secs_f64()
            + job.pretrain.iter().map(|l| l.seconds).sum::<f64>(),
        pretrain: job.pretrain,
        command: args.command.clone(),
    };
    let mut meta = args.out.as_os_str().to_owned();
    meta.push(".json");
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(Path::new(&meta), &json)?;
    Ok(report)
}
