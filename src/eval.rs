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
use crate::model::Model;
use crate::stage::{corrupt, infer, tiling::TilePlan};

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

/// The JSON `aestream eval --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub pipeline: String,
    pub data: String,
    pub noise: Noise,
    pub grey: bool,
    pub frames: usize,
    pub psnr_input: f64,
    pub psnr: f64,
    pub ssim_input: f64,
    pub ssim: f64,
    pub seconds: f64,
    pub seconds_per_frame: f64,
    pub images: Vec<ImageScore>,
}

pub struct EvalArgs {
    pub data: PathBuf,
    pub noise: Noise,
    pub seed: u64,
    /// Turn colour images grey before corrupting them (as the PEERS table does).
    pub grey: bool,
    pub progress: bool,
}

fn quantise(p: &mut [f32]) {
    p.iter_mut()
        .for_each(|v| *v = (v.clamp(0.0, 1.0) * 255.0).round() / 255.0);
}

pub fn evaluate(cfg: &PipelineConfig, model: &dyn Model, args: &EvalArgs) -> Result<EvalReport> {
    let files = list_images(&args.data)?;
    if files.is_empty() {
        return Err(Error::Other(format!(
            "{}: no images found",
            args.data.display()
        )));
    }
    let spec = model.spec();
    let plan = TilePlan {
        multiple: spec.size_multiple,
        tile: cfg.model.tile,
        overlap: cfg.model.tile_overlap,
        pad: cfg.normalise.pad,
    };
    let bar = args
        .progress
        .then(|| indicatif::ProgressBar::new(files.len() as u64));
    let started = Instant::now();
    let mut images = Vec::new();
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
            args.noise.apply(plane, &mut rng);
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
    Ok(EvalReport {
        pipeline: cfg.name.clone(),
        data: args.data.display().to_string(),
        noise: args.noise,
        grey: args.grey,
        frames: images.len(),
        psnr_input: mean(|s| s.psnr_input),
        psnr: mean(|s| s.psnr),
        ssim_input: mean(|s| s.ssim_input),
        ssim: mean(|s| s.ssim),
        seconds,
        seconds_per_frame: seconds / n,
        images,
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
