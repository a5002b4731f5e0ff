//! Stage wiring: source → decode/corrupt/normalise → infer → post-process → sink, each on its
//! own thread(s), joined by bounded crossbeam channels.
//!
//! Backpressure: every channel is bounded, so when the model is slower than the source the
//! source blocks on send; nothing is dropped and memory stays bounded by the capacities. Every
//! frame carries its sequence number and identity end to end; a frame that fails anywhere is
//! reported (naming it) and passed on as a gap, so ordered sinks never wait for it. Shutdown:
//! when the source ends (EOF, `--once` done) or a stop is requested, the stages drain what is in
//! flight and the run returns.
//!
//! Hot swap: the pipeline settings and the model live in a [`Generation`] behind an
//! [`ModelSlot`]. Each frame takes the generation current when it is decoded and keeps it to
//! the end, so a reload (SIGHUP) or a fine-tuning swap never changes a frame in flight, and
//! every output names the model version that made it.

pub mod journal;
pub mod quarantine;
pub mod telemetry;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};

use crate::config::{OutputKind, PipelineConfig};
use crate::error::{Error, Result};
use crate::frame::{FrameId, Planes};
use crate::model::Model;
use crate::queue::Settle;
use crate::sink::{Code, Output, Payload, Sink};
use crate::source::{Intake, RawFrame, Source, Stop};
use crate::stage::normalise::Prepared;
use crate::stage::postprocess::Finished;
use crate::stage::tiling::TilePlan;
use crate::stage::{corrupt, decode, infer, normalise, postprocess};
pub use journal::Journal;
pub use quarantine::Quarantine;
pub use telemetry::Telemetry;

/// The settings and model a frame is processed with, from decode to sink.
pub struct Generation {
    pub cfg: PipelineConfig,
    pub model: Arc<dyn Model>,
    /// Names the pipeline and weights, e.g. `denoise@1f2e3d4c`; recorded with every output.
    pub version: String,
    /// 1 for the model a run starts with, +1 for each swap.
    pub number: u64,
    /// The weights, when known (the fine-tuner starts from them).
    pub tensors: Option<Arc<std::collections::HashMap<String, candle_core::Tensor>>>,
    plan: TilePlan,
}

impl Generation {
    pub fn new(cfg: PipelineConfig, model: Arc<dyn Model>, version: String, number: u64) -> Self {
        let plan = TilePlan::for_pipeline(&cfg, model.spec().size_multiple);
        Self {
            cfg,
            model,
            version,
            number,
            tensors: None,
            plan,
        }
    }

    /// N of a fine-tuned version `NAME-vN@HASH`.
    pub fn version_number(&self) -> Option<u64> {
        let (head, _) = self.version.split_once('@')?;
        head.rsplit_once("-v")?.1.parse().ok()
    }

    pub fn with_tensors(
        mut self,
        t: Arc<std::collections::HashMap<String, candle_core::Tensor>>,
    ) -> Self {
        self.tensors = Some(t);
        self
    }
}

/// The serving generation; swapped atomically, read once per frame.
pub type ModelSlot = Arc<ArcSwap<Generation>>;

/// Creates a slot holding `g`.
pub fn slot(g: Generation) -> ModelSlot {
    Arc::new(ArcSwap::from_pointee(g))
}

/// A frame between stages; `body` is `None` once it has failed (and been reported).
struct Packet<T> {
    seq: u64,
    id: FrameId,
    gen: Arc<Generation>,
    body: Option<T>,
}

/// Counters of a run, and where queue frames' fates are reported.
#[derive(Debug, Default)]
pub struct Stats {
    pub settle: SettleSlot,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    pub quarantined: AtomicU64,
    pub deferred: AtomicU64,
}

/// The queue source's [`Settle`], if the source is a queue.
#[derive(Default, Clone)]
pub struct SettleSlot(pub Option<Arc<dyn Settle>>);

impl std::fmt::Debug for SettleSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Settle" } else { "None" })
    }
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

/// The service parts of a run beside the stages: where bad files go, the journal of
/// finished files, where finished inputs are moved, and the counters `/metrics` shows.
#[derive(Default)]
pub struct RunOptions {
    pub quarantine: Option<Quarantine>,
    pub journal: Option<Arc<Journal>>,
    /// Move each finished input file here (keeping its relative path) after its outputs and
    /// its journal record are durable.
    pub done_dir: Option<PathBuf>,
    pub telemetry: Arc<Telemetry>,
    /// Decoded frames are also offered to the online fine-tuner here.
    pub finetune: Option<crate::train::online::Offer>,
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
    let stats = Arc::new(Stats {
        settle: SettleSlot(source.settle()),
        ..Stats::default()
    });
    let tel = opts.telemetry.clone();
    let first = slot.load_full();
    let cap = first.cfg.channels.capacity;
    let workers = match first.cfg.infer.workers {
        0 => thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4),
        n => n,
    };
    tel.set_model(&first.version, first.number);

    let (raw_tx, raw_rx) = bounded::<RawFrame>(cap);
    let (dec_tx, dec_rx) = bounded::<Packet<Planes>>(cap);
    let (cor_tx, cor_rx) = bounded::<Packet<Planes>>(cap);
    let (prep_tx, prep_rx) = bounded::<Packet<Prepared>>(cap);
    let (inf_tx, inf_rx) = bounded::<Packet<Inferred>>(cap);
    let (post_tx, post_rx) = bounded::<Packet<Finished>>(cap);
    let (out_tx, out_rx) = bounded::<Packet<Vec<(OutputKind, Payload)>>>(cap);
    // Frames dropped at intake: tiny notices, so an ordered sink does not wait for them.
    let (gap_tx, gap_rx) = unbounded::<u64>();
    let want_code = kinds.contains(&OutputKind::Latent);
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
    );
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

    let mut handles = Vec::new();
    for i in 0..workers {
        let (rx, tx, stop, stats) = (raw_rx.clone(), dec_tx.clone(), stop.clone(), stats.clone());
        let (q, slot, tel) = (opts.quarantine.clone(), slot.clone(), tel.clone());
        let offer = opts.finetune.clone();
        handles.push(spawn(format!("decode-{i}"), move || {
            decode_worker(
                &slot,
                q.as_ref(),
                offer.as_ref(),
                rx,
                tx,
                &stop,
                &stats,
                &tel,
            )
        })?);
    }
    drop((raw_rx, dec_tx));

    handles.extend(map_stage(
        "corrupt",
        workers,
        dec_rx,
        cor_tx,
        &stats,
        &tel,
        Some(&stop),
        move |seq, id, gen, mut planes: Planes| {
            if let (Some(dir), FrameId::File { rel, .. }) = (&gen.cfg.mask_dir, id) {
                let path = corrupt::mask_path(dir, rel).ok_or_else(|| {
                    Error::Other(format!(
                        "{id}: no mask {} in {}",
                        rel.display(),
                        dir.display()
                    ))
                })?;
                corrupt::apply_mask_file(&path, &mut planes)?;
            }
            corrupt::apply(&gen.cfg.corrupt, &mut planes, seq);
            Ok(planes)
        },
    )?);

    let keep_input = kinds.contains(&OutputKind::Overlay);
    handles.extend(map_stage(
        "normalise",
        workers,
        cor_rx,
        prep_tx,
        &stats,
        &tel,
        Some(&stop),
        move |_, _, gen, planes| {
            let norm = normalise::NormaliseOpts {
                cfg: gen.cfg.normalise.clone(),
                plan: gen.plan,
                fixed_size: gen.model.spec().fixed_size,
                keep_input,
            };
            Ok(normalise::run(planes, &norm))
        },
    )?);

    {
        let (stats, tel, stop) = (stats.clone(), tel.clone(), stop.clone());
        handles.push(spawn("infer".into(), move || {
            infer_worker(want_code, prep_rx, inf_tx, &stats, &tel, &stop)
        })?);
    }

    handles.extend(map_stage(
        "post",
        workers,
        inf_rx,
        post_tx,
        &stats,
        &tel,
        None,
        move |_, _, gen, (prep, outs, code): Inferred| {
            Ok(postprocess::assemble(
                prep,
                &outs,
                code,
                &gen.cfg.postprocess,
            ))
        },
    )?);

    let enc_kinds = kinds.clone();
    handles.extend(map_stage(
        "encode",
        workers,
        post_rx,
        out_tx,
        &stats,
        &tel,
        None,
        move |_, id, _, finished| {
            enc_kinds
                .iter()
                .map(|&k| Ok((k, postprocess::encode(&finished, k, &id.to_string())?)))
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
                        Ok(seq) => {
                            if let Err(e) = sink.skip(seq) {
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
        let r = match p.body {
            Some(files) => {
                let out = Output {
                    seq: p.seq,
                    id: p.id,
                    version: p.gen.version.clone(),
                    files,
                };
                let settled = sink.settles(&id);
                sink.write(out).and_then(|_| {
                    stats.frames_out.fetch_add(1, Ordering::Relaxed);
                    if let (Some(s), FrameId::Entry(e)) = (&stats.settle.0, &id) {
                        // Acknowledged only now that the result is durable.
                        if settled {
                            s.settled_elsewhere(e);
                        } else {
                            s.done(e);
                        }
                    }
                    finish_input(&opts, &id, &p.gen.version)
                })
            }
            None => sink.skip(p.seq),
        };
        tel.latency("sink", t0.elapsed());
        tel.in_flight(-1);
        match r {
            Ok(()) => tel.frame("sink", "ok"),
            // One output that cannot be written (a name too long, a folder in the way) fails
            // that frame; anything else (disk full, read-only, closed stdout) stops the run.
            Err(Error::FrameFailed(msg)) => {
                tel.frame("sink", "failed");
                fail_frame(&stats, &id, msg, Fate::Retry)
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
        for seq in gap_rx.try_iter() {
            if let Err(e) = sink.skip(seq) {
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

/// After a file's outputs are in place: its journal record, then (with `--done`) the move of
/// the input. A journal that cannot be written stops the run: exactly-once depends on it.
fn finish_input(opts: &RunOptions, id: &FrameId, version: &str) -> Result<()> {
    let FrameId::File { rel, abs, stamp } = id else {
        return Ok(());
    };
    if let Some(j) = &opts.journal {
        j.record(rel, stamp, version)?;
    }
    if let Some(done) = &opts.done_dir {
        let to = done.join(rel);
        let moved = to
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::rename(abs, &to));
        // A failed move leaves the input where it was; the journal still marks it finished.
        if let Err(e) = moved {
            tracing::warn!("{}: cannot move to {}: {e}", abs.display(), to.display());
        }
    }
    Ok(())
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| Error::Other(format!("cannot start thread {name}: {e}")))
}

/// Runs one frame's work; an error or a panic fails (and reports) that frame only.
fn guarded<T>(
    stats: &Stats,
    id: &FrameId,
    on_panic: &str,
    f: impl FnOnce() -> Result<T>,
) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            fail_frame(stats, id, e, Fate::Retry);
            None
        }
        Err(_) => {
            fail_frame(stats, id, format!("{id}: {on_panic}"), Fate::Retry);
            None
        }
    }
}

/// What a failed queue frame's entry should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The frame itself is bad (it does not decode): dead-letter it now.
    Bad,
    /// Something else failed on it: leave it pending, to be tried again (and dead-lettered
    /// after `max_deliveries`).
    Retry,
}

/// Counts and logs a failed frame; a queue frame's entry is dead-lettered or left for a retry.
fn fail_frame(stats: &Stats, id: &FrameId, what: impl std::fmt::Display, fate: Fate) {
    stats.failed.fetch_add(1, Ordering::Relaxed);
    let msg = what.to_string();
    tracing::warn!("{msg}");
    if let (Some(s), FrameId::Entry(e)) = (&stats.settle.0, id) {
        match fate {
            Fate::Bad => s.failed(e, &msg),
            Fate::Retry => s.retry_later(e, &msg),
        }
    }
}

/// Starts `n` threads that apply `f` to every packet that has not failed; a failure is
/// reported (it names the frame) and passed on as a gap.
#[allow(clippy::too_many_arguments)]
fn map_stage<A, B, F>(
    name: &'static str,
    n: usize,
    rx: Receiver<Packet<A>>,
    tx: Sender<Packet<B>>,
    stats: &Arc<Stats>,
    tel: &Arc<Telemetry>,
    defer_on: Option<&Stop>,
    f: F,
) -> Result<Vec<thread::JoinHandle<()>>>
where
    A: Send + 'static,
    B: Send + 'static,
    F: Fn(u64, &FrameId, &Generation, A) -> Result<B> + Clone + Send + 'static,
{
    (0..n)
        .map(|i| {
            let (rx, tx, stats, tel, f) = (
                rx.clone(),
                tx.clone(),
                stats.clone(),
                tel.clone(),
                f.clone(),
            );
            let defer_on = defer_on.cloned();
            spawn(format!("{name}-{i}"), move || {
                for mut p in rx.iter() {
                    if defer(defer_on.as_ref(), &p.id, p.body.is_some(), &stats, &tel) {
                        p.body = None;
                    }
                    let t0 = Instant::now();
                    let had_body = p.body.is_some();
                    // A bug hit by one odd frame must not take the stage (and every later
                    // frame) down with it: a panic fails that frame only.
                    let body = p.body.and_then(|a| {
                        guarded(
                            &stats,
                            &p.id,
                            "internal error (panic), frame skipped",
                            || f(p.seq, &p.id, &p.gen, a),
                        )
                    });
                    if had_body {
                        tel.latency(name, t0.elapsed());
                        tel.frame(name, if body.is_some() { "ok" } else { "failed" });
                    }
                    let out = Packet {
                        seq: p.seq,
                        id: p.id,
                        gen: p.gen,
                        body,
                    };
                    if tx.send(out).is_err() {
                        return;
                    }
                }
            })
        })
        .collect()
}

/// After a stop request, a file frame that has not reached the model yet is left for the next
/// run (it is on disk and has no journal record), so that a drain takes about one batch, not
/// a pipeline's worth of model time. Stream frames cannot be read again: they are finished.
fn defer(stop: Option<&Stop>, id: &FrameId, live: bool, stats: &Stats, tel: &Telemetry) -> bool {
    let yes = live && matches!(id, FrameId::File { .. }) && stop.is_some_and(|s| s.requested());
    if yes {
        stats.deferred.fetch_add(1, Ordering::Relaxed);
        tel.frame("drain", "deferred");
    }
    yes
}

/// Whether a file changed since it was read (then it is not quarantined: it will be taken
/// again once its writer is done).
fn changed_since_read(id: &FrameId) -> bool {
    let FrameId::File { abs, stamp, .. } = id else {
        return false;
    };
    match std::fs::metadata(abs) {
        Ok(m) => !crate::frame::FileStamp::of(&m).same_file_state(stamp),
        Err(_) => true,
    }
}

/// Decodes raw frames; on a stop request, drains what the source already handed over.
#[allow(clippy::too_many_arguments)]
fn decode_worker(
    slot: &ModelSlot,
    quarantine: Option<&Quarantine>,
    offer: Option<&crate::train::online::Offer>,
    rx: Receiver<RawFrame>,
    tx: Sender<Packet<Planes>>,
    stop: &Stop,
    stats: &Stats,
    tel: &Telemetry,
) {
    // After a stop request, keep taking frames until the source has been quiet for a while
    // (a frame it was handing over when the stop came still gets through), then end.
    let mut idle_since_stop = Duration::ZERO;
    let tick = Duration::from_millis(100);
    loop {
        let raw = match rx.recv_timeout(tick) {
            Ok(r) => {
                idle_since_stop = Duration::ZERO;
                r
            }
            Err(RecvTimeoutError::Timeout) => {
                if stop.requested() {
                    idle_since_stop += tick;
                    if idle_since_stop >= Duration::from_millis(500) {
                        return;
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        tel.in_flight(1);
        if defer(Some(stop), &raw.id, true, stats, tel) {
            let gap = Packet {
                seq: raw.seq,
                id: raw.id,
                gen: slot.load_full(),
                body: None,
            };
            if tx.send(gap).is_err() {
                return;
            }
            continue;
        }
        let t0 = Instant::now();
        // The frame keeps this generation (settings and model) until it is written.
        let gen = slot.load_full();
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let decoded = match &raw.bytes {
            Err(msg) => Err(format!("{}: {msg}", raw.id)),
            // Decoders are the code most exposed to hostile bytes: contain a panic too.
            Ok(bytes) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decode::run(bytes, &raw.id, &gen.cfg.decode)
            })) {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("{}: cannot decode: decoder panicked", raw.id)),
            },
        };
        tel.latency("decode", t0.elapsed());
        let body = match decoded {
            Ok(p) => {
                tel.frame("decode", "ok");
                if let Some(o) = offer {
                    o.offer(&p);
                }
                Some(p)
            }
            Err(msg) => {
                fail_frame(stats, &raw.id, &msg, Fate::Bad);
                let mut outcome = "failed";
                if let (Some(q), FrameId::File { abs, rel, .. }) = (quarantine, &raw.id) {
                    if changed_since_read(&raw.id) {
                        tracing::info!(
                            "{}: changed while being read; it will be taken again",
                            abs.display()
                        );
                    } else {
                        match q.put(abs, rel, &msg) {
                            Ok(to) => {
                                stats.quarantined.fetch_add(1, Ordering::Relaxed);
                                tel.quarantined.fetch_add(1, Ordering::Relaxed);
                                outcome = "quarantined";
                                tracing::warn!("{}: moved to {}", abs.display(), to.display());
                            }
                            Err(e) => {
                                tracing::error!("{}: cannot quarantine: {e}", abs.display())
                            }
                        }
                    }
                }
                tel.frame("decode", outcome);
                None
            }
        };
        let out = Packet {
            seq: raw.seq,
            id: raw.id,
            gen,
            body,
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// A frame after the model: its preparation, the units' outputs and its code.
type Inferred = (Prepared, Vec<Vec<f32>>, Option<Code>);

/// Batches frames (up to the generation's `infer.max_batch`, waiting at most `max_wait_ms`
/// after the first) and runs the model. A batch never mixes generations.
fn infer_worker(
    want_code: bool,
    rx: Receiver<Packet<Prepared>>,
    tx: Sender<Packet<Inferred>>,
    stats: &Stats,
    tel: &Telemetry,
    stop: &Stop,
) {
    // A frame of another generation that ended a batch starts the next one.
    let mut carry: Option<Packet<Prepared>> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv() {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let gen = first.gen.clone();
        let max_batch = gen.cfg.infer.max_batch.max(1);
        let deadline = Instant::now() + Duration::from_millis(gen.cfg.infer.max_wait_ms);
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.recv_deadline(deadline) {
                Ok(p) if Arc::ptr_eq(&p.gen, &gen) => batch.push(p),
                Ok(p) => {
                    carry = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        let mut ready = Vec::new();
        let mut units = Vec::new();
        // Which plane (of the whole batch) each unit is a tile of.
        let mut planes = Vec::new();
        for mut p in batch {
            if defer(Some(stop), &p.id, p.body.is_some(), stats, tel) {
                p.body = None;
            }
            match p.body {
                Some(prep) => {
                    for plane in &prep.planes {
                        let k = planes.last().map_or(0, |&l| l + 1);
                        planes.extend(std::iter::repeat_n(k, plane.len()));
                        units.extend(plane.iter().cloned());
                    }
                    ready.push((p.seq, p.id, prep));
                }
                None => {
                    let gap = Packet {
                        seq: p.seq,
                        id: p.id,
                        gen: p.gen,
                        body: None,
                    };
                    if tx.send(gap).is_err() {
                        return;
                    }
                }
            }
        }
        if ready.is_empty() {
            continue;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        tel.batch(ready.len());
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            infer::run_units_with_codes(
                gen.model.as_ref(),
                &units,
                &planes,
                (&gen.cfg.infer).into(),
                want_code,
            )
        }))
        .unwrap_or_else(|_| Err(Error::Other("the model panicked".into())));
        tel.latency("infer", t0.elapsed());
        let (mut outputs, mut codes) = match result {
            Ok((o, c)) => (o.into_iter(), c.into_iter()),
            Err(e) => {
                for (seq, id, _) in ready {
                    fail_frame(stats, &id, format!("{id}: model failed: {e}"), Fate::Retry);
                    tel.frame("infer", "failed");
                    let gap = Packet {
                        seq,
                        id,
                        gen: gen.clone(),
                        body: None,
                    };
                    if tx.send(gap).is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        for (seq, id, prep) in ready {
            let n = prep.unit_count();
            let outs: Vec<Vec<f32>> = outputs.by_ref().take(n).collect();
            // A frame's code is its first unit's (fixed-size models have exactly one unit).
            let code = codes.by_ref().take(n).next().flatten();
            tel.frame("infer", "ok");
            let p = Packet {
                seq,
                id,
                gen: gen.clone(),
                body: Some((prep, outs, code)),
            };
            if tx.send(p).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_png;
    use crate::model::{Arch, Net, NetModel};
    use candle_core::{DType, Device};
    use std::collections::BTreeSet;
    use std::sync::Mutex;

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
        fn skip(&mut self, seq: u64) -> Result<()> {
            panic!("frame {seq} failed");
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
    }

    /// The denoise pipeline with one-frame channels, one worker per stage and a tiny model.
    fn tiny_config() -> PipelineConfig {
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
    fn tiny_model_and_frame(cfg: &PipelineConfig) -> (Arc<dyn Model>, Vec<u8>) {
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
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
            slot(Generation::new(cfg, model, "test".into(), 1)),
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

    struct TallySink {
        written: Arc<Mutex<Vec<u64>>>,
        skipped: Arc<Mutex<Vec<u64>>>,
    }

    impl Sink for TallySink {
        fn write(&mut self, out: Output) -> Result<()> {
            std::thread::sleep(Duration::from_millis(5));
            self.written.lock().unwrap().push(out.seq);
            Ok(())
        }
        fn skip(&mut self, seq: u64) -> Result<()> {
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
            slot(Generation::new(cfg, model, "test".into(), 1)),
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

    struct VersionSink {
        seen: Arc<Mutex<Vec<(String, f32)>>>,
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
            Ok(())
        }
        fn skip(&mut self, seq: u64) -> Result<()> {
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
        let s = slot(Generation::new(cfg.clone(), model(0.25), "a".into(), 1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let swapper = {
            let (s, cfg, b) = (s.clone(), cfg.clone(), model(0.75));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(40));
                s.store(Arc::new(Generation::new(cfg, b, "b".into(), 2)));
            })
        };
        let n = 120;
        let summary = run(
            s,
            Box::new(CountingSource {
                n,
                frame,
                sent: Arc::default(),
            }),
            Box::new(VersionSink { seen: seen.clone() }),
            vec![OutputKind::Denoised],
            RunOptions::default(),
            Stop::new(),
        )
        .unwrap();
        swapper.join().unwrap();
        assert_eq!(summary.frames_out, n);
        let seen = seen.lock().unwrap();
        let count = |v: &str| seen.iter().filter(|(x, _)| x == v).count();
        assert!(
            count("a") > 0 && count("b") > 0,
            "the swap came too early or late"
        );
        for (version, pixel) in seen.iter() {
            let want = if version == "a" { 0.25 } else { 0.75 };
            assert!((pixel - want).abs() < 0.01, "{version}: pixel {pixel}");
        }
    }
}
