//! Sinks: where results go. A sink receives each frame's encoded outputs (or word that the frame
//! failed, so ordered sinks do not wait for it) and finishes when the pipeline drains.

pub mod folder;
pub mod http;
pub mod redis;
pub mod stdout;

use crate::config::OutputKind;
use crate::error::Result;
use crate::frame::FrameId;
use crate::model::version::ModelVersion;
use crate::stage::encode::Payload;

/// One frame's results, ready to write.
#[derive(Debug)]
pub struct Output {
    pub seq: u64,
    pub id: FrameId,
    /// The model version that made it.
    pub version: ModelVersion,
    pub files: Vec<(OutputKind, Payload)>,
}

pub trait Sink: Send {
    fn write(&mut self, out: Output) -> Result<()>;
    /// Frame `seq` (`id`) produced nothing (it failed and was reported).
    fn skip(&mut self, seq: u64, id: &FrameId) -> Result<()>;
    fn finish(&mut self) -> Result<()>;
    /// Whether writing this frame's output also settled (acknowledged) its queue entry, in
    /// the same transaction; otherwise the pipeline acknowledges it after `write`.
    fn settles(&self, _id: &FrameId) -> bool {
        false
    }
}
