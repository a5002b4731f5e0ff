//! The stdin source for `--framing y4m`: a YUV4MPEG2 stream, frame by frame, until EOF.
//!
//! The header is read and checked against the decode limits first; it is then shared with
//! the sink (through [`Video`]), which writes it back. Each frame goes into the pipeline as a
//! one-frame YUV4MPEG2 record (see [`crate::frame::y4m`]) and is held in [`Video`] until its
//! output is written, so a frame that fails goes out as it came in.
//!
//! A bad stream (no header, garbage where a `FRAME` line belongs, a truncated last frame) ends
//! the run with an error naming the frame number and byte offset, after every complete frame
//! before it has gone through the pipeline and been written: raw planes give nothing to
//! resynchronise on.

use std::io::{BufReader, Read};
use std::sync::Arc;

use super::{Intake, RawFrame, Source};
use crate::error::{Error, Result};
use crate::frame::y4m::reader::{Limits, Reader, StreamError};
use crate::frame::y4m::Video;
use crate::frame::FrameId;
use crate::runtime::Stop;

pub struct Y4mSource<R: Read + Send> {
    reader: R,
    limits: Limits,
    video: Arc<Video>,
}

impl<R: Read + Send> Y4mSource<R> {
    pub fn new(reader: R, limits: Limits, video: Arc<Video>) -> Self {
        Self {
            reader,
            limits,
            video,
        }
    }
}

fn error(e: StreamError) -> Error {
    match e {
        StreamError::Header { .. } => Error::Decode {
            what: "stdin".into(),
            message: e.to_string(),
        },
        StreamError::Frame {
            frame,
            offset,
            message,
        } => Error::Stream {
            seq: frame,
            offset,
            message: format!("YUV4MPEG2: {message}"),
        },
        StreamError::Io { source, .. } => Error::Io {
            path: "<stdin>".into(),
            source,
        },
    }
}

impl<R: Read + Send> Source for Y4mSource<R> {
    fn run(self: Box<Self>, intake: Intake, stop: Stop) -> Result<()> {
        let r = BufReader::with_capacity(1 << 16, self.reader);
        let mut reader = Reader::open(r, self.limits).map_err(error)?;
        let h = reader.header();
        tracing::info!(
            "YUV4MPEG2 stream: {}x{} C{}{}",
            h.width,
            h.height,
            h.format(),
            h.rate
                .and_then(|r| r.value())
                .map(|fps| format!(", {fps:.3} frames/s"))
                .unwrap_or_default()
        );
        self.video.start(h.clone());
        loop {
            if stop.requested() {
                return Ok(());
            }
            let Some(f) = reader.next_frame().map_err(error)? else {
                return Ok(());
            };
            self.video.hold(f.seq, f.record.clone());
            let frame = RawFrame {
                seq: f.seq,
                id: FrameId::Stream {
                    seq: f.seq,
                    offset: f.offset,
                },
                bytes: Ok(f.record),
            };
            if !intake.send(frame) {
                return Ok(());
            }
        }
    }
}
