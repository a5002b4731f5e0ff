//! The `aestream` command line: run, train, eval.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use aestream::config::{OutputKind, PipelineConfig, BUILTIN_PIPELINES};
use aestream::eval::{EvalArgs, Noise};
use aestream::source::split::Framing;

// Large tensors are allocated and freed every step; glibc returns them to the OS each time
// (page faults dominated training time), mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod daemon;

#[derive(Parser)]
#[command(
    name = "aestream",
    version,
    about = "Stream images through autoencoders: denoise, encode, segment"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log format: human (terminal), json (one object per line), journald, or auto
    /// (journald when stderr is the journal, else human).
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Auto,
    Human,
    Json,
    Journald,
}

/// Sets up tracing; `AESTREAM_LOG` filters (default `info`).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("AESTREAM_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // systemd sets JOURNAL_STREAM to the device:inode of the journal stream it gave us.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let format = match format {
        LogFormat::Auto if under_journal => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Human,
        f => f,
    };
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("aestream: journald unavailable ({e}); logging to stderr"),
        }
    }
    let base = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter());
    if format == LogFormat::Json {
        base.json().init();
    } else {
        base.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FramingArg {
    /// PNG and binary PNM (P5/P6) files back to back.
    Concat,
    /// Each frame prefixed by its length, 4 bytes big-endian; any image format.
    Len,
}

impl From<FramingArg> for Framing {
    fn from(f: FramingArg) -> Self {
        match f {
            FramingArg::Concat => Framing::Concat,
            FramingArg::Len => Framing::Length,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: folder or stdin in, folder or stdout out.
    Run(daemon::RunArgs),
    /// Train a pipeline's model on a folder of images.
    Train {
        /// Built-in pipeline name or path to a .toml file.
        pipeline: String,
        /// Folder of training images.
        #[arg(long)]
        data: PathBuf,
        /// Folder of validation images (default: hold out part of --data).
        #[arg(long)]
        val: Option<PathBuf>,
        #[arg(long)]
        epochs: Option<usize>,
        /// Steps per epoch (default: the pipeline's train.steps_per_epoch).
        #[arg(long)]
        steps_per_epoch: Option<usize>,
        /// Where to write the weights (safetensors); metadata goes to OUT.json, the
        /// checkpoint to OUT.ckpt.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Continue from OUT.ckpt if it exists.
        #[arg(long)]
        resume: bool,
        /// Start from these weights (safetensors) where names and shapes match; layers the
        /// file lacks keep their fresh initialisation (warm start of a grown model).
        #[arg(long)]
        init: Option<PathBuf>,
        /// Segmentation: the foreground mask file (or folder of masks named as the images).
        #[arg(long)]
        masks: Option<PathBuf>,
        /// Stop after this many steps in all (the learning-rate schedule still spans every
        /// epoch); continue later with --resume.
        #[arg(long)]
        stop_after: Option<usize>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Measure a pipeline's model: PSNR/SSIM (denoise), reconstruction MSE against PCA, code
    /// sparsity and k-NN accuracy (autoencoders), IoU/Dice (segmentation).
    Eval {
        pipeline: String,
        /// Clean frames: a folder of images (recursive), a .csv[.gz] of digit rows or an IDX
        /// images file; for segmentation an image file or folder.
        #[arg(long)]
        data: PathBuf,
        /// gaussian:SIGMA (0-255 scale), salt-pepper:P, mask:P or none (default: gaussian:25
        /// for denoisers, none for the others).
        #[arg(long)]
        noise: Option<String>,
        /// Fit a PCA with as many components as the code on these frames and compare.
        #[arg(long)]
        pca_fit: Option<PathBuf>,
        /// Labels of a folder of frames: CSV lines `relative/path,label`.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Labelled frames the k-NN classifier is fitted on (default: the training split).
        #[arg(long)]
        knn_fit: Option<PathBuf>,
        /// Segmentation: ground-truth mask file, or folder of masks named as the images.
        #[arg(long)]
        masks: Option<PathBuf>,
        /// Score only this region of each frame: X,Y,WIDTH,HEIGHT.
        #[arg(long, value_delimiter = ',')]
        crop: Option<Vec<usize>>,
        /// Write a picture: a row of inputs, of corrupted inputs, of outputs, of PCA
        /// reconstructions (where they apply).
        #[arg(long)]
        montage: Option<PathBuf>,
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Print one JSON object (otherwise a short summary).
        #[arg(long)]
        json: bool,
        /// Turn colour images grey first.
        #[arg(long)]
        grey: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Average 1, 2 or 4 flipped views (overrides `infer.ensemble`).
        #[arg(long)]
        ensemble: Option<usize>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// List the built-in pipelines.
    Pipelines,
    /// Measure a model's inference and training speed on random input: a reference network
    /// (conv-ae-ref, dense-ae-ref) or a pipeline's model.
    Bench {
        #[command(flatten)]
        args: aestream::bench::BenchArgs,
        /// Print one JSON object (otherwise a one-line summary).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aestream: error: {e:#}");
            let usage = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<aestream::Error>(),
                    Some(aestream::Error::Config { .. })
                )
            });
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Ctrl-C / SIGTERM request a drain; a second one exits at once.
fn parse_kinds(emit: Option<Vec<String>>, cfg: &PipelineConfig) -> anyhow::Result<Vec<OutputKind>> {
    let Some(list) = emit else {
        return Ok(cfg.output.kinds.clone());
    };
    let allowed = OutputKind::for_task(cfg.model.arch.task());
    list.iter()
        .map(|k| {
            let kind: OutputKind = k.trim().parse().map_err(|m| aestream::Error::Config {
                origin: "--emit".into(),
                message: m,
            })?;
            if !allowed.contains(&kind) {
                let names: Vec<_> = allowed.iter().map(|k| k.name()).collect();
                return Err(aestream::Error::Config {
                    origin: "--emit".into(),
                    message: format!(
                        "pipeline {} cannot emit {k:?} (it can: {})",
                        cfg.name,
                        names.join(", ")
                    ),
                }
                .into());
            }
            Ok(kind)
        })
        .collect()
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
    }
}

fn with_ensemble(
    mut cfg: PipelineConfig,
    ensemble: Option<usize>,
) -> aestream::Result<PipelineConfig> {
    if let Some(n) = ensemble {
        if ![1, 2, 4].contains(&n) {
            return Err(aestream::Error::Config {
                origin: "--ensemble".into(),
                message: format!("must be 1, 2 or 4, got {n}"),
            });
        }
        cfg.infer.ensemble = n;
    }
    Ok(cfg)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run(args) => daemon::run(args),
        Cmd::Train {
            pipeline,
            data,
            val,
            epochs,
            steps_per_epoch,
            out,
            seed,
            resume,
            init,
            masks,
            stop_after,
            device,
        } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let device = aestream::model::select_device(&device)?;
            let out = out.unwrap_or_else(|| PathBuf::from(&cfg.model.weights));
            let args = aestream::train::TrainArgs {
                data,
                val,
                epochs,
                out,
                seed,
                resume,
                init,
                progress: std::io::stderr().is_terminal(),
                steps_per_epoch,
                masks,
                stop_after,
                device,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let report = aestream::train::train(&cfg, &args)
                .with_context(|| format!("training {}", cfg.origin))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Eval {
            pipeline,
            data,
            noise,
            pca_fit,
            labels,
            knn_fit,
            masks,
            crop,
            montage,
            weights,
            json,
            grey,
            seed,
            ensemble,
            device,
        } => {
            let cfg = with_ensemble(PipelineConfig::load(&pipeline)?, ensemble)?;
            let noise: Option<Noise> =
                noise
                    .map(|n| n.parse())
                    .transpose()
                    .map_err(|m| aestream::Error::Config {
                        origin: "--noise".into(),
                        message: m,
                    })?;
            let crop = match crop.as_deref() {
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
            let device = aestream::model::select_device(&device)?;
            let model = cfg.load_model(weights.as_deref(), &device)?;
            let args = EvalArgs {
                data,
                noise,
                seed,
                grey,
                progress: std::io::stderr().is_terminal(),
                pca_fit,
                labels,
                knn_fit,
                masks,
                crop,
                montage,
            };
            let r = aestream::eval::evaluate(&cfg, model.as_ref(), &args)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print_summary(&r);
            }
            Ok(())
        }
        Cmd::Bench { mut args, json } => {
            // Before any candle op: the pool size is fixed once rayon's global pool starts.
            args.threads = aestream::bench::set_threads(args.threads)?;
            let r = aestream::bench::run(&args)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{r}");
            }
            Ok(())
        }
        Cmd::Pipelines => {
            for (name, text) in BUILTIN_PIPELINES {
                let cfg = PipelineConfig::from_toml(text, name)?;
                println!("{name}\t{}", cfg.description);
            }
            Ok(())
        }
    }
}
