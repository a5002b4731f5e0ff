//! `aestream bench`: inference and training throughput of a reference network or a shipped
//! pipeline's model, on random input, as one JSON line (images/s, steps/s, latency
//! percentiles, peak memory) that an outside comparison can read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::model::reference::{ConvAeRef, ConvImpl, DenseAeRef, DENSE_WIDTHS};
use crate::model::{Model, Net};
use crate::train::adamw::{AdamW, AdamWParams};
use crate::train::loss_of;

/// The reference networks `bench` knows besides the pipelines.
pub const REFERENCE_MODELS: [&str; 2] = ["conv-ae-ref", "dense-ae-ref"];

/// What to measure (also the command line's `bench` arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// conv-ae-ref, dense-ae-ref, or a built-in pipeline name or .toml path.
    pub model: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Threads for the model's kernels, at most 256; 0 keeps the default (RAYON_NUM_THREADS,
    /// else all cores).
    #[arg(long, default_value_t = 0, value_parser = crate::runtime::threads::threads_arg)]
    pub threads: usize,
    /// Frame side (default: 64 for conv-ae-ref, the model's fixed size, or 256).
    #[arg(long)]
    pub size: Option<usize>,
    /// Seconds measured for each of inference and training, after a warm-up.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Use candle's own convolutions and a candle-ops AdamW (the baseline).
    #[arg(long)]
    pub candle_ops: bool,
    /// cpu, cuda (= cuda:0) or cuda:N (needs a build with `--features cuda`), or auto (the
    /// first GPU if there is one).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A pipeline's inference precision (overrides `infer.dtype`): f32, or f16 / bf16 on a
    /// GPU. Training is timed in f32.
    #[arg(long, value_enum)]
    pub dtype: Option<crate::model::Precision>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub batch: usize,
    pub threads: usize,
    pub size: usize,
    /// `ours` or `candle`.
    pub kernels: &'static str,
    /// `cpu` or `cuda:N (GPU)`.
    pub device: String,
    /// The inference precision (`f32` for the reference networks).
    pub dtype: &'static str,
    /// The optional features this binary was built with (`cuda` or `none`).
    pub features: &'static str,
    pub infer_images_per_s: f64,
    pub train_steps_per_s: f64,
    /// Per-batch inference latency.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub train_step_p50_ms: f64,
    /// Forward-pass arithmetic rate (reference networks only: their FLOPs are known).
    pub infer_gflop_per_s: Option<f64>,
    /// Process CPU time (user + system, all threads) per inference batch and per training
    /// step, averaged over the timed calls: on a machine shared with other jobs this is far
    /// steadier than wall time (it still counts our own spin-waiting).
    pub infer_cpu_ms: f64,
    pub train_step_cpu_ms: f64,
    /// The roofline: the best of a few 512³ f32 matrix products through the same gemm and
    /// threads, in GFLOP/s, measured in this run (CPU only; `None` on a GPU).
    pub sgemm512_gflop_per_s: Option<f64>,
    pub peak_rss_mb: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} batch {} ({}×{}, {} threads, {} kernels): inference {:.1} images/s \
             (p50 {:.2} ms, p99 {:.2} ms), training {:.2} steps/s, peak RSS {:.0} MB",
            self.model,
            self.batch,
            self.size,
            self.size,
            self.threads,
            self.kernels,
            self.infer_images_per_s,
            self.p50_ms,
            self.p99_ms,
            self.train_steps_per_s,
            self.peak_rss_mb
        )
    }
}

type InferFn = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;
type TrainFn = Box<dyn FnMut(&Tensor) -> candle_core::Result<()>>;

/// A network under test: its input, a forward pass, and one optimizer step.
struct Workload {
    input: Tensor,
    /// Multiply-adds of one image's forward pass, where known.
    macs_per_image: Option<f64>,
    /// The inference precision's name.
    dtype: &'static str,
    infer: InferFn,
    train_step: TrainFn,
}

fn usage(message: String) -> Error {
    Error::Config {
        origin: "aestream bench".into(),
        message,
    }
}

fn named_vars(vm: &VarMap) -> Vec<(String, Var)> {
    match vm.data().lock() {
        Ok(d) => d.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        // A poisoned lock only means another thread panicked while holding it; the map is intact.
        Err(p) => p
            .into_inner()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn optimizer(vm: &VarMap, candle_ops: bool) -> candle_core::Result<AdamW> {
    let params = AdamWParams {
        lr: 1e-3,
        ..Default::default()
    };
    if candle_ops {
        AdamW::with_candle_ops(named_vars(vm), params)
    } else {
        AdamW::new(named_vars(vm), params)
    }
}

/// A reference network trained with MSE against its input.
fn reference<M: Module + 'static>(
    net: M,
    vm: VarMap,
    input: Tensor,
    macs_per_image: f64,
    candle_ops: bool,
) -> Result<Workload> {
    let mut opt = optimizer(&vm, candle_ops)?;
    let net = std::rc::Rc::new(net);
    let n2 = net.clone();
    Ok(Workload {
        input,
        macs_per_image: Some(macs_per_image),
        dtype: "f32",
        infer: Box::new(move |x| net.forward(x)),
        train_step: Box::new(move |x| {
            let loss = (n2.forward(x)? - x)?.sqr()?.mean_all()?;
            opt.step(&loss.backward()?)
        }),
    })
}

fn imp(a: &BenchArgs) -> ConvImpl {
    if a.candle_ops {
        ConvImpl::Candle
    } else {
        ConvImpl::Ours
    }
}

fn workload(a: &BenchArgs, dev: &Device) -> Result<(Workload, usize)> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, dev);
    match a.model.as_str() {
        "conv-ae-ref" => {
            let s = a.size.unwrap_or(64);
            if s == 0 || !s.is_multiple_of(4) {
                return Err(usage(format!(
                    "conv-ae-ref needs a --size that is a multiple of 4, got {s}"
                )));
            }
            let net = ConvAeRef::new(vb, imp(a))?;
            let x = Tensor::rand(0f32, 1., (a.batch, 1, s, s), dev)?;
            // Per layer: cout·cin·9 multiply-adds per output pixel (input pixel when
            // transposed); the decoder mirrors the encoder (1→32 ~ 32→1, and so on).
            let px = |d: usize| ((s / d) * (s / d)) as f64;
            let macs = 2.0 * 9.0 * (32.0 * px(1) + 64.0 * 32.0 * px(2) + 64.0 * 64.0 * px(4));
            Ok((reference(net, vm, x, macs, a.candle_ops)?, s))
        }
        "dense-ae-ref" => {
            if a.size.is_some_and(|s| s * s != DENSE_WIDTHS[0]) {
                return Err(usage("dense-ae-ref takes 25×25 frames (625 inputs)".into()));
            }
            let net = DenseAeRef::new(vb, imp(a))?;
            let x = Tensor::rand(0f32, 1., (a.batch, DENSE_WIDTHS[0]), dev)?;
            let macs = DENSE_WIDTHS.windows(2).map(|w| (w[0] * w[1]) as f64).sum();
            Ok((reference(net, vm, x, macs, a.candle_ops)?, 25))
        }
        name => pipeline(name, a, vm, vb, dev),
    }
}

/// A pipeline's model: inference through the serving path with the shipped weights (random
/// ones if the pipeline has none yet: speed does not depend on them), training with the
/// pipeline's own loss on a freshly initialised copy.
fn pipeline(
    name: &str,
    a: &BenchArgs,
    vm: VarMap,
    vb: VarBuilder,
    dev: &Device,
) -> Result<(Workload, usize)> {
    let mut cfg = PipelineConfig::load(name).map_err(|e| {
        usage(format!(
            "{name:?} is neither a reference network ({}) nor a pipeline: {e}",
            REFERENCE_MODELS.join(", ")
        ))
    })?;
    if let Some(p) = a.dtype {
        cfg.infer.dtype = p;
        cfg.infer
            .validate()
            .map_err(|e| usage(format!("--dtype: {e}")))?;
    }
    cfg.check_precision(dev)?;
    let fixed = cfg.model.arch.fixed_size();
    let net = Net::new(vb, &cfg.model.arch)?;
    let (w, h) = match (fixed, a.size) {
        (Some(wh), None) => wh,
        (Some(wh), Some(s)) if (s, s) == wh => wh,
        (Some((w, h)), Some(s)) => {
            return Err(usage(format!(
                "{name} takes {w}×{h} frames, not --size {s}"
            )));
        }
        (None, s) => {
            let s = s.unwrap_or(256);
            let m = net.size_multiple().max(1);
            if s == 0 || !s.is_multiple_of(m) {
                return Err(usage(format!(
                    "{name} needs a --size that is a multiple of {m}, got {s}"
                )));
            }
            (s, s)
        }
    };
    let served: Arc<dyn Model> = match cfg.load_model(None, dev) {
        Ok(m) => Arc::from(m),
        Err(e) => {
            tracing::warn!("{name}: {e}; timing inference with random weights");
            let t = crate::model::weights::tensors(&vm);
            crate::model::weights::serving(&cfg.model.arch, &t, dev, cfg.infer.dtype)?
        }
    };
    let mut opt = optimizer(&vm, a.candle_ops)?;
    let loss = cfg.train.loss;
    let input = Tensor::rand(0f32, 1., (a.batch, h, w, 1), dev)?;
    // Inference as the pipeline's infer stage runs it: its batch limits and self-ensemble
    // (`infer.ensemble` flipped views averaged), so that a folder run can be compared.
    let opts: crate::stage::infer::RunOpts = (&cfg.infer).into();
    let opts = crate::stage::infer::RunOpts {
        max_batch: opts.max_batch.max(a.batch),
        ..opts
    };
    Ok((
        Workload {
            input,
            macs_per_image: None,
            dtype: cfg.infer.dtype.name(),
            infer: Box::new(move |x| {
                let (b, uh, uw, _) = x.dims4()?;
                let flat = x.flatten_all()?.to_vec1::<f32>()?;
                let units: Vec<crate::stage::tiling::Unit> = flat
                    .chunks(uh * uw)
                    .take(b)
                    .map(|d| crate::stage::tiling::Unit {
                        data: d.to_vec(),
                        uw,
                        uh,
                        src_x: 0,
                        src_y: 0,
                        dst_x: 0,
                        dst_y: 0,
                        keep_w: uw,
                        keep_h: uh,
                    })
                    .collect();
                let outs = crate::stage::infer::run_units(served.as_ref(), &units, opts)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                Tensor::from_vec(outs.concat(), (b, uh, uw, 1), &Device::Cpu)
            }),
            train_step: Box::new(move |x| {
                // The input doubles as the target: any image in [0, 1] is a valid one.
                let l = loss_of(&net, loss, &net.forward_raw(x)?.raw, x)?;
                opt.step(&l.backward()?)
            }),
        },
        w.max(h),
    ))
}

/// Sizes rayon's (and candle's) thread pool; see [`crate::runtime::threads::set_threads`].
pub fn set_threads(threads: usize) -> Result<usize> {
    crate::runtime::threads::set_threads(threads)
        .map_err(|e| usage(format!("--threads {threads}: {e}")))
}

/// What [`time_it`] measured: each call's wall time, sorted, and the process CPU time per
/// call in milliseconds.
struct Timed {
    sorted: Vec<Duration>,
    cpu_ms: f64,
}

/// Runs `f` repeatedly for about `seconds` after a warm-up; returns each call's duration and
/// the mean CPU time per call.
fn time_it(seconds: f64, mut f: impl FnMut() -> candle_core::Result<()>) -> Result<Timed> {
    let warm = Instant::now();
    f()?;
    // Warm-up: at least one call and 0.5 s (allocator pools, caches, page faults).
    while warm.elapsed().as_secs_f64() < 0.5 {
        f()?;
    }
    let cpu0 = crate::runtime::threads::process_cpu_seconds();
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 3 || start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    let cpu = crate::runtime::threads::process_cpu_seconds() - cpu0;
    times.sort();
    Ok(Timed {
        cpu_ms: cpu * 1e3 / times.len() as f64,
        sorted: times,
    })
}

/// The best rate of a few 512×512×512 f32 products through the kernels' gemm on the current
/// threads, in GFLOP/s: the roofline a gemm-bound workload is compared with.
pub fn sgemm512_gflop_per_s() -> f64 {
    const N: usize = 512;
    let a: Vec<f32> = (0..N * N).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..N * N).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut c = vec![0f32; N * N];
    let mut best = f64::INFINITY;
    for _ in 0..12 {
        let t = Instant::now();
        crate::kernels::sgemm512(&mut c, &a, &b);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (N * N * N) as f64 / best / 1e9
}

/// The `q` quantile (0..=1) of sorted durations, in milliseconds.
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Measures inference then training; [`set_threads`] should have been called first.
pub fn run(a: &BenchArgs) -> Result<BenchReport> {
    if a.batch == 0 {
        return Err(usage("--batch must be at least 1".into()));
    }
    if !a.seconds.is_finite() || a.seconds <= 0.0 {
        return Err(usage(format!(
            "--seconds must be positive, got {}",
            a.seconds
        )));
    }
    let dev = crate::model::select_device(&a.device)?;
    let reference = REFERENCE_MODELS.contains(&a.model.as_str());
    if let (true, Some(p)) = (reference, a.dtype.filter(|p| !p.is_f32())) {
        return Err(usage(format!(
            "--dtype {}: the reference networks run in f32 (--dtype is for pipelines)",
            p.name()
        )));
    }
    let (mut wl, size) = workload(a, &dev)?;
    let x = wl.input.clone();
    // A GPU runs kernels asynchronously: each timed call waits for its work to finish.
    let infer = time_it(a.seconds, || {
        (wl.infer)(&x)?;
        dev.synchronize()
    })?;
    let train = time_it(a.seconds, || {
        (wl.train_step)(&x)?;
        dev.synchronize()
    })?;
    let p50 = quantile_ms(&infer.sorted, 0.5);
    let t50 = quantile_ms(&train.sorted, 0.5);
    Ok(BenchReport {
        model: a.model.clone(),
        batch: a.batch,
        threads: candle_core::utils::get_num_threads(),
        size,
        kernels: if a.candle_ops { "candle" } else { "ours" },
        device: crate::model::describe_device(&dev),
        dtype: wl.dtype,
        features: crate::model::device::FEATURES,
        infer_images_per_s: a.batch as f64 / (p50 / 1e3),
        train_steps_per_s: 1e3 / t50,
        p50_ms: p50,
        p99_ms: quantile_ms(&infer.sorted, 0.99),
        train_step_p50_ms: t50,
        infer_gflop_per_s: wl
            .macs_per_image
            .map(|m| 2.0 * m * a.batch as f64 / (p50 / 1e3) / 1e9),
        infer_cpu_ms: infer.cpu_ms,
        train_step_cpu_ms: train.cpu_ms,
        sgemm512_gflop_per_s: dev.is_cpu().then(sgemm512_gflop_per_s),
        peak_rss_mb: crate::runtime::threads::peak_rss_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(model: &str, size: Option<usize>) -> BenchArgs {
        BenchArgs {
            model: model.into(),
            batch: 2,
            threads: 0,
            size,
            seconds: 0.01,
            candle_ops: false,
            device: "cpu".into(),
            dtype: None,
        }
    }

    /// The reference networks and a pipeline give a complete report with positive rates.
    #[test]
    fn reports_every_field() -> Result<()> {
        for (m, s) in [
            ("conv-ae-ref", Some(16)),
            ("dense-ae-ref", None),
            ("conv-ae", None),
        ] {
            let r = run(&args(m, s))?;
            assert!(
                r.infer_images_per_s > 0.0 && r.train_steps_per_s > 0.0,
                "{r:?}"
            );
            assert!(r.p99_ms >= r.p50_ms, "{r:?}");
            let json = serde_json::to_value(&r).map_err(|e| Error::Other(e.to_string()))?;
            for k in [
                "model",
                "batch",
                "threads",
                "size",
                "infer_images_per_s",
                "train_steps_per_s",
                "p50_ms",
                "p99_ms",
                "peak_rss_mb",
                "train_step_cpu_ms",
                "sgemm512_gflop_per_s",
                "dtype",
                "features",
            ] {
                assert!(json.get(k).is_some(), "{k} missing");
            }
            assert_eq!(r.dtype, "f32");
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_sizes_and_names() {
        assert!(run(&args("conv-ae-ref", Some(30))).is_err());
        assert!(run(&args("dense-ae-ref", Some(28))).is_err());
        assert!(run(&args("conv-ae", Some(64))).is_err());
        assert!(run(&args("no-such-model", None)).is_err());
    }

    /// Half precision is a usage error on the CPU (for a pipeline) and for the reference
    /// networks (anywhere), each saying why.
    #[test]
    fn rejects_half_precision_where_it_cannot_run() {
        let half = |model: &str| {
            let a = BenchArgs {
                dtype: Some(crate::model::Precision::F16),
                ..args(model, None)
            };
            match run(&a) {
                Err(Error::Config { origin, message }) => format!("{origin}: {message}"),
                other => panic!("{model}: {other:?}"),
            }
        };
        let m = half("conv-ae");
        assert!(m.contains("infer.dtype") && m.contains("GPU only"), "{m}");
        let m = half("conv-ae-ref");
        assert!(
            m.contains("--dtype f16: the reference networks run in f32"),
            "{m}"
        );
    }

    #[test]
    fn quantiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&d, 0.5), 51.0);
        assert_eq!(quantile_ms(&d, 0.99), 99.0);
    }
}
