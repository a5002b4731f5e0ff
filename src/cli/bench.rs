//! `aestream bench`: a model's inference and training speed on random input — a reference
//! network (conv-ae-ref, dense-ae-ref) or a pipeline's model — as one line or one JSON object.

use clap::Args;

/// Measure a model's inference and training speed on random input.
#[derive(Args)]
pub struct BenchCmd {
    #[command(flatten)]
    pub args: aestream::bench::BenchArgs,
    /// Print one JSON object (otherwise a one-line summary).
    #[arg(long)]
    pub json: bool,
}

pub fn run(BenchCmd { mut args, json }: BenchCmd) -> anyhow::Result<()> {
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
