//! The command line's parts: one module per subcommand (`run`, `train`, `eval`, `bench`), each
//! a `#[derive(Args)]` struct turned into the library's typed settings here, at the edge, where
//! errors get their context (`anyhow`). Exit codes are `main`'s: 0 ok, 1 runtime error, 2 usage
//! or configuration error.

pub mod bench;
pub mod endpoint;
pub mod eval;
pub mod logging;
pub mod run;
pub mod train;
pub mod video;
pub mod web;

use clap::ValueEnum;

use aestream::config::{OutputKind, PipelineConfig, ENSEMBLE_SIZES};
use aestream::frame::framing::Framing;

/// An error and its causes for a person to read, each said once. Many messages already end
/// with their cause's (ours name the file, then quote what the system said), where anyhow's
/// `{:#}` would say it twice: "p.toml: No such file or directory (os error 2): No such file or
/// directory (os error 2)".
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if text.ends_with(&m) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&m);
    }
    text
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FramingArg {
    /// PNG and binary PNM (P5/P6) files back to back.
    Concat,
    /// Each frame prefixed by its length, 4 bytes big-endian; any image format.
    Len,
    /// YUV4MPEG2 video (ffmpeg's `-f yuv4mpegpipe`), stdin to stdout: the same header, frame
    /// count and order come back.
    Y4m,
}

impl From<FramingArg> for Framing {
    /// The image framing; `y4m` has its own source and sink (`cli/video.rs`) and none.
    fn from(f: FramingArg) -> Self {
        match f {
            FramingArg::Concat | FramingArg::Y4m => Framing::Concat,
            FramingArg::Len => Framing::Length,
        }
    }
}

/// The output kinds asked with `--emit` (default: the pipeline's `output.kinds`), each checked
/// against what the model can make.
pub fn parse_kinds(
    emit: Option<Vec<String>>,
    cfg: &PipelineConfig,
) -> anyhow::Result<Vec<OutputKind>> {
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

/// Parses `--ensemble`: 1, 2, 4 or 8 (a usage error otherwise, exit 2).
pub fn ensemble_arg(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if ENSEMBLE_SIZES.contains(&n) => Ok(n),
        _ => Err(format!("must be 1, 2, 4 or 8, got {s:?}")),
    }
}

pub fn with_ensemble(
    mut cfg: PipelineConfig,
    ensemble: Option<usize>,
) -> aestream::Result<PipelineConfig> {
    if let Some(n) = ensemble {
        if !ENSEMBLE_SIZES.contains(&n) {
            return Err(aestream::Error::Config {
                origin: "--ensemble".into(),
                message: format!("must be 1, 2, 4 or 8, got {n}"),
            });
        }
        cfg.infer.ensemble = n;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_says_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let ours = aestream::Error::Io {
            path: "p.toml".into(),
            source: io(),
        };
        let e = anyhow::Error::new(ours).context("loading the pipeline");
        assert_eq!(error_text(&e), "loading the pipeline: p.toml: gone");
        // Causes not already quoted are all kept, in order.
        let e = anyhow::Error::new(io()).context("reading p.toml");
        assert_eq!(error_text(&e), "reading p.toml: gone");
    }
}
