//! Stage wiring: source → decode/corrupt/normalise → infer → post-process → sink, each on its
//! own thread(s), joined by bounded crossbeam channels.
//!
//! Backpressure: every channel is bounded, so when the model is slower than the source the
//! source blocks on send; nothing is dropped and memory stays bounded by the capacities. Every
//! frame carries its sequence number and identity end to end; a frame that fails anywhere is
//! reported (naming it) and passed on as a gap, so ordered sinks never wait for it. Shutdown:
//! when the source ends (EOF, `--once` done) or a stop is requested, the stages drain what is in
//! flight and the run returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::config::{OutputKind, PipelineConfig};
use crate::error::{Error, Result};
use crate::frame::FrameId;
use crate::model::Model;
use crate::sink::{Output, Sink};
use crate::source::{RawFrame, Source, Stop};
use crate::stage::normalise::Prepared;
use crate::stage::tiling::TilePlan;
use crate::stage::{corrupt, decode, infer, normalise, postprocess};

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
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub frames_in: u64,
    pub frames_out: u64,
    pub failed: u64,
    pub batches: u64,
    pub seconds: f64,
}

/// Runs a pipeline until its source ends or `stop` is requested, then drains.
pub fn run(
    cfg: &PipelineConfig,
    model: Arc<dyn Model>,
    source: Box<dyn Source>,
    mut sink: Box<dyn Sink>,
    kinds: Vec<OutputKind>,
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
    let plan = TilePlan {
        multiple: spec.size_multiple,
        tile: cfg.model.tile,
        overlap: cfg.model.tile_overlap,
        pad: cfg.normalise.pad,
    };

    let (raw_tx, raw_rx) = bounded::<RawFrame>(cap);
    let (prep_tx, prep_rx) = bounded::<Packet<Prepared>>(cap);
    let (inf_tx, inf_rx) = bounded::<Packet<(Prepared, Vec<Vec<f32>>)>>(cap);
    let (out_tx, out_rx) = bounded::<Packet<Vec<(OutputKind, Vec<u8>)>>>(cap);

    // The source is not joined: a stdin read may block forever after a stop request.
    let src_stop = stop.clone();
    let src_handle = thread::Builder::new()
        .name("source".into())
        .spawn(move || {
            let r = source.run(raw_tx, src_stop.clone());
            if let Err(e) = &r {
                tracing::error!("source: {e}");
                src_stop.request();
            }
            r
        })
        .map_err(|e| Error::Other(format!("cannot start source thread: {e}")))?;

    let mut handles = Vec::new();
    for i in 0..workers {
        let (rx, tx, stop, stats) = (raw_rx.clone(), prep_tx.clone(), stop.clone(), stats.clone());
        let cfg = cfg.clone();
        handles.push(spawn(format!("decode-{i}"), move || {
            decode_worker(&cfg, &plan, rx, tx, &stop, &stats)
        })?);
    }
    drop((raw_rx, prep_tx));

    {
        let (stats, cfg) = (stats.clone(), cfg.clone());
        handles.push(spawn("infer".into(), move || {
            infer_worker(&cfg, model.as_ref(), prep_rx, inf_tx, &stats)
        })?);
    }

    for i in 0..workers {
        let (rx, tx, stats, cfg) = (inf_rx.clone(), out_tx.clone(), stats.clone(), cfg.clone());
        let kinds = kinds.clone();
        handles.push(spawn(format!("post-{i}"), move || {
            post_worker(&cfg, &kinds, rx, tx, &stats)
        })?);
    }
    drop((inf_rx, out_tx));

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
        if let Err(e) = r {
            stop.request();
            sink_result = Err(e);
            break;
        }
    }
    drop(out_rx);
    if sink_result.is_ok() {
        sink_result = sink.finish();
    }
    for h in handles {
        let _ = h.join();
    }
    let source_result = if src_handle.is_finished() {
        src_handle
            .join()
            .unwrap_or_else(|_| Err(Error::Other("source thread panicked".into())))
    } else {
        Ok(())
    };
    sink_result?;
    // A source that failed (watch error, unreadable stdin) ends the run with an error, after
    // everything it produced was written.
    source_result?;
    Ok(Summary {
        frames_in: stats.frames_in.load(Ordering::Relaxed),
        frames_out: stats.frames_out.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        batches: stats.batches.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| Error::Other(format!("cannot start thread {name}: {e}")))
}

fn fail(stats: &Stats, what: impl std::fmt::Display) {
    stats.failed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("{what}");
}

fn decode_worker(
    cfg: &PipelineConfig,
    plan: &TilePlan,
    rx: Receiver<RawFrame>,
    tx: Sender<Packet<Prepared>>,
    stop: &Stop,
    stats: &Stats,
) {
    loop {
        let raw = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                if stop.requested() {
                    // Drain what the source already handed over, then end.
                    match rx.try_recv() {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                } else {
                    continue;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let body = match &raw.bytes {
            Err(msg) => {
                fail(stats, format!("{}: {msg}", raw.id));
                None
            }
            Ok(bytes) => match decode::run(bytes, &raw.id, &cfg.decode) {
                Err(e) => {
                    fail(stats, e);
                    None
                }
                Ok(mut planes) => {
                    corrupt::apply(&cfg.corrupt, &mut planes, raw.seq);
                    Some(normalise::run(planes, cfg.normalise.colour, plan))
                }
            },
        };
        if tx
            .send(Packet {
                seq: raw.seq,
                id: raw.id,
                body,
            })
            .is_err()
        {
            return;
        }
    }
}

fn infer_worker(
    cfg: &PipelineConfig,
    model: &dyn Model,
    rx: Receiver<Packet<Prepared>>,
    tx: Sender<Packet<(Prepared, Vec<Vec<f32>>)>>,
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
        let result = infer::run_units(model, &units, max_batch);
        let mut outputs = match result {
            Ok(o) => o.into_iter(),
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
            let outs: Vec<Vec<f32>> = outputs.by_ref().take(prep.unit_count()).collect();
            if tx
                .send(Packet {
                    seq,
                    id,
                    body: Some((prep, outs)),
                })
                .is_err()
            {
                return;
            }
        }
    }
}

fn post_worker(
    cfg: &PipelineConfig,
    kinds: &[OutputKind],
    rx: Receiver<Packet<(Prepared, Vec<Vec<f32>>)>>,
    tx: Sender<Packet<Vec<(OutputKind, Vec<u8>)>>>,
    stats: &Stats,
) {
    for p in rx.iter() {
        let body = p.body.and_then(|(prep, outs)| {
            let planes = postprocess::assemble(&prep, &outs, &cfg.postprocess);
            let mut files = Vec::with_capacity(kinds.len());
            for &k in kinds {
                match postprocess::encode(&planes, k, &p.id.to_string()) {
                    Ok(b) => files.push((k, b)),
                    Err(e) => {
                        fail(stats, e);
                        return None;
                    }
                }
            }
            Some(files)
        });
        if tx
            .send(Packet {
                seq: p.seq,
                id: p.id,
                body,
            })
            .is_err()
        {
            return;
        }
    }
}
