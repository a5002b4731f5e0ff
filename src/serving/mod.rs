//! The wiring: source → decode → corrupt → normalise → infer → post-process → encode → sink,
//! each on its own thread(s), joined by bounded crossbeam channels. Only wiring lives here:
//! what each stage does is in `stage/`, how a source finishes its frames is its own
//! [`crate::source::Completion`], and the fine-tuner listens through a [`Tap`].
//!
//! Backpressure: every channel is bounded, so when the model is slower than the source the
//! source blocks on send; nothing is dropped and memory stays bounded by the capacities. Every
//! frame carries its sequence number and identity end to end; a frame that fails anywhere is
//! reported (naming it) and passed on as a gap, so ordered sinks never wait for it. Shutdown:
//! when the source ends (EOF, `--once` done) or a stop is requested, the stages drain what is in
//! flight and the run returns.
//!
//! Hot swap: see [`generation`]. Exactly-once: a frame's completion is reported only after the
//! sink made its outputs durable (see the sink loop in [`run`]).

mod budget;
pub mod generation;
pub mod http;
pub mod service;
mod workers;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};

use crate::config::OutputKind;
use crate::error::{Error, Result};
use crate::frame::{FrameId, Planes};
use crate::runtime::{Budget, Drain, SharedClock, Stop, SystemClock, Telemetry};
use crate::sink::{Output, Sink};
use crate::source::http::Requests;
use crate::source::{Admitted, Intake, SetAside, Source};
use crate::stage::corrupt;
use crate::stage::encode::{self, Payload};
use crate::stage::normalise::{self, Prepared};
use crate::stage::postprocess::{self, Finished};
pub use generation::{slot, Generation, ModelSlot};
use workers::{decode_worker, infer_worker, map_stage, spawn, Ctx, Fate, Inferred, Packet, Stats};

/// Where decoded frames are offered to a listener beside the pipeline (the online
/// fine-tuner). Called on the decode threads: it must not block.
pub trait Tap: Send + Sync {
    fn decoded(&self, frame: &Planes);
}

/// Where a run's frames can be watched as they pass (the HTTP status page: thumbnails, the
/// list of failures). Called on the pipeline's threads: it must be quick and must not block.
pub trait Watch: Send + Sync {
    /// A frame was decoded.
    fn decoded(&self, _id: &FrameId, _frame: &Planes) {}
    /// A frame's outputs are about to be written.
    fn written(&self, _id: &FrameId, _files: &[(OutputKind, Payload)]) {}
    /// A frame failed, and what became of its input.
    fn failed(&self, _id: &FrameId, _error: &str, _aside: &SetAside) {}
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub frames_in: u64,
    pub frames_out: u64,
    pub failed: u64,
    pub batches: u64,
    /// Undecodable input files moved to the quarantine folder.
    pub quarantined: u64,
    /// Stream frames dropped under `overload = "drop-oldest"`.
    pub dropped: u64,
    /// File frames left for the next run by a stop (not yet at the model when it came).
    pub deferred: u64,
    pub seconds: f64,
}

/// The parts of a run beside the stages: the counters `/metrics` shows, and who listens.
#[derive(Default)]
pub struct RunOptions {
    pub telemetry: Arc<Telemetry>,
    /// Decoded frames are also offered here (the online fine-tuner).
    pub tap: Option<Arc<dyn Tap>>,
    /// Frames are shown here as they pass (the status page).
    pub watch: Option<Arc<dyn Watch>>,
    /// HTTP requests among the frames: each asks for its own output kinds (any the model can
    /// make), so codes and inputs are kept for every frame.
    pub requests: Option<Requests>,
    /// What frames' deadlines and the drain are timed with (default: the system's).
    pub clock: Option<SharedClock>,
}

/// Runs a pipeline until its source ends or `stop` is requested, then drains. Channel sizes
/// and stage threads come from the generation in `slot` at start; everything else is read per
/// frame from the generation it started with.
pub fn run(
    slot: ModelSlot,
    source: Box<dyn Source>,
    mut sink: Box<dyn Sink>,
    kinds: Vec<OutputKind>,
    opts: RunOptions,
    stop: Stop,
) -> Result<Summary> {
    let started = Instant::now();
    let tel = opts.telemetry.clone();
    let first = slot.load_full();
    let clock = opts.clock.clone().unwrap_or_else(SystemClock::shared);
    let ctx = Ctx {
        stats: Arc::new(Stats::default()),
        tel: tel.clone(),
        completion: source.completion(),
        stop: stop.clone(),
        watch: opts.watch.clone(),
        drain: Drain::new(stop.clone(), clock, first.cfg.budget.drain_timeout()),
        // Requests may ask for any kind the model makes, overlays among them.
        keep_input: kinds.contains(&OutputKind::Overlay)
            || (opts.requests.is_some()
                && OutputKind::for_task(first.cfg.model.arch.task())
                    .contains(&OutputKind::Overlay)),
    };
    let stats = ctx.stats.clone();
    let cap = first.cfg.channels.capacity;
    let workers = match first.cfg.infer.workers {
        0 => thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4),
        n => n,
    };
    tel.set_model(&first.version.to_string(), first.number);

    let (raw_tx, raw_rx) = bounded::<Admitted>(cap);
    let (dec_tx, dec_rx) = bounded::<Packet<Planes>>(cap);
    let (cor_tx, cor_rx) = bounded::<Packet<Planes>>(cap);
    let (prep_tx, prep_rx) = bounded::<Packet<Prepared>>(cap);
    let (inf_tx, inf_rx) = bounded::<Packet<Inferred>>(cap);
    let (post_tx, post_rx) = bounded::<Packet<Finished>>(cap);
    let (out_tx, out_rx) = bounded::<Packet<Vec<(OutputKind, Payload)>>>(cap);
    // Frames dropped at intake: tiny notices, so an ordered sink does not wait for them.
    let (gap_tx, gap_rx) = unbounded::<(u64, FrameId)>();
    // The kinds any frame may ask for: the run's own, and with HTTP requests, all the
    // model can make.
    let askable: Vec<OutputKind> = match &opts.requests {
        Some(_) => OutputKind::for_task(first.cfg.model.arch.task()).to_vec(),
        None => kinds.clone(),
    };
    let want_code = askable.contains(&OutputKind::Latent) || kinds.contains(&OutputKind::Latent);
    {
        let (a, b, c, d, e, f, g) = (
            raw_rx.clone(),
            dec_rx.clone(),
            cor_rx.clone(),
            prep_rx.clone(),
            inf_rx.clone(),
            post_rx.clone(),
            out_rx.clone(),
        );
        tel.watch_queue("source", Box::new(move || a.len()));
        tel.watch_queue("decoded", Box::new(move || b.len()));
        tel.watch_queue("corrupted", Box::new(move || c.len()));
        tel.watch_queue("normalised", Box::new(move || d.len()));
        tel.watch_queue("inferred", Box::new(move || e.len()));
        tel.watch_queue("postprocessed", Box::new(move || f.len()));
        tel.watch_queue("encoded", Box::new(move || g.len()));
    }

    // The source's result comes back on a channel rather than by joining it: after a stop
    // request a stdin read may block forever.
    let src_stop = stop.clone();
    let (src_res_tx, src_res_rx) = bounded::<Result<()>>(1);
    let intake = Intake::new(
        raw_tx,
        raw_rx.clone(),
        first.cfg.channels.overload,
        gap_tx,
        tel.clone(),
    )
    .with_budget(Budget::new(first.cfg.budget.max_in_flight_bytes()));
    let src_tel = tel.clone();
    thread::Builder::new()
        .name("source".into())
        .spawn(move || {
            src_tel.set_ready(true);
            let r = source.run(intake, src_stop.clone());
            src_tel.set_ready(false);
            if let Err(e) = &r {
                tracing::error!("source: {e}");
                src_stop.request();
            }
            let _ = src_res_tx.send(r);
        })
        .map_err(|e| Error::Other(format!("cannot start source thread: {e}")))?;

    // The drain's time runs from the stop request, not from a stage's next look at it (one
    // forward pass may take seconds): this thread looks every 50 ms until the run ends.
    let (run_over, run_over_rx) = bounded::<()>(0);
    {
        let (stop, drain) = (stop.clone(), ctx.drain.clone());
        spawn("drain-clock".into(), move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                run_over_rx.recv_timeout(Duration::from_millis(50))
            {
                if stop.requested() {
                    drain.over();
                    return;
                }
            }
        })?;
    }

    let mut handles = Vec::new();
    for i in 0..workers {
        let (rx, tx, ctx, slot) = (raw_rx.clone(), dec_tx.clone(), ctx.clone(), slot.clone());
        let tap = opts.tap.clone();
        handles.push(spawn(format!("decode-{i}"), move || {
            decode_worker(&slot, tap.as_deref(), rx, tx, &ctx)
        })?);
    }
    drop((raw_rx, dec_tx));

    handles.extend(map_stage(
        "corrupt",
        workers,
        dec_rx,
        cor_tx,
        &ctx,
        true,
        |seq, id, gen, planes: Planes| {
            corrupt::frame(
                seq,
                id,
                gen.cfg.mask_dir.as_deref(),
                &gen.cfg.corrupt,
                planes,
            )
        },
    )?);

    let keep_input = askable.contains(&OutputKind::Overlay) || kinds.contains(&OutputKind::Overlay);
    handles.extend(map_stage(
        "normalise",
        workers,
        cor_rx,
        prep_tx,
        &ctx,
        true,
        move |_, _, gen, planes| {
            let spec = gen.model.spec();
            let norm = normalise::NormaliseOpts {
                cfg: gen.cfg.normalise.clone(),
                plan: gen.plan,
                fixed_size: spec.fixed_size,
                keep_input,
                task: spec.task,
            };
            Ok(normalise::run(planes, &norm))
        },
    )?);

    {
        let ctx = ctx.clone();
        handles.push(spawn("infer".into(), move || {
            infer_worker(want_code, prep_rx, inf_tx, &ctx)
        })?);
    }

    handles.extend(map_stage(
        "post",
        workers,
        inf_rx,
        post_tx,
        &ctx,
        false,
        |_, _, gen, (prep, outs, code): Inferred| {
            Ok(postprocess::assemble(
                prep,
                &outs,
                code,
                &gen.cfg.postprocess,
            ))
        },
    )?);

    let enc_kinds = kinds.clone();
    let requests = opts.requests.clone();
    handles.extend(map_stage(
        "encode",
        workers,
        post_rx,
        out_tx,
        &ctx,
        false,
        move |_, id, gen, finished: Finished| {
            // A request names its own kinds (checked against the model when it came in).
            let asked = match (id, &requests) {
                (FrameId::Request { n }, Some(r)) => r.kinds(*n),
                _ => None,
            };
            asked
                .as_deref()
                .unwrap_or(&enc_kinds)
                .iter()
                .map(|&k| {
                    let what = id.to_string();
                    Ok((k, encode::encode(&finished, k, &gen.cfg.instances, &what)?))
                })
                .collect()
        },
    )?);

    // The sink runs here; its failure (disk full, closed stdout) stops the whole pipeline.
    let mut sink_result = Ok(());
    let mut gaps_open = true;
    loop {
        let p = if gaps_open {
            crossbeam_channel::select! {
                recv(out_rx) -> p => match p { Ok(p) => p, Err(_) => break },
                recv(gap_rx) -> g => {
                    match g {
                        Ok((seq, id)) => {
                            if let Err(e) = sink.skip(seq, &id) {
                                stop.request();
                                sink_result = Err(e);
                                break;
                            }
                        }
                        Err(_) => gaps_open = false,
                    }
                    continue;
                }
            }
        } else {
            match out_rx.recv() {
                Ok(p) => p,
                Err(_) => break,
            }
        };
        let t0 = Instant::now();
        let id = p.id.clone();
        let gap = p.body.is_none();
        let r = match p.body {
            Some(files) => {
                if let Some(w) = &ctx.watch {
                    w.written(&id, &files);
                }
                let out = Output {
                    seq: p.seq,
                    id: p.id,
                    version: p.gen.version.clone(),
                    files,
                };
                let by_sink = sink.settles(&id);
                sink.write(out).and_then(|_| {
                    stats.frames_out.fetch_add(1, Ordering::Relaxed);
                    // Recorded (journal, acknowledgement) only now that the result is durable;
                    // a completion that cannot be recorded stops the run.
                    ctx.completion.done(&id, &p.gen.version, by_sink)
                })
            }
            None => sink.skip(p.seq, &id),
        };
        tel.latency("sink", t0.elapsed());
        tel.in_flight(-1);
        if gap {
            ctx.completion.ended(&id);
        }
        match r {
            // A gap (the frame failed earlier and was counted there) is not an output.
            Ok(()) => tel.frame("sink", if gap { "gap" } else { "ok" }),
            // One output that cannot be written (a name too long, a folder in the way) fails
            // that frame; anything else (disk full, read-only, closed stdout) stops the run.
            Err(Error::FrameFailed(msg)) => {
                tel.frame("sink", "failed");
                ctx.fail(&id, msg, Fate::Retry);
                ctx.completion.ended(&id);
            }
            Err(e) => {
                tel.frame("sink", "failed");
                stop.request();
                sink_result = Err(e);
                break;
            }
        }
    }
    // Gaps of frames dropped at the very end still reach the ordered sink.
    if sink_result.is_ok() {
        for (seq, id) in gap_rx.try_iter() {
            if let Err(e) = sink.skip(seq, &id) {
                sink_result = Err(e);
                break;
            }
        }
    }
    tel.clear_queues();
    drop(out_rx);
    if sink_result.is_ok() {
        sink_result = sink.finish();
    }
    let mut panicked = false;
    for h in handles {
        panicked |= h.join().is_err();
    }
    // Frames that did not reach the sink (it failed and stopped the run) did not end the
    // process: their in-progress marks are closed, so a restart does not suspect them.
    ctx.completion.abandon_in_flight();
    drop(run_over);
    let source_result = if stop.requested() {
        // Stopped: the source may be blocked in a read; take its result only if it has one.
        src_res_rx
            .recv_timeout(Duration::from_millis(500))
            .unwrap_or(Ok(()))
    } else {
        src_res_rx
            .recv()
            .unwrap_or_else(|_| Err(Error::Other("the source thread panicked".into())))
    };
    tel.set_ready(false);
    if panicked {
        return Err(Error::Other("a pipeline stage panicked".into()));
    }
    sink_result?;
    // A source that failed (watch error, unreadable stdin) ends the run with an error, after
    // everything it produced was written.
    source_result?;
    Ok(Summary {
        frames_in: stats.frames_in.load(Ordering::Relaxed),
        frames_out: stats.frames_out.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        batches: stats.batches.load(Ordering::Relaxed),
        quarantined: stats.quarantined.load(Ordering::Relaxed),
        dropped: tel.dropped.load(Ordering::Relaxed),
        deferred: stats.deferred.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::frame::encode_png;
    use crate::model::version::ModelVersion;
    use crate::model::{Arch, Model, Net, NetModel};
    use crate::source::RawFrame;
    use candle_core::{DType, Device};
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    pub(super) fn version(name: &str) -> ModelVersion {
        ModelVersion::loaded(name, b"", b"")
    }

    struct CountingSource {
        n: u64,
        frame: Vec<u8>,
        sent: Arc<AtomicU64>,
    }

    impl Source for CountingSource {
        fn run(self: Box<Self>, intake: Intake, _stop: Stop) -> Result<()> {
            for seq in 0..self.n {
                let f = RawFrame {
                    seq,
                    id: FrameId::Stream { seq, offset: 0 },
                    bytes: Ok(self.frame.clone()),
                };
                if !intake.send(f) {
                    break;
                }
                self.sent.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
    }

    struct SlowSink {
        sent: Arc<AtomicU64>,
        written: Arc<Mutex<BTreeSet<u64>>>,
        max_ahead: Arc<AtomicU64>,
    }

    impl Sink for SlowSink {
        fn write(&mut self, out: Output) -> Result<()> {
            std::thread::sleep(Duration::from_millis(5));
            let mut w = self.written.lock().unwrap();
            w.insert(out.seq);
            let ahead = self.sent.load(Ordering::SeqCst) - w.len() as u64;
            self.max_ahead.fetch_max(ahead, Ordering::SeqCst);
            Ok(())
        }
        fn skip(&mut self, seq: u64, _: &FrameId) -> Result<()> {
            panic!("frame {seq} failed");
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
    }

    /// The denoise pipeline with one-frame channels, one worker per stage and a tiny model.
    pub(super) fn tiny_config() -> PipelineConfig {
        let mut cfg = PipelineConfig::load("denoise").unwrap();
        cfg.channels.capacity = 1;
        cfg.infer.workers = 1;
        let Arch::UnetDenoiser(d) = &mut cfg.model.arch else {
            unreachable!("the denoise pipeline runs a unet-denoiser");
        };
        (d.channels, d.blocks) = (vec![4], vec![1]);
        // These tests watch the model's own output (constant models stand in for versions).
        cfg.infer.sure_blend = false;
        cfg
    }

    /// An untrained model for `cfg` and a 16×16 PNG frame.
    pub(super) fn tiny_model_and_frame(cfg: &PipelineConfig) -> (Arc<dyn Model>, Vec<u8>) {
        let vm = candle_nn::VarMap::new();
        let vb = crate::model::init::seeded_builder(&vm, 7, DType::F32, &Device::Cpu);
        let net = Net::new(vb, &cfg.model.arch).unwrap();
        let model: Arc<dyn Model> = Arc::new(NetModel::new(net, Device::Cpu, None));
        let frame = encode_png(&Planes::grey(16, 16, vec![0.5; 256]), "t").unwrap();
        (model, frame)
    }

    /// A slow sink holds the source back: frames in flight stay within what the bounded
    /// channels and stages can hold, and every frame still arrives.
    #[test]
    fn slow_sink_backpressures_the_source_and_loses_nothing() {
        let mut cfg = tiny_config();
        cfg.infer.max_batch = 2;
        let (model, frame) = tiny_model_and_frame(&cfg);
        let sent = Arc::new(AtomicU64::new(0));
        let written = Arc::new(Mutex::new(BTreeSet::new()));
        let max_ahead = Arc::new(AtomicU64::new(0));
        let n = 80;
        let summary = run(
            slot(Generation::new(cfg, model, version("test"), 1)),
            Box::new(CountingSource {
                n,
                frame,
                sent: sent.clone(),
            }),
            Box::new(SlowSink {
                sent: sent.clone(),
                written: written.clone(),
                max_ahead: max_ahead.clone(),
            }),
            vec![OutputKind::Denoised],
            RunOptions::default(),
            Stop::new(),
        )
        .unwrap();
        assert_eq!(summary.frames_out, n);
        assert_eq!(written.lock().unwrap().len() as u64, n);
        // 7 channels of capacity 1, one frame in hand per stage thread, a batch of 2 in infer.
        let ahead = max_ahead.load(Ordering::SeqCst);
        assert!(ahead <= 16, "source ran {ahead} frames ahead of the sink");
    }

    pub(super) struct TallySink {
        pub written: Arc<Mutex<Vec<u64>>>,
        pub skipped: Arc<Mutex<Vec<u64>>>,
    }

    impl Sink for TallySink {
        fn write(&mut self, out: Output) -> Result<()> {
            std::thread::sleep(Duration::from_millis(5));
            self.written.lock().unwrap().push(out.seq);
            Ok(())
        }
        fn skip(&mut self, seq: u64, _: &FrameId) -> Result<()> {
            self.skipped.lock().unwrap().push(seq);
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
    }

    /// Under `overload = "drop-oldest"` a fast stream into a slow sink drops frames, counts
    /// them, and tells the sink of each, so every sequence number is accounted for once.
    #[test]
    fn drop_oldest_accounts_for_every_frame() {
        let mut cfg = tiny_config();
        cfg.channels.overload = crate::config::Overload::DropOldest;
        let (model, frame) = tiny_model_and_frame(&cfg);
        let (written, skipped) = (Arc::default(), Arc::default());
        let n = 200;
        let summary = run(
            slot(Generation::new(cfg, model, version("test"), 1)),
            Box::new(CountingSource {
                n,
                frame,
                sent: Arc::default(),
            }),
            Box::new(TallySink {
                written: Arc::clone(&written),
                skipped: Arc::clone(&skipped),
            }),
            vec![OutputKind::Denoised],
            RunOptions::default(),
            Stop::new(),
        )
        .unwrap();
        let (w, s) = (written.lock().unwrap(), skipped.lock().unwrap());
        assert!(summary.dropped > 0, "nothing dropped");
        assert_eq!(summary.dropped as usize, s.len());
        let all: BTreeSet<u64> = w.iter().chain(s.iter()).copied().collect();
        assert_eq!(all.len() as u64, n, "a frame was lost or counted twice");
        assert_eq!(w.len() + s.len(), n as usize);
    }

    /// A model whose output is one constant: which model made a frame shows in its pixels.
    struct Constant {
        value: f32,
        spec: crate::model::ModelSpec,
        delay: Duration,
    }

    impl Model for Constant {
        fn spec(&self) -> crate::model::ModelSpec {
            self.spec
        }
        fn run(&self, x: &candle_core::Tensor, _: bool) -> Result<crate::model::Outputs> {
            std::thread::sleep(self.delay);
            Ok(crate::model::Outputs {
                image: (x.zeros_like()? + self.value as f64)?,
                code: None,
            })
        }
        fn device(&self) -> &Device {
            &Device::Cpu
        }
    }

    /// Records each output's version and pixel; after `swap_at` outputs it runs `swap` once
    /// (an event, not a timer: the swap lands while frames are in flight however fast or slow
    /// the machine is).
    struct VersionSink {
        seen: Arc<Mutex<Vec<(ModelVersion, f32)>>>,
        swap_at: usize,
        swap: Option<Box<dyn FnOnce() + Send>>,
    }

    impl Sink for VersionSink {
        fn write(&mut self, out: Output) -> Result<()> {
            let Payload::Bytes(png) = &out.files[0].1 else {
                panic!("an image")
            };
            let img = crate::frame::decode(png, Default::default(), "out").unwrap();
            self.seen
                .lock()
                .unwrap()
                .push((out.version.clone(), img.planes[0][0]));
            if self.seen.lock().unwrap().len() == self.swap_at {
                if let Some(swap) = self.swap.take() {
                    swap();
                }
            }
            Ok(())
        }
        fn skip(&mut self, seq: u64, _: &FrameId) -> Result<()> {
            panic!("frame {seq} failed");
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
    }

    /// Swapping the model while frames are in flight: every frame is finished by the model it
    /// started with, and says so.
    #[test]
    fn a_swap_never_changes_a_frame_in_flight() {
        let cfg = tiny_config();
        let (real, frame) = tiny_model_and_frame(&cfg);
        let model = |value: f32| -> Arc<dyn Model> {
            Arc::new(Constant {
                value,
                spec: real.spec(),
                delay: Duration::from_millis(3),
            })
        };
        let s = slot(Generation::new(cfg.clone(), model(0.25), version("a"), 1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let swap: Box<dyn FnOnce() + Send> = {
            let (s, cfg, b) = (s.clone(), cfg.clone(), model(0.75));
            Box::new(move || s.store(Arc::new(Generation::new(cfg, b, version("b"), 2))))
        };
        // Capacity 1 and one worker per stage: far fewer than 100 frames are in flight when
        // the 20th is written, so the last ones are decoded after the swap.
        let n = 120;
        let summary = run(
            s,
            Box::new(CountingSource {
                n,
                frame,
                sent: Arc::default(),
            }),
            Box::new(VersionSink {
                seen: seen.clone(),
                swap_at: 20,
                swap: Some(swap),
            }),
            vec![OutputKind::Denoised],
            RunOptions::default(),
            Stop::new(),
        )
        .unwrap();
        assert_eq!(summary.frames_out, n);
        let seen = seen.lock().unwrap();
        let count = |v: &str| seen.iter().filter(|(x, _)| x.pipeline == v).count();
        assert!(
            count("a") > 0 && count("b") > 0,
            "the swap came too early or late"
        );
        for (version, pixel) in seen.iter() {
            let want = if version.pipeline == "a" { 0.25 } else { 0.75 };
            assert!((pixel - want).abs() < 0.01, "{version}: pixel {pixel}");
        }
    }
}
