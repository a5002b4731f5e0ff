//! Sources: where frames come from, and what becomes of them once the pipeline is done.
//!
//! Each source sends [`RawFrame`]s into a bounded channel and blocks when it is full
//! (backpressure), until its input ends or the pipeline is stopped. Each source also owns its
//! frames' completion ([`Completion`]): a folder records finished files in its journal, moves
//! them to `--done` and quarantines bad ones; a Redis source acknowledges entries and
//! dead-letters bad ones; stdin has nothing to settle. The pipeline core calls the trait and
//! knows none of these mechanisms, so a new source (HTTP, video) brings its own.

pub mod folder;
pub mod redis;
pub mod stdin;
pub mod y4m;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::Overload;
use crate::error::Result;
use crate::frame::FrameId;
use crate::model::version::ModelVersion;
use crate::runtime::{Stop, Telemetry};

/// An undecoded frame: its identity, its place in the source's order, and its bytes.
#[derive(Debug)]
pub struct RawFrame {
    pub seq: u64,
    pub id: FrameId,
    /// The bytes, or why the source could not produce them (already named with the id).
    pub bytes: std::result::Result<Vec<u8>, String>,
}

/// Where a source puts its frames: the pipeline's first bounded channel, under an overload
/// policy. `Block` waits for room (lossless backpressure: folder sources always use it);
/// `DropOldest` makes room by dropping the oldest waiting frame, counts it, and tells the sink
/// (through `gaps`) so ordered output does not wait for it.
#[derive(Clone)]
pub struct Intake {
    tx: Sender<RawFrame>,
    rx: Receiver<RawFrame>,
    policy: Overload,
    gaps: Sender<u64>,
    telemetry: Arc<Telemetry>,
}

impl Intake {
    pub fn new(
        tx: Sender<RawFrame>,
        rx: Receiver<RawFrame>,
        policy: Overload,
        gaps: Sender<u64>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            tx,
            rx,
            policy,
            gaps,
            telemetry,
        }
    }

    /// Hands a frame to the pipeline; false when the pipeline is gone.
    pub fn send(&self, frame: RawFrame) -> bool {
        match self.policy {
            Overload::Block => self.tx.send(frame).is_ok(),
            Overload::DropOldest => {
                let mut frame = frame;
                loop {
                    match self.tx.try_send(frame) {
                        Ok(()) => return true,
                        Err(TrySendError::Disconnected(_)) => return false,
                        Err(TrySendError::Full(f)) => {
                            frame = f;
                            if let Ok(old) = self.rx.try_recv() {
                                self.telemetry.dropped.fetch_add(1, Ordering::Relaxed);
                                self.telemetry.frame("source", "dropped");
                                tracing::warn!("overload: dropped {}", old.id);
                                let _ = self.gaps.send(old.seq);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Lossless intake whatever the configured policy (folder sources).
    pub fn lossless(mut self) -> Self {
        self.policy = Overload::Block;
        self
    }

    /// Free places in the pipeline's first queue: a queue source reads no more than this.
    pub fn room(&self) -> usize {
        self.tx
            .capacity()
            .map_or(usize::MAX, |c| c.saturating_sub(self.tx.len()))
    }
}

/// A producer of frames.
pub trait Source: Send {
    /// Sends frames until the input ends (`Ok`), `stop` is requested, or the pipeline is gone.
    fn run(self: Box<Self>, intake: Intake, stop: Stop) -> Result<()>;
    /// Where the pipeline reports each frame's fate. Taken before `run`.
    fn completion(&self) -> Arc<dyn Completion> {
        Arc::new(Nothing)
    }
}

/// What became of a frame rejected as bad input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetAside {
    /// The input file was moved here (with its error note beside it).
    Quarantined(PathBuf),
    /// The entry went to the queue's dead-letter stream.
    DeadLettered,
    /// Left where it is: it changed while being read, and will be taken again.
    Retaken,
    /// Nothing to set aside (a stream frame), or setting it aside failed (logged).
    Reported,
}

/// How a source hears what became of the frames it handed over. Every call names the frame
/// and comes from the pipeline's threads, in any order across frames.
pub trait Completion: Send + Sync {
    /// The frame's outputs are durable (renamed into place, or in the result stream), made by
    /// model `version`; `by_sink`: the sink settled it in the same transaction as its result.
    /// An error stops the run: exactly-once depends on this record.
    fn done(&self, id: &FrameId, version: &ModelVersion, by_sink: bool) -> Result<()>;
    /// The frame can never succeed (its bytes do not decode): set it aside with its error.
    fn rejected(&self, id: &FrameId, error: &str) -> SetAside;
    /// Something other than the frame failed (the model, an output that could not be
    /// written): it may be tried again (a queue entry stays pending).
    fn failed(&self, _id: &FrameId, _error: &str) {}
    /// After a stop request, may a frame that has not reached the model be left for the next
    /// run? (A file is still on disk with no journal record; a stream frame cannot be read
    /// again.)
    fn can_defer(&self, _id: &FrameId) -> bool {
        false
    }
    /// Before exit: sends what is still owed (acknowledgements while a server was away),
    /// trying for at most `within`; false if some is left.
    fn flush_within(&self, _within: Duration) -> bool {
        true
    }
}

/// The completion of a source with nothing to settle (stdin).
pub struct Nothing;

impl Completion for Nothing {
    fn done(&self, _: &FrameId, _: &ModelVersion, _: bool) -> Result<()> {
        Ok(())
    }
    fn rejected(&self, _: &FrameId, _: &str) -> SetAside {
        SetAside::Reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded};

    fn frame(seq: u64) -> RawFrame {
        RawFrame {
            seq,
            id: FrameId::Stream { seq, offset: 0 },
            bytes: Ok(vec![]),
        }
    }

    /// With nobody reading, `drop-oldest` keeps the newest frames, counts the dropped ones and
    /// reports each as a gap; `block` would wait (checked with a reader draining later).
    #[test]
    fn drop_oldest_keeps_the_newest_and_reports_gaps() {
        let (tx, rx) = bounded(2);
        let (gtx, grx) = unbounded();
        let tel = Arc::new(Telemetry::new());
        let intake = Intake::new(tx, rx.clone(), Overload::DropOldest, gtx, tel.clone());
        for seq in 0..5 {
            assert!(intake.send(frame(seq)));
        }
        let kept: Vec<u64> = rx.try_iter().map(|f| f.seq).collect();
        assert_eq!(kept, vec![3, 4]);
        assert_eq!(grx.try_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(tel.dropped.load(Ordering::Relaxed), 3);

        let (tx, rx) = bounded(1);
        let (gtx, _grx) = unbounded();
        let intake = Intake::new(tx, rx.clone(), Overload::Block, gtx, tel);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            rx.iter().map(|f| f.seq).collect::<Vec<_>>()
        });
        for seq in 0..5 {
            assert!(intake.send(frame(seq)));
        }
        drop(intake);
        assert_eq!(reader.join().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}
