//! Run-time counters of the pipeline, rendered as Prometheus text for `/metrics`.
//!
//! Frames per stage and outcome, queue depth per channel, stage latency and batch size
//! histograms, the serving model's version, quarantined and dropped counts, and the readiness
//! that `/readyz` reports. Plain atomics and short mutexes: a few updates per frame and stage.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the batch size histogram's buckets.
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// The upper bound of the bucket holding quantile `q` (the last bound when it lies
    /// beyond them; 0 when empty).
    fn quantile(&self, q: f64) -> f64 {
        let want = (q * self.count as f64).ceil().max(1.0) as u64;
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            if cum >= want {
                return *b;
            }
        }
        if self.count == 0 {
            0.0
        } else {
            self.bounds.last().copied().unwrap_or(0.0)
        }
    }

    fn summary(&self) -> Summary {
        Summary {
            count: self.count,
            mean: if self.count == 0 {
                0.0
            } else {
                self.sum / self.count as f64
            },
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
        }
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

type DepthFn = Box<dyn Fn() -> usize + Send + Sync>;

/// A histogram in brief: how many, their mean, and percentiles read off the buckets (each the
/// upper bound of the bucket it falls in, so an over-estimate by at most one bucket).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// The counters at one moment (see [`Telemetry::snapshot`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub uptime_s: f64,
    pub ready: bool,
    pub model_version: String,
    pub model_generation: u64,
    pub in_flight: u64,
    pub quarantined: u64,
    pub dropped: u64,
    pub reloads: u64,
    /// Frames by `stage/outcome` (`sink/ok`, `decode/quarantined`, …).
    pub frames: BTreeMap<String, u64>,
    /// Frames waiting in each channel, in pipeline order.
    pub queues: Vec<(String, usize)>,
    /// Seconds per frame (per batch for `infer`) by stage.
    pub stages: BTreeMap<String, Summary>,
    /// Frames per model batch.
    pub batches: Summary,
    /// The fine-tuner's series and other extras, by name.
    pub extra: BTreeMap<String, f64>,
}

/// Shared by the pipeline's threads, the HTTP endpoint and (later) the trainer.
pub struct Telemetry {
    frames: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    batches: Mutex<Histogram>,
    queues: Mutex<Vec<(&'static str, DepthFn)>>,
    model_version: Mutex<String>,
    model_generation: AtomicU64,
    pub quarantined: AtomicU64,
    pub dropped: AtomicU64,
    pub reloads: AtomicU64,
    ready: AtomicBool,
    started: std::time::Instant,
    /// Milliseconds after `started` of the last sign of progress.
    last_beat_ms: AtomicU64,
    /// Frames taken in and not yet through the sink.
    in_flight: std::sync::atomic::AtomicI64,
    /// Further series (the trainer's): name → (type, help, value).
    extra: Mutex<BTreeMap<&'static str, (&'static str, &'static str, f64)>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            frames: Mutex::default(),
            latency: Mutex::default(),
            batches: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
            queues: Mutex::default(),
            model_version: Mutex::default(),
            model_generation: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            started: std::time::Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicI64::new(0),
            extra: Mutex::default(),
        }
    }
}

impl Telemetry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks progress (the watchdog pings only while there is some, or nothing to do).
    pub fn beat(&self) {
        self.last_beat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the pipeline last made progress; zero while it holds no frame.
    pub fn since_beat(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) <= 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Whether the pipeline holds no frame.
    pub fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) <= 0
    }

    /// A frame entered (`+1`) or left (`-1`) the pipeline.
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
        self.beat();
    }

    /// Counts one frame leaving `stage` with `outcome` (`ok`, `failed`, `quarantined`, …).
    pub fn frame(&self, stage: &'static str, outcome: &'static str) {
        self.beat();
        if let Ok(mut m) = self.frames.lock() {
            *m.entry((stage, outcome)).or_default() += 1;
        }
    }

    /// Frames counted so far for a stage and outcome.
    pub fn frames(&self, stage: &'static str, outcome: &'static str) -> u64 {
        self.frames
            .lock()
            .map(|m| m.get(&(stage, outcome)).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn latency(&self, stage: &'static str, d: Duration) {
        if let Ok(mut m) = self.latency.lock() {
            m.entry(stage)
                .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
                .observe(d.as_secs_f64());
        }
    }

    pub fn batch(&self, size: usize) {
        if let Ok(mut h) = self.batches.lock() {
            h.observe(size as f64);
        }
    }

    /// Reports the depth of a channel; `depth` is sampled at each scrape.
    pub fn watch_queue(&self, name: &'static str, depth: DepthFn) {
        if let Ok(mut q) = self.queues.lock() {
            q.push((name, depth));
        }
    }

    /// Forgets the channels (they hold receivers, which must go when a run ends).
    pub fn clear_queues(&self) {
        if let Ok(mut q) = self.queues.lock() {
            q.clear();
        }
    }

    pub fn set_model(&self, version: &str, generation: u64) {
        if let Ok(mut v) = self.model_version.lock() {
            *v = version.to_string();
        }
        self.model_generation.store(generation, Ordering::SeqCst);
    }

    /// Sets a gauge.
    pub fn gauge(&self, name: &'static str, help: &'static str, v: f64) {
        if let Ok(mut m) = self.extra.lock() {
            m.insert(name, ("gauge", help, v));
        }
    }

    /// Adds to a counter.
    pub fn count(&self, name: &'static str, help: &'static str, dv: f64) {
        if let Ok(mut m) = self.extra.lock() {
            m.entry(name).or_insert(("counter", help, 0.0)).2 += dv;
        }
    }

    /// A gauge's or counter's value (0 when never set).
    pub fn value(&self, name: &str) -> f64 {
        self.extra
            .lock()
            .map(|m| m.get(name).map(|e| e.2).unwrap_or(0.0))
            .unwrap_or(0.0)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Everything above as plain values, for the status page and `/v1/status`.
    pub fn snapshot(&self) -> Snapshot {
        let frames = self
            .frames
            .lock()
            .map(|m| {
                m.iter()
                    .map(|((s, o), n)| (format!("{s}/{o}"), *n))
                    .collect()
            })
            .unwrap_or_default();
        let queues = self
            .queues
            .lock()
            .map(|q| q.iter().map(|(n, d)| ((*n).to_string(), d())).collect())
            .unwrap_or_default();
        let stages = self
            .latency
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(s, h)| ((*s).to_string(), h.summary()))
                    .collect()
            })
            .unwrap_or_default();
        let batches = self
            .batches
            .lock()
            .map(|h| h.summary())
            .unwrap_or_else(|_| Histogram::new(&BATCH_BUCKETS).summary());
        let extra = self
            .extra
            .lock()
            .map(|m| m.iter().map(|(n, e)| ((*n).to_string(), e.2)).collect())
            .unwrap_or_default();
        Snapshot {
            uptime_s: self.started.elapsed().as_secs_f64(),
            ready: self.is_ready(),
            model_version: self
                .model_version
                .lock()
                .map(|v| v.clone())
                .unwrap_or_default(),
            model_generation: self.model_generation.load(Ordering::SeqCst),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            quarantined: self.quarantined.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            reloads: self.reloads.load(Ordering::Relaxed),
            frames,
            queues,
            stages,
            batches,
            extra,
        }
    }

    /// The Prometheus text exposition of everything above.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP aestream_frames_total Frames that left a stage, by outcome.\n");
        out.push_str("# TYPE aestream_frames_total counter\n");
        if let Ok(m) = self.frames.lock() {
            for ((stage, outcome), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "aestream_frames_total{{stage=\"{stage}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP aestream_queue_depth Frames waiting in a channel.\n");
        out.push_str("# TYPE aestream_queue_depth gauge\n");
        if let Ok(q) = self.queues.lock() {
            for (name, depth) in q.iter() {
                let _ = writeln!(
                    out,
                    "aestream_queue_depth{{channel=\"{name}\"}} {}",
                    depth()
                );
            }
        }
        out.push_str(
            "# HELP aestream_stage_seconds Time a stage spent on one frame (a batch for infer).\n",
        );
        out.push_str("# TYPE aestream_stage_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (stage, h) in m.iter() {
                h.render(
                    &mut out,
                    "aestream_stage_seconds",
                    &format!("stage=\"{stage}\""),
                );
            }
        }
        out.push_str("# HELP aestream_batch_size Frames per model batch.\n");
        out.push_str("# TYPE aestream_batch_size histogram\n");
        if let Ok(h) = self.batches.lock() {
            h.render(&mut out, "aestream_batch_size", "");
        }
        let version = self
            .model_version
            .lock()
            .map(|v| v.replace('\\', "\\\\").replace('"', "\\\""))
            .unwrap_or_default();
        out.push_str("# HELP aestream_model_info The serving model's version.\n");
        out.push_str("# TYPE aestream_model_info gauge\n");
        let _ = writeln!(out, "aestream_model_info{{version=\"{version}\"}} 1");
        let gauges: [(&str, &str, &str, u64); 6] = [
            (
                "aestream_model_generation",
                "gauge",
                "Model generation: 1 at start, +1 per reload or swap.",
                self.model_generation.load(Ordering::SeqCst),
            ),
            (
                "aestream_quarantined_total",
                "counter",
                "Input files moved to the quarantine folder.",
                self.quarantined.load(Ordering::Relaxed),
            ),
            (
                "aestream_dropped_total",
                "counter",
                "Stream frames dropped by overload = \"drop-oldest\".",
                self.dropped.load(Ordering::Relaxed),
            ),
            (
                "aestream_reloads_total",
                "counter",
                "Pipeline reloads (SIGHUP).",
                self.reloads.load(Ordering::Relaxed),
            ),
            (
                "aestream_ready",
                "gauge",
                "1 when the model is loaded and the source is running.",
                self.is_ready() as u64,
            ),
            (
                "aestream_uptime_seconds",
                "gauge",
                "Seconds since start.",
                self.started.elapsed().as_secs(),
            ),
        ];
        let extra: Vec<_> = self
            .extra
            .lock()
            .map(|m| m.iter().map(|(n, (k, h, v))| (*n, *k, *h, *v)).collect())
            .unwrap_or_default();
        for (name, kind, help, v) in gauges
            .into_iter()
            .map(|(n, k, h, v)| (n, k, h, v as f64))
            .chain(extra)
        {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_queues() {
        let t = Telemetry::new();
        t.frame("decode", "ok");
        t.frame("decode", "ok");
        t.frame("decode", "failed");
        t.latency("infer", Duration::from_millis(30));
        t.batch(3);
        t.watch_queue("raw", Box::new(|| 5));
        t.set_model("denoise@abcd", 2);
        let text = t.render();
        assert!(text.contains("aestream_frames_total{stage=\"decode\",outcome=\"ok\"} 2"));
        assert!(text.contains("aestream_frames_total{stage=\"decode\",outcome=\"failed\"} 1"));
        assert!(text.contains("aestream_queue_depth{channel=\"raw\"} 5"));
        // 30 ms falls in the 0.05 bucket and every wider one, not in 0.025.
        assert!(text.contains("aestream_stage_seconds_bucket{stage=\"infer\",le=\"0.025\"} 0"));
        assert!(text.contains("aestream_stage_seconds_bucket{stage=\"infer\",le=\"0.05\"} 1"));
        assert!(text.contains("aestream_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("aestream_model_info{version=\"denoise@abcd\"} 1"));
        assert!(text.contains("aestream_model_generation 2"));
        t.clear_queues();
        assert!(!t.render().contains("channel=\"raw\""));
    }

    #[test]
    fn snapshot_reads_percentiles_off_the_buckets() {
        let t = Telemetry::new();
        for ms in [1, 2, 3, 4, 5, 6, 7, 8, 9, 300] {
            t.latency("infer", Duration::from_millis(ms));
        }
        t.frame("sink", "ok");
        t.watch_queue("raw", Box::new(|| 2));
        let s = t.snapshot();
        let infer = &s.stages["infer"];
        assert_eq!(infer.count, 10);
        // Half of the ten are ≤ 5 ms: the 0.005 bucket; the slowest sits in the 0.5 bucket.
        assert_eq!(infer.p50, 0.005);
        assert_eq!(infer.p99, 0.5);
        assert_eq!(s.frames["sink/ok"], 1);
        assert_eq!(s.queues, vec![("raw".to_string(), 2)]);
        assert_eq!(Telemetry::new().snapshot().batches.p50, 0.0);
    }
}
