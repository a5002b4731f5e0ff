//! The threads that run the stages: a generic one-frame-at-a-time runner ([`map_stage`]), the
//! decode workers (which also hand frames to the fine-tuner's tap and report bad input to the
//! source's completion), and the batcher in front of the model ([`infer_worker`]).
//!
//! Every frame is wrapped in a [`Packet`] that keeps its sequence number, identity and
//! generation. A frame that fails anywhere is reported once (naming it) and travels on as a
//! gap (`body: None`), so an ordered sink never waits for it and every frame reaches the sink
//! exactly once, as output or as gap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::budget::{self, Refused, Ticket};
use super::{Generation, ModelSlot, Tap};
use crate::error::{Error, Result};
use crate::frame::{FrameId, Planes};
use crate::runtime::{Drain, Stop, Telemetry};
use crate::source::{Admitted, Completion, SetAside};
use crate::stage::encode::Code;
use crate::stage::normalise::Prepared;
use crate::stage::{decode, infer};

/// A frame between stages; `body` is `None` once it has failed (and been reported).
pub(super) struct Packet<T> {
    pub seq: u64,
    pub id: FrameId,
    pub gen: Arc<Generation>,
    pub body: Option<T>,
    /// Its memory lease and deadline (see [`budget`]); empty once it is a gap.
    pub ticket: Ticket,
}

impl<T> Packet<T> {
    /// The same frame as a gap.
    fn gap<U>(self) -> Packet<U> {
        Packet {
            seq: self.seq,
            id: self.id,
            gen: self.gen,
            body: None,
            ticket: Ticket::default(),
        }
    }
}

/// Counters of a run.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    pub quarantined: AtomicU64,
    pub deferred: AtomicU64,
}

/// What every stage thread shares: counters, telemetry, the source's completion, the stop.
#[derive(Clone)]
pub(super) struct Ctx {
    pub stats: Arc<Stats>,
    pub tel: Arc<Telemetry>,
    pub completion: Arc<dyn Completion>,
    pub stop: Stop,
    /// Who watches frames pass (the status page), if anyone.
    pub watch: Option<Arc<dyn super::Watch>>,
    /// When the drain after a stop ends (frames' deadlines end there too).
    pub drain: Arc<Drain>,
    /// The decoded frame is kept to the end (overlays): it counts in a frame's cost.
    pub keep_input: bool,
}

/// What a failed frame's input should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// The frame itself is bad (it does not decode): set it aside now.
    Bad,
    /// Something else failed on it: it may be tried again.
    Retry,
}

impl Ctx {
    /// Counts and logs a failed frame and tells its source; returns what became of the input.
    pub fn fail(&self, id: &FrameId, what: impl std::fmt::Display, fate: Fate) -> SetAside {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        let msg = what.to_string();
        tracing::warn!("{msg}");
        let aside = match fate {
            Fate::Bad => self.completion.rejected(id, &msg),
            Fate::Retry => {
                self.completion.failed(id, &msg);
                SetAside::Reported
            }
        };
        if let Some(w) = &self.watch {
            w.failed(id, &msg, &aside);
        }
        aside
    }

    /// Sets a bad frame aside (quarantine, dead letter) with its reason; the outcome's name.
    pub fn set_aside(&self, id: &FrameId, msg: String) -> &'static str {
        match self.fail(id, msg, Fate::Bad) {
            SetAside::Quarantined(_) => {
                self.stats.quarantined.fetch_add(1, Ordering::Relaxed);
                self.tel.quarantined.fetch_add(1, Ordering::Relaxed);
                "quarantined"
            }
            _ => "failed",
        }
    }

    /// After a stop request, a frame that has not reached the model yet is left for the next
    /// run when its source can give it again (a file: on disk, no journal record), so that a
    /// drain takes about one batch, not a pipeline's worth of model time.
    fn defer(&self, id: &FrameId, live: bool) -> bool {
        let yes = live && self.stop.requested() && self.completion.can_defer(id);
        if yes {
            self.stats.deferred.fetch_add(1, Ordering::Relaxed);
            self.tel.frame("drain", "deferred");
        }
        yes
    }

    /// Runs one frame's work; an error or a panic fails (and reports) that frame only.
    fn guarded<T>(&self, id: &FrameId, f: impl FnOnce() -> Result<T>) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.fail(id, e, Fate::Retry);
                None
            }
            Err(_) => {
                let msg = format!("{id}: internal error (panic), frame skipped");
                self.fail(id, msg, Fate::Retry);
                None
            }
        }
    }
}

/// Starts a named pipeline thread.
pub(super) fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<thread::JoinHandle<()>> {
    crate::runtime::threads::spawn(name.clone(), f)
        .map_err(|e| Error::Other(format!("cannot start thread {name}: {e}")))
}

/// Starts `n` threads that apply `f` to every packet that has not failed; a failure is
/// reported (it names the frame) and passed on as a gap. With `deferrable`, frames a stop
/// finds here are left for the next run (see [`Ctx::defer`]).
pub(super) fn map_stage<A, B, F>(
    name: &'static str,
    n: usize,
    rx: Receiver<Packet<A>>,
    tx: Sender<Packet<B>>,
    ctx: &Ctx,
    deferrable: bool,
    f: F,
) -> Result<Vec<thread::JoinHandle<()>>>
where
    A: Send + 'static,
    B: Send + 'static,
    F: Fn(u64, &FrameId, &Generation, A) -> Result<B> + Clone + Send + 'static,
{
    (0..n)
        .map(|i| {
            let (rx, tx, ctx, f) = (rx.clone(), tx.clone(), ctx.clone(), f.clone());
            spawn(format!("{name}-{i}"), move || {
                for mut p in rx.iter() {
                    p.ticket.resume();
                    if deferrable && ctx.defer(&p.id, p.body.is_some()) {
                        p.body = None;
                    }
                    if p.body.is_some() && ctx.expire(&p.id, &p.ticket, name) {
                        p.body = None;
                    }
                    let t0 = Instant::now();
                    let had_body = p.body.is_some();
                    // A bug hit by one odd frame must not take the stage (and every later
                    // frame) down with it: a panic fails that frame only.
                    let body = p
                        .body
                        .and_then(|a| ctx.guarded(&p.id, || f(p.seq, &p.id, &p.gen, a)));
                    if had_body {
                        ctx.tel.latency(name, t0.elapsed());
                        ctx.tel
                            .frame(name, if body.is_some() { "ok" } else { "failed" });
                    }
                    // A gap gives its memory back at once.
                    let ticket = if body.is_some() {
                        let mut t = p.ticket;
                        t.pause();
                        t
                    } else {
                        Ticket::default()
                    };
                    let out = Packet {
                        seq: p.seq,
                        id: p.id,
                        gen: p.gen,
                        body,
                        ticket,
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
pub(super) fn decode_worker(
    slot: &ModelSlot,
    tap: Option<&dyn Tap>,
    rx: Receiver<Admitted>,
    tx: Sender<Packet<Planes>>,
    ctx: &Ctx,
) {
    let (stats, tel) = (&ctx.stats, &ctx.tel);
    // After a stop request, keep taking frames until the source has been quiet for a while
    // (a frame it was handing over when the stop came still gets through), then end.
    let mut idle_since_stop = Duration::ZERO;
    let tick = Duration::from_millis(100);
    loop {
        let Admitted {
            frame: raw,
            mut lease,
        } = match rx.recv_timeout(tick) {
            Ok(r) => {
                idle_since_stop = Duration::ZERO;
                r
            }
            Err(RecvTimeoutError::Timeout) => {
                if ctx.stop.requested() {
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
        // The frame keeps this generation (settings and model) until it is written.
        let gen = slot.load_full();
        if ctx.defer(&raw.id, true) {
            let gap = Packet {
                seq: raw.seq,
                id: raw.id,
                gen,
                body: None,
                ticket: Ticket::default(),
            };
            if tx.send(gap).is_err() {
                return;
            }
            continue;
        }
        let t0 = Instant::now();
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        let mut deadline = None;
        let decoded = match &raw.bytes {
            Err(msg) => Err(Some(format!("{}: {msg}", raw.id))),
            // The header first: what the frame will cost, before any pixel is decoded.
            Ok(bytes) => match budget::admit(bytes, &raw.id, &gen, &mut lease, ctx) {
                Err(Refused::Bad(msg)) => Err(Some(msg)),
                Err(Refused::Stopped) => Err(None),
                Ok(d) => {
                    deadline = Some(d);
                    // Marked before the decoder runs: a frame that takes the process down
                    // from here on is known on restart (see the folder journal).
                    ctx.completion.begun(&raw.id);
                    // Decoders are the code most exposed to hostile bytes: contain a panic.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        decode::run(bytes, &raw.id, &gen.cfg.decode)
                    })) {
                        Ok(Ok(p)) => Ok(p),
                        Ok(Err(e)) => Err(Some(e.to_string())),
                        Err(_) => Err(Some(format!("{}: cannot decode: decoder panicked", raw.id))),
                    }
                }
            },
        };
        tel.latency("decode", t0.elapsed());
        let body = match decoded {
            Ok(p) => {
                tel.frame("decode", "ok");
                if let Some(t) = tap {
                    t.decoded(&p);
                }
                if let Some(w) = &ctx.watch {
                    w.decoded(&raw.id, &p);
                }
                Some(p)
            }
            Err(Some(msg)) => {
                let outcome = ctx.set_aside(&raw.id, msg);
                tel.frame("decode", outcome);
                None
            }
            Err(None) => {
                // Stopped while waiting for room: as if the stop had found it a step earlier.
                let why = crate::runtime::Expired::Drain(ctx.drain.within());
                ctx.expired(&raw.id, why, "decode");
                None
            }
        };
        let ticket = match (&body, deadline) {
            (Some(_), Some(d)) => {
                let mut t = Ticket::new(lease, d);
                t.pause();
                t
            }
            _ => Ticket::default(),
        };
        let out = Packet {
            seq: raw.seq,
            id: raw.id,
            gen,
            body,
            ticket,
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// A frame after the model: its preparation, the units' outputs and its code.
pub(super) type Inferred = (Prepared, Vec<Vec<f32>>, Option<Code>);

/// Units of a packet (0 for a gap).
fn units_of(p: &Packet<Prepared>) -> usize {
    p.body.as_ref().map_or(0, Prepared::unit_count)
}

/// Batches frames (up to the generation's `infer.max_batch`, waiting at most `max_wait_ms`
/// after the first) and runs the model. A batch never mixes generations. A frame of more
/// units than `max_batch` (a tiled one) runs alone, so that its deadline cuts only its work.
pub(super) fn infer_worker(
    want_code: bool,
    rx: Receiver<Packet<Prepared>>,
    tx: Sender<Packet<Inferred>>,
    ctx: &Ctx,
) {
    let tel = &ctx.tel;
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
        let alone = units_of(&first) > max_batch;
        let mut batch = vec![first];
        while !alone && batch.len() < max_batch {
            match rx.recv_deadline(deadline) {
                Ok(p) if Arc::ptr_eq(&p.gen, &gen) && units_of(&p) <= max_batch => batch.push(p),
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
            p.ticket.resume();
            if ctx.defer(&p.id, p.body.is_some()) {
                p.body = None;
            }
            if p.body.is_some() && ctx.expire(&p.id, &p.ticket, "infer") {
                p.body = None;
            }
            match p.body.take() {
                Some(prep) => {
                    for plane in &prep.planes {
                        let k = planes.last().map_or(0, |&l| l + 1);
                        planes.extend(std::iter::repeat_n(k, plane.len()));
                        units.extend(plane.iter().cloned());
                    }
                    ready.push((p.seq, p.id, prep, p.ticket));
                }
                None => {
                    if tx.send(p.gap()).is_err() {
                        return;
                    }
                }
            }
        }
        if ready.is_empty() {
            continue;
        }
        ctx.stats.batches.fetch_add(1, Ordering::Relaxed);
        tel.batch(ready.len());
        let t0 = Instant::now();
        // Looked at between forward passes: the batch stops once every frame in it is out of
        // time (a batch of small frames is short; a large frame runs alone).
        let give_up = || ready.iter().all(|r| r.3.expired().is_some());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            infer::run_units_until(
                gen.model.as_ref(),
                &units,
                &planes,
                (&gen.cfg.infer).into(),
                want_code,
                &give_up,
            )
        }))
        .unwrap_or_else(|_| Err(Error::Other("the model panicked".into())));
        tel.latency("infer", t0.elapsed());
        drop(units);
        let (mut outputs, mut codes) = match result {
            Ok(Some((o, c))) => (o.into_iter(), c.into_iter()),
            // No outputs for the batch: each frame past its deadline (`Ok(None)`) or failed
            // by the model is reported, and travels on as a gap.
            missing => {
                for (seq, id, _, ticket) in ready {
                    match &missing {
                        Err(e) => {
                            ctx.fail(&id, format!("{id}: model failed: {e}"), Fate::Retry);
                            tel.frame("infer", "failed");
                        }
                        Ok(_) => {
                            if let Some(why) = ticket.expired() {
                                ctx.expired(&id, why, "infer");
                            }
                        }
                    }
                    let gap = Packet {
                        seq,
                        id,
                        gen: gen.clone(),
                        body: None,
                        ticket: Ticket::default(),
                    };
                    if tx.send(gap).is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        for (seq, id, prep, mut ticket) in ready {
            ticket.pause();
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
                ticket,
            };
            if tx.send(p).is_err() {
                return;
            }
        }
    }
}
