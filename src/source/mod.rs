//! Sources: where frames come from, and what becomes of them once the pipeline is done.
//!
//! Each source sends [`RawFrame`]s into a bounded channel and blocks when it is full
//! (backpressure), until its input ends or the pipeline is stopped. Each source also owns its
//! frames' completion ([`Completion`]): a folder records finished files in its journal, moves
//! them to `--done` and quarantines bad ones; a Redis source acknowledges entries and
//! dead-letters bad ones; stdin has nothing to settle. The pipeline core calls the trait and
//! knows none of these mechanisms, so a new source (HTTP, video) brings its own.

pub mod folder;
pub mod http;
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
use crate::runtime::{Budget, Lease, Stop, Telemetry};

/// An undecoded frame: its identity, its place in the source's order, and its bytes.
#[derive(Debug)]
pub struct RawFrame {
    pub seq: u64,
    pub id: FrameId,
    /// The bytes, or why the source could not produce them (already named with the id).
    pub bytes: std::result::Result<Vec<u8>, String>,
}

/// A frame let into the pipeline, with the share of the in-flight memory budget it holds
/// (its raw bytes; grown to its full cost at decode, given back when it leaves).
#[derive(Debug)]
pub struct Admitted {
    pub frame: RawFrame,
    pub lease: Lease,
}

/// Where a source puts its frames: the pipeline's first bounded channel, under an overload
/// policy, and within the in-flight memory budget. `Block` waits for room in both (lossless
/// backpressure: folder sources always use it); `DropOldest` makes room by dropping the oldest
/// waiting frame, counts it, and tells the sink (through `gaps`) so ordered output does not
/// wait for it (and waits only when no waiting frame is left to drop).
#[derive(Clone)]
pub struct Intake {
    tx: Sender<Admitted>,
    rx: Receiver<Admitted>,
    policy: Overload,
    gaps: Sender<(u64, FrameId)>,
    telemetry: Arc<Telemetry>,
    budget: Budget,
}

impl Intake {
    /// An intake with no memory budget; see [`Intake::with_budget`].
    pub fn new(
        tx: Sender<Admitted>,
        rx: Receiver<Admitted>,
        policy: Overload,
        gaps: Sender<(u64, FrameId)>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            tx,
            rx,
            policy,
            gaps,
            telemetry,
            budget: Budget::unlimited(),
        }
    }

    /// Frames wait for room in `budget` before they enter the pipeline.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Hands a frame to the pipeline; false when the pipeline is gone.
    pub fn send(&self, frame: RawFrame) -> bool {
        self.send_with(frame, false)
    }

    /// Hands a frame to the pipeline once nothing else is in flight, and lets nothing else in
    /// until it has left: a frame suspected of having ended the process runs alone, so that
    /// if it does so again, it is the one found to blame (see the folder journal).
    pub fn send_alone(&self, frame: RawFrame) -> bool {
        self.send_with(frame, true)
    }

    fn send_with(&self, frame: RawFrame, alone: bool) -> bool {
        let bytes = frame.bytes.as_ref().map_or(0, |b| b.len() as u64);
        if self.policy == Overload::Block || alone {
            let lease = self.budget.admit(bytes, alone);
            return self.tx.send(Admitted { frame, lease }).is_ok();
        }
        // Memory first: drop the oldest waiting frames while that frees some.
        let lease = loop {
            if let Some(l) = self.budget.try_admit(bytes) {
                break l;
            }
            if !self.drop_oldest() {
                break self.budget.admit(bytes, false);
            }
        };
        let mut item = Admitted { frame, lease };
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(f)) => {
                    item = f;
                    self.drop_oldest();
                }
            }
        }
    }

    /// Drops the oldest waiting frame (counted, reported as a gap); false if none waits.
    fn drop_oldest(&self) -> bool {
        let Ok(old) = self.rx.try_recv() else {
            return false;
        };
        self.telemetry.dropped.fetch_add(1, Ordering::Relaxed);
        self.telemetry.frame("source", "dropped");
        tracing::warn!("overload: dropped {}", old.frame.id);
        let _ = self.gaps.send((old.frame.seq, old.frame.id));
        true
    }

    /// Hands a frame to the pipeline if there is room — in the memory budget and in the first
    /// queue — within `within`, competing for places with the other sources; never drops a
    /// waiting frame. For callers who answer someone (HTTP requests): they must not queue
    /// without bound, so they give up and say so.
    pub fn send_within(&self, frame: RawFrame, within: Duration) -> Admission {
        use crossbeam_channel::SendTimeoutError;
        let until = std::time::Instant::now() + within;
        let bytes = frame.bytes.as_ref().map_or(0, |b| b.len() as u64);
        let Some(lease) = self.budget.admit_within(bytes, within) else {
            return Admission::Full;
        };
        let left = until.saturating_duration_since(std::time::Instant::now());
        match self.tx.send_timeout(Admitted { frame, lease }, left) {
            Ok(()) => Admission::Taken,
            Err(SendTimeoutError::Timeout(_)) => Admission::Full,
            Err(SendTimeoutError::Disconnected(_)) => Admission::Closed,
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

/// What became of a frame offered with [`Intake::send_within`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Taken,
    /// No room in time: the pipeline is busy.
    Full,
    /// The pipeline is shutting down.
    Closed,
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
    /// The frame passed its budget check and is about to be decoded: a source that can be
    /// restarted on the same input records it, so that a frame which ends the process (out of
    /// memory, a crash) is known on restart.
    fn begun(&self, _id: &FrameId) {}
    /// The frame left the pipeline without output (failed, set aside or left for the next
    /// run): it did not end the process. Called once per such frame, after the calls above.
    fn ended(&self, _id: &FrameId) {}
    /// Before an exit that cannot wait for the frames in flight (the drain's time is up):
    /// they did not end the process either.
    fn abandon_in_flight(&self) {}
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
        let kept: Vec<u64> = rx.try_iter().map(|f| f.frame.seq).collect();
        assert_eq!(kept, vec![3, 4]);
        let gaps: Vec<u64> = grx.try_iter().map(|(seq, _)| seq).collect();
        assert_eq!(gaps, vec![0, 1, 2]);
        assert_eq!(tel.dropped.load(Ordering::Relaxed), 3);

        let (tx, rx) = bounded(1);
        let (gtx, _grx) = unbounded();
        let intake = Intake::new(tx, rx.clone(), Overload::Block, gtx, tel);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            rx.iter().map(|f| f.frame.seq).collect::<Vec<_>>()
        });
        for seq in 0..5 {
            assert!(intake.send(frame(seq)));
        }
        drop(intake);
        assert_eq!(reader.join().unwrap(), vec![0, 1, 2, 3, 4]);
    }
}
