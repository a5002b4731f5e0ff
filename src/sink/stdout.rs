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
//! - YUV4MPEG2 (`--framing y4m`, [`StreamSink::y4m`]): the input stream's header as it came,
//!   then per frame its `FRAME` line (parameters kept) and the output's planes. One image kind
//!   only ([`check_video_kinds`]). A frame that failed, or whose output does not fit the
//!   stream, is written as it came in, so the video keeps every frame in place.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use super::{Output, Payload, Sink};
use crate::config::OutputKind;
use crate::error::{Error, Result};
use crate::frame::framing::Framing;
use crate::frame::y4m::{self, temporal::Temporal, Header, Video};
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

/// Whether `kinds` can go out as a YUV4MPEG2 stream: the reason they cannot, if not.
pub fn check_video_kinds(kinds: &[OutputKind]) -> std::result::Result<(), String> {
    match kinds {
        [OutputKind::Denoised | OutputKind::Reconstruction] => Ok(()),
        _ => {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            Err(format!(
                "a YUV4MPEG2 stream carries one image per frame (denoised or reconstruction),                  not {}: choose one with --emit, or use --framing concat or len",
                names.join(", ")
            ))
        }
    }
}

pub struct StreamSink<W: Write + Send> {
    out: W,
    framing: Framing,
    next: u64,
    pending: BTreeMap<u64, Option<Output>>,
    /// Set for a YUV4MPEG2 stream: its header and held input frames.
    video: Option<Arc<Video>>,
    header_written: bool,
    /// `--temporal`: YUV4MPEG2 frames go through this, in order.
    temporal: Option<Temporal>,
}

impl<W: Write + Send> StreamSink<W> {
    pub fn new(out: W, framing: Framing) -> Self {
        Self {
            out,
            framing,
            next: 0,
            pending: BTreeMap::new(),
            video: None,
            header_written: false,
            temporal: None,
        }
    }

    /// Smooths YUV4MPEG2 frames with `--temporal n` (0: off).
    pub fn with_temporal(mut self, n: usize) -> Self {
        self.temporal = (n > 0).then(|| Temporal::new(n));
        self
    }

    /// A YUV4MPEG2 stream, whose header and input frames the source keeps in `video`.
    pub fn y4m(out: W, video: Arc<Video>) -> Self {
        Self {
            video: Some(video),
            ..Self::new(out, Framing::Concat)
        }
    }

    fn drain(&mut self) -> Result<()> {
        while let Some(entry) = self.pending.remove(&self.next) {
            self.emit_entry(self.next, entry)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Frame `seq`'s records; `None`: it failed.
    fn emit_entry(&mut self, seq: u64, entry: Option<Output>) -> Result<()> {
        if let Some(video) = self.video.clone() {
            return self.emit_video_frame(&video, seq, entry.as_ref());
        }
        match entry {
            Some(o) => self.emit_output(&o),
            None => Ok(()),
        }
    }

    /// Writes the stream header, once.
    fn emit_video_header(&mut self, header: &Header) -> Result<()> {
        if !self.header_written {
            self.header_written = true;
            self.out
                .write_all(header.line().as_bytes())
                .map_err(stdout_error)?;
        }
        Ok(())
    }

    /// Frame `seq` of a YUV4MPEG2 stream: its `FRAME` line and the output's planes, or the
    /// input's when it made none that fit the stream.
    fn emit_video_frame(&mut self, video: &Video, seq: u64, out: Option<&Output>) -> Result<()> {
        let input = video.take(seq);
        let Some(header) = video.header() else {
            return Ok(()); // no header read: no frame either
        };
        self.emit_video_header(header)?;
        let input = input
            .as_deref()
            .and_then(|r| y4m::planes::split_record(r).ok());
        let made = out.and_then(|o| {
            o.files.iter().find_map(|(_, p)| match p {
                Payload::Bytes(b) => Some(b),
                Payload::Code(_) => None,
            })
        });
        let fits = |r: &y4m::planes::Record<'_>| {
            (r.header.width, r.header.height, r.header.format())
                == (header.width, header.height, header.format())
        };
        let smoothed;
        let data = match made.map(|b| (b, y4m::planes::split_record(b))) {
            Some((b, Ok(r))) if fits(&r) => match self.smooth(b, r.data.len()) {
                Some(d) => {
                    smoothed = d;
                    Some(&smoothed[..])
                }
                None => Some(r.data),
            },
            made => {
                if let Some(t) = &mut self.temporal {
                    t.reset();
                }
                let made = made.map(|(_, r)| r);
                if let Some(m) = made {
                    let why = m.map_or_else(|e| e, |r| format!("it is {}", r.header.line().trim()));
                    tracing::warn!("stdin frame {seq}: the output does not fit the stream ({why}); the input frame is written instead");
                } else {
                    tracing::warn!("stdin frame {seq}: failed; the input frame is written instead");
                }
                input.as_ref().map(|r| r.data)
            }
        };
        let Some(data) = data else {
            return Ok(()); // nothing to write: the frame never came whole
        };
        let frame_line = input.as_ref().map_or(&b"FRAME"[..], |r| r.frame_line);
        let w = &mut self.out;
        w.write_all(frame_line)
            .and_then(|_| w.write_all(b"\n"))
            .and_then(|_| w.write_all(data))
            .and_then(|_| w.flush())
            .map_err(stdout_error)
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

    /// `--temporal`: an output record's planes through the filter (`None`: the filter is
    /// off). The filter works on planes, so the record is decoded and encoded again.
    fn smooth(&mut self, record: &[u8], data_len: usize) -> Option<Vec<u8>> {
        let t = self.temporal.as_mut()?;
        let planes = y4m::planes::decode(record, u64::MAX).ok()?;
        let mut out = y4m::planes::encode(&t.apply(planes)).ok()?;
        Some(out.split_off(out.len() - data_len))
    }

    /// Writes one record, length-prefixed in `Length` framing, and flushes it.
    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        let io = stdout_error;
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

fn stdout_error(e: std::io::Error) -> Error {
    Error::Io {
        path: "<stdout>".into(),
        source: e,
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
        for (seq, o) in rest {
            self.emit_entry(seq, o)?;
        }
        // A stream with no frames is still a stream: its header goes out.
        if let Some(h) = self.video.clone().as_deref().and_then(Video::header) {
            self.emit_video_header(h)?;
            self.out.flush().map_err(stdout_error)?;
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

    /// A one-frame record of a 2x2 4:2:0 frame with every sample `v`, under `header`.
    fn record(header: &str, params: &str, v: u8) -> Vec<u8> {
        let mut r = format!("{header}\nFRAME{params}\n").into_bytes();
        r.extend([v; 6]);
        r
    }

    /// YUV4MPEG2: the stream's header once, frames in order with their FRAME parameters, a
    /// failed frame written as it came in, every held frame released.
    #[test]
    fn y4m_keeps_the_header_order_and_failed_frames() {
        let head = "YUV4MPEG2 W2 H2 F25:1 C420mpeg2 XCOMMENT=hi";
        let video = Arc::new(Video::new());
        video.start(y4m::Header::parse(head.as_bytes()).unwrap());
        for seq in 0..3 {
            video.hold(
                seq,
                record(head, if seq == 1 { " Ib" } else { "" }, 10 + seq as u8),
            );
        }
        let made = |seq: u64| Output {
            files: vec![(
                OutputKind::Denoised,
                Payload::Bytes(record("YUV4MPEG2 W2 H2 C420mpeg2", "", 100 + seq as u8)),
            )],
            ..output(seq)
        };
        let mut out = Vec::new();
        let mut sink = StreamSink::y4m(&mut out, video.clone());
        sink.write(made(2)).unwrap();
        sink.skip(1, &FrameId::Stream { seq: 1, offset: 0 })
            .unwrap();
        sink.write(made(0)).unwrap();
        sink.finish().unwrap();
        let mut want = format!("{head}\n").into_bytes();
        for (params, v) in [("", 100u8), (" Ib", 11), ("", 102)] {
            want.extend(format!("FRAME{params}\n").bytes());
            want.extend([v; 6]);
        }
        assert_eq!(out, want);
        assert_eq!(video.held(), 0);

        // No frames: the header alone.
        let video = Arc::new(Video::new());
        video.start(y4m::Header::parse(head.as_bytes()).unwrap());
        let mut out = Vec::new();
        StreamSink::y4m(&mut out, video).finish().unwrap();
        assert_eq!(out, format!("{head}\n").into_bytes());
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
