//! Sources: where frames come from. Each source sends [`RawFrame`]s into a bounded channel and
//! blocks when it is full (backpressure), until its input ends or the pipeline is stopped.

pub mod folder;
pub mod split;
pub mod stdin;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::error::Result;
use crate::frame::FrameId;

/// An undecoded frame: its identity, its place in the source's order, and its bytes.
#[derive(Debug)]
pub struct RawFrame {
    pub seq: u64,
    pub id: FrameId,
    /// The bytes, or why the source could not produce them (already named with the id).
    pub bytes: std::result::Result<Vec<u8>, String>,
}

/// Set when the pipeline should stop taking new input (signal, or the sink failed).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A producer of frames.
pub trait Source: Send {
    /// Sends frames until the input ends (`Ok`), `stop` is requested, or the receiver is gone.
    fn run(self: Box<Self>, tx: Sender<RawFrame>, stop: Stop) -> Result<()>;
}
