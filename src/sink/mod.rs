//! Sinks: where results go. A sink receives each frame's encoded outputs (or word that the frame
//! failed, so ordered sinks do not wait for it) and finishes when the pipeline drains.

pub mod folder;
pub mod redis;
pub mod stdout;

use crate::config::OutputKind;
use crate::error::Result;
use crate::frame::FrameId;

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

/// One frame's results, ready to write.
#[derive(Debug)]
pub struct Output {
    pub seq: u64,
    pub id: FrameId,
    /// The model version that made it.
    pub version: String,
    pub files: Vec<(OutputKind, Payload)>,
}

pub trait Sink: Send {
    fn write(&mut self, out: Output) -> Result<()>;
    /// Frame `seq` produced nothing (it failed and was reported).
    fn skip(&mut self, seq: u64) -> Result<()>;
    fn finish(&mut self) -> Result<()>;
    /// Whether writing this frame's output also settled (acknowledged) its queue entry, in
    /// the same transaction; otherwise the pipeline acknowledges it after `write`.
    fn settles(&self, _id: &FrameId) -> bool {
        false
    }
}
