//! Benchmarks: the shipped denoiser alone on 256×256 frames, and the whole pipeline
//! (decode → normalise → infer → post-process → encode) through in-memory source and sink.

use std::sync::Arc;

use aestream::config::{OutputKind, PipelineConfig};
use aestream::frame::framing::Framing;
use aestream::frame::{encode_png, Planes};
use aestream::model::Model;
use aestream::runtime::Stop;
use aestream::sink::{Output, Sink};
use aestream::source::stdin::StreamSource;
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn frame(w: usize, h: usize, seed: usize) -> Planes {
    Planes::grey(
        w,
        h,
        (0..w * h)
            .map(|i| (((i * 7919 + seed * 104729) % 251) as f32) / 255.0)
            .collect(),
    )
}

fn model_alone(c: &mut Criterion) {
    let cfg = PipelineConfig::load("denoise").unwrap();
    let model = cfg.load_model(None, &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("model");
    g.sample_size(10);
    for b in [1usize, 8] {
        let x = Tensor::rand(0f32, 1., (b, 256, 256, 1), &Device::Cpu).unwrap();
        g.throughput(Throughput::Elements(b as u64));
        g.bench_function(format!("denoise_256x256_batch{b}"), |bench| {
            bench.iter(|| model.forward(&x).unwrap())
        });
    }
    g.finish();
}

struct NullSink(usize);
impl Sink for NullSink {
    fn write(&mut self, _out: Output) -> aestream::Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn skip(&mut self, _seq: u64, _id: &aestream::frame::FrameId) -> aestream::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> aestream::Result<()> {
        Ok(())
    }
}

fn end_to_end(c: &mut Criterion) {
    let cfg = PipelineConfig::load("denoise").unwrap();
    let model: Arc<dyn Model> = Arc::from(cfg.load_model(None, &Device::Cpu).unwrap());
    let n = 16;
    let mut stream = Vec::new();
    for i in 0..n {
        stream.extend(encode_png(&frame(256, 256, i), "bench").unwrap());
    }
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("png_stream_16x256x256", |bench| {
        bench.iter(|| {
            let src = Box::new(StreamSource::new(
                std::io::Cursor::new(stream.clone()),
                Framing::Concat,
                1 << 30,
            ));
            let gen = aestream::serving::Generation::new(
                cfg.clone(),
                model.clone(),
                aestream::model::version::ModelVersion::loaded("bench", b"", b""),
                1,
            );
            aestream::serving::run(
                aestream::serving::slot(gen),
                src,
                Box::new(NullSink(0)),
                vec![OutputKind::Denoised],
                Default::default(),
                Stop::new(),
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, model_alone, end_to_end);
criterion_main!(benches);
