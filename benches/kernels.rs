//! Kernel benchmarks: candle's conv2d / conv_transpose2d against ours (forward, and forward +
//! backward), candle's matmul + bias against our fused linear op (the unpacked dot-product
//! kernel forward), and one AdamW step with candle ops against the fused in-place kernel, on
//! the layer shapes of the `conv-ae-ref` and `dense-ae-ref` networks and of the shipped
//! denoiser (which runs these same kernels). Not run in CI.

use aestream::kernels::conv::{conv2d, conv_transpose2d, Act};
use aestream::kernels::linear::linear_act;
use aestream::model::reference::DENSE_WIDTHS;
use aestream::train::adamw::{AdamW, AdamWParams};
use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// (name, batch, cin, cout, side, stride): the reference conv autoencoder's convolutions.
const CONVS: [(&str, usize, usize, usize, usize, usize); 3] = [
    ("enc2_32to64_s2_64px", 8, 32, 64, 64, 2),
    ("enc3_64to64_s2_32px", 8, 64, 64, 32, 2),
    ("out_32to1_s1_64px", 8, 32, 1, 64, 1),
];

fn convs(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("conv2d");
    g.sample_size(10);
    for (name, b, cin, cout, s, stride) in CONVS {
        let x = Tensor::rand(0f32, 1., (b, cin, s, s), &dev).unwrap();
        let w = Var::randn(0f32, 0.1, (cout, cin, 3, 3), &dev).unwrap();
        let o = s / stride;
        g.throughput(Throughput::Elements(
            (2 * b * cout * o * o * cin * 9) as u64,
        ));
        g.bench_function(format!("{name}/candle"), |bn| {
            bn.iter(|| x.conv2d(&w, 1, stride, 1, 1).unwrap())
        });
        g.bench_function(format!("{name}/ours"), |bn| {
            bn.iter(|| conv2d(&x, &w, None, stride, 1).unwrap())
        });
        g.bench_function(format!("{name}/candle_fwd_bwd"), |bn| {
            bn.iter(|| backward_of(x.conv2d(&w, 1, stride, 1, 1)))
        });
        g.bench_function(format!("{name}/ours_fwd_bwd"), |bn| {
            bn.iter(|| backward_of(conv2d(&x, &w, None, stride, 1)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("conv_transpose2d");
    g.sample_size(10);
    // The decoder's two upsampling layers: 16→32 px (64→64) and 32→64 px (64→32).
    for (name, b, cin, cout, s) in [
        ("dec1_64to64_16px", 8, 64, 64, 16),
        ("dec2_64to32_32px", 8, 64, 32, 32),
    ] {
        let x = Tensor::rand(0f32, 1., (b, cin, s, s), &dev).unwrap();
        let w = Var::randn(0f32, 0.1, (cin, cout, 3, 3), &dev).unwrap();
        g.throughput(Throughput::Elements(
            (2 * b * cin * s * s * cout * 9) as u64,
        ));
        g.bench_function(format!("{name}/candle"), |bn| {
            bn.iter(|| x.conv_transpose2d(&w, 1, 1, 2, 1).unwrap())
        });
        g.bench_function(format!("{name}/ours"), |bn| {
            bn.iter(|| conv_transpose2d(&x, &w, None, 2, 1, 1).unwrap())
        });
        g.bench_function(format!("{name}/candle_fwd_bwd"), |bn| {
            bn.iter(|| backward_of(x.conv_transpose2d(&w, 1, 1, 2, 1)))
        });
        g.bench_function(format!("{name}/ours_fwd_bwd"), |bn| {
            bn.iter(|| backward_of(conv_transpose2d(&x, &w, None, 2, 1, 1)))
        });
    }
    g.finish();
}

/// The denoiser's layers on a 256×256 frame (its levels run at 1/2, 1/4, 1/8 resolution):
/// (name, cin, cout, input side, kernel, transposed).
const DENOISER: [(&str, usize, usize, usize, usize, bool); 4] = [
    ("res3x3_64to64_128px", 64, 64, 128, 3, false),
    ("res3x3_192to192_32px", 192, 192, 32, 3, false),
    ("down2x2_64to128_128px", 64, 128, 128, 2, false),
    ("up2x2_128to64_64px", 128, 64, 64, 2, true),
];

fn denoiser_layers(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("denoiser_layers");
    g.sample_size(10);
    let b = 2;
    for (name, cin, cout, s, k, transposed) in DENOISER {
        let x = Tensor::rand(0f32, 1., (b, cin, s, s), &dev).unwrap();
        let (stride, pad) = if k == 2 { (2, 0) } else { (1, 1) };
        let wshape = if transposed {
            (cin, cout, k, k)
        } else {
            (cout, cin, k, k)
        };
        let w = Tensor::randn(0f32, 0.1, wshape, &dev).unwrap();
        let bias = Tensor::zeros(cout, candle_core::DType::F32, &dev).unwrap();
        g.bench_function(format!("{name}/candle"), |bn| {
            bn.iter(|| {
                if transposed {
                    x.conv_transpose2d(&w, pad, 0, stride, 1).unwrap()
                } else {
                    x.conv2d(&w, pad, stride, 1, 1).unwrap()
                }
            })
        });
        g.bench_function(format!("{name}/ours"), |bn| {
            bn.iter(|| {
                if transposed {
                    conv_transpose2d(&x, &w, Some(&bias), stride, pad, 0).unwrap()
                } else {
                    conv2d(&x, &w, Some(&bias), stride, pad).unwrap()
                }
            })
        });
    }
    g.finish();
}

/// The dense reference net's layers at batch 64: candle's matmul + bias against our fused op,
/// forward, and forward + backward.
fn linear(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("linear_b64");
    g.sample_size(10);
    for w in [[625, 2000], [2000, 1000], [1000, 2000], [2000, 625]] {
        let (k, m) = (w[0], w[1]);
        let x = Tensor::rand(0f32, 1., (64, k), &dev).unwrap();
        let wt = Var::randn(0f32, 0.02, (m, k), &dev).unwrap();
        let b = Var::zeros(m, candle_core::DType::F32, &dev).unwrap();
        g.throughput(Throughput::Elements((2 * 64 * k * m) as u64));
        let name = format!("{k}to{m}");
        g.bench_function(format!("{name}/candle"), |bn| {
            bn.iter(|| {
                x.matmul(&wt.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap()
                    .relu()
                    .unwrap()
            })
        });
        g.bench_function(format!("{name}/ours"), |bn| {
            bn.iter(|| linear_act(&x, &wt, &b, Act::Relu).unwrap())
        });
        g.bench_function(format!("{name}/ours_fwd_bwd"), |bn| {
            bn.iter(|| backward_of(linear_act(&x, &wt, &b, Act::Relu)))
        });
    }
    g.finish();
}

/// Forward result → summed and back-propagated: the backward half of a `fwd_bwd` bench.
fn backward_of(y: candle_core::Result<Tensor>) {
    y.unwrap().sum_all().unwrap().backward().unwrap();
}

fn adamw(c: &mut Criterion) {
    let dev = Device::Cpu;
    // The dense reference autoencoder's weights and biases, with a gradient for each.
    let vars: Vec<(String, Var)> = DENSE_WIDTHS
        .windows(2)
        .enumerate()
        .flat_map(|(i, w)| {
            [
                (
                    format!("fc{i}.weight"),
                    Var::randn(0f32, 0.01, (w[1], w[0]), &dev).unwrap(),
                ),
                (
                    format!("fc{i}.bias"),
                    Var::zeros(w[1], candle_core::DType::F32, &dev).unwrap(),
                ),
            ]
        })
        .collect();
    let loss = vars
        .iter()
        .map(|(_, v)| v.as_tensor().sqr().unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let params: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut g = c.benchmark_group("adamw_dense_ae_ref");
    g.sample_size(10);
    g.throughput(Throughput::Elements(params as u64));
    let mut old = AdamW::with_candle_ops(vars.clone(), AdamWParams::default()).unwrap();
    g.bench_function("candle_ops", |bn| bn.iter(|| old.step(&grads).unwrap()));
    let mut new = AdamW::new(vars, AdamWParams::default()).unwrap();
    g.bench_function("fused_inplace", |bn| bn.iter(|| new.step(&grads).unwrap()));
    g.finish();
}

criterion_group!(benches, convs, denoiser_layers, linear, adamw);
criterion_main!(benches);
