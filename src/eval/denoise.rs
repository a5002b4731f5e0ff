//! Evaluating a denoiser (or inpainter): every clean image of a folder is corrupted (seeded
//! per image), run through the same tiled inference the pipeline uses, and scored by PSNR and
//! SSIM per image and on average, input and output alike.

use std::time::Instant;

use rand::SeedableRng;

use super::montage::{tile_of, write_montage, Tile, MONTAGE_COLUMNS};
use super::{name_of, quantise, DenoiseScores, EvalArgs, EvalReport, ImageScore, Noise};
use crate::config::{ColourMode, PipelineConfig};
use crate::error::{Error, Result};
use crate::frame::{list_images, read_image, Planes};
use crate::metrics;
use crate::model::Model;
use crate::stage::{infer, tiling::TilePlan};

pub(super) fn evaluate_denoise(
    cfg: &PipelineConfig,
    model: &dyn Model,
    args: &EvalArgs,
) -> Result<EvalReport> {
    let noise = args.noise.unwrap_or(Noise::Gaussian { sigma: 25.0 });
    let files = list_images(&args.data)?;
    if files.is_empty() {
        return Err(Error::Other(format!(
            "{}: no images found",
            args.data.display()
        )));
    }
    let spec = model.spec();
    let plan = TilePlan::for_pipeline(cfg, spec.size_multiple);
    let bar = args
        .progress
        .then(|| indicatif::ProgressBar::new(files.len() as u64));
    let started = Instant::now();
    let mut images = Vec::new();
    let mut montage_rows: Vec<(usize, Tile)> = Vec::new();
    let mut mse_sum = 0.0;
    for (i, path) in files.iter().enumerate() {
        let mut clean = read_image(path, crate::stage::decode::limits(&cfg.decode))?;
        if args.grey || cfg.normalise.colour == ColourMode::Grey {
            clean = Planes::grey(clean.width, clean.height, clean.luma());
        }
        for p in clean.planes.iter_mut() {
            quantise(p);
        }
        let (w, h) = (clean.width, clean.height);
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(i as u64));
        let mut noisy = clean.planes.clone();
        let mut out = Vec::with_capacity(noisy.len());
        for plane in noisy.iter_mut() {
            noise.apply(plane, &mut rng);
            let mut o = infer::run_plane(model, plane, w, h, &plan, (&cfg.infer).into())?;
            quantise(&mut o);
            out.push(o);
        }
        let cat = |v: &[Vec<f32>]| v.concat();
        let (c, n, o) = (cat(&clean.planes), cat(&noisy), cat(&out));
        let ssim_of = |x: &[Vec<f32>]| {
            x.iter()
                .zip(&clean.planes)
                .map(|(a, b)| metrics::ssim(a, b, w, h))
                .sum::<f64>()
                / x.len() as f64
        };
        if montage_rows.len() < 3 * MONTAGE_COLUMNS {
            let grey = |p: &[Vec<f32>]| {
                Planes {
                    width: w,
                    height: h,
                    planes: p.to_vec(),
                    alpha: None,
                    depth: clean.depth,
                    yuv: None,
                }
                .luma()
            };
            montage_rows.push((0, tile_of(&grey(&clean.planes), w, h)));
            montage_rows.push((1, tile_of(&grey(&noisy), w, h)));
            montage_rows.push((2, tile_of(&grey(&out), w, h)));
        }
        mse_sum += metrics::mse(&o, &c);
        images.push(ImageScore {
            name: name_of(path),
            width: w,
            height: h,
            psnr_input: metrics::psnr(&n, &c),
            psnr: metrics::psnr(&o, &c),
            ssim_input: ssim_of(&noisy),
            ssim: ssim_of(&out),
        });
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let n = images.len() as f64;
    let mean = |f: fn(&ImageScore) -> f64| images.iter().map(f).sum::<f64>() / n;
    if let Some(m) = &args.montage {
        write_montage(m, &montage_rows, &["clean", noise.row_label(), "output"])?;
    }
    Ok(EvalReport {
        pipeline: cfg.name.clone(),
        data: args.data.display().to_string(),
        noise,
        frames: images.len(),
        mse: mse_sum / n,
        seconds,
        seconds_per_frame: seconds / n,
        denoise: Some(DenoiseScores {
            grey: args.grey,
            psnr_input: mean(|s| s.psnr_input),
            psnr: mean(|s| s.psnr),
            ssim_input: mean(|s| s.ssim_input),
            ssim: mean(|s| s.ssim),
            images,
        }),
        reconstruct: None,
        segment: None,
    })
}
