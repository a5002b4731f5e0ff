//! `aestream eval`: corrupt each clean image of a folder, run the model, measure.
//!
//! The corrupted input is quantised to 8 bits (as a noisy file would be) and so is the model's
//! output (as the pipeline writes it), so the numbers are those of the files a user gets.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;

use crate::config::{ColourMode, PipelineConfig};
use crate::error::{Error, Result};
use crate::frame::{list_images, read_image, Planes};
use crate::metrics;
use crate::model::{Model, Task};
use crate::stage::{corrupt, infer, tiling::TilePlan};
use crate::train::dataset::{self, Sample};

/// A corruption given on the command line: `gaussian:SIGMA`, `salt-pepper:P`, `mask:P`, `none`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Noise {
    None,
    Gaussian { sigma: f32 },
    SaltPepper { p: f32 },
    Mask { p: f32 },
}

impl std::str::FromStr for Noise {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "none" {
            return Ok(Noise::None);
        }
        let (kind, v) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected KIND:VALUE, e.g. gaussian:25"))?;
        let v: f32 = v
            .parse()
            .map_err(|_| format!("{s:?}: {v:?} is not a number"))?;
        let unit = |v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(format!("{s:?}: the fraction must be between 0 and 1"))
            }
        };
        match kind {
            "gaussian" if v >= 0.0 && v.is_finite() => Ok(Noise::Gaussian { sigma: v }),
            "gaussian" => Err(format!("{s:?}: σ must be ≥ 0")),
            "salt-pepper" => Ok(Noise::SaltPepper { p: unit(v)? }),
            "mask" => Ok(Noise::Mask { p: unit(v)? }),
            _ => Err(format!(
                "{s:?}: unknown noise {kind:?} (gaussian, salt-pepper, mask, none)"
            )),
        }
    }
}

impl Noise {
    fn apply<R: rand::Rng>(&self, plane: &mut [f32], rng: &mut R) {
        match *self {
            Noise::None => {}
            Noise::Gaussian { sigma } => corrupt::gaussian(plane, sigma, true, rng),
            Noise::SaltPepper { p } => corrupt::salt_pepper(plane, p, rng),
            Noise::Mask { p } => {
                corrupt::mask(plane, p, rng);
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageScore {
    pub name: String,
    pub width: usize,
    pub height: usize,
    pub psnr_input: f64,
    pub psnr: f64,
    pub ssim_input: f64,
    pub ssim: f64,
}

/// The JSON `aestream eval --json` prints: common fields, then the task's scores.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub pipeline: String,
    pub data: String,
    pub noise: Noise,
    pub frames: usize,
    /// Mean squared error per pixel of the output against the clean frame, [0, 1] scale.
    pub mse: f64,
    pub seconds: f64,
    pub seconds_per_frame: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub denoise: Option<DenoiseScores>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub reconstruct: Option<ReconScores>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub segment: Option<SegmentScores>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DenoiseScores {
    pub grey: bool,
    pub psnr_input: f64,
    pub psnr: f64,
    pub ssim_input: f64,
    pub ssim: f64,
    pub images: Vec<ImageScore>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconScores {
    /// Values per frame in the code.
    pub code_len: usize,
    /// MSE of a PCA with `code_len` components fitted on `--pca-fit`, and `mse / pca_mse`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pca_mse: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pca_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pca_fit: Option<String>,
    /// Fraction of code values with |h| < 0.01 over all frames.
    pub sparsity: f64,
    /// Mean fraction of units active (|h| ≥ 0.01) per frame.
    pub active_per_frame: f64,
    /// 5-NN accuracy on the codes, fitted on `knn_fit`'s codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn5_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn_fit: Option<String>,
    /// The same classifier on raw pixels (the resized frames), for comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knn5_accuracy_pixels: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentScores {
    pub iou: f64,
    pub dice: f64,
    /// Fraction of pixels labelled correctly.
    pub pixel_accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<[usize; 4]>,
}

pub struct EvalArgs {
    pub data: PathBuf,
    /// `None`: the task's default (Gaussian σ=25 for denoisers, none otherwise).
    pub noise: Option<Noise>,
    pub seed: u64,
    /// Turn colour images grey before corrupting them (as the PEERS table does).
    pub grey: bool,
    pub progress: bool,
    pub pca_fit: Option<PathBuf>,
    /// Labels for a folder of frames: a CSV of `relative/path,label` lines.
    pub labels: Option<PathBuf>,
    /// Where the k-NN classifier's labelled codes come from (default: the training split of
    /// labelled CSV data).
    pub knn_fit: Option<PathBuf>,
    pub masks: Option<PathBuf>,
    pub crop: Option<[usize; 4]>,
    pub montage: Option<PathBuf>,
}

fn quantise(p: &mut [f32]) {
    p.iter_mut()
        .for_each(|v| *v = (v.clamp(0.0, 1.0) * 255.0).round() / 255.0);
}

/// Evaluates a pipeline's model on `args.data` as its task calls for.
pub fn evaluate(cfg: &PipelineConfig, model: &dyn Model, args: &EvalArgs) -> Result<EvalReport> {
    match model.spec().task {
        Task::Denoise => evaluate_denoise(cfg, model, args),
        Task::Reconstruct => evaluate_reconstruct(cfg, model, args),
        Task::Segment => evaluate_segment(cfg, model, args),
    }
}

fn evaluate_denoise(
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
        write_montage(m, &montage_rows, 3)?;
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

/// Frames per montage row.
const MONTAGE_COLUMNS: usize = 10;

/// One montage cell: a grey image.
#[derive(Debug, Clone)]
pub struct Tile {
    pub w: usize,
    pub h: usize,
    pub data: Vec<f32>,
}

/// A frame as a montage cell: large frames are shrunk to at most 160 pixels a side, small
/// ones enlarged by whole pixels (nearest) to at least 75.
fn tile_of(data: &[f32], w: usize, h: usize) -> Tile {
    let side = w.max(h);
    if side > 160 {
        let (nw, nh) = ((w * 160 / side).max(1), (h * 160 / side).max(1));
        return Tile {
            w: nw,
            h: nh,
            data: crate::frame::resize_plane(data, w, h, nw, nh),
        };
    }
    let k = 75usize.div_ceil(side).max(1);
    let (nw, nh) = (w * k, h * k);
    let mut out = vec![0f32; nw * nh];
    for y in 0..nh {
        for x in 0..nw {
            out[y * nw + x] = data[(y / k) * w + x / k];
        }
    }
    Tile {
        w: nw,
        h: nh,
        data: out,
    }
}

/// Writes a grid: row r holds the tiles tagged r, in order; 4-pixel white gaps.
pub fn write_montage(path: &Path, tiles: &[(usize, Tile)], rows: usize) -> Result<()> {
    let gap = 4;
    let cols = (0..rows)
        .map(|r| tiles.iter().filter(|(t, _)| *t == r).count())
        .max()
        .unwrap_or(0);
    let cw = tiles.iter().map(|(_, t)| t.w).max().unwrap_or(1);
    let ch = tiles.iter().map(|(_, t)| t.h).max().unwrap_or(1);
    let used_rows: Vec<usize> = (0..rows)
        .filter(|r| tiles.iter().any(|(t, _)| t == r))
        .collect();
    let (w, h) = (cols * (cw + gap) + gap, used_rows.len() * (ch + gap) + gap);
    let mut img = vec![1f32; w * h];
    for (ri, r) in used_rows.iter().enumerate() {
        for (ci, (_, t)) in tiles.iter().filter(|(t, _)| t == r).enumerate() {
            let (x0, y0) = (gap + ci * (cw + gap), gap + ri * (ch + gap));
            for y in 0..t.h {
                for x in 0..t.w {
                    img[(y0 + y) * w + x0 + x] = t.data[y * t.w + x];
                }
            }
        }
    }
    let png = crate::frame::encode_png(&Planes::grey(w, h, img), &path.display().to_string())?;
    Ok(crate::runtime::write_atomic(path, &png)?)
}

/// Labels for a folder of frames from a `name,label` CSV.
fn read_labels(path: &Path, samples: &[Sample]) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut map = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let Some((name, label)) = line.rsplit_once(',') else {
            continue;
        };
        let l: u8 = label.trim().parse().map_err(|_| {
            Error::Other(format!(
                "{} line {}: label {label:?} is not 0-255",
                path.display(),
                i + 1
            ))
        })?;
        map.insert(name.trim().to_string(), l);
    }
    samples
        .iter()
        .map(|s| {
            map.get(&s.name)
                .copied()
                .ok_or_else(|| Error::Other(format!("{}: no label for {}", path.display(), s.name)))
        })
        .collect()
}

/// Loads frames and their labels; labelled CSV data with `train.per_class_train` is split into
/// (test frames, training frames) the way training split it.
fn load_labelled(path: &Path, cfg: &PipelineConfig) -> Result<(Vec<Sample>, Vec<Sample>)> {
    let all = dataset::load_samples(path, &[])?;
    let pc = cfg.train.per_class_train;
    if pc > 0 && all.iter().all(|s| s.label.is_some()) {
        let (train, test) = dataset::split(all, pc, cfg.train.val_fraction);
        return Ok((test, train));
    }
    Ok((all, Vec::new()))
}

fn evaluate_reconstruct(
    cfg: &PipelineConfig,
    model: &dyn Model,
    args: &EvalArgs,
) -> Result<EvalReport> {
    let noise = args.noise.unwrap_or(Noise::None);
    let size = model
        .spec()
        .fixed_size
        .ok_or_else(|| Error::Other(format!("{}: the model needs `model.size`", cfg.origin)))?;
    let started = Instant::now();
    let (mut samples, split_fit) = load_labelled(&args.data, cfg)?;
    if samples.is_empty() {
        return Err(Error::Other(format!("{}: no frames", args.data.display())));
    }
    if let Some(l) = &args.labels {
        let labels = read_labels(l, &samples)?;
        samples
            .iter_mut()
            .zip(labels)
            .for_each(|(s, l)| s.label = Some(l));
    }
    let clean: Vec<Vec<f32>> = samples
        .iter()
        .map(|s| {
            let mut v = dataset::resized(s, size);
            quantise(&mut v);
            v
        })
        .collect();
    let noisy: Vec<Vec<f32>> = clean
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = c.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(i as u64));
            noise.apply(&mut v, &mut rng);
            v
        })
        .collect();
    let stats = crate::train::recon_stats(model, &noisy, size)?;
    let n = clean.len();
    let mse = clean
        .iter()
        .zip(&stats.outputs)
        .map(|(c, o)| {
            let mut o = o.clone();
            quantise(&mut o);
            metrics::mse(&o, c)
        })
        .sum::<f64>()
        / n as f64;
    let code_len = stats.codes.first().map(Vec::len).unwrap_or(0);
    let active_per_frame = stats
        .codes
        .iter()
        .map(|c| c.iter().filter(|v| v.abs() >= 0.01).count() as f64 / c.len().max(1) as f64)
        .sum::<f64>()
        / n as f64;
    // PCA with as many components as the code has values.
    let mut pca_recons = None;
    let (mut pca_mse, mut pca_fit) = (None, None);
    if let Some(fit_path) = &args.pca_fit {
        let (test_part, train_part) = load_labelled(fit_path, cfg)?;
        let fit_samples = if train_part.is_empty() {
            test_part
        } else {
            train_part
        };
        let rows: Vec<Vec<f32>> = fit_samples
            .iter()
            .map(|s| {
                let mut v = dataset::resized(s, size);
                quantise(&mut v);
                v
            })
            .collect();
        let pca =
            crate::analysis::Pca::fit(&rows, code_len.min(rows.len() - 1)).ok_or_else(|| {
                Error::Other(format!(
                    "{}: too few frames to fit a PCA",
                    fit_path.display()
                ))
            })?;
        let recons: Vec<Vec<f32>> = noisy.iter().map(|x| pca.reconstruct(x)).collect();
        let m = clean
            .iter()
            .zip(&recons)
            .map(|(c, r)| {
                let mut r = r.clone();
                quantise(&mut r);
                metrics::mse(&r, c)
            })
            .sum::<f64>()
            / n as f64;
        pca_mse = Some(m);
        pca_fit = Some(format!(
            "{} ({} frames, {} components)",
            fit_path.display(),
            rows.len(),
            code_len.min(rows.len() - 1)
        ));
        pca_recons = Some(recons);
    }
    // k-NN on the codes, fitted on labelled codes from --knn-fit or the data's training split.
    let labels: Option<Vec<u8>> = samples.iter().map(|s| s.label).collect();
    let (mut knn, mut knn_px, mut knn_fit) = (None, None, None);
    if let Some(test_labels) = &labels {
        let fit_samples = match &args.knn_fit {
            Some(p) => {
                knn_fit = Some(p.display().to_string());
                let (a, b) = load_labelled(p, cfg)?;
                if b.is_empty() {
                    a
                } else {
                    b
                }
            }
            None => {
                knn_fit = Some(format!("{} (training split)", args.data.display()));
                split_fit
            }
        };
        let fit_labels: Option<Vec<u8>> = fit_samples.iter().map(|s| s.label).collect();
        if let (Some(fl), false) = (fit_labels, fit_samples.is_empty()) {
            let fit_frames: Vec<Vec<f32>> = fit_samples
                .iter()
                .map(|s| dataset::resized(s, size))
                .collect();
            let fit_stats = crate::train::recon_stats(model, &fit_frames, size)?;
            knn = Some(crate::analysis::knn_accuracy(
                &fit_stats.codes,
                &fl,
                &stats.codes,
                test_labels,
                5,
            ));
            knn_px = Some(crate::analysis::knn_accuracy(
                &fit_frames,
                &fl,
                &clean,
                test_labels,
                5,
            ));
        } else {
            knn_fit = None;
        }
    }
    if let Some(m) = &args.montage {
        let (w, h) = size;
        let mut tiles = Vec::new();
        // Frames spread over the data set, not the first few (often one class or person).
        let cols = n.min(MONTAGE_COLUMNS);
        for i in (0..cols).map(|k| k * n / cols) {
            tiles.push((0, tile_of(&clean[i], w, h)));
            if noise != Noise::None {
                tiles.push((1, tile_of(&noisy[i], w, h)));
            }
            let mut o = stats.outputs[i].clone();
            o.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
            tiles.push((2, tile_of(&o, w, h)));
            if let Some(r) = &pca_recons {
                let mut r = r[i].clone();
                r.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
                tiles.push((3, tile_of(&r, w, h)));
            }
        }
        write_montage(m, &tiles, 4)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        pipeline: cfg.name.clone(),
        data: args.data.display().to_string(),
        noise,
        frames: n,
        mse,
        seconds,
        seconds_per_frame: seconds / n as f64,
        denoise: None,
        reconstruct: Some(ReconScores {
            code_len,
            pca_ratio: pca_mse.filter(|p| *p > 0.0).map(|p| mse / p),
            pca_mse,
            pca_fit,
            sparsity: stats.sparsity,
            active_per_frame,
            knn5_accuracy: knn,
            knn_fit,
            knn5_accuracy_pixels: knn_px,
        }),
        segment: None,
    })
}

fn evaluate_segment(
    cfg: &PipelineConfig,
    model: &dyn Model,
    args: &EvalArgs,
) -> Result<EvalReport> {
    let masks = args.masks.as_ref().ok_or_else(|| Error::Config {
        origin: "--masks".into(),
        message: "segmentation eval needs --masks (a mask file, or a folder of masks named as the images)".into(),
    })?;
    let started = Instant::now();
    let pairs = dataset::load_pairs(&args.data, masks, &cfg.normalise)?;
    let spec = model.spec();
    let plan = TilePlan::for_pipeline(cfg, spec.size_multiple);
    let mut tiles = Vec::new();
    let tally = crate::train::score_segmentation(
        model,
        &pairs,
        &plan,
        (&cfg.infer).into(),
        |x, y| dataset::in_region(args.crop, x, y),
        |pair, prob| {
            if tiles.len() < 3 * MONTAGE_COLUMNS {
                let img: Vec<f32> = pair.image.iter().map(|v| v.clamp(0.0, 1.0)).collect();
                tiles.push((0, tile_of(&img, pair.w, pair.h)));
                tiles.push((1, tile_of(&pair.mask, pair.w, pair.h)));
                let lab: Vec<f32> = prob.iter().map(|&p| f32::from(p > 0.5)).collect();
                tiles.push((2, tile_of(&lab, pair.w, pair.h)));
            }
        },
    )?;
    if let Some(m) = &args.montage {
        write_montage(m, &tiles, 3)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        pipeline: cfg.name.clone(),
        data: args.data.display().to_string(),
        noise: Noise::None,
        frames: pairs.len(),
        mse: tally.squared_error / tally.pixels.max(1) as f64,
        seconds,
        seconds_per_frame: seconds / pairs.len().max(1) as f64,
        denoise: None,
        reconstruct: None,
        segment: Some(SegmentScores {
            iou: tally.overlap.iou(),
            dice: tally.overlap.dice(),
            pixel_accuracy: tally.correct as f64 / tally.pixels.max(1) as f64,
            crop: args.crop,
        }),
    })
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_specs_parse_and_reject() {
        assert_eq!("gaussian:25".parse(), Ok(Noise::Gaussian { sigma: 25.0 }));
        assert_eq!("mask:0.5".parse(), Ok(Noise::Mask { p: 0.5 }));
        assert_eq!("none".parse(), Ok(Noise::None));
        assert!("gaussian".parse::<Noise>().is_err());
        assert!("mask:2".parse::<Noise>().is_err());
        assert!("blur:3".parse::<Noise>().is_err());
    }
}
