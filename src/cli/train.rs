//! `aestream train`: trains a pipeline's model on a folder of images (or the dataset the
//! pipeline names) and writes weights, metadata and a checkpoint to continue from.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use aestream::config::PipelineConfig;

/// Train a pipeline's model on a folder of images.
#[derive(Args)]
pub struct TrainCmd {
    /// Built-in pipeline name or path to a .toml file.
    pub pipeline: String,
    /// Folder of training images.
    #[arg(long)]
    pub data: PathBuf,
    /// Folder of validation images (default: hold out part of --data).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Epochs, 1 to 100000 (default: the pipeline's train.epochs).
    #[arg(long, value_parser = count(100_000))]
    pub epochs: Option<usize>,
    /// Steps per epoch, 1 to 10000000 (default: the pipeline's train.steps_per_epoch).
    #[arg(long, value_parser = count(10_000_000))]
    pub steps_per_epoch: Option<usize>,
    /// Where to write the weights (safetensors); metadata goes to OUT.json, the
    /// checkpoint to OUT.ckpt, the loss curve to OUT (extension replaced).curve.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from OUT.ckpt if it exists.
    #[arg(long)]
    pub resume: bool,
    /// Start from these weights (safetensors) where names and shapes match; layers the
    /// file lacks keep their fresh initialisation (warm start of a grown model).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Segmentation: the foreground mask file (or folder of masks named as the images).
    #[arg(long)]
    pub masks: Option<PathBuf>,
    /// Stop after this many steps in all (the learning-rate schedule still spans every
    /// epoch); continue later with --resume.
    #[arg(long, value_parser = count(u32::MAX as u64))]
    pub stop_after: Option<usize>,
    /// cpu, cuda (= cuda:0), cuda:N, or auto: the first GPU when built with CUDA and one is
    /// there, else the CPU.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// A count from 1 to `hi`.
fn count(hi: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=hi)
}

pub fn run(a: TrainCmd) -> anyhow::Result<()> {
    let cfg = PipelineConfig::load(&a.pipeline)?;
    let device = aestream::model::select_device(&a.device)?;
    let out = a.out.unwrap_or_else(|| PathBuf::from(&cfg.model.weights));
    let args = aestream::train::TrainArgs {
        data: a.data,
        val: a.val,
        epochs: a.epochs,
        out,
        seed: a.seed,
        resume: a.resume,
        init: a.init,
        progress: std::io::stderr().is_terminal(),
        steps_per_epoch: a.steps_per_epoch,
        masks: a.masks,
        stop_after: a.stop_after,
        device,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report =
        aestream::train::train(&cfg, &args).with_context(|| format!("training {}", cfg.origin))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
