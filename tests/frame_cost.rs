//! The per-frame memory estimate (`stage::cost`) against what the stages really allocate.
//!
//! Every stage runs on frames of several shapes (colour and grey, 8 and 16 bits, alpha, a
//! thin frame whose tiles are mostly padding) under a counting allocator; the bytes live at
//! each stage's peak, above what was live before the frame arrived, must be within the
//! estimate (it is a memory guarantee), and the estimate must not be far above them (else
//! the budget would refuse frames that fit). The model's working memory for one forward pass
//! is bounded by `infer.max_batch_pixels` for the whole process, not per frame (and the matrix
//! kernels keep scratch buffers per thread once they have run); it is kept small here and
//! allowed for as a constant in the stages from the model on.
//!
//! One test in this binary: the allocator counts every thread's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aestream::config::{OutputKind, PipelineConfig};
use aestream::frame::{encode_png, header, BitDepth, FrameId, Planes};
use aestream::model::{Arch, Model, Net, NetModel};
use aestream::stage::cost::{estimate, Cost, Shape};
use aestream::stage::tiling::TilePlan;
use aestream::stage::{decode, encode, infer, normalise, postprocess};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::SeqCst) + new - l.size();
                PEAK.fetch_max(now, Ordering::SeqCst);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::SeqCst);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f`; the most bytes live while it ran, above `base`.
fn peak_above<T>(base: usize, f: impl FnOnce() -> T) -> (T, u64) {
    PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
    let v = f();
    (v, PEAK.load(Ordering::SeqCst).saturating_sub(base) as u64)
}

/// The model's working memory for one forward pass here (small: see the module notes).
const PASS_SLACK: u64 = 8 << 20;

fn tiny_model(cfg: &PipelineConfig) -> Arc<dyn Model> {
    let vm = candle_nn::VarMap::new();
    let dev = candle_core::Device::Cpu;
    let vb = aestream::model::init::seeded_builder(&vm, 7, candle_core::DType::F32, &dev);
    Arc::new(NetModel::new(
        Net::new(vb, &cfg.model.arch).unwrap(),
        dev,
        None,
    ))
}

/// Measures each stage on `planes` encoded as PNG; returns (measured, estimated).
fn measure(cfg: &PipelineConfig, model: &dyn Model, planes: Planes) -> (Cost, Cost) {
    let bytes = encode_png(&planes, "t").unwrap();
    drop(planes);
    let id = FrameId::Stream { seq: 0, offset: 0 };
    let spec = model.spec();
    let plan = TilePlan::for_pipeline(cfg, spec.size_multiple);
    let shape = Shape {
        plan,
        fixed_size: None,
        keep_input: false,
    };
    let est = estimate(
        &header(&bytes, "t").unwrap(),
        bytes.len() as u64,
        cfg,
        &shape,
    );
    // What is live before the frame: everything but the encoded bytes it arrives as.
    let base = LIVE.load(Ordering::SeqCst) - bytes.len();
    let (planes, dec) = peak_above(base, || decode::run(&bytes, &id, &cfg.decode).unwrap());
    drop(bytes);
    let opts = normalise::NormaliseOpts {
        cfg: cfg.normalise.clone(),
        plan,
        fixed_size: None,
        keep_input: false,
        task: spec.task,
    };
    let (prep, norm) = peak_above(base, || normalise::run(planes, &opts));
    // As the infer worker does: a copy of the units goes to the model.
    let ((outs, _), inf) = peak_above(base, || {
        let mut units = Vec::new();
        let mut idx = Vec::new();
        for (k, plane) in prep.planes.iter().enumerate() {
            idx.extend(std::iter::repeat_n(k, plane.len()));
            units.extend(plane.iter().cloned());
        }
        infer::run_units_with_codes(model, &units, &idx, (&cfg.infer).into(), false).unwrap()
    });
    let (finished, post) = peak_above(base, || {
        postprocess::assemble(prep, &outs, None, &cfg.postprocess)
    });
    drop(outs);
    let (_, enc) = peak_above(base, || {
        encode::encode(&finished, OutputKind::Denoised, &cfg.instances, "t").unwrap()
    });
    let measured = Cost {
        decode: dec,
        normalise: norm,
        infer: inf,
        postprocess: post,
        encode: enc,
    };
    (measured, est)
}

fn noise(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| ((i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1 << 24) as f32)
        .collect()
}

#[test]
fn the_estimate_bounds_what_each_stage_allocates() {
    let mut cfg = PipelineConfig::load("denoise-fast").unwrap();
    let Arch::UnetDenoiser(d) = &mut cfg.model.arch else {
        unreachable!("denoise-fast runs a unet-denoiser");
    };
    (d.channels, d.blocks) = (vec![4, 8], vec![1, 1]);
    // Units no larger than a forward pass, so that a pass's working memory stays small.
    (cfg.model.tile, cfg.model.tile_overlap) = (128, 16);
    cfg.infer.max_batch_pixels = 1 << 14;
    let model = tiny_model(&cfg);
    let colour = |w: usize, h: usize, alpha: bool| Planes {
        width: w,
        height: h,
        planes: (0..3).map(|c| noise(w * h, c)).collect(),
        alpha: alpha.then(|| vec![1.0; w * h]),
        depth: BitDepth::Eight,
        yuv: None,
    };
    let cases: Vec<(&str, Planes)> = vec![
        ("rgb 8-bit, tiled", colour(1100, 700, false)),
        ("rgba 8-bit", colour(500, 400, true)),
        (
            "grey 16-bit, tiled",
            Planes::grey(900, 1000, noise(900_000, 9)).with_depth(BitDepth::Sixteen),
        ),
        ("thin grey", Planes::grey(3, 30_000, noise(90_000, 5))),
    ];
    let mut wrong = Vec::new();
    for blend in [true, false] {
        cfg.infer.sure_blend = blend;
        for (name, planes) in &cases {
            let (m, e) = measure(&cfg, model.as_ref(), planes.clone());
            let stages = [
                ("decode", m.decode, e.decode),
                ("normalise", m.normalise, e.normalise),
                ("infer", m.infer, e.infer + PASS_SLACK),
                ("postprocess", m.postprocess, e.postprocess + PASS_SLACK),
                ("encode", m.encode, e.encode + PASS_SLACK),
            ];
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            for (stage, got, bound) in stages {
                println!(
                    "{name} (blend {blend}): {stage} measured {:.1} MiB, estimated {:.1} MiB",
                    mib(got),
                    mib(bound)
                );
                if got > bound {
                    wrong.push(format!(
                        "{name} (blend {blend}): {stage} allocated {:.2} MiB, estimated {:.2}",
                        mib(got),
                        mib(bound)
                    ));
                }
            }
            // The peak the budget is checked against is not far above the real one.
            let (got, est) = (m.peak(), e.peak());
            println!(
                "{name} (blend {blend}): peak measured {:.1} MiB, estimated {:.1} MiB",
                mib(got),
                mib(est)
            );
            if est > 2 * got + PASS_SLACK {
                wrong.push(format!(
                    "{name} (blend {blend}): estimate {:.1} MiB for a peak of {:.1} MiB",
                    mib(est),
                    mib(got)
                ));
            }
        }
    }
    wrong.extend(objects_within_the_estimate());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Cutting a segmentation into objects (`--emit instances`) allocates within the encode
/// stage's estimate for a segmenter: on a frame all foreground (one plateau, the longest
/// walk), on a grid of touching squares (thousands of objects) and on scattered specks.
/// Returns what went over.
fn objects_within_the_estimate() -> Vec<String> {
    let cfg = PipelineConfig::load("segment-nuclei").unwrap();
    let (w, h) = (700, 500);
    let shape = Shape {
        plan: TilePlan::for_pipeline(&cfg, 4),
        fixed_size: None,
        keep_input: false,
    };
    let header = header(
        &encode_png(&Planes::grey(w, h, vec![0.0; w * h]), "t").unwrap(),
        "t",
    );
    let est = estimate(&header.unwrap(), 0, &cfg, &shape).encode;
    let squares: Vec<f32> = (0..w * h)
        .map(|i| f32::from(((i % w) / 6 + (i / w) / 6) % 2 == 0 || (i % w) % 6 == 0))
        .collect();
    let cases = [
        ("all foreground", vec![1.0; w * h]),
        ("touching squares", squares),
        (
            "specks",
            noise(w * h, 3)
                .iter()
                .map(|&v| f32::from(v > 0.6))
                .collect(),
        ),
    ];
    let mut wrong = Vec::new();
    for (name, prob) in cases {
        let finished = postprocess::Finished {
            planes: Planes::grey(w, h, prob),
            code: None,
            input: None,
        };
        let base = LIVE.load(Ordering::SeqCst);
        let (_, got) = peak_above(base, || {
            encode::encode(&finished, OutputKind::Instances, &cfg.instances, "t").unwrap()
        });
        println!(
            "objects, {name}: measured {:.1} MiB, encode estimated {:.1} MiB",
            got as f64 / (1 << 20) as f64,
            est as f64 / (1 << 20) as f64
        );
        if got > est {
            wrong.push(format!(
                "objects, {name}: allocated {got} bytes, estimated {est}"
            ));
        }
    }
    wrong
}
