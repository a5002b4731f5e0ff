//! The budgets of a frame in the wiring: what it may cost and how long it may take.
//!
//! A frame comes from the intake with a [`Lease`] of its raw bytes (`source::Intake`). At
//! decode, before any pixel is decoded, [`admit`] reads its header, estimates what it will
//! cost through the stages (`stage::cost`), refuses it when that is over the per-frame budget
//! (`[budget] max_frame_mib`), grows the lease to the estimate (waiting while the in-flight
//! budget is spent), and starts its [`Deadline`]. The [`Ticket`] (lease and deadline) travels
//! with the frame in its packet, and is dropped, giving the memory back, when the frame is
//! written or fails. Every stage looks at the deadline before each step ([`Ctx::expire`]), and
//! the model between forward passes; the deadline's clock runs only while a stage holds the
//! frame, not while it waits in a queue.

use std::sync::atomic::Ordering;

use super::workers::{Ctx, Fate};
use super::Generation;
use crate::frame::{header, FrameId};
use crate::runtime::{Deadline, Expired, Lease};
use crate::stage::cost::{self, Shape};

/// A frame's share of the budgets: its memory lease and its deadline. Empty for a gap.
#[derive(Debug, Default)]
pub(super) struct Ticket {
    /// Held for its drop: the frame's memory is given back when it leaves the pipeline.
    #[allow(dead_code)]
    lease: Option<Lease>,
    deadline: Option<Deadline>,
}

impl Ticket {
    pub fn new(lease: Lease, deadline: Deadline) -> Self {
        Self {
            lease: Some(lease),
            deadline: Some(deadline),
        }
    }

    /// Whether the frame's time is up, and why.
    pub fn expired(&self) -> Option<Expired> {
        self.deadline.as_ref().and_then(Deadline::expired)
    }

    /// A stage took the frame: its deadline's clock runs (see [`Deadline`]).
    pub fn resume(&mut self) {
        if let Some(d) = &mut self.deadline {
            d.resume();
        }
    }

    /// The frame goes into a queue: its deadline's clock stops.
    pub fn pause(&mut self) {
        if let Some(d) = &mut self.deadline {
            d.pause();
        }
    }
}

/// Why a frame was not admitted at decode.
#[derive(Debug)]
pub(super) enum Refused {
    /// Over the per-frame budget, or its header does not read: set it aside with this reason.
    Bad(String),
    /// A stop came while it waited for room.
    Stopped,
}

/// Checks a frame's cost from its header and grows its lease to it; then its deadline starts.
pub(super) fn admit(
    bytes: &[u8],
    id: &FrameId,
    gen: &Generation,
    lease: &mut Lease,
    ctx: &Ctx,
) -> Result<Deadline, Refused> {
    let what = id.to_string();
    // Header parsers see hostile bytes too: a panic fails the frame, not the worker.
    let h = std::panic::catch_unwind(|| header(bytes, &what))
        .map_err(|_| Refused::Bad(format!("{what}: cannot decode: decoder panicked")))?
        .map_err(|e| Refused::Bad(e.to_string()))?;
    let (w, ht) = h.size;
    let max_pixels = gen.cfg.decode.max_pixels;
    // The pixel limit first: it bounds the work of the estimate itself.
    if (w as u64) * (ht as u64) > max_pixels {
        return Err(Refused::Bad(format!(
            "{what}: cannot decode: {w}x{ht} is over the limit of {max_pixels} pixels ([decode] max_pixels)"
        )));
    }
    let shape = Shape {
        plan: gen.plan,
        fixed_size: gen.model.spec().fixed_size,
        keep_input: ctx.keep_input,
    };
    let need = cost::estimate(&h, bytes.len() as u64, &gen.cfg, &shape).peak();
    let budget = &gen.cfg.budget;
    if need > budget.max_frame_bytes() {
        return Err(Refused::Bad(format!(
            "{what}: a {w}x{ht} frame of {} channel(s) would take about {} MiB through the pipeline, over the per-frame budget of {} MiB ([budget] max_frame_mib)",
            h.channels,
            need.div_ceil(1 << 20),
            budget.max_frame_mib
        )));
    }
    // Waits while other frames hold the in-flight budget; a stop ends the wait for a frame
    // that can be left for the next run, and the drain's end for any other.
    let deferrable = ctx.completion.can_defer(id);
    let granted = lease.grow(need, || {
        !(ctx.stop.requested() && (deferrable || ctx.drain.over()))
    });
    if !granted {
        return Err(Refused::Stopped);
    }
    Ok(Deadline::starting_now(budget.frame_timeout(), &ctx.drain))
}

impl Ctx {
    /// If the frame's time is up, fails it with the reason and returns true. Past its own
    /// deadline it is set aside (quarantined, dead-lettered) like a frame over its budget:
    /// it would take as long again. Cut by the end of a drain it is left for the next run
    /// when its source can give it again (a file), and otherwise fails so that a queue can
    /// deliver it again (a stream frame is lost, and reported).
    pub fn expire(&self, id: &FrameId, ticket: &Ticket, stage: &'static str) -> bool {
        let Some(why) = ticket.expired() else {
            return false;
        };
        self.expired(id, why, stage);
        true
    }

    /// Fails a frame whose time is up (see [`Ctx::expire`]).
    pub fn expired(&self, id: &FrameId, why: Expired, stage: &'static str) {
        match why {
            Expired::Drain(_) if self.completion.can_defer(id) => {
                self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                self.tel.frame("drain", "deferred");
                tracing::info!("{id}: {why}; left for the next run");
            }
            Expired::Drain(_) => {
                self.tel.frame(stage, "failed");
                self.fail(id, format!("{id}: {why}"), Fate::Retry);
            }
            Expired::Deadline(_) => {
                self.tel.frame(stage, "failed");
                self.set_aside(id, format!("{id}: {why}, in {stage}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::super::tests::{tiny_config, tiny_model_and_frame, version, TallySink};
    use super::super::{run, slot, Generation, RunOptions, Summary, Tap};
    use crate::config::{OutputKind, PipelineConfig};
    use crate::error::Result;
    use crate::frame::{encode_png, header, FrameId, Planes};
    use crate::model::version::ModelVersion;
    use crate::model::{Model, ModelSpec, Outputs};
    use crate::runtime::{ManualClock, Stop};
    use crate::source::{Completion, Intake, RawFrame, SetAside, Source};
    use crate::stage::cost;

    /// A model that moves the manual clock on by `step` on every forward pass (and, with
    /// `stop`, requests a stop on the first): time passes exactly where the test says.
    struct Ticking {
        spec: ModelSpec,
        clock: Arc<ManualClock>,
        step: Duration,
        stop: Option<Stop>,
        passes: AtomicU64,
    }

    impl Model for Ticking {
        fn spec(&self) -> ModelSpec {
            self.spec
        }
        fn run(&self, x: &candle_core::Tensor, _: bool) -> Result<Outputs> {
            self.passes.fetch_add(1, Ordering::SeqCst);
            if let Some(s) = &self.stop {
                s.request();
            }
            self.clock.advance(self.step);
            Ok(Outputs {
                image: x.clone(),
                code: None,
            })
        }
        fn device(&self) -> &candle_core::Device {
            &candle_core::Device::Cpu
        }
    }

    /// What the pipeline told the source about its frames.
    #[derive(Default)]
    struct Recorder {
        can_defer: bool,
        rejected: Mutex<Vec<String>>,
        failed: Mutex<Vec<String>>,
    }

    impl Completion for Recorder {
        fn done(&self, _: &FrameId, _: &ModelVersion, _: bool) -> Result<()> {
            Ok(())
        }
        fn rejected(&self, _: &FrameId, error: &str) -> SetAside {
            self.rejected.lock().unwrap().push(error.to_string());
            SetAside::Reported
        }
        fn failed(&self, _: &FrameId, error: &str) {
            self.failed.lock().unwrap().push(error.to_string());
        }
        fn can_defer(&self, _: &FrameId) -> bool {
            self.can_defer
        }
    }

    struct Frames {
        frames: Vec<Vec<u8>>,
        completion: Arc<Recorder>,
    }

    impl Source for Frames {
        fn run(self: Box<Self>, intake: Intake, _: Stop) -> Result<()> {
            for (seq, bytes) in self.frames.into_iter().enumerate() {
                let seq = seq as u64;
                let id = FrameId::Stream { seq, offset: 0 };
                if !intake.send(RawFrame {
                    seq,
                    id,
                    bytes: Ok(bytes),
                }) {
                    break;
                }
            }
            Ok(())
        }
        fn completion(&self) -> Arc<dyn Completion> {
            self.completion.clone()
        }
    }

    /// Runs `frames` through `cfg` with a [`Ticking`] model on a manual clock.
    fn run_ticking(
        cfg: PipelineConfig,
        frames: Vec<Vec<u8>>,
        step: Duration,
        stop_at_first_pass: bool,
        can_defer: bool,
    ) -> (Summary, Arc<Recorder>, u64) {
        let (real, _) = tiny_model_and_frame(&cfg);
        let clock = Arc::new(ManualClock::new());
        let stop = Stop::new();
        let model = Arc::new(Ticking {
            spec: real.spec(),
            clock: clock.clone(),
            step,
            stop: stop_at_first_pass.then(|| stop.clone()),
            passes: AtomicU64::new(0),
        });
        let completion = Arc::new(Recorder {
            can_defer,
            ..Recorder::default()
        });
        let summary = run(
            slot(Generation::new(cfg, model.clone(), version("t"), 1)),
            Box::new(Frames {
                frames,
                completion: completion.clone(),
            }),
            Box::new(TallySink {
                written: Arc::default(),
                skipped: Arc::default(),
            }),
            vec![OutputKind::Denoised],
            RunOptions {
                clock: Some(clock),
                ..RunOptions::default()
            },
            stop,
        )
        .unwrap();
        (summary, completion, model.passes.load(Ordering::SeqCst))
    }

    /// Each frame's model pass takes (by the manual clock) longer than its deadline: each
    /// fails, set aside with the deadline as its reason, and none is written.
    #[test]
    fn a_frame_past_its_deadline_is_set_aside_with_the_reason() {
        let (_, frame) = tiny_model_and_frame(&tiny_config());
        let (s, rec, _) = run_ticking(
            tiny_config(),
            vec![frame; 3],
            Duration::from_secs(601),
            false,
            false,
        );
        assert_eq!((s.frames_out, s.failed), (0, 3));
        let rejected = rec.rejected.lock().unwrap();
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        for r in rejected.iter() {
            assert!(
                r.contains("deadline of 600 s") && r.contains("frame_timeout_s"),
                "{r}"
            );
        }
    }

    /// A frame whose header declares more than the per-frame budget is refused before it is
    /// decoded, with its size and the estimate; the model never sees it.
    #[test]
    fn a_frame_over_the_per_frame_budget_is_refused_on_its_header() {
        let mut cfg = tiny_config();
        (cfg.budget.max_frame_mib, cfg.budget.max_in_flight_mib) = (16, 16);
        let big = encode_png(&Planes::grey(2000, 2000, vec![0.0; 4_000_000]), "t").unwrap();
        let (s, rec, passes) = run_ticking(cfg, vec![big], Duration::ZERO, false, false);
        assert_eq!((s.frames_out, s.failed, passes), (0, 1, 0));
        let r = &rec.rejected.lock().unwrap()[0];
        assert!(
            r.contains("2000x2000") && r.contains("over the per-frame budget of 16 MiB"),
            "{r}"
        );
    }

    /// A stop during a frame of many tiles: the drain's time (30 s) runs out between passes,
    /// the model stops there, and the frame is left for the next run, not failed.
    #[test]
    fn the_drain_cuts_a_frame_between_passes_and_leaves_it_for_the_next_run() {
        let mut cfg = tiny_config();
        (cfg.model.tile, cfg.model.tile_overlap, cfg.infer.max_batch) = (32, 8, 1);
        let frame = encode_png(&Planes::grey(64, 64, vec![0.5; 64 * 64]), "t").unwrap();
        let (s, rec, passes) = run_ticking(cfg, vec![frame], Duration::from_secs(20), true, true);
        assert_eq!((s.frames_out, s.deferred, s.failed), (0, 1, 0));
        assert!(rec.rejected.lock().unwrap().is_empty());
        assert!(rec.failed.lock().unwrap().is_empty());
        // The first pass asked for the stop; the drain started at the next look and ended
        // 30 s (two passes) later: far fewer than the frame's 16 tiles.
        assert!((2..=4).contains(&passes), "{passes} passes");
    }

    /// A frame that cannot be left for the next run (a stream's) fails once the drain is over.
    #[test]
    fn a_stream_frame_cut_by_the_drain_fails_with_the_reason() {
        let mut cfg = tiny_config();
        (cfg.model.tile, cfg.model.tile_overlap, cfg.infer.max_batch) = (32, 8, 1);
        let frame = encode_png(&Planes::grey(64, 64, vec![0.5; 64 * 64]), "t").unwrap();
        let (s, rec, _) = run_ticking(cfg, vec![frame], Duration::from_secs(20), true, false);
        assert_eq!((s.frames_out, s.deferred, s.failed), (0, 0, 1));
        let f = &rec.failed.lock().unwrap()[0];
        assert!(f.contains("drain time of 30 s"), "{f}");
    }

    /// Counts frames past decode that are not written yet.
    struct Ahead {
        decoded: AtomicU64,
        written: Arc<Mutex<Vec<u64>>>,
        most: AtomicU64,
    }

    impl Tap for Ahead {
        fn decoded(&self, _: &Planes) {
            let d = self.decoded.fetch_add(1, Ordering::SeqCst) + 1;
            let w = self.written.lock().unwrap().len() as u64;
            self.most.fetch_max(d - w, Ordering::SeqCst);
        }
    }

    /// With an in-flight budget of a few frames' cost, no more frames than fit are past
    /// decode at once (plus the one the budget always lets through), however large the
    /// channels; every frame is still written.
    #[test]
    fn the_in_flight_budget_holds_frames_back() {
        let mut cfg = tiny_config();
        cfg.channels.capacity = 16;
        (cfg.budget.max_frame_mib, cfg.budget.max_in_flight_mib) = (16, 16);
        let (model, _) = tiny_model_and_frame(&cfg);
        let frame = encode_png(
            &crate::frame::Planes::grey(600, 600, vec![0.3; 360_000]),
            "t",
        )
        .unwrap();
        let gen = Generation::new(cfg, model, version("t"), 1);
        let shape = cost::Shape {
            plan: gen.plan,
            fixed_size: None,
            keep_input: false,
        };
        let h = header(&frame, "t").unwrap();
        let each = cost::estimate(&h, frame.len() as u64, &gen.cfg, &shape).peak();
        let fit = (16u64 << 20) / each;
        assert!((1..8).contains(&fit), "{} MiB a frame", each >> 20);
        let written = Arc::new(Mutex::new(Vec::new()));
        let tap = Arc::new(Ahead {
            decoded: AtomicU64::new(0),
            written: written.clone(),
            most: AtomicU64::new(0),
        });
        let n = 24;
        let completion = Arc::new(Recorder::default());
        let s = run(
            slot(gen),
            Box::new(Frames {
                frames: vec![frame; n],
                completion,
            }),
            Box::new(TallySink {
                written: written.clone(),
                skipped: Arc::default(),
            }),
            vec![OutputKind::Denoised],
            RunOptions {
                tap: Some(tap.clone()),
                ..RunOptions::default()
            },
            Stop::new(),
        )
        .unwrap();
        assert_eq!(s.frames_out, n as u64);
        // A lease grows only when it fits (or no other frame is past decode), before the
        // tap sees the frame; it is given back only after the sink wrote it.
        let most = tap.most.load(Ordering::SeqCst);
        assert!(most <= fit.max(1), "{most} frames past decode; {fit} fit");
        assert!(most >= 1);
    }
}
