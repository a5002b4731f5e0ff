//! The stdin source: a stream of images split by [`crate::frame::framing`], in order, until EOF.

use std::io::Read;

use super::{Intake, RawFrame, Source};
use crate::error::{Error, Result};
use crate::frame::framing::{Framing, Split, Splitter};
use crate::frame::FrameId;
use crate::runtime::Stop;

/// Reads frames from any byte reader (stdin in the daemon, a buffer in tests).
pub struct StreamSource<R: Read + Send> {
    reader: R,
    framing: Framing,
    max_frame: usize,
}

impl<R: Read + Send> StreamSource<R> {
    pub fn new(reader: R, framing: Framing, max_frame: usize) -> Self {
        Self {
            reader,
            framing,
            max_frame,
        }
    }
}

impl<R: Read + Send> Source for StreamSource<R> {
    fn run(mut self: Box<Self>, intake: Intake, stop: Stop) -> Result<()> {
        let mut splitter = Splitter::new(self.framing).with_max_frame(self.max_frame);
        let mut buf = vec![0u8; 1 << 16];
        let send = |s: Split| -> bool {
            let frame = match s {
                Split::Frame(f) => RawFrame {
                    seq: f.seq,
                    id: FrameId::Stream {
                        seq: f.seq,
                        offset: f.offset,
                    },
                    bytes: Ok(f.bytes),
                },
                Split::Error(e) => RawFrame {
                    seq: e.seq,
                    id: FrameId::Stream {
                        seq: e.seq,
                        offset: e.offset,
                    },
                    bytes: Err(e.message),
                },
            };
            intake.send(frame)
        };
        loop {
            if stop.requested() {
                return Ok(());
            }
            let n = match self.reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Io {
                        path: "<stdin>".into(),
                        source: e,
                    })
                }
            };
            splitter.push(&buf[..n]);
            while let Some(s) = splitter.next() {
                if !send(s) {
                    return Ok(());
                }
            }
        }
        if let Some(s) = splitter.finish() {
            send(s);
        }
        Ok(())
    }
}
