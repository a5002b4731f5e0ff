//! The stdout sink: frames written in the order they came in (a small reorder buffer holds
//! frames that finished early), concatenated or length-prefixed, flushed per frame.

use std::collections::BTreeMap;
use std::io::Write;

use super::{Output, Payload, Sink};
use crate::error::{Error, Result};
use crate::frame::framing::Framing;

pub struct StreamSink<W: Write + Send> {
    out: W,
    framing: Framing,
    next: u64,
    pending: BTreeMap<u64, Option<Output>>,
}

impl<W: Write + Send> StreamSink<W> {
    pub fn new(out: W, framing: Framing) -> Self {
        Self {
            out,
            framing,
            next: 0,
            pending: BTreeMap::new(),
        }
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(entry) = self.pending.remove(&self.next) {
            if let Some(o) = entry {
                self.emit_output(&o)?;
            }
            self.next += 1;
        }
        Ok(())
    }

    fn emit_output(&mut self, o: &Output) -> Result<()> {
        for (_, payload) in &o.files {
            match payload {
                Payload::Bytes(b) => self.emit(b)?,
                // Codes go out as one JSON line each, whatever the framing of images.
                Payload::Code(c) => {
                    let line = serde_json::json!({
                        "seq": o.seq,
                        "source": o.id.to_string(),
                        "shape": c.shape,
                        "code": c.data,
                    });
                    let mut text = line.to_string();
                    text.push('\n');
                    self.emit_raw(text.as_bytes())?;
                }
            }
        }
        Ok(())
    }

    fn emit_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let io = |e| Error::Io {
            path: "<stdout>".into(),
            source: e,
        };
        self.out.write_all(bytes).map_err(io)?;
        self.out.flush().map_err(io)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        let io = |e| Error::Io {
            path: "<stdout>".into(),
            source: e,
        };
        if self.framing == Framing::Length {
            self.out
                .write_all(&(bytes.len() as u32).to_be_bytes())
                .map_err(io)?;
        }
        self.out.write_all(bytes).map_err(io)?;
        self.out.flush().map_err(io)
    }
}

impl<W: Write + Send> Sink for StreamSink<W> {
    fn write(&mut self, out: Output) -> Result<()> {
        self.pending.insert(out.seq, Some(out));
        self.drain()
    }

    fn skip(&mut self, seq: u64) -> Result<()> {
        self.pending.insert(seq, None);
        self.drain()
    }

    fn finish(&mut self) -> Result<()> {
        // Anything still pending had a gap before it (cannot happen when every frame is
        // accounted for); write it anyway, in order, rather than lose it.
        let rest = std::mem::take(&mut self.pending);
        for (_, o) in rest {
            if let Some(o) = o {
                self.emit_output(&o)?;
            }
        }
        Ok(())
    }
}
