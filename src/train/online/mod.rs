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
//! Checkpoints (`--checkpoints DIR`): every swapped-in version, in the checkpoint format that
//! offline training uses too (weights, AdamW moments and step in one file, metadata beside it;
//! see [`store`]). The newest complete, loadable version is served and trained on after a
//! restart; the last `keep` are kept.
//!
//! The parts, one file each: this file holds the trainer's state and the handles the pipeline
//! gets ([`Offer`], [`Control`], [`spawn`]); [`store`] the checkpoint folder; [`objective`] the
//! two training objectives; [`gate`] the validation of a candidate against the serving model;
//! [`policy`] when to swap, restart the shadow or roll back; [`scheduler`] the thread that paces
//! the steps and accounts for their CPU time.

mod gate;
mod objective;
mod policy;
mod scheduler;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use crossbeam_channel::{bounded, Sender};
use rand::{Rng, SeedableRng};

use super::adamw::{AdamW, AdamWParams};
use crate::config::{FinetuneConfig, FinetuneTarget, PipelineConfig};
use crate::data::patches::TrainImage;
use crate::error::{Error, Result};
use crate::frame::Planes;
use crate::model::checkpoint::OptimizerState;
use crate::model::{weights, Net, Task};
use crate::runtime::Stop;
use crate::runtime::Telemetry;
use crate::serving::{Generation, ModelSlot};
pub use policy::Round;
pub use store::{restored_generation, CheckpointMeta, Checkpoints, Restored, Resume};

/// Where the pipeline offers frames to the trainer.
#[derive(Clone, Debug)]
pub struct Offer {
    tx: Sender<Planes>,
}

impl crate::serving::Tap for Offer {
    /// Hands the trainer a copy of `p` if its inbox has room; never blocks.
    fn decoded(&self, p: &Planes) {
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

/// A version's weights, shared by the serving generation and the trainer's history.
type Weights = Arc<HashMap<String, Tensor>>;

/// A version the trainer accepted (or started from): the generation that served it, its
/// weights, its number N (`NAME-vN@…`, its checkpoint's name) if it is a fine-tuned one, and
/// the weights file its line descends from (recorded in checkpoints), if known.
#[derive(Clone)]
struct Accepted {
    gen: Arc<Generation>,
    weights: Weights,
    number: Option<u64>,
    base_weights: Option<String>,
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
    history: Vec<Accepted>,
    ckpt: Option<Checkpoints>,
    next_number: u64,
    rejected_in_a_row: usize,
    train_loss: f64,
    rng: rand::rngs::StdRng,
    /// The moving average of the shadow's weights (the candidate), when `ema` > 0.
    ema: Option<HashMap<String, Tensor>>,
}

impl Finetuner {
    /// A trainer for the generation in `slot`, which must carry its weights. With `resume`,
    /// the version numbers continue after the restored checkpoint and the optimizer state is
    /// the one saved with it.
    pub fn start(
        slot: ModelSlot,
        tel: Arc<Telemetry>,
        ckpt: Option<Checkpoints>,
        resume: Option<Resume>,
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
        if !cfg.infer.dtype.is_f32() {
            // The gate scores the served model beside the f32 candidate, by SURE's finite
            // differences among others, which half precision's rounding would swamp.
            return Err(Error::Config {
                origin: "--finetune".into(),
                message: format!(
                    "fine-tuning serves and gates f32 models; {} sets infer.dtype = {:?}",
                    cfg.origin,
                    cfg.infer.dtype.name()
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
        weights::set_vars(&vm, &tensors, "fine-tune: the serving weights")?;
        let mut opt = AdamW::new(
            weights::vars(&vm),
            AdamWParams {
                lr: fc.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let (number, optimizer, base_weights) = match resume {
            Some(r) => (r.number, r.optimizer, r.base_weights),
            // Serving the pipeline's weights file: the line starts here.
            None => (0, None, Some(gen.version.weights_id())),
        };
        if let Some(o) = optimizer {
            opt.load_state(&o.moments, o.step as usize)?;
        }
        // After every number on disk, not only the one served: when the newest checkpoints
        // were passed over (damaged, or not fitting the model), a new version numbered after
        // the served one would be pruned at once as the oldest, or overwrite one of them.
        let on_disk = ckpt.as_ref().and_then(|c| c.highest()).unwrap_or(0);
        let next_number = number.max(on_disk) + 1;
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
            history: vec![Accepted {
                gen,
                weights: tensors,
                number: (number > 0).then_some(number),
                base_weights,
            }],
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

    pub fn optimizer_state(&self) -> OptimizerState {
        OptimizerState {
            step: self.opt.step as u64,
            moments: self.opt.state(),
        }
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
