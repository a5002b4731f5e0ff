//! `--framing y4m`: what a YUV4MPEG2 run checks before it starts (exit 2 when the pipeline
//! cannot make a video of the same frames), and its stdin source and stdout sink, which share
//! the stream's header and the frames in flight.

use std::sync::Arc;

use aestream::config::OutputKind;
use aestream::frame::y4m::{reader::Limits, Video};
use aestream::serving::Generation;
use aestream::sink::{stdout, stdout::StreamSink, Sink};
use aestream::source::{y4m::Y4mSource, Source};

use super::endpoint::Endpoint;

fn refuse(message: String) -> anyhow::Error {
    aestream::Error::Config {
        origin: "--framing y4m".into(),
        message,
    }
    .into()
}

/// Whether this run can be a YUV4MPEG2 filter: stdin to stdout, one image kind, a model whose
/// outputs are the frame's size, no fine-tuning (which samples RGB or grey frames).
pub fn check(
    input: &Endpoint,
    output: &Endpoint,
    g: &Generation,
    kinds: &[OutputKind],
) -> anyhow::Result<()> {
    if (input, output) != (&Endpoint::Stdio, &Endpoint::Stdio) {
        return Err(refuse(format!(
            "a YUV4MPEG2 stream is read from stdin and written to stdout: needs --input - \
             --output - (got --input {input} --output {output})"
        )));
    }
    stdout::check_video_kinds(kinds).map_err(refuse)?;
    if let Some((w, h)) = g.model.spec().fixed_size {
        return Err(refuse(format!(
            "pipeline {} works on {w}x{h} frames: its outputs would not be the stream's size",
            g.cfg.name
        )));
    }
    if g.cfg.finetune.enabled {
        return Err(refuse(
            "fine-tuning is not available on video streams".into(),
        ));
    }
    Ok(())
}

/// `--temporal` smooths YUV4MPEG2 frames only: refused on other framings.
pub fn check_temporal(temporal: Option<u64>) -> anyhow::Result<()> {
    match temporal {
        Some(_) => Err(aestream::Error::Config {
            origin: "--temporal".into(),
            message: "only with --framing y4m (it smooths video frames)".into(),
        }
        .into()),
        None => Ok(()),
    }
}

/// The source and sink of a YUV4MPEG2 run, with frames within the pipeline's decode limits,
/// smoothed over `temporal` frames.
#[allow(clippy::type_complexity)]
pub fn pair(
    g: &Generation,
    temporal: Option<u64>,
) -> (Option<Box<dyn Source>>, Option<Box<dyn Sink>>) {
    let video = Arc::new(Video::new());
    let limits = Limits {
        max_pixels: g.cfg.decode.max_pixels,
        max_frame_bytes: g.cfg.decode.max_alloc_mib.saturating_mul(1 << 20) as usize,
    };
    let source = Y4mSource::new(std::io::stdin(), limits, video.clone());
    let sink = StreamSink::y4m(std::io::BufWriter::new(std::io::stdout()), video)
        .with_temporal(temporal.unwrap_or(0) as usize);
    (Some(Box::new(source)), Some(Box::new(sink)))
}
