//! The encode stage: a finished frame → the bytes of each output kind asked for (PNG images,
//! label maps, overlays) or its latent code, which the sink writes as `.npy` or a JSON line.
//!
//! What each kind writes, for an input of 8 or 16 bits per channel:
//! - `denoised`, `reconstruction`: PNG at the input's depth (grey, grey+alpha, RGB or RGBA as
//!   the input; a reconstruction is grey), on the input's intensity scale; for a frame that
//!   came as YUV4MPEG2, a one-frame YUV4MPEG2 record in its layout and depth.
//! - `overlay`: RGB PNG at the input's depth, drawn on the input contrast-stretched (its
//!   0.5th–99.5th brightness percentiles span black to white), so a dim frame is visible.
//! - `segmentation`: 8-bit grey PNG whatever the input: a label map of class indices.
//! - `instances`: 16-bit grey PNG whatever the input: 0 background, objects 1..N
//!   ([`super::instances`], as `[instances]` says).
//! - `probability`: 16-bit grey PNG of the foreground probability, 0..65535 for 0..1.
//! - `latent`: f32 values (`.npy`, a JSON record on streams).

use super::instances;
use super::postprocess::{labels, overlay, png_u16, png_u8, probability_u16, Finished};
use crate::config::{InstancesConfig, OutputKind};
use crate::error::{Error, Result};
use crate::frame::{encode_png, y4m};

/// A latent code: its shape per frame (e.g. `[30]`, or `[7, 7, 8]` for a feature map) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Code {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Code {
    /// The code as a `.npy` file (little-endian f32, C order), readable by `numpy.load`.
    pub fn to_npy(&self) -> Result<Vec<u8>> {
        let shape: Vec<u64> = self.shape.iter().map(|&d| d as u64).collect();
        let mut buf = Vec::new();
        let err = |e: std::io::Error| crate::error::Error::Other(format!("writing .npy: {e}"));
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut buf)
            .begin_nd()
            .map_err(err)?;
        w.extend(self.data.iter().copied()).map_err(err)?;
        w.finish().map_err(err)?;
        Ok(buf)
    }
}

/// One encoded output: file bytes, or a code (written as `.npy` or a JSON line by the sink).
#[derive(Debug, Clone)]
pub enum Payload {
    Bytes(Vec<u8>),
    Code(Code),
}

/// Encodes one output kind of a finished frame (`objects`: how `instances` are cut).
pub fn encode(
    f: &Finished,
    kind: OutputKind,
    objects: &InstancesConfig,
    what: &str,
) -> Result<Payload> {
    let missing = |m: &str| Error::Other(format!("{what}: cannot emit {}: {m}", kind.name()));
    Ok(match kind {
        // A frame that came as YUV4MPEG2 goes back as it came (the stdout sink of a
        // `--framing y4m` run writes its planes under the stream's header).
        OutputKind::Denoised | OutputKind::Reconstruction if f.planes.yuv.is_some() => {
            Payload::Bytes(
                y4m::planes::encode(&f.planes).map_err(|message| Error::Encode {
                    what: what.to_string(),
                    message,
                })?,
            )
        }
        OutputKind::Denoised | OutputKind::Reconstruction => {
            Payload::Bytes(encode_png(&f.planes, what)?)
        }
        OutputKind::Latent => Payload::Code(
            f.code
                .clone()
                .ok_or_else(|| missing("the model has no code"))?,
        ),
        OutputKind::Segmentation => {
            let l = labels(&f.planes.planes[0]);
            Payload::Bytes(png_u8(f.planes.width, f.planes.height, l, what)?)
        }
        OutputKind::Overlay => {
            let input = f.input.as_ref().ok_or_else(|| missing("no input kept"))?;
            let l = labels(&f.planes.planes[0]);
            Payload::Bytes(encode_png(&overlay(input, &l), what)?)
        }
        OutputKind::Instances => {
            let (w, h) = (f.planes.width, f.planes.height);
            let inst = instances::label(&f.planes.planes[0], w, h, objects)
                .map_err(|e| Error::Other(format!("{what}: {e}")))?;
            Payload::Bytes(instances::png(&inst, what)?)
        }
        OutputKind::Probability => {
            let (w, h) = (f.planes.width, f.planes.height);
            Payload::Bytes(png_u16(w, h, probability_u16(&f.planes.planes[0]), what)?)
        }
    })
}
