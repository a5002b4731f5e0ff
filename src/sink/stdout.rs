//! The stdout sink: frames written in the order they came in (a small reorder buffer holds
//! frames that finished early), concatenated or length-prefixed, flushed per frame.
//!
//! Each frame gives one record per output kind, in the order the kinds were asked for (a
//! frame that failed gives none). How a reader cuts and tells them apart:
//! - `Length`: every record, image or latent, is a 4-byte big-endian length and that many
//!   bytes. An image record is a PNG (it starts with the PNG signature `\x89PNG`); a latent
//!   record is one JSON object `{"seq":N,"source":"…","shape":[…],"code":[…]}` (it starts with
//!   `{`).
//! - `Concat`: PNGs back to back, each delimited by its own chunks; latent codes alone go as
//!   JSON lines. Latents mixed with images cannot be cut apart by the readers this framing is
//!   for, so [`check_kinds`] refuses that mix before the pipeline starts.

use std::collections::BTreeMap;
use std::io::Write;

use super::{Output, Payload, Sink};
use crate::config::OutputKind;
use crate::error::{Error, Result};
use crate::frame::framing::Framing;
use crate::frame::FrameId;

/// Whether `kinds` can share one stream in `framing`: the reason they cannot, if not.
pub fn check_kinds(framing: Framing, kinds: &[OutputKind]) -> std::result::Result<(), String> {
    let latent = kinds.contains(&OutputKind::Latent);
    let images: Vec<&str> = kinds
        .iter()
        .filter(|k| **k != OutputKind::Latent)
        .map(|k| k.name())
        .collect();
    if framing == Framing::Concat && latent && !images.is_empty() {
        return Err(format!(
            "latent codes (JSON lines) cannot be mixed with {} images on a back-to-back \
             (concat) stream: use --framing len, where every record is length-prefixed, or \
             emit them separately",
            images.join(", ")
        ));
    }
    Ok(())
}

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
                Payload::Code(c) => {
                    let record = serde_json::json!({
                        "seq": o.seq,
                        "source": o.id.to_string(),
                        "shape": c.shape,
                        "code": c.data,
                    });
                    let mut text = record.to_string();
                    // A JSON line where the stream is not length-framed; the prefix delimits
                    // it where it is.
                    if self.framing == Framing::Concat {
                        text.push('\n');
                    }
                    self.emit(text.as_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// Writes one record, length-prefixed in `Length` framing, and flushes it.
    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        let io = |e| Error::Io {
            path: "<stdout>".into(),
            source: e,
        };
        if self.framing == Framing::Length {
            let len = u32::try_from(bytes.len()).map_err(|_| {
                Error::Other(format!(
                    "a {} byte record does not fit a 4-byte length prefix",
                    bytes.len()
                ))
            })?;
            self.out.write_all(&len.to_be_bytes()).map_err(io)?;
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

    fn skip(&mut self, seq: u64, _id: &FrameId) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::version::ModelVersion;
    use crate::stage::encode::Code;

    fn output(seq: u64) -> Output {
        Output {
            seq,
            id: FrameId::Stream { seq, offset: 0 },
            version: ModelVersion::finetuned("p", 1, 0),
            files: vec![
                (
                    OutputKind::Latent,
                    Payload::Code(Code {
                        shape: vec![2],
                        data: vec![0.5, -1.0],
                    }),
                ),
                (
                    OutputKind::Reconstruction,
                    Payload::Bytes(b"\x89PNG-ish".to_vec()),
                ),
            ],
        }
    }

    /// Every record is prefixed, frames in order although they finished out of order.
    #[test]
    fn length_framing_prefixes_latents_and_images_alike() {
        let mut out = Vec::new();
        let mut sink = StreamSink::new(&mut out, Framing::Length);
        sink.write(output(1)).unwrap();
        sink.write(output(0)).unwrap();
        sink.finish().unwrap();
        let mut rest = &out[..];
        let mut records = Vec::new();
        while !rest.is_empty() {
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            records.push(&rest[4..4 + n]);
            rest = &rest[4 + n..];
        }
        assert_eq!(records.len(), 4);
        for (seq, pair) in records.chunks(2).enumerate() {
            let v: serde_json::Value = serde_json::from_slice(pair[0]).unwrap();
            assert_eq!(v["seq"], seq);
            assert_eq!(v["code"], serde_json::json!([0.5, -1.0]));
            assert_eq!(pair[1], b"\x89PNG-ish");
        }
    }

    #[test]
    fn concat_takes_latents_alone_or_images_alone_but_not_mixed() {
        use OutputKind::*;
        assert!(check_kinds(Framing::Concat, &[Latent]).is_ok());
        assert!(check_kinds(Framing::Concat, &[Segmentation, Overlay]).is_ok());
        let err = check_kinds(Framing::Concat, &[Reconstruction, Latent]).unwrap_err();
        assert!(
            err.contains("reconstruction") && err.contains("--framing len"),
            "{err}"
        );
        assert!(check_kinds(Framing::Length, &[Reconstruction, Latent]).is_ok());
    }
}
