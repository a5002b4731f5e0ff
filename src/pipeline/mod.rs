//! Stage wiring: source → decode/corrupt/normalise → infer → post-process → sink, each on its
//! own thread(s), joined by bounded crossbeam channels.
//!
//! Backpressure: every channel is bounded, so when the model is slower than the source the
//! source blocks on send; nothing is dropped and memory stays bounded by the capacities. Every
//! frame carries its sequence number and identity end to end; a frame that fails anywhere is
//! reported (naming it) and passed on as a gap, so ordered sinks never wait for it. Shutdown:
//! when the source ends (EOF, `--once` done) or a stop is requested, the stages drain what is in
//! flight and the run returns.

pub mod quarantine;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::config::{DecodeConfig, OutputKind, PipelineConfig};
use crate::error::{Error, Result};
use crate::frame::{FrameId, Planes};
use crate::model::Model;
use crate::sink::{Code, Output, Payload, Sink};
use crate::source::{RawFrame, Source, Stop};
use crate::stage::normalise::Prepared;
use crate::stage::postprocess::Finished;
use crate::stage::tiling::TilePlan;
use crate::stage::{corrupt, decode, infer, normalise, postprocess};
pub use quarantine::Quarantine;

/// A frame between stages; `body` is `None` once it has failed (and been reported).
struct Packet<T> {
    seq: u64,
    id: FrameId,
    body: Option<T>,
}

/// Counters of a run.
#[derive(Debug, Default)]
pub struct Stats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    pub quarantined: AtomicU64,
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
    pub seconds: f64,
}

/// Runs a pipeline until its source ends or `stop` is requested, then drains. Input files
/// that cannot be decoded are moved to `quarantine` when one is given.
pub fn run(
    cfg: &PipelineConfig,
    model: Arc<dyn Model>,
    source: Box<dyn Source>,
    mut sink: Box<dyn Sink>,
    kinds: Vec<OutputKind>,
    quarantine: Option<Quarantine>,
    stop: Stop,
) -> Result<Summary> {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let cap = cfg.channels.capacity;
    let workers = match cfg.infer.workers {
        0 => thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(4),
        n => n,
    };
    let spec = model.spec();
    let plan = TilePlan::for_pipeline(cfg, spec.size_multiple);

    let (raw_tx, raw_rx) = bounded::<RawFrame>(cap);
    let (dec_tx, dec_rx) = bounded::<Packet<Planes>>(cap);
    let (cor_tx, cor_rx) = bounded::<Packet<Planes>>(cap);
    let (prep_tx, prep_rx) = bounded::<Packet<Prepared>>(cap);
    let (inf_tx, inf_rx) = bounded::<Packet<Inferred>>(cap);
    let (post_tx, post_rx) = bounded::<Packet<Finished>>(cap);
    let (out_tx, out_rx) = bounded::<Packet<Vec<(OutputKind, Payload)>>>(cap);
    let want_code = kinds.contains(&OutputKind::Latent);

    // The source's result comes back on a channel rather than by joining it: after a stop
    // request a stdin read may block forever.
    let src_stop = stop.clone();
    let (src_res_tx, src_res_rx) = bounded::<Result<()>>(1);
    thread::Builder::new()
        .name("source".into())
        .spawn(move || {
            let r = source.run(raw_tx, src_stop.clone());
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
        let decode_cfg = cfg.decode.clone();
        let q = quarantine.clone();
        handles.push(spawn(format!("decode-{i}"), move || {
            decode_worker(&decode_cfg, q.as_ref(), rx, tx, &stop, &stats)
        })?);
    }
    drop((raw_rx, dec_tx));

    let corrupt_cfg = cfg.corrupt.clone();
    let mask_dir = cfg.mask_dir.clone();
    handles.extend(map_stage(
        "corrupt",
        workers,
        dec_rx,
        cor_tx,
        &stats,
        move |seq, id, mut planes: Planes| {
            if let (Some(dir), FrameId::File { rel, .. }) = (&mask_dir, id) {
                let path = corrupt::mask_path(dir, rel).ok_or_else(|| {
                    Error::Other(format!(
                        "{id}: no mask {} in {}",
                        rel.display(),
                        dir.display()
                    ))
                })?;
                corrupt::apply_mask_file(&path, &mut planes)?;
            }
            corrupt::apply(&corrupt_cfg, &mut planes, seq);
            Ok(planes)
        },
    )?);

    let norm = normalise::NormaliseOpts {
        cfg: cfg.normalise.clone(),
        plan,
        fixed_size: spec.fixed_size,
        keep_input: kinds.contains(&OutputKind::Overlay),
    };
    handles.extend(map_stage(
        "normalise",
        workers,
        cor_rx,
        prep_tx,
        &stats,
        move |_, _, planes| Ok(normalise::run(planes, &norm)),
    )?);

    {
        let (stats, cfg) = (stats.clone(), cfg.clone());
        handles.push(spawn("infer".into(), move || {
            infer_worker(&cfg, model.as_ref(), want_code, prep_rx, inf_tx, &stats)
        })?);
    }

    let post_cfg = cfg.postprocess.clone();
    handles.extend(map_stage(
        "post",
        workers,
        inf_rx,
        post_tx,
        &stats,
        move |_, _, (prep, outs, code): Inferred| {
            Ok(postprocess::assemble(prep, &outs, code, &post_cfg))
        },
    )?);

    handles.extend(map_stage(
        "encode",
        workers,
        post_rx,
        out_tx,
        &stats,
        move |_, id, finished| {
            kinds
                .iter()
                .map(|&k| Ok((k, postprocess::encode(&finished, k, &id.to_string())?)))
                .collect()
        },
    )?);

    // The sink runs here; its failure (disk full, closed stdout) stops the whole pipeline.
    let mut sink_result = Ok(());
    for p in out_rx.iter() {
        let r = match p.body {
            Some(files) => sink
                .write(Output {
                    seq: p.seq,
                    id: p.id,
                    files,
                })
                .map(|_| {
                    stats.frames_out.fetch_add(1, Ordering::Relaxed);
                }),
            None => sink.skip(p.seq),
        };
        match r {
            Ok(()) => {}
            // One output that cannot be written (a name too long, a folder in the way) fails
            // that frame; anything else (disk full, read-only, closed stdout) stops the run.
            Err(Error::FrameFailed(msg)) => fail(&stats, msg),
            Err(e) => {
                stop.request();
                sink_result = Err(e);
                break;
            }
        }
    }
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
        seconds: started.elapsed().as_secs_f64(),
    })
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
            fail(stats, e);
            None
        }
        Err(_) => {
            fail(stats, format!("{id}: {on_panic}"));
            None
        }
    }
}

fn fail(stats: &Stats, what: impl std::fmt::Display) {
    stats.failed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("{what}");
}

/// Starts `n` threads that apply `f` to every packet that has not failed; a failure is
/// reported (it names the frame) and passed on as a gap.
fn map_stage<A, B, F>(
    name: &str,
    n: usize,
    rx: Receiver<Packet<A>>,
    tx: Sender<Packet<B>>,
    stats: &Arc<Stats>,
    f: F,
) -> Result<Vec<thread::JoinHandle<()>>>
where
    A: Send + 'static,
    B: Send + 'static,
    F: Fn(u64, &FrameId, A) -> Result<B> + Clone + Send + 'static,
{
    (0..n)
        .map(|i| {
            let (rx, tx, stats, f) = (rx.clone(), tx.clone(), stats.clone(), f.clone());
            spawn(format!("{name}-{i}"), move || {
                for p in rx.iter() {
                    // A bug hit by one odd frame must not take the stage (and every later
                    // frame) down with it: a panic fails that frame only.
                    let body = p.body.and_then(|a| {
                        guarded(
                            &stats,
                            &p.id,
                            "internal error (panic), frame skipped",
                            || f(p.seq, &p.id, a),
                        )
                    });
                    let out = Packet {
                        seq: p.seq,
                        id: p.id,
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

/// Decodes raw frames; on a stop request, drains what the source already handed over.
fn decode_worker(
    cfg: &DecodeConfig,
    quarantine: Option<&Quarantine>,
    rx: Receiver<RawFrame>,
    tx: Sender<Packet<Planes>>,
    stop: &Stop,
    stats: &Stats,
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
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let decoded = match &raw.bytes {
            Err(msg) => Err(format!("{}: {msg}", raw.id)),
            // Decoders are the code most exposed to hostile bytes: contain a panic too.
            Ok(bytes) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decode::run(bytes, &raw.id, cfg)
            })) {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("{}: cannot decode: decoder panicked", raw.id)),
            },
        };
        let body = match decoded {
            Ok(p) => Some(p),
            Err(msg) => {
                fail(stats, &msg);
                if let (Some(q), FrameId::File { abs, rel }) = (quarantine, &raw.id) {
                    match q.put(abs, rel, &msg) {
                        Ok(to) => {
                            stats.quarantined.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("{}: moved to {}", abs.display(), to.display());
                        }
                        Err(e) => tracing::error!("{}: cannot quarantine: {e}", abs.display()),
                    }
                }
                None
            }
        };
        let out = Packet {
            seq: raw.seq,
            id: raw.id,
            body,
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// A frame after the model: its preparation, the units' outputs and its code.
type Inferred = (Prepared, Vec<Vec<f32>>, Option<Code>);

fn infer_worker(
    cfg: &PipelineConfig,
    model: &dyn Model,
    want_code: bool,
    rx: Receiver<Packet<Prepared>>,
    tx: Sender<Packet<Inferred>>,
    stats: &Stats,
) {
    let max_batch = cfg.infer.max_batch;
    let wait = Duration::from_millis(cfg.infer.max_wait_ms);
    while let Ok(first) = rx.recv() {
        // Collect up to max_batch frames, or until max_wait after the first one.
        let deadline = Instant::now() + wait;
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.recv_deadline(deadline) {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut ready = Vec::new();
        let mut units = Vec::new();
        for p in batch {
            match p.body {
                Some(prep) => {
                    for plane in &prep.planes {
                        units.extend(plane.iter().cloned());
                    }
                    ready.push((p.seq, p.id, prep));
                }
                None => {
                    if tx
                        .send(Packet {
                            seq: p.seq,
                            id: p.id,
                            body: None,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if ready.is_empty() {
            continue;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            infer::run_units_with_codes(model, &units, (&cfg.infer).into(), want_code)
        }))
        .unwrap_or_else(|_| Err(Error::Other("the model panicked".into())));
        let (mut outputs, mut codes) = match result {
            Ok((o, c)) => (o.into_iter(), c.into_iter()),
            Err(e) => {
                for (seq, id, _) in ready {
                    fail(stats, format!("{id}: model failed: {e}"));
                    if tx
                        .send(Packet {
                            seq,
                            id,
                            body: None,
                        })
                        .is_err()
                    {
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
            if tx
                .send(Packet {
                    seq,
                    id,
                    body: Some((prep, outs, code)),
                })
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::encode_png;
    use crate::model::{denoise::Denoiser, Net, NetModel};
    use candle_core::{DType, Device};
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    struct CountingSource {
        n: u64,
        frame: Vec<u8>,
        sent: Arc<AtomicU64>,
    }

    impl Source for CountingSource {
        fn run(self: Box<Self>, tx: Sender<RawFrame>, _stop: Stop) -> Result<()> {
            for seq in 0..self.n {
                let f = RawFrame {
                    seq,
                    id: FrameId::Stream { seq, offset: 0 },
                    bytes: Ok(self.frame.clone()),
                };
                if tx.send(f).is_err() {
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

    /// A slow sink holds the source back: frames in flight stay within what the bounded
    /// channels and stages can hold, and every frame still arrives.
    #[test]
    fn slow_sink_backpressures_the_source_and_loses_nothing() {
        let mut cfg = PipelineConfig::load("denoise").unwrap();
        cfg.channels.capacity = 1;
        cfg.infer.workers = 1;
        cfg.infer.max_batch = 2;
        cfg.model.channels = vec![4];
        cfg.model.blocks = vec![1];
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = Denoiser::new(vb, &cfg.model.denoiser()).unwrap();
        let model: Arc<dyn Model> = Arc::new(NetModel::new(Net::Denoise(net), Device::Cpu, None));
        let frame = encode_png(&Planes::grey(16, 16, vec![0.5; 256]), "t").unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let written = Arc::new(Mutex::new(BTreeSet::new()));
        let max_ahead = Arc::new(AtomicU64::new(0));
        let n = 80;
        let summary = run(
            &cfg,
            model,
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
            None,
            Stop::new(),
        )
        .unwrap();
        assert_eq!(summary.frames_out, n);
        assert_eq!(written.lock().unwrap().len() as u64, n);
        // 7 channels of capacity 1, one frame in hand per stage thread, a batch of 2 in infer.
        let ahead = max_ahead.load(Ordering::SeqCst);
        assert!(ahead <= 16, "source ran {ahead} frames ahead of the sink");
    }
}
