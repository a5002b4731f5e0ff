//! Offline training (`aestream train`): what was asked, the report written at the end, and
//! the dispatch to each task's data and validation.
//!
//! The parts: [`fit`] is the loop every task shares (optimizer schedule, checkpoints,
//! `--resume`); [`denoise`], [`reconstruct`] and [`segment`] supply each task's batches and
//! validation; [`pretrain`] the layer-wise pretraining of a dense autoencoder; [`loss`] the
//! losses; [`adamw`] and [`init`] the optimizer and the seeded
//! initialisation; [`online`] the fine-tuner that trains beside a running pipeline. The data
//! comes from [`crate::data`], the validation scores from [`crate::eval::score`].
//!
//! Checkpoints are [`crate::model::checkpoint::Checkpoint`]s: the weights, the AdamW moments and
//! the step, written atomically every `checkpoint_every` steps, with the loss history as their
//! metadata; [`curve`] draws that history as `<out>.curve.png` beside the weights.

pub mod adamw;
pub mod curve;
pub mod denoise;
mod fit;
pub mod loss;
pub mod online;
pub mod pretrain;
mod reconstruct;
mod segment;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::Serialize;

use crate::config::PipelineConfig;
use crate::data::patches::TrainImage;
use crate::error::Result;
use crate::model::{Net, NetModel, Task};
pub use denoise::{validate, ValCorruption, ValResult};
pub use loss::{loss_of, sigma_weights, weighted_mse};

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
    /// Layer-wise pretraining, one entry per layer pair (absent when there was none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pretrain: Vec<pretrain::LayerPretrain>,
    /// Wall time, pretraining included.
    pub seconds: f64,
    pub command: String,
}

/// Path of the checkpoint that belongs to a weights file.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

/// One validation pass: a loss, named metrics, and the line logged for it.
pub struct Val {
    pub loss: f64,
    /// What `loss` measures ("MSE", "1 − IoU"): the training curve names its series by it.
    pub measure: &'static str,
    pub metrics: BTreeMap<String, f64>,
    pub line: String,
}

/// Loss of one step on a fresh batch (the RNG is seeded by the step).
type StepLoss<'a> = Box<dyn FnMut(&mut rand::rngs::StdRng) -> Result<Tensor> + 'a>;

/// What a task's training supplies to the shared loop.
pub(crate) struct Job<'a> {
    step_loss: StepLoss<'a>,
    validate: Box<dyn FnMut() -> Result<Val> + 'a>,
    data: String,
    train_names: Vec<String>,
    val_names: Vec<String>,
    /// What layer-wise pretraining did before the loop (empty: none).
    pretrain: Vec<pretrain::LayerPretrain>,
}

/// Trains the pipeline's model and writes `args.out` (+ `.json` metadata, + `.ckpt`).
pub fn train(cfg: &PipelineConfig, args: &TrainArgs) -> Result<TrainReport> {
    let vm = VarMap::new();
    let vb = crate::model::init::seeded_builder(&vm, args.seed, DType::F32, &args.device);
    let net = Net::new(vb, &cfg.model.arch)?;
    let fixed = cfg.model.arch.fixed_size();
    let model = NetModel::new(net.clone(), args.device.clone(), fixed);
    let job = match net.task() {
        Task::Denoise => denoise::denoise_job(cfg, args, &net, &model)?,
        Task::Reconstruct => reconstruct::reconstruct_job(cfg, args, &net, &model, &vm)?,
        Task::Segment => segment::segment_job(cfg, args, &net, &model)?,
    };
    fit::fit(cfg, args, &vm, job)
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
