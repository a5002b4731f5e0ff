//! Online fine-tuning: a trainer thread beside the pipeline adapts the model to the stream.
//!
//! Decoded frames are offered to the trainer without ever holding the pipeline up (a copy is
//! handed over only when its small inbox has room). The trainer keeps a replay buffer and a
//! held-out validation set, both reservoirs over the whole stream, and runs AdamW steps on a
//! shadow copy of the weights in its own thread pool (`threads`, default 1), at most
//! `max_steps_per_minute`. After every `round_steps` steps the shadow is validated against the
//! serving model on the same held-out patches; only if it is better by `min_improvement` is a
//! copy swapped in (the slot is swapped atomically: frames in flight finish on the model they
//! started with) and written as a checkpoint. Otherwise it is rejected and training goes on
//! from it; a candidate worse than the serving model three rounds in a row is thrown away and
//! the shadow restarts from the serving weights. `rollback` returns to the
//! previous version.
//!
//! Objectives (`target`):
//! - `clean`: frames are clean; the model learns x + n → x with σ ~ U(0, sigma_max), the
//!   offline training objective.
//! - `noisy`: frames are already noisy and no clean one exists: Neighbor2Neighbor (Huang et al.,
//!   CVPR 2021). Each 2×2 cell of a noisy patch gives two sub-images from two different random
//!   pixels; the network maps one to the other (their noise is independent, their signal
//!   nearly equal), plus a regulariser that ties the sub-images of the full-resolution output
//!   together. Unlike Noisier2Noise it needs no knowledge of the noise level and trains the
//!   very network that serves (Noisier2Noise's would need a corrected output at inference).
//!   Its loss is no gate, though: it rewards blur (neighbouring pixels differ in signal too) and
//!   once let a worse model through. Candidates are gated on Stein's unbiased risk estimate
//!   (Monte-Carlo SURE, Ramani et al. 2008) instead: an unbiased estimate of the MSE against the
//!   unseen clean frames, from the noisy frames and the noise σ (`stream_sigma`, or estimated).
//!
//! Checkpoints (`--checkpoints DIR`): every swapped-in version as `DIR/<pipeline>-v<N>.safetensors`
//! with `<pipeline>-v<N>.json` (parent, steps, validation losses, time) and the optimizer state
//! (AdamW moments and step: candle cannot save them) in `<pipeline>-v<N>.opt.safetensors`, each
//! written atomically, the weights after the optimizer state and the metadata last. The newest
//! complete, loadable version is served and trained on after a restart; the last `keep` are kept.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use crossbeam_channel::{bounded, Receiver, Sender};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::adamw::{AdamW, AdamWParams};
use super::data::{PatchSampler, TrainImage};
use crate::config::{FinetuneConfig, FinetuneTarget, PipelineConfig};
use crate::error::{Error, Result};
use crate::frame::Planes;
use crate::model::{Model, Net, NetModel, Task};
use crate::pipeline::{Generation, ModelSlot, Telemetry};
use crate::source::Stop;
use crate::stage::corrupt;
use crate::stage::sure::rademacher;

/// Where the pipeline offers frames to the trainer.
#[derive(Clone, Debug)]
pub struct Offer {
    tx: Sender<Planes>,
}

impl Offer {
    /// Hands the trainer a copy of `p` if its inbox has room; never blocks.
    pub fn offer(&self, p: &Planes) {
        // Checked first so a full inbox costs no copy; losing a race to another decode worker
        // just means this frame is not offered.
        if !self.tx.is_full() {
            let _ = self.tx.try_send(p.clone());
        }
    }
}

/// Asks the trainer to return to the previous version.
#[derive(Clone, Debug)]
pub struct Control {
    tx: Sender<()>,
}

impl Control {
    pub fn rollback(&self) {
        let _ = self.tx.try_send(());
    }
}

/// Metadata written beside each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub pipeline: String,
    pub version: String,
    pub number: u64,
    pub parent: String,
    pub steps: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub serving_val_loss: f64,
    pub frames_seen: u64,
    pub time: String,
}

/// The checkpoint folder of one pipeline.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    pipeline: String,
    keep: usize,
}

/// A version loaded from the checkpoint folder.
pub struct Restored {
    pub number: u64,
    pub tensors: HashMap<String, Tensor>,
    pub opt: Option<HashMap<String, Tensor>>,
    pub meta: Option<CheckpointMeta>,
}

impl Checkpoints {
    pub fn new(dir: PathBuf, pipeline: &str, keep: usize) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        Ok(Self {
            dir,
            pipeline: pipeline.to_string(),
            keep: keep.max(1),
        })
    }

    fn path(&self, n: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}-v{n}{suffix}", self.pipeline))
    }

    /// Version numbers that have a weights file, newest first.
    fn numbers(&self) -> Vec<u64> {
        let prefix = format!("{}-v", self.pipeline);
        let mut v: Vec<u64> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix(&prefix)?
                            .strip_suffix(".safetensors")?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }

    /// The newest version whose weights load; older ones are tried when a newer one is damaged.
    pub fn newest(&self, device: &Device) -> Option<Restored> {
        for n in self.numbers() {
            let w = self.path(n, ".safetensors");
            match candle_core::safetensors::load(&w, device) {
                Ok(tensors) => {
                    let opt =
                        candle_core::safetensors::load(self.path(n, ".opt.safetensors"), device)
                            .ok();
                    let meta = std::fs::read(self.path(n, ".json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    return Some(Restored {
                        number: n,
                        tensors,
                        opt,
                        meta,
                    });
                }
                Err(e) => tracing::warn!("{}: cannot load ({e}); trying an older one", w.display()),
            }
        }
        None
    }

    /// Writes version `n`: optimizer state, weights, metadata (each atomically), then prunes.
    fn write(
        &self,
        n: u64,
        tensors: &HashMap<String, Tensor>,
        opt: &HashMap<String, Tensor>,
        meta: &CheckpointMeta,
    ) -> Result<()> {
        super::save_tensors(&self.path(n, ".opt.safetensors"), opt)?;
        super::save_tensors(&self.path(n, ".safetensors"), tensors)?;
        let json = serde_json::to_vec_pretty(meta).map_err(|e| Error::Other(e.to_string()))?;
        crate::sink::folder::write_atomic(&self.path(n, ".json"), &json)?;
        for old in self.numbers().into_iter().skip(self.keep) {
            for s in [".safetensors", ".opt.safetensors", ".json"] {
                let _ = std::fs::remove_file(self.path(old, s));
            }
        }
        Ok(())
    }

    /// Sets version `n` aside so a restart does not serve it again (after a rollback).
    fn retire(&self, n: u64) {
        for s in [".safetensors", ".opt.safetensors", ".json"] {
            let p = self.path(n, s);
            let mut to = p.as_os_str().to_owned();
            to.push(".rolled-back");
            let _ = std::fs::rename(&p, PathBuf::from(to));
        }
    }
}

/// A copy of a varmap's current values.
fn snapshot(vm: &VarMap) -> Result<HashMap<String, Tensor>> {
    let d = vm.data().lock().expect("varmap lock");
    d.iter()
        // Detached: a copy that still tracked the variable would keep autograd history alive
        // (the moving average built on such copies grew without bound: 24 GB in minutes).
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
        .collect()
}

fn set_vars(vm: &VarMap, t: &HashMap<String, Tensor>) -> Result<()> {
    let d = vm.data().lock().expect("varmap lock");
    for (k, v) in d.iter() {
        let src = t
            .get(k)
            .ok_or_else(|| Error::Other(format!("fine-tune: weights lack {k}")))?;
        v.set(src)?;
    }
    Ok(())
}

fn version_of(name: &str, n: u64, t: &HashMap<String, Tensor>) -> String {
    let mut keys: Vec<&String> = t.keys().collect();
    keys.sort();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for k in keys {
        h.update(k.as_bytes());
        if let Ok(v) = t[k].flatten_all().and_then(|x| x.to_vec1::<f32>()) {
            for x in v {
                h.update(&x.to_le_bytes());
            }
        }
    }
    format!("{name}-v{n}@{:08x}", h.digest() as u32)
}

/// The generation a restart serves: the newest checkpoint's weights.
pub fn restored_generation(
    cfg: &PipelineConfig,
    r: Restored,
    dev: &Device,
    number: u64,
) -> Result<Generation> {
    let version = version_of(&cfg.name, r.number, &r.tensors);
    let model = model_from(cfg, &r.tensors, dev)?;
    Ok(Generation::new(cfg.clone(), model, version, number).with_tensors(Arc::new(r.tensors)))
}

/// The serving model built from a copy of the weights.
fn model_from(
    cfg: &PipelineConfig,
    t: &HashMap<String, Tensor>,
    dev: &Device,
) -> Result<Arc<dyn Model>> {
    let vb = VarBuilder::from_tensors(t.clone(), DType::F32, dev);
    let net = Net::new(vb, &cfg.model.arch)?;
    let fixed = cfg.model.arch.fixed_size();
    Ok(Arc::new(NetModel::new(net, dev.clone(), fixed)))
}

/// A version's weights, shared by the serving generation and the trainer's history.
type Weights = Arc<HashMap<String, Tensor>>;

/// What a round ended with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Round {
    Swapped { candidate: f64, serving: f64 },
    Rejected { candidate: f64, serving: f64 },
}

/// The trainer: shadow weights, optimizer, buffers, and what it swapped in.
pub struct Finetuner {
    fc: FinetuneConfig,
    cfg: PipelineConfig,
    slot: ModelSlot,
    tel: Arc<Telemetry>,
    dev: Device,
    vm: VarMap,
    net: Net,
    opt: AdamW,
    buffer: Vec<TrainImage>,
    holdout: Vec<TrainImage>,
    /// `target = "noisy"`: the noise σ estimated on `holdout`, kept until the holdout changes
    /// (estimating it costs a pass over every held-out pixel).
    holdout_sigma: std::cell::Cell<Option<f64>>,
    offered: u64,
    /// Accepted versions, oldest first; the last one is serving (unless a reload replaced it).
    history: Vec<(Arc<Generation>, Weights)>,
    ckpt: Option<Checkpoints>,
    next_number: u64,
    rejected_in_a_row: usize,
    train_loss: f64,
    rng: rand::rngs::StdRng,
    /// The moving average of the shadow's weights (the candidate), when `ema` > 0.
    ema: Option<HashMap<String, Tensor>>,
}

impl Finetuner {
    /// A trainer for the generation in `slot`, which must carry its weights. With
    /// `restored`, the optimizer state comes from that checkpoint.
    pub fn new(
        slot: ModelSlot,
        tel: Arc<Telemetry>,
        ckpt: Option<Checkpoints>,
        restored_opt: Option<(u64, HashMap<String, Tensor>)>,
    ) -> Result<Self> {
        let gen = slot.load_full();
        let cfg = gen.cfg.clone();
        let fc = cfg.finetune.clone();
        if cfg.model.arch.task() != Task::Denoise {
            return Err(Error::Config {
                origin: "--finetune".into(),
                message: format!(
                    "fine-tuning is implemented for the denoise and inpaint models; {} is a {}",
                    cfg.name,
                    cfg.model.arch.name()
                ),
            });
        }
        if fc.target == FinetuneTarget::Noisy {
            tracing::info!(
                "fine-tune: target = \"noisy\": Neighbor2Neighbor training, candidates gated on \
                 SURE with σ {}",
                if fc.stream_sigma > 0.0 {
                    format!("{} (stream_sigma)", fc.stream_sigma)
                } else {
                    "estimated from held-out frames".to_string()
                }
            );
        }
        let tensors = gen
            .tensors
            .clone()
            .ok_or_else(|| Error::Other("fine-tune: the serving weights are unknown".into()))?;
        let dev = gen.model.device().clone();
        let vm = VarMap::new();
        let net = Net::new(
            VarBuilder::from_varmap(&vm, DType::F32, &dev),
            &cfg.model.arch,
        )?;
        set_vars(&vm, &tensors)?;
        let vars: Vec<(String, Var)> = {
            let d = vm.data().lock().expect("varmap lock");
            d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut opt = AdamW::new(
            vars,
            AdamWParams {
                lr: fc.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        if let Some((step, state)) = restored_opt {
            opt.load_state(&state, step as usize)?;
        }
        let next_number = gen.version_number().unwrap_or(0) + 1;
        Ok(Self {
            rng: rand::rngs::StdRng::seed_from_u64(0x5eed ^ next_number),
            fc,
            cfg,
            slot,
            tel,
            dev,
            vm,
            net,
            opt,
            buffer: vec![],
            holdout: vec![],
            holdout_sigma: std::cell::Cell::new(None),
            offered: 0,
            history: vec![(gen, tensors)],
            ckpt,
            next_number,
            rejected_in_a_row: 0,
            train_loss: f64::NAN,
            ema: None,
        })
    }

    /// Steps taken so far (restored ones included).
    pub fn steps(&self) -> u64 {
        self.opt.step as u64
    }

    pub fn optimizer_state(&self) -> HashMap<String, Tensor> {
        self.opt.state()
    }

    /// Adds a frame to the buffers: every 8th to the held-out set, each a reservoir.
    pub fn add(&mut self, p: Planes) {
        let image = TrainImage {
            path: PathBuf::from(format!("stream-{}", self.offered)),
            w: p.width,
            h: p.height,
            planes: p.planes,
        };
        if image.w < 16 || image.h < 16 {
            return;
        }
        self.offered += 1;
        let (buf, cap, seen) = if self.offered.is_multiple_of(8) {
            self.holdout_sigma.set(None);
            (&mut self.holdout, self.fc.holdout, self.offered / 8)
        } else {
            (
                &mut self.buffer,
                self.fc.buffer,
                self.offered - self.offered / 8,
            )
        };
        if buf.len() < cap {
            buf.push(image);
        } else {
            let j = self.rng.random_range(0..seen) as usize;
            if j < cap {
                buf[j] = image;
            }
        }
        self.tel.gauge(
            "aestream_finetune_buffer_frames",
            "Frames in the fine-tuner's replay buffer.",
            self.buffer.len() as f64,
        );
    }

    /// Whether there is enough to train and validate on.
    pub fn ready(&self) -> bool {
        self.buffer.len() >= self.fc.min_frames && !self.holdout.is_empty()
    }

    /// The patch side that every buffered frame can give (≤ `patch`).
    fn patch_for(&self, imgs: &[TrainImage], want: usize) -> usize {
        let m = self.net.size_multiple().max(1);
        let smallest = imgs.iter().map(|i| i.w.min(i.h)).max().unwrap_or(want);
        let p = want.min(smallest);
        (p / m * m).max(m)
    }

    /// (input, target) batch for the objective, NHWC.
    fn batch<R: Rng>(
        &self,
        imgs: &[TrainImage],
        n: usize,
        val: bool,
        rng: &mut R,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let fc = &self.fc;
        match fc.target {
            FinetuneTarget::Clean => {
                let p = self.patch_for(imgs, fc.patch);
                let s = PatchSampler::new(imgs, p)?;
                let (noisy, clean) = if val {
                    let mut noisy = Vec::new();
                    let mut clean = Vec::new();
                    for _ in 0..n {
                        let c = s.clean(rng);
                        let mut x = c.clone();
                        corrupt::gaussian(&mut x, fc.val_sigma, true, rng);
                        noisy.extend(x);
                        clean.extend(c);
                    }
                    (noisy, clean)
                } else {
                    s.batch(rng, n, fc.sigma_max)
                };
                let x = Tensor::from_vec(noisy, (n, p, p, 1), &self.dev)?;
                let y = Tensor::from_vec(clean, (n, p, p, 1), &self.dev)?;
                Ok((x, y, None))
            }
            FinetuneTarget::Noisy => {
                // Sub-images of half size must still be a multiple of the model's.
                let m = self.net.size_multiple().max(1);
                let full = self.patch_for(imgs, fc.patch.max(2 * m));
                let full = (full / (2 * m) * (2 * m)).max(2 * m);
                let s = PatchSampler::new(imgs, full)?;
                let h = full / 2;
                let (mut g1, mut g2, mut whole, mut picks) = (vec![], vec![], vec![], vec![]);
                for _ in 0..n {
                    let y = s.clean(rng);
                    for cy in 0..h {
                        for cx in 0..h {
                            let a = rng.random_range(0..4usize);
                            let b = (a + rng.random_range(1..4usize)) % 4;
                            let at = |k: usize| (2 * cy + k / 2) * full + 2 * cx + k % 2;
                            g1.push(y[at(a)]);
                            g2.push(y[at(b)]);
                            picks.push((a, b));
                        }
                    }
                    whole.extend(y);
                }
                let g1 = Tensor::from_vec(g1, (n, h, h, 1), &self.dev)?;
                let g2 = Tensor::from_vec(g2, (n, h, h, 1), &self.dev)?;
                if val {
                    return Ok((g1, g2, None));
                }
                // The regulariser's target: sub-images of the output on the whole patch, fixed.
                let fy = self
                    .net
                    .forward_raw(&Tensor::from_vec(whole, (n, full, full, 1), &self.dev)?)?
                    .raw
                    .detach()
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let mut diff = Vec::with_capacity(n * h * h);
                for (i, (a, b)) in picks.iter().enumerate() {
                    let (f, rest) = (i / (h * h), i % (h * h));
                    let (cy, cx) = (rest / h, rest % h);
                    let at = |k: usize| f * full * full + (2 * cy + k / 2) * full + 2 * cx + k % 2;
                    diff.push(fy[at(*a)] - fy[at(*b)]);
                }
                let diff = Tensor::from_vec(diff, (n, h, h, 1), &self.dev)?;
                Ok((g1, g2, Some(diff)))
            }
        }
    }

    /// One AdamW step on a fresh batch from the replay buffer; returns the loss.
    pub fn step(&mut self) -> Result<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.rng.random());
        let (x, y, reg) = self.batch(&self.buffer, self.fc.batch, false, &mut rng)?;
        let out = self.net.forward_raw(&x)?.raw;
        let mut loss = (&out - &y)?.sqr()?.mean_all()?;
        if let Some(d) = reg {
            // Neighbor2Neighbor's regulariser, γ = 1.
            let r = ((&out - &y)? - d)?.sqr()?.mean_all()?;
            loss = (loss + r)?;
        }
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        self.update_ema()?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            return Err(Error::Other(format!(
                "fine-tune: loss {l} at step {}",
                self.opt.step
            )));
        }
        self.train_loss = if self.train_loss.is_nan() {
            l
        } else {
            0.95 * self.train_loss + 0.05 * l
        };
        self.tel.count(
            "aestream_finetune_steps_total",
            "Fine-tuning steps taken.",
            1.0,
        );
        self.tel.gauge(
            "aestream_finetune_train_loss",
            "Fine-tuning training loss (moving average).",
            self.train_loss,
        );
        Ok(l)
    }

    /// ema ← β·ema + (1−β)·w after a step (started from the weights the shadow began with).
    fn update_ema(&mut self) -> Result<()> {
        let beta = self.fc.ema;
        if !(beta > 0.0 && beta < 1.0) {
            return Ok(());
        }
        let now = snapshot(&self.vm)?;
        let next = match self.ema.take() {
            None => now,
            Some(old) => {
                let mut next = HashMap::with_capacity(now.len());
                for (k, w) in now {
                    let e = match old.get(&k) {
                        Some(e) => ((e * beta)? + (w * (1.0 - beta))?)?.detach(),
                        None => w,
                    };
                    next.insert(k, e);
                }
                next
            }
        };
        self.ema = Some(next);
        Ok(())
    }

    /// Runs `f` with the candidate weights (the moving average, if kept) in the shadow, then
    /// puts the training weights back.
    fn with_candidate<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let Some(ema) = self.ema.clone() else {
            return f(self);
        };
        let training = snapshot(&self.vm)?;
        set_vars(&self.vm, &ema)?;
        let r = f(self);
        set_vars(&self.vm, &training)?;
        r
    }

    /// Validation losses (candidate, serving) on the same held-out patches.
    pub fn validate(&self) -> Result<(f64, f64)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a1);
        if self.fc.target == FinetuneTarget::Noisy {
            return self.validate_sure(&mut rng);
        }
        let (x, y, _) = self.batch(&self.holdout, self.fc.val_patches, true, &mut rng)?;
        let loss = |out: Tensor| -> Result<f64> {
            Ok((out - &y)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
        };
        let candidate = loss(self.net.forward_raw(&x)?.raw)?;
        let serving = loss(self.serving_model().forward(&x)?)?;
        Ok((candidate, serving))
    }

    /// The model candidates are compared with: the last accepted version.
    fn serving_model(&self) -> Arc<dyn Model> {
        match self.history.last() {
            Some((g, _)) => g.model.clone(),
            None => self.slot.load().model.clone(),
        }
    }

    /// `target = "noisy"`: Monte-Carlo SURE of (candidate, serving) on the same noisy
    /// held-out patches and the same probe.
    fn validate_sure(&self, rng: &mut rand::rngs::StdRng) -> Result<(f64, f64)> {
        let p = self.patch_for(&self.holdout, self.fc.patch);
        let s = PatchSampler::new(&self.holdout, p)?;
        let n = self.fc.val_patches;
        let y: Vec<f32> = (0..n).flat_map(|_| s.clean(rng)).collect();
        let probe = rademacher(y.len(), rng);
        let sigma = if self.fc.stream_sigma > 0.0 {
            self.fc.stream_sigma as f64 / 255.0
        } else {
            let est = self
                .holdout_sigma
                .get()
                .unwrap_or_else(|| median_noise_sigma(&self.holdout));
            self.holdout_sigma.set(Some(est));
            est
        };
        self.tel.gauge(
            "aestream_finetune_noise_sigma",
            "target = noisy: the noise σ (0-255 scale) the SURE gate assumes.",
            sigma * 255.0,
        );
        let y = Tensor::from_vec(y, (n, p, p, 1), &self.dev)?;
        let probe = Tensor::from_vec(probe, (n, p, p, 1), &self.dev)?;
        let serving_model = self.serving_model();
        // Only pixels whose clean value (as the serving model sees it) is 2σ away from black
        // and white: there the noise was almost never clipped.
        let est = serving_model.forward(&y)?;
        let lo = 2.0 * sigma;
        let mask = est.ge(lo)?.mul(&est.le(1.0 - lo)?)?.to_dtype(DType::F32)?;
        let forward = |x: &Tensor| Ok(self.net.forward_raw(x)?.raw);
        let candidate = mc_sure(&y, &forward(&y)?, &probe, Some(&mask), sigma, forward)?;
        let serving = mc_sure(&y, &est, &probe, Some(&mask), sigma, |x| {
            serving_model.forward(x)
        })?;
        Ok((candidate, serving))
    }

    /// Validates the shadow and swaps it in if it is better by the margin.
    pub fn round(&mut self) -> Result<Round> {
        self.follow_reloads()?;
        let ((candidate, serving), cand_weights) =
            self.with_candidate(|t| Ok((t.validate()?, snapshot(&t.vm)?)))?;
        self.tel.gauge(
            "aestream_finetune_val_loss",
            "Validation loss of the latest candidate.",
            candidate,
        );
        self.tel.gauge(
            "aestream_finetune_serving_val_loss",
            "Validation loss of the serving model on the same patches.",
            serving,
        );
        // NaN compares false: a NaN candidate is rejected too.
        let better = candidate < serving * (1.0 - self.fc.min_improvement);
        if !better {
            self.tel.count(
                "aestream_finetune_rejected_total",
                "Candidates not swapped in (not better by the margin).",
                1.0,
            );
            // Not better enough yet: training goes on from the candidate. Only a candidate
            // that is worse than what serves, three rounds in a row, is thrown away.
            if candidate > serving * (1.0 + self.fc.min_improvement) || !candidate.is_finite() {
                self.rejected_in_a_row += 1;
            } else {
                self.rejected_in_a_row = 0;
            }
            tracing::info!(
                "fine-tune: candidate rejected (validation {candidate:.4e} vs serving {serving:.4e})"
            );
            if self.rejected_in_a_row >= 3 {
                // Drifting: start again from what serves.
                if let Some((_, t)) = self.history.last() {
                    let t = t.clone();
                    set_vars(&self.vm, &t)?;
                }
                self.ema = None;
                self.rejected_in_a_row = 0;
            }
            return Ok(Round::Rejected { candidate, serving });
        }
        self.rejected_in_a_row = 0;
        let tensors = cand_weights;
        let n = self.next_number;
        self.next_number += 1;
        let version = version_of(&self.cfg.name, n, &tensors);
        let old = self.slot.load_full();
        let model = model_from(&old.cfg, &tensors, &self.dev)?;
        let tensors = Arc::new(tensors);
        let gen = Arc::new(
            Generation::new(old.cfg.clone(), model, version.clone(), old.number + 1)
                .with_tensors(tensors.clone()),
        );
        if let Some(c) = &self.ckpt {
            let meta = CheckpointMeta {
                pipeline: self.cfg.name.clone(),
                version: version.clone(),
                number: n,
                parent: old.version.clone(),
                steps: self.steps(),
                train_loss: self.train_loss,
                val_loss: candidate,
                serving_val_loss: serving,
                frames_seen: self.offered,
                time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            };
            let mut opt = self.opt.state();
            opt.insert(
                "train.step".into(),
                Tensor::new(&[self.opt.step as f32], &Device::Cpu)?,
            );
            // Written before the swap: what serves is always on disk.
            c.write(n, &tensors, &opt, &meta)?;
        }
        self.slot.store(gen.clone());
        self.tel.set_model(&gen.version, gen.number);
        self.tel.count(
            "aestream_finetune_swaps_total",
            "Fine-tuned versions swapped in.",
            1.0,
        );
        tracing::info!(
            "fine-tune: swapped in {version} (validation {candidate:.4e} vs {serving:.4e} of {}), {} steps",
            old.version,
            self.steps()
        );
        self.history.push((gen, tensors));
        let keep = self.fc.keep.max(2);
        if self.history.len() > keep {
            self.history.remove(0);
        }
        Ok(Round::Swapped { candidate, serving })
    }

    /// A reload (SIGHUP) replaced the model under us: train on from the new weights.
    fn follow_reloads(&mut self) -> Result<()> {
        let now = self.slot.load_full();
        let ours = self.history.last().map(|(g, _)| g.number);
        if Some(now.number) != ours {
            if let Some(t) = now.tensors.clone() {
                tracing::info!("fine-tune: following the reload to {}", now.version);
                set_vars(&self.vm, &t)?;
                self.ema = None;
                self.cfg = now.cfg.clone();
                self.history.push((now, t));
            }
        }
        Ok(())
    }

    /// Returns to the previous version (and trains on from it).
    pub fn rollback(&mut self) -> Result<bool> {
        if self.history.len() < 2 {
            tracing::warn!("rollback: no previous version");
            return Ok(false);
        }
        let (gone, _) = self.history.pop().expect("two versions");
        let (prev, t) = self.history.last().cloned().expect("one version");
        set_vars(&self.vm, &t)?;
        self.ema = None;
        let back = Arc::new(
            Generation::new(
                prev.cfg.clone(),
                prev.model.clone(),
                prev.version.clone(),
                gone.number + 1,
            )
            .with_tensors(t),
        );
        self.slot.store(back.clone());
        // The history's last entry must carry the number now serving.
        if let Some(last) = self.history.last_mut() {
            last.0 = back.clone();
        }
        if let (Some(c), Some(n)) = (&self.ckpt, gone.version_number()) {
            c.retire(n);
        }
        self.tel.set_model(&back.version, back.number);
        tracing::info!("rollback: {} -> {}", gone.version, back.version);
        Ok(true)
    }

    /// Runs until `stop`: takes offered frames, trains at the configured pace, validates
    /// every round, and answers rollbacks.
    pub fn run(mut self, inbox: Receiver<Planes>, control: Receiver<()>, stop: Stop) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let idle_threads = match self.fc.idle_threads {
            0 => cores,
            n => n,
        };
        let build = |n: usize, name: &'static str| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(move |i| format!("{name}-{i}"))
                .build()
        };
        let (pool, idle_pool) = match (
            build(self.fc.threads, "finetune"),
            build(idle_threads, "finetune-idle"),
        ) {
            (Ok(p), Ok(q)) => (p, q),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("fine-tune: cannot start its threads: {e}");
                return;
            }
        };
        let mut last_busy = Instant::now();
        let min_gap = Duration::from_secs_f64(60.0 / self.fc.max_steps_per_minute as f64);
        let mut last_step = Instant::now() - min_gap;
        let mut in_round = 0;
        while !stop.requested() {
            let wait = if self.ready() {
                min_gap.saturating_sub(last_step.elapsed())
            } else {
                Duration::from_millis(200)
            };
            match inbox.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(p) => {
                    self.add(p);
                    for p in inbox.try_iter() {
                        self.add(p);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
                Err(_) => {}
            }
            if control.try_recv().is_ok() {
                if let Err(e) = self.rollback() {
                    tracing::error!("rollback failed: {e}");
                }
            }
            if !self.ready() || last_step.elapsed() < min_gap {
                continue;
            }
            last_step = Instant::now();
            // Serving comes first: the full pool only once the pipeline has been idle a while.
            if !self.tel.idle() {
                last_busy = Instant::now();
            }
            let busy = last_busy.elapsed() <= Duration::from_secs(1);
            let pool = if busy { &pool } else { &idle_pool };
            let t_step = Instant::now();
            // CPU time summed over the pool's threads, before and after.
            let cpu = |p: &rayon::ThreadPool| -> f64 {
                p.broadcast(|_| thread_cpu_seconds()).iter().sum()
            };
            let cpu0 = cpu(pool);
            let res = pool.install(|| {
                self.step().and_then(|_| {
                    in_round += 1;
                    if in_round >= self.fc.round_steps {
                        in_round = 0;
                        self.round().map(|_| ())
                    } else {
                        Ok(())
                    }
                })
            });
            self.tel.count(
                "aestream_finetune_cpu_seconds_total",
                "CPU time of the fine-tuner's threads.",
                (cpu(pool) - cpu0).max(0.0),
            );
            if busy && self.fc.busy_share < 1.0 {
                // Leave the serving pipeline the rest of the time.
                let share = self.fc.busy_share.clamp(0.05, 1.0);
                let pause = t_step.elapsed().mul_f64(1.0 / share - 1.0);
                std::thread::sleep(pause.min(Duration::from_secs(30)));
            }
            if let Err(e) = res {
                tracing::error!("fine-tune: {e}; training paused for a minute");
                std::thread::sleep(Duration::from_secs(60).min(min_gap * 100));
            }
        }
        // Stopping: the steps since the last round are kept if they make a better model
        // (validated and checkpointed like any round).
        if in_round > 0 && self.ready() {
            if let Err(e) = idle_pool.install(|| self.round()) {
                tracing::error!("fine-tune: last round: {e}");
            }
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Starts the trainer thread; returns where to offer frames and the rollback control.
pub fn spawn(
    trainer: Finetuner,
    stop: Stop,
) -> Result<(Offer, Control, std::thread::JoinHandle<()>)> {
    // A small inbox: frames offered while it is full are not copied (serving never waits).
    let (tx, rx) = bounded(16);
    let (ctx, crx) = bounded(4);
    let h = std::thread::Builder::new()
        .name("finetune".into())
        .spawn(move || trainer.run(rx, crx, stop))
        .map_err(|e| Error::Other(format!("cannot start the fine-tuner: {e}")))?;
    Ok((Offer { tx }, Control { tx: ctx }, h))
}

/// Monte-Carlo SURE (Ramani, Blu & Unser 2008): for `y = x + n`, `n ~ N(0, σ²)` per pixel, an
/// unbiased estimate of the per-pixel MSE of `f(y)` against the unknown `x`:
/// `‖y − f(y)‖²/N − σ² + 2σ²·div f(y)/N`, the divergence taken along the ±1 `probe` by a finite
/// difference; `fy` is `f(y)`, which the caller has at hand. With `mask` (1 = counted) the
/// sums run over the masked pixels only: the
/// estimate stays unbiased for them, which lets the caller leave out pixels whose noise was
/// clipped at black or white (clipped noise is not Gaussian, and SURE goes wrong there).
/// Paired comparisons (same `y`, probe and mask) are what the gate uses.
pub fn mc_sure(
    y: &Tensor,
    fy: &Tensor,
    probe: &Tensor,
    mask: Option<&Tensor>,
    sigma: f64,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<f64> {
    // Small against σ, large against f32 rounding of outputs near 1.
    let eps = (sigma * 0.01).max(1e-4);
    let fyb = f(&(y + (probe * eps)?)?)?;
    let fit = (y - fy)?.sqr()?;
    let div = ((fyb - fy)? * probe)?;
    let (fit, div, count) = match mask {
        Some(m) => (
            (fit * m)?.sum_all()?,
            (div * m)?.sum_all()?,
            m.sum_all()?.to_scalar::<f32>()? as f64,
        ),
        None => (fit.sum_all()?, div.sum_all()?, y.elem_count() as f64),
    };
    if count < 1.0 {
        return Ok(f64::NAN);
    }
    let fit = fit.to_scalar::<f32>()? as f64 / count;
    let div = div.to_scalar::<f32>()? as f64 / count / eps;
    let s2 = sigma * sigma;
    Ok(fit - s2 + 2.0 * s2 * div)
}

/// Noise σ (0–1 scale) of each image's first plane by Immerkær's estimator (skipping windows
/// with a clipped pixel, see [`crate::stage::sure::immerkaer_sigma`]), the median over images.
/// One pass, without leaving out dark windows: on fluorescence frames, mostly dark background,
/// that would leave only the textured cells. Texture inflates the estimate somewhat, so
/// `stream_sigma` is better where the camera's noise is known.
pub fn median_noise_sigma(imgs: &[TrainImage]) -> f64 {
    let mut est: Vec<f64> = imgs
        .iter()
        .filter_map(|i| crate::stage::sure::immerkaer_sigma(&i.planes[0], i.w, i.h, false))
        .collect();
    if est.is_empty() {
        return 0.0;
    }
    est.sort_by(f64::total_cmp);
    est[est.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SURE is exact for the identity (risk σ²) and for a constant (‖y − c‖² − σ²), and its
    /// estimate of a real smoother's MSE is close to the truth on a known clean image.
    #[test]
    fn sure_estimates_the_clean_mse() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (n, p, sigma) = (4usize, 32usize, 20.0f64 / 255.0);
        let clean: Vec<f32> = (0..n * p * p)
            .map(|i| 0.4 + 0.2 * (((i % p) / 8) % 2) as f32)
            .collect();
        let mut noisy = clean.clone();
        corrupt::gaussian(&mut noisy, 20.0, false, &mut rng);
        let probe = rademacher(noisy.len(), &mut rng);
        let shape = (n, p, p, 1);
        let (x, y) = (
            Tensor::from_vec(clean, shape, &dev)?,
            Tensor::from_vec(noisy, shape, &dev)?,
        );
        let probe = Tensor::from_vec(probe, shape, &dev)?;
        let id = mc_sure(&y, &y, &probe, None, sigma, |t| Ok(t.clone()))?;
        assert!(
            (id - sigma * sigma).abs() < 1e-6,
            "{id} vs {}",
            sigma * sigma
        );
        // A 3-tap horizontal box blur: SURE vs the true MSE against the clean image.
        let blur = |t: &Tensor| -> Result<Tensor> {
            let l = t.narrow(2, 0, p - 2)?;
            let m = t.narrow(2, 1, p - 2)?;
            let r = t.narrow(2, 2, p - 2)?;
            let inner = ((l + m)? + r)?.affine(1.0 / 3.0, 0.0)?;
            Ok(Tensor::cat(
                &[&t.narrow(2, 0, 1)?, &inner, &t.narrow(2, p - 1, 1)?],
                2,
            )?)
        };
        let est = mc_sure(&y, &blur(&y)?, &probe, None, sigma, blur)?;
        let truth = (blur(&y)? - &x)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        assert!(
            (est - truth).abs() < 0.1 * truth,
            "SURE {est:.3e} vs true MSE {truth:.3e}"
        );
        assert!(est < id, "the blur removes noise: {est:.3e} < {id:.3e}");
        Ok(())
    }

    /// On a frame half black, where the noise is clipped, SURE over the unclipped pixels still
    /// estimates their MSE (over all pixels it would not: clipped noise is not Gaussian).
    #[test]
    fn masked_sure_survives_clipping() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (n, p, sigma) = (4usize, 32usize, 20.0f64 / 255.0);
        let clean: Vec<f32> = (0..n * p * p)
            .map(|i| if (i % p) < p / 2 { 0.0 } else { 0.5 })
            .collect();
        let mut noisy = clean.clone();
        corrupt::gaussian(&mut noisy, 20.0, true, &mut rng);
        let probe = rademacher(noisy.len(), &mut rng);
        let mask: Vec<f32> = clean.iter().map(|&v| f32::from(v > 0.2)).collect();
        let shape = (n, p, p, 1);
        let t = |v: Vec<f32>| Tensor::from_vec(v, shape, &dev);
        let (x, y, probe, mask) = (t(clean)?, t(noisy)?, t(probe)?, t(mask)?);
        let smooth = |t: &Tensor| -> Result<Tensor> { Ok(t.affine(0.5, 0.25)?) };
        let est = mc_sure(&y, &smooth(&y)?, &probe, Some(&mask), sigma, smooth)?;
        let err = (smooth(&y)? - &x)?.sqr()?;
        let truth = ((err * &mask)?.sum_all()?.to_scalar::<f32>()?
            / mask.sum_all()?.to_scalar::<f32>()?) as f64;
        assert!(
            (est - truth).abs() < 0.1 * truth,
            "masked SURE {est:.3e} vs true MSE {truth:.3e}"
        );
        Ok(())
    }

    /// Immerkær's estimate finds the σ of noise added to a smooth image.
    #[test]
    fn noise_sigma_estimate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (w, h) = (96, 80);
        let imgs: Vec<TrainImage> = [6.0f32, 12.0, 25.0]
            .iter()
            .map(|&s| {
                let mut v: Vec<f32> = (0..w * h).map(|i| 0.3 + 0.002 * (i % w) as f32).collect();
                corrupt::gaussian(&mut v, s, false, &mut rng);
                TrainImage {
                    path: PathBuf::new(),
                    w,
                    h,
                    planes: vec![v],
                }
            })
            .collect();
        let m = median_noise_sigma(&imgs) * 255.0;
        assert!((m - 12.0).abs() < 1.0, "median σ {m}");
    }

    /// A trainer on the shipped `denoise-fast` weights, small patches for speed.
    fn trainer(ckpt: Option<Checkpoints>, tweak: impl Fn(&mut FinetuneConfig)) -> Finetuner {
        let mut cfg = PipelineConfig::load("denoise-fast").unwrap();
        cfg.finetune.patch = 32;
        cfg.finetune.batch = 4;
        cfg.finetune.lr = 5e-4;
        cfg.finetune.min_frames = 2;
        tweak(&mut cfg.finetune);
        let dev = Device::Cpu;
        let t =
            candle_core::safetensors::load_buffer(&cfg.weights_bytes(None).unwrap(), &dev).unwrap();
        let model: Arc<dyn Model> = Arc::from(cfg.load_model(None, &dev).unwrap());
        let g =
            Generation::new(cfg, model, "denoise-fast@base".into(), 1).with_tensors(Arc::new(t));
        Finetuner::new(
            crate::pipeline::slot(g),
            Arc::new(Telemetry::new()),
            ckpt,
            None,
        )
        .unwrap()
    }

    /// A stream unlike the photos the model was trained on: hard-edged bars and blocks.
    fn stream(n: usize) -> Vec<Planes> {
        (0..n)
            .map(|k| {
                let (w, h) = (64, 64);
                let v = (0..w * h)
                    .map(|i| {
                        let (x, y) = (i % w, i / w);
                        let bar = ((x + k * 3) / (4 + k % 5)) % 2;
                        let block = ((x / 16) + (y / 16) + k) % 3;
                        0.15 + 0.5 * bar as f32 + 0.15 * block as f32
                    })
                    .collect();
                Planes::grey(w, h, v)
            })
            .collect()
    }

    fn feed(t: &mut Finetuner, n: usize) {
        for p in stream(n) {
            t.add(p);
        }
        assert!(t.ready());
    }

    #[test]
    fn fine_tuning_on_a_small_stream_lowers_the_validation_loss() {
        let mut t = trainer(None, |_| {});
        feed(&mut t, 40);
        let (before, serving) = t.validate().unwrap();
        assert_eq!(before, serving, "the shadow starts as the serving model");
        for _ in 0..40 {
            t.step().unwrap();
        }
        let (after, _) = t.validate().unwrap();
        assert!(
            after < 0.9 * before,
            "validation loss {before:.4e} -> {after:.4e}"
        );
        // And the round swaps it in, under a new version.
        match t.round().unwrap() {
            Round::Swapped { .. } => {}
            r => panic!("{r:?}"),
        }
        assert!(t.slot.load().version.starts_with("denoise-fast-v1@"));
    }

    #[test]
    fn the_candidate_is_the_moving_average_and_training_goes_on_from_the_shadow() {
        let mut t = trainer(None, |f| {
            f.ema = 0.5;
            // Swap whatever it is, to see exactly what gets served.
            f.min_improvement = -10.0;
        });
        feed(&mut t, 16);
        let mut after = vec![];
        for _ in 0..3 {
            t.step().unwrap();
            after.push(snapshot(&t.vm).unwrap());
        }
        assert!(matches!(t.round().unwrap(), Round::Swapped { .. }));
        let served = t.slot.load_full().tensors.clone().unwrap();
        let shadow = snapshot(&t.vm).unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let mut moved = 0.0f32;
        for (k, w3) in &after[2] {
            let (w1, w2) = (&after[0][k], &after[1][k]);
            let want = ((((w1 * 0.5).unwrap() + (w2 * 0.5).unwrap()).unwrap() * 0.5).unwrap()
                + (w3 * 0.5).unwrap())
            .unwrap();
            assert!(
                diff(&served[k], &want) < 1e-6,
                "{k}: served is not the average"
            );
            assert!(
                diff(&shadow[k], w3) == 0.0,
                "{k}: training weights were not restored"
            );
            moved = moved.max(diff(w3, &want));
        }
        assert!(moved > 0.0, "the steps changed nothing");
        // No autograd history is kept alive by the average or by snapshots (it leaked).
        for e in t.ema.as_ref().unwrap().values().chain(shadow.values()) {
            assert!(!e.track_op());
        }
    }

    #[test]
    fn a_worse_candidate_is_rejected_and_never_served() {
        let mut t = trainer(None, |_| {});
        feed(&mut t, 16);
        // Spoil the shadow weights.
        let spoiled: HashMap<String, Tensor> = snapshot(&t.vm)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let noise = v.randn_like(0.0, 0.2).unwrap();
                (k, (v + noise).unwrap())
            })
            .collect();
        set_vars(&t.vm, &spoiled).unwrap();
        let before = t.slot.load_full();
        match t.round().unwrap() {
            Round::Rejected { candidate, serving } => assert!(candidate > serving),
            r => panic!("{r:?}"),
        }
        assert!(Arc::ptr_eq(&before, &t.slot.load_full()));
        assert_eq!(t.tel.value("aestream_finetune_rejected_total"), 1.0);
        // Nothing better on record either: no rollback target.
        assert!(!t.rollback().unwrap());
    }

    #[test]
    fn restart_resumes_from_the_newest_checkpoint_with_its_optimizer_state() {
        let dir = tempfile::tempdir().unwrap();
        let ck = || Checkpoints::new(dir.path().to_path_buf(), "denoise-fast", 3).unwrap();
        // Accept any candidate, so that each round writes a version.
        let mut t = trainer(Some(ck()), |f| f.min_improvement = -1.0);
        feed(&mut t, 16);
        for _ in 0..2 {
            for _ in 0..3 {
                t.step().unwrap();
            }
            assert!(matches!(t.round().unwrap(), Round::Swapped { .. }));
        }
        let serving = t.slot.load().version.clone();
        let state = t.optimizer_state();
        let r = ck().newest(&Device::Cpu).expect("a checkpoint");
        assert_eq!(r.number, 2);
        assert_eq!(r.meta.as_ref().unwrap().version, serving);
        assert_eq!(r.meta.as_ref().unwrap().steps, 6);
        let opt = r.opt.clone().expect("optimizer state");
        for (k, v) in &state {
            let d = (v - &opt[k]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
        }
        // A new trainer (the restarted daemon) serves v2 and continues at step 6.
        let cfg = t.cfg.clone();
        let g = restored_generation(&cfg, r, &Device::Cpu, 1).unwrap();
        assert_eq!(g.version, serving);
        let step = opt["train.step"].to_vec1::<f32>().unwrap()[0] as u64;
        let t2 = Finetuner::new(
            crate::pipeline::slot(g),
            Arc::new(Telemetry::new()),
            Some(ck()),
            Some((step, opt)),
        )
        .unwrap();
        assert_eq!(t2.steps(), 6);
        assert_eq!(t2.next_number, 3);
    }

    #[test]
    fn a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path().to_path_buf(), "p", 3).unwrap();
        let dev = Device::Cpu;
        let t1 = HashMap::from([("w".to_string(), Tensor::ones(4, DType::F32, &dev).unwrap())]);
        let meta = CheckpointMeta {
            pipeline: "p".into(),
            version: "p-v1@0".into(),
            number: 1,
            parent: "base".into(),
            steps: 1,
            train_loss: 0.0,
            val_loss: 0.0,
            serving_val_loss: 0.0,
            frames_seen: 0,
            time: String::new(),
        };
        c.write(1, &t1, &HashMap::new(), &meta).unwrap();
        // Killed mid-write of v2: its optimizer state is there, its weights only as a partial
        // temporary file (renamed never happened).
        std::fs::write(dir.path().join("p-v2.opt.safetensors"), b"partial").unwrap();
        std::fs::write(dir.path().join(".aestream-999-0.tmp"), b"partial").unwrap();
        assert_eq!(c.newest(&dev).unwrap().number, 1);
        // Even a damaged newest file (a disk error, not our writer) falls back to v1.
        std::fs::write(dir.path().join("p-v3.safetensors"), b"garbage").unwrap();
        let r = c.newest(&dev).unwrap();
        assert_eq!(r.number, 1);
        assert_eq!(r.tensors["w"].to_vec1::<f32>().unwrap(), vec![1.0; 4]);
    }

    /// Without clean frames: Neighbor2Neighbor steps run, and the gate's SURE estimates track
    /// the MSE against the clean frames that the trainer never sees, candidate and serving
    /// model alike, and order them the same way.
    #[test]
    fn the_noisy_target_trains_without_clean_frames() {
        let mut t = trainer(None, |f| {
            f.target = FinetuneTarget::Noisy;
            f.stream_sigma = 25.0;
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // Mid-grey frames: SURE assumes Gaussian noise, which clipping at 0 and 1 is not.
        let mid = |v: f32| 0.3 + 0.5 * (v - 0.15);
        for mut p in stream(16) {
            for pl in &mut p.planes {
                pl.iter_mut().for_each(|v| *v = mid(*v));
                corrupt::gaussian(pl, 25.0, true, &mut rng);
            }
            t.add(p);
        }
        // Held-out frames whose clean twins the test keeps.
        let twins: Vec<(TrainImage, TrainImage)> = stream(6)
            .into_iter()
            .skip(2)
            .map(|p| {
                let clean: Vec<f32> = p.planes[0].iter().map(|&v| mid(v)).collect();
                let mut noisy = clean.clone();
                corrupt::gaussian(&mut noisy, 25.0, true, &mut rng);
                let img = |v| TrainImage {
                    path: PathBuf::new(),
                    w: p.width,
                    h: p.height,
                    planes: vec![v],
                };
                (img(clean), img(noisy))
            })
            .collect();
        let (clean, noisy): (Vec<_>, Vec<_>) = twins.into_iter().unzip();
        t.holdout = noisy;
        // The true MSEs on the very patches `validate` draws (same seed, same image sizes).
        let truth = |t: &Finetuner| -> (f64, f64) {
            let p = t.patch_for(&t.holdout, t.fc.patch);
            let n = t.fc.val_patches;
            let draw = |imgs: &[TrainImage]| -> Tensor {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a1);
                let s = PatchSampler::new(imgs, p).unwrap();
                let v: Vec<f32> = (0..n).flat_map(|_| s.clean(&mut rng)).collect();
                Tensor::from_vec(v, (n, p, p, 1), &Device::Cpu).unwrap()
            };
            let (x, y) = (draw(&clean), draw(&t.holdout));
            let mse = |out: Tensor| {
                (out - &x)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            };
            let cand = mse(t.net.forward_raw(&y).unwrap().raw);
            let serv = mse(t.slot.load().model.forward(&y).unwrap());
            (cand, serv)
        };
        for _ in 0..20 {
            assert!(t.step().unwrap().is_finite());
        }
        let (cand, serv) = t.validate().unwrap();
        let (true_cand, true_serv) = truth(&t);
        assert!(
            (true_cand - true_serv).abs() > 0.02 * true_serv,
            "training changed the model: {true_cand:.4e} vs {true_serv:.4e}"
        );
        for (est, truth) in [(cand, true_cand), (serv, true_serv)] {
            assert!(
                (est - truth).abs() < 0.15 * truth,
                "SURE {est:.4e} vs true MSE {truth:.4e}"
            );
        }
        assert_eq!(
            cand < serv,
            true_cand < true_serv,
            "SURE {cand:.4e} / {serv:.4e}, truth {true_cand:.4e} / {true_serv:.4e}"
        );
    }
}
