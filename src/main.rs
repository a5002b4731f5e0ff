//! The `aestream` command line: run, train, eval, bench, pipelines (each in `src/cli/`).
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use aestream::config::{PipelineConfig, BUILTIN_PIPELINES};

// Large tensors are allocated and freed every step; glibc returns them to the OS each time
// (page faults dominated training time), mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

/// `aestream --version`: the crate's version and the optional features compiled in, e.g.
/// `aestream 0.1.0 (features: cuda)`, so a binary says whether it can use a GPU at all.
const VERSION: &str = if aestream::model::device::CUDA_COMPILED {
    concat!(env!("CARGO_PKG_VERSION"), " (features: cuda)")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (features: none)")
};

#[derive(Parser)]
#[command(
    name = "aestream",
    version = VERSION,
    about = "Stream images through autoencoders: denoise, encode, segment"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log format: human (terminal), json (one object per line), journald, or auto
    /// (journald when stderr is the journal, else human).
    #[arg(long, global = true, value_enum, default_value = "auto")]
    log_format: cli::logging::LogFormat,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: folder, stdin or Redis stream in; folder, stdout or Redis stream out.
    Run(Box<cli::run::RunArgs>),
    Train(cli::train::TrainCmd),
    Eval(cli::eval::EvalCmd),
    /// List the built-in pipelines.
    Pipelines,
    Bench(cli::bench::BenchCmd),
}

fn main() -> ExitCode {
    // First, while this is the only thread (it sets an environment variable).
    aestream::runtime::threads::serial_elementwise_ops();
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
    cli::logging::init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aestream: error: {}", cli::error_text(&e));
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run(args) => cli::run::run(*args),
        Cmd::Train(args) => cli::train::run(args),
        Cmd::Eval(args) => cli::eval::run(args),
        Cmd::Bench(args) => cli::bench::run(args),
        Cmd::Pipelines => {
            for (name, text) in BUILTIN_PIPELINES {
                let cfg = PipelineConfig::from_toml(text, name)?;
                println!("{name}\t{}", cfg.description);
            }
            Ok(())
        }
    }
}
