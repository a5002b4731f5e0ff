//! Measurements behind docs/video.md (a report, not a timed benchmark): for 4:2:0 frames of
//! natural colour photos with noise σ 25, how well each colour path denoises,
//! - `yuv`: Y', Cb and Cr each through the grey model at its own size (what `--framing y4m`
//!   does), or
//! - `rgb`: chroma upsampled, converted to RGB, each channel denoised, converted back;
//!
//! under two noise models (σ 25 added to the Y'CbCr planes, as a noise filter on a YUV clip
//! does; σ 25 added to R, G and B before the conversion, as a camera's sensor noise), and how
//! much frame-by-frame denoising of a static scene flickers, with and without `--temporal`.
//!
//! `cargo bench --bench video -- [--pipeline NAME] [--size WxH] [--frames N] [--flicker-only]
//! [IMAGE…]`
//! (default: samples/clean/flower-colour.png; docs/video.md used the validation photos).

use std::path::{Path, PathBuf};
use std::time::Instant;

use aestream::config::PipelineConfig;
use aestream::frame::y4m::planes::{from_rgb, to_rgb};
use aestream::frame::y4m::temporal::Temporal;
use aestream::frame::y4m::{Format, Yuv};
use aestream::frame::{read_image, DecodeLimits, Planes};
use aestream::model::Model;
use aestream::stage::{infer, tiling::TilePlan};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

struct Denoiser {
    cfg: PipelineConfig,
    model: Box<dyn Model>,
    plan: TilePlan,
}

impl Denoiser {
    fn plane(&self, p: &[f32], w: usize, h: usize) -> Vec<f32> {
        infer::run_plane(&*self.model, p, w, h, &self.plan, (&self.cfg.infer).into())
            .expect("denoises")
    }

    /// Every plane at its own size.
    fn yuv(&self, f: &Planes) -> Planes {
        let planes = (0..f.planes.len())
            .map(|i| {
                let (w, h) = f.plane_size(i);
                self.plane(&f.planes[i], w, h)
            })
            .collect();
        quantised(Planes {
            planes,
            ..f.clone()
        })
    }

    /// Through RGB and back.
    fn rgb(&self, f: &Planes) -> Planes {
        let mut rgb = to_rgb(f);
        for p in rgb.planes.iter_mut() {
            *p = self.plane(p, f.width, f.height);
        }
        quantised(from_rgb(&rgb, f.yuv.expect("a YUV frame")))
    }
}

fn quantised(mut p: Planes) -> Planes {
    for plane in p.planes.iter_mut() {
        plane
            .iter_mut()
            .for_each(|v| *v = (*v * 255.0).round().clamp(0.0, 255.0) / 255.0);
    }
    p
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x.clamp(0.0, 1.0) - y.clamp(0.0, 1.0)) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

/// PSNR of Y', of Cb+Cr, and of the frame as RGB.
fn scores(out: &Planes, clean: &Planes) -> [f64; 3] {
    [
        psnr(&out.planes[0], &clean.planes[0]),
        psnr(&out.planes[1..].concat(), &clean.planes[1..].concat()),
        psnr(&to_rgb(out).planes.concat(), &to_rgb(clean).planes.concat()),
    ]
}

fn noisy(clean: &Planes, in_rgb: bool, seed: u64) -> Planes {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = Normal::new(0.0f32, 25.0 / 255.0).unwrap();
    let mut add = |p: &mut Planes| {
        for v in p.planes.iter_mut().flatten() {
            *v = (*v + n.sample(&mut rng)).clamp(0.0, 1.0);
        }
    };
    if in_rgb {
        let mut rgb = quantised(to_rgb(clean));
        add(&mut rgb);
        quantised(from_rgb(&quantised(rgb), clean.yuv.unwrap()))
    } else {
        let mut p = clean.clone();
        add(&mut p);
        quantised(p)
    }
}

/// The centre `w`×`h` of a colour image moved `dx` pixels right, as clean 8-bit 4:2:0
/// studio-range planes.
fn clean_frame(path: &Path, w: usize, h: usize, dx: usize) -> Option<Planes> {
    let img = read_image(path, DecodeLimits::default()).ok()?;
    if !img.is_colour() || img.width < w + dx || img.height < h {
        return None;
    }
    let (x0, y0) = ((img.width - w - dx) / 2 + dx, (img.height - h) / 2);
    let crop = |p: &Vec<f32>| -> Vec<f32> {
        (0..h)
            .flat_map(|y| p[(y0 + y) * img.width + x0..][..w].to_vec())
            .collect()
    };
    let rgb = Planes {
        width: w,
        height: h,
        planes: img.planes.iter().map(crop).collect(),
        ..img
    };
    let yuv = Yuv {
        format: Format::parse("420jpeg").unwrap(),
        full_range: false,
    };
    Some(quantised(from_rgb(&rgb, yuv)))
}

/// Mean absolute difference (0–255) between consecutive frames' luma.
fn flicker(frames: &[Planes]) -> f64 {
    let pairs = frames.windows(2);
    let n = (frames.len() - 1) as f64;
    pairs
        .map(|f| {
            let (a, b) = (&f[0].planes[0], &f[1].planes[0]);
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() as f64)
                .sum::<f64>()
                / a.len() as f64
        })
        .sum::<f64>()
        * 255.0
        / n
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut pipeline, mut size, mut frames, mut images) =
        ("denoise-fast".to_string(), (192, 192), 8usize, Vec::new());
    let mut flicker_only = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pipeline" => pipeline = args.next().expect("a pipeline"),
            "--size" => {
                let s = args.next().expect("WxH");
                let (w, h) = s.split_once('x').expect("WxH");
                size = (w.parse().unwrap(), h.parse().unwrap());
            }
            "--frames" => frames = args.next().expect("N").parse().unwrap(),
            "--flicker-only" => flicker_only = true,
            _ => images.push(PathBuf::from(a)),
        }
    }
    if images.is_empty() {
        images.push(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples/clean/flower-colour.png"),
        );
    }
    let cfg = PipelineConfig::load(&pipeline).unwrap();
    let model = cfg.load_model(None, &candle_core::Device::Cpu).unwrap();
    let plan = TilePlan::for_pipeline(&cfg, model.spec().size_multiple);
    let d = Denoiser { cfg, model, plan };
    let (w, h) = size;
    println!("pipeline {pipeline}, {w}x{h} 4:2:0 crops, noise σ 25 (0-255)");
    println!("PSNR dB: Y' | CbCr | RGB");
    let mut sums = std::collections::BTreeMap::<String, ([f64; 3], f64, usize)>::new();
    let clean_frames: Vec<(PathBuf, Planes)> = images
        .iter()
        .filter_map(|p| clean_frame(p, w, h, 0).map(|f| (p.clone(), f)))
        .collect();
    for (i, (path, clean)) in clean_frames.iter().enumerate().filter(|_| !flicker_only) {
        let name = path.file_name().unwrap().to_string_lossy();
        for in_rgb in [false, true] {
            let noise = if in_rgb {
                "noise in RGB"
            } else {
                "noise in YUV"
            };
            let n = noisy(clean, in_rgb, i as u64);
            let mut rows = vec![("input".to_string(), n.clone(), 0.0)];
            for (path_name, f) in [
                ("yuv", Denoiser::yuv as fn(&Denoiser, &Planes) -> Planes),
                ("rgb", Denoiser::rgb),
            ] {
                let t0 = Instant::now();
                let out = f(&d, &n);
                rows.push((path_name.to_string(), out, t0.elapsed().as_secs_f64()));
            }
            for (path_name, out, secs) in rows {
                let s = scores(&out, clean);
                println!(
                    "{name:40} {noise:13} {path_name:6} {:6.2} {:6.2} {:6.2}  {secs:.2} s",
                    s[0], s[1], s[2]
                );
                let e = sums
                    .entry(format!("{noise:13} {path_name:6}"))
                    .or_insert(([0.0; 3], 0.0, 0));
                (0..3).for_each(|k| e.0[k] += s[k]);
                e.1 += secs;
                e.2 += 1;
            }
        }
    }
    println!("mean over {} images:", clean_frames.len());
    for (k, (s, secs, n)) in &sums {
        let n = *n as f64;
        println!(
            "{k} {:6.2} {:6.2} {:6.2}  {:.2} s/frame",
            s[0] / n,
            s[1] / n,
            s[2] / n,
            secs / n
        );
    }

    // Flicker: a static scene, fresh noise on every frame; then the same scene panning 2 and
    // 7 pixels a frame, where a temporal filter that ghosts would lose PSNR.
    let Some((path, clean)) = clean_frames.first() else {
        return;
    };
    let luma = |fs: &[Planes], clean: &[Planes]| {
        fs.iter()
            .zip(clean)
            .map(|(f, c)| psnr(&f.planes[0], &c.planes[0]))
            .sum::<f64>()
            / fs.len() as f64
    };
    let still: Vec<Planes> = vec![clean.clone(); frames];
    let pan = |step: usize| -> Vec<Planes> {
        (0..frames)
            .filter_map(|t| clean_frame(path, w, h, step * t))
            .collect()
    };
    let scenes = [
        ("static", still),
        ("panning 2 px/frame", pan(2)),
        ("panning 7 px/frame (beyond the search)", pan(7)),
    ];
    for (scene, clean) in scenes {
        if clean.len() < 2 {
            continue;
        }
        let noisy: Vec<Planes> = clean
            .iter()
            .enumerate()
            .map(|(t, c)| noisy(c, false, 100 + t as u64))
            .collect();
        let out: Vec<Planes> = noisy.iter().map(|f| d.yuv(f)).collect();
        println!(
            "{scene} scene, {} frames: flicker (mean |Y'(t+1) - Y'(t)|, 0-255) and Y' PSNR; clean flicker {:.2}",
            clean.len(),
            flicker(&clean)
        );
        println!(
            "  noisy input        {:6.2}  {:6.2} dB",
            flicker(&noisy),
            luma(&noisy, &clean)
        );
        println!(
            "  denoised per frame {:6.2}  {:6.2} dB",
            flicker(&out),
            luma(&out, &clean)
        );
        for n in [1, 2, 4] {
            let mut t = Temporal::new(n);
            let smoothed: Vec<Planes> = out.iter().map(|f| quantised(t.apply(f.clone()))).collect();
            println!(
                "  --temporal {n}       {:6.2}  {:6.2} dB",
                flicker(&smoothed),
                luma(&smoothed, &clean)
            );
        }
    }
}
