//! The status board: what the status page and `/v1/status` show beside the raw counters —
//! the last frames as before/after thumbnails, recent failures and where their inputs went,
//! request latencies, and a once-a-second history of rates, queues and the fine-tuner's losses.
//!
//! Everything here is a bounded ring: a daemon that runs for months keeps the last few
//! minutes, not all of them. It watches the pipeline through [`Watch`], called on the
//! pipeline's threads, so each call is short: a thumbnail is made for at most a few frames a
//! second (every request's frame, and a sample of the others).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;

use crate::config::OutputKind;
use crate::frame::{decode, encode_png, resize_plane, DecodeLimits, FrameId, Planes};
use crate::runtime::telemetry::Snapshot;
use crate::runtime::Telemetry;
use crate::serving::Watch;
use crate::source::SetAside;
use crate::stage::encode::Payload;

/// Recent frames shown as thumbnails.
const RECENT: usize = 8;
/// Recent failures listed.
const FAILURES: usize = 50;
/// Seconds of history (one sample a second).
const HISTORY: usize = 600;
/// Request latencies kept for percentiles.
const LATENCIES: usize = 2000;
/// Longest side of a thumbnail, in pixels.
const THUMB: usize = 128;
/// Frames between decode and write that can wait for their "after" thumbnail.
const WAITING: usize = 16;
/// Least time between two sampled thumbnails of frames that are not requests.
const THUMB_EVERY: Duration = Duration::from_millis(500);

/// One frame as shown on the page.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    pub frame: String,
    /// Seconds since the daemon started.
    pub at_s: f64,
    /// `data:image/png;base64,…` URLs, ready for an `<img>`.
    pub before: String,
    pub after: Option<String>,
    pub kinds: Vec<&'static str>,
}

/// One failed frame.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub frame: String,
    pub at_s: f64,
    pub error: String,
    /// Where its input went: `quarantined: PATH`, `dead-lettered`, `left in place`, `reported`.
    pub set_aside: String,
}

/// One second of history.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t: f64,
    /// Frames written per second over the last interval.
    pub fps: f64,
    pub failed_per_s: f64,
    pub queued: usize,
    pub in_flight: u64,
    /// Request latency percentiles over the last interval, in ms (null when none came).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub model_generation: u64,
    pub finetune_train_loss: Option<f64>,
    pub finetune_val_loss: Option<f64>,
    pub finetune_swaps: f64,
}

#[derive(Default)]
struct Inner {
    waiting: HashMap<FrameId, String>,
    last_thumb: Option<Instant>,
    recent: VecDeque<Recent>,
    failures: VecDeque<Failure>,
    history: VecDeque<Sample>,
    /// (when, seconds, status code)
    requests: VecDeque<(Instant, f64, u16)>,
    last: Option<(Instant, u64, u64)>,
}

/// Shared by the pipeline (as its [`Watch`]), the sampler and the HTTP handlers.
pub struct Board {
    thumbnails: bool,
    started: Instant,
    inner: Mutex<Inner>,
}

impl Board {
    /// `thumbnails`: whether to keep pictures of frames at all (`--http-thumbnails off`).
    pub fn new(thumbnails: bool) -> Self {
        Self {
            thumbnails,
            started: Instant::now(),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// An answered request: how long it took and its status code.
    pub fn request(&self, took: Duration, status: u16) {
        let mut g = self.lock();
        if g.requests.len() == LATENCIES {
            g.requests.pop_front();
        }
        g.requests
            .push_back((Instant::now(), took.as_secs_f64(), status));
    }

    /// Request latency percentiles (ms) over everything kept: (count, p50, p90, p99).
    pub fn request_latency(&self) -> (usize, f64, f64, f64) {
        let g = self.lock();
        let mut v: Vec<f64> = g.requests.iter().map(|r| r.1 * 1e3).collect();
        percentiles(&mut v)
    }

    /// Takes one sample of history; called once a second.
    pub fn sample(&self, tel: &Telemetry) {
        let snap = tel.snapshot();
        let now = Instant::now();
        let out = snap.frames.get("sink/ok").copied().unwrap_or(0);
        let failed = failed_total(&snap);
        let mut g = self.lock();
        let (fps, failed_per_s) = match g.last {
            Some((t, o, f)) => {
                let dt = now.duration_since(t).as_secs_f64().max(1e-3);
                (
                    out.saturating_sub(o) as f64 / dt,
                    failed.saturating_sub(f) as f64 / dt,
                )
            }
            None => (0.0, 0.0),
        };
        let since = g.last.map(|l| l.0);
        g.last = Some((now, out, failed));
        let mut recent: Vec<f64> = g
            .requests
            .iter()
            .filter(|r| since.is_none_or(|s| r.0 >= s))
            .map(|r| r.1 * 1e3)
            .collect();
        let (n, p50, _, p99) = percentiles(&mut recent);
        let extra = |k: &str| snap.extra.get(k).copied();
        let s = Sample {
            t: self.now_s(),
            fps,
            failed_per_s,
            queued: snap.queues.iter().map(|q| q.1).sum(),
            in_flight: snap.in_flight,
            p50_ms: (n > 0).then_some(p50),
            p99_ms: (n > 0).then_some(p99),
            model_generation: snap.model_generation,
            finetune_train_loss: extra("aestream_finetune_train_loss"),
            finetune_val_loss: extra("aestream_finetune_val_loss"),
            finetune_swaps: extra("aestream_finetune_swaps_total").unwrap_or(0.0),
        };
        if g.history.len() == HISTORY {
            g.history.pop_front();
        }
        g.history.push_back(s);
    }

    /// Whether thumbnails are kept (`--http-thumbnails`).
    pub fn thumbnails(&self) -> bool {
        self.thumbnails
    }

    pub fn recent(&self) -> Vec<Recent> {
        self.lock().recent.iter().rev().cloned().collect()
    }

    pub fn failures(&self) -> Vec<Failure> {
        self.lock().failures.iter().rev().cloned().collect()
    }

    pub fn history(&self) -> Vec<Sample> {
        self.lock().history.iter().cloned().collect()
    }
}

/// Frames that failed at any stage.
fn failed_total(s: &Snapshot) -> u64 {
    s.frames
        .iter()
        .filter(|(k, _)| k.ends_with("/failed") || k.ends_with("/quarantined"))
        .map(|(_, n)| n)
        .sum()
}

/// (count, p50, p90, p99) of `v` (sorted in place); zeros when empty.
fn percentiles(v: &mut [f64]) -> (usize, f64, f64, f64) {
    if v.is_empty() {
        return (0, 0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (v.len(), at(0.5), at(0.9), at(0.99))
}

/// A small 8-bit PNG of `p` as a data URL (longest side [`THUMB`] pixels).
fn thumbnail(p: &Planes) -> Option<String> {
    // A video frame's chroma planes are at their own sizes: show it as RGB.
    let rgb;
    let p = if p.yuv.is_some() {
        rgb = crate::frame::y4m::planes::to_rgb(p);
        &rgb
    } else {
        p
    };
    let (w, h) = (p.width, p.height);
    if w == 0 || h == 0 {
        return None;
    }
    let scale = (THUMB as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (
        ((w as f64 * scale).round() as usize).max(1),
        ((h as f64 * scale).round() as usize).max(1),
    );
    let planes = p
        .planes
        .iter()
        .map(|pl| resize_plane(pl, w, h, tw, th))
        .collect();
    let small = Planes {
        width: tw,
        height: th,
        planes,
        alpha: None,
        depth: Default::default(),
        yuv: None,
    };
    let png = encode_png(&small, "thumbnail").ok()?;
    Some(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

impl Watch for Board {
    fn decoded(&self, id: &FrameId, frame: &Planes) {
        if !self.thumbnails {
            return;
        }
        {
            // Every request's frame, and others at most every THUMB_EVERY.
            let mut g = self.lock();
            let due = g.last_thumb.is_none_or(|t| t.elapsed() >= THUMB_EVERY);
            let wanted = matches!(id, FrameId::Request { .. }) || due;
            if !wanted || g.waiting.len() >= WAITING {
                return;
            }
            g.last_thumb = Some(Instant::now());
        }
        // Made outside the lock: the other threads need not wait for it.
        if let Some(t) = thumbnail(frame) {
            self.lock().waiting.insert(id.clone(), t);
        }
    }

    fn written(&self, id: &FrameId, files: &[(OutputKind, Payload)]) {
        let Some(before) = self.lock().waiting.remove(id) else {
            return;
        };
        let after = files.iter().find_map(|(_, p)| match p {
            Payload::Bytes(png) => decode(png, DecodeLimits::default(), "output")
                .ok()
                .and_then(|p| thumbnail(&p)),
            Payload::Code(_) => None,
        });
        let r = Recent {
            frame: id.to_string(),
            at_s: self.now_s(),
            before,
            after,
            kinds: files.iter().map(|(k, _)| k.name()).collect(),
        };
        let mut g = self.lock();
        if g.recent.len() == RECENT {
            g.recent.pop_front();
        }
        g.recent.push_back(r);
    }

    fn failed(&self, id: &FrameId, error: &str, aside: &SetAside) {
        let set_aside = match aside {
            SetAside::Quarantined(p) => format!("quarantined: {}", p.display()),
            SetAside::DeadLettered => "dead-lettered".into(),
            SetAside::Retaken => "left in place, to be taken again".into(),
            SetAside::Reported => "reported".into(),
        };
        let f = Failure {
            frame: id.to_string(),
            at_s: self.now_s(),
            error: error.to_string(),
            set_aside,
        };
        let mut g = self.lock();
        g.waiting.remove(id);
        if g.failures.len() == FAILURES {
            g.failures.pop_front();
        }
        g.failures.push_back(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_few() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentiles(&mut v), (5, 3.0, 5.0, 5.0));
        assert_eq!(percentiles(&mut []), (0, 0.0, 0.0, 0.0));
    }

    /// A request's frame gets before and after thumbnails; the rings stay bounded.
    #[test]
    fn thumbnails_pair_up_and_rings_stay_bounded() {
        let b = Board::new(true);
        let frame = Planes::grey(300, 200, vec![0.5; 300 * 200]);
        let png = encode_png(&Planes::grey(300, 200, vec![0.25; 300 * 200]), "t").unwrap();
        for n in 0..(RECENT as u64 + 3) {
            let id = FrameId::Request { n };
            b.decoded(&id, &frame);
            b.written(&id, &[(OutputKind::Denoised, Payload::Bytes(png.clone()))]);
        }
        let r = b.recent();
        assert_eq!(r.len(), RECENT);
        assert_eq!(r[0].frame, format!("HTTP request {}", RECENT + 2));
        assert!(r[0].before.starts_with("data:image/png;base64,"));
        assert!(r[0].after.is_some());
        for n in 0..(FAILURES as u64 + 5) {
            b.failed(&FrameId::Request { n }, "bad", &SetAside::Reported);
        }
        assert_eq!(b.failures().len(), FAILURES);
        let off = Board::new(false);
        off.decoded(&FrameId::Request { n: 0 }, &frame);
        off.written(&FrameId::Request { n: 0 }, &[]);
        assert!(off.recent().is_empty());
    }
}
