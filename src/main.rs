//! The `aestream` command line: run, train, eval.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use aestream::config::{OutputKind, PipelineConfig, BUILTIN_PIPELINES};
use aestream::eval::{EvalArgs, Noise};
use aestream::sink::{folder::FolderSink, stdout::StreamSink, Sink};
use aestream::source::folder::{FolderSource, FolderSourceConfig};
use aestream::source::split::Framing;
use aestream::source::stdin::StreamSource;
use aestream::source::{Source, Stop};

// Large tensors are allocated and freed every step; glibc returns them to the OS each time
// (page faults dominated training time), mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "aestream",
    version,
    about = "Stream images through autoencoders: denoise, encode, segment"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
    Run {
        /// Built-in pipeline name or path to a .toml file.
        #[arg(default_value = "denoise")]
        pipeline: String,
        /// Folder to read (and watch), or - for stdin.
        #[arg(long, short)]
        input: String,
        /// Folder to write into, or - for stdout.
        #[arg(long, short)]
        output: String,
        /// Process what is there (or stdin until EOF) and exit instead of watching.
        #[arg(long)]
        once: bool,
        /// Include sub-folders of the input folder.
        #[arg(long)]
        recursive: bool,
        /// Framing of stdin and stdout streams.
        #[arg(long, value_enum, default_value = "concat")]
        framing: FramingArg,
        /// Weights to use instead of the pipeline's.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Outputs to write, overriding the pipeline's `output.kinds`.
        #[arg(long, value_delimiter = ',')]
        emit: Option<Vec<String>>,
        /// Average 1, 2 or 4 flipped views (overrides `infer.ensemble`).
        #[arg(long)]
        ensemble: Option<usize>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
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
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Corrupt each clean image of a folder, run the model, and measure PSNR/SSIM.
    Eval {
        pipeline: String,
        /// Folder of clean images.
        #[arg(long)]
        data: PathBuf,
        /// gaussian:SIGMA (0-255 scale), salt-pepper:P, mask:P or none.
        #[arg(long, default_value = "gaussian:25")]
        noise: String,
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AESTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
fn install_signal_handler(stop: Stop) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            tracing::warn!("no signal handling: cannot start the runtime");
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            for round in 0.. {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                if round == 0 {
                    tracing::info!("stopping: finishing the frames in flight");
                    stop.request();
                } else {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(130);
                }
            }
        });
    });
}

fn parse_kinds(emit: Option<Vec<String>>, cfg: &PipelineConfig) -> anyhow::Result<Vec<OutputKind>> {
    let Some(list) = emit else {
        return Ok(cfg.output.kinds.clone());
    };
    list.iter()
        .map(|k| {
            serde_json::from_value::<OutputKind>(serde_json::Value::String(k.clone())).map_err(
                |_| {
                    aestream::Error::Config {
                        origin: "--emit".into(),
                        message: format!("unknown output kind {k:?} (known: denoised)"),
                    }
                    .into()
                },
            )
        })
        .collect()
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
        Cmd::Run {
            pipeline,
            input,
            output,
            once,
            recursive,
            framing,
            weights,
            emit,
            ensemble,
            device,
        } => {
            let cfg = with_ensemble(PipelineConfig::load(&pipeline)?, ensemble)?;
            let kinds = parse_kinds(emit, &cfg)?;
            let device = aestream::model::select_device(&device)?;
            let model: Arc<dyn aestream::model::Model> =
                Arc::from(aestream::model::load(&cfg, weights.as_deref(), &device)?);
            let framing: Framing = framing.into();
            if input != "-" && output != "-" {
                let same = std::fs::canonicalize(&input)
                    .ok()
                    .zip(std::fs::canonicalize(&output).ok());
                if matches!(same, Some((a, b)) if a == b) {
                    return Err(aestream::Error::Config {
                        origin: "--output".into(),
                        message: format!(
                            "{output} is the input folder; outputs would be taken as inputs"
                        ),
                    }
                    .into());
                }
            }
            // The output folder exists before the source starts, so it can be excluded.
            let sink: Box<dyn Sink> = if output == "-" {
                Box::new(StreamSink::new(
                    std::io::BufWriter::new(std::io::stdout()),
                    framing,
                ))
            } else {
                Box::new(FolderSink::new(PathBuf::from(&output).as_path())?)
            };
            let source: Box<dyn Source> = if input == "-" {
                Box::new(StreamSource::new(
                    std::io::stdin(),
                    framing,
                    cfg.decode.max_alloc_mib.saturating_mul(1 << 20) as usize,
                ))
            } else {
                let mut exclude = Vec::new();
                if output != "-" {
                    exclude.push(PathBuf::from(&output));
                }
                let src_cfg = FolderSourceConfig {
                    dir: PathBuf::from(&input),
                    recursive,
                    once,
                    exclude,
                    max_file_bytes: cfg.decode.max_alloc_mib.saturating_mul(1 << 20),
                };
                Box::new(FolderSource::new(src_cfg).with_context(|| format!("--input {input}"))?)
            };
            let stop = Stop::new();
            install_signal_handler(stop.clone());
            tracing::info!(
                "pipeline {} ({}) on {:?}: {} -> {}",
                cfg.name,
                cfg.origin,
                device,
                input,
                output
            );
            let s = aestream::pipeline::run(&cfg, model, source, sink, kinds, stop)?;
            tracing::info!(
                "done: {} frames in, {} written, {} failed, {} batches, {:.2} s ({:.2} frames/s)",
                s.frames_in,
                s.frames_out,
                s.failed,
                s.batches,
                s.seconds,
                s.frames_out as f64 / s.seconds.max(1e-9)
            );
            Ok(())
        }
        Cmd::Train {
            pipeline,
            data,
            val,
            epochs,
            steps_per_epoch,
            out,
            seed,
            resume,
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
                progress: std::io::stderr().is_terminal(),
                steps_per_epoch,
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
            weights,
            json,
            grey,
            seed,
            ensemble,
            device,
        } => {
            let cfg = with_ensemble(PipelineConfig::load(&pipeline)?, ensemble)?;
            let noise: Noise = noise.parse().map_err(|m| aestream::Error::Config {
                origin: "--noise".into(),
                message: m,
            })?;
            let device = aestream::model::select_device(&device)?;
            let model = aestream::model::load(&cfg, weights.as_deref(), &device)?;
            let args = EvalArgs {
                data,
                noise,
                seed,
                grey,
                progress: std::io::stderr().is_terminal(),
            };
            let r = aestream::eval::evaluate(&cfg, model.as_ref(), &args)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} frames: PSNR {:.2} dB (input {:.2} dB), SSIM {:.4} (input {:.4}), {:.3} s/frame",
                    r.frames, r.psnr, r.psnr_input, r.ssim, r.ssim_input, r.seconds_per_frame
                );
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
