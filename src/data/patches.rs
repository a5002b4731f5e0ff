//! Training data for the denoiser: image folders → grey planes → random clean/noisy patches.
//! Used by offline training and by the online fine-tuner, which fills its replay buffer with
//! the same `TrainImage`s.

use std::path::{Path, PathBuf};

use rand::Rng;

use crate::error::{Error, Result};
use crate::frame::{list_images, read_image, resize_plane, DecodeLimits};
use crate::stage::corrupt;

/// One training image as grey planes: grey images give one, colour images their luma and
/// each of R, G, B (the model runs per channel on colour frames, so it should see channels).
pub struct TrainImage {
    pub path: PathBuf,
    pub w: usize,
    pub h: usize,
    pub planes: Vec<Vec<f32>>,
}

pub fn load_folder(dir: &Path) -> Result<Vec<TrainImage>> {
    let files = list_images(dir)?;
    if files.is_empty() {
        return Err(Error::Other(format!("{}: no images found", dir.display())));
    }
    let mut out = Vec::new();
    for path in files {
        let p = read_image(&path, DecodeLimits::default())?;
        let mut planes = vec![p.luma()];
        if p.is_colour() {
            planes.extend(p.planes.iter().cloned());
        }
        out.push(TrainImage {
            path,
            w: p.width,
            h: p.height,
            planes,
        });
    }
    Ok(out)
}

/// The images and, for each factor in `scales` other than 1, an antialiased downscaled copy
/// (copies smaller than `min_side` are left out). Named `NAME@0.5` etc. in logs.
pub fn with_scales(images: Vec<TrainImage>, scales: &[f32], min_side: usize) -> Vec<TrainImage> {
    let mut out = Vec::with_capacity(images.len() * scales.len());
    for img in &images {
        for &s in scales.iter().filter(|&&s| s < 1.0) {
            let (w, h) = (
                (img.w as f32 * s).round() as usize,
                (img.h as f32 * s).round() as usize,
            );
            if w < min_side || h < min_side {
                continue;
            }
            let mut name = img.path.clone().into_os_string();
            name.push(format!("@{s}"));
            out.push(TrainImage {
                path: name.into(),
                w,
                h,
                planes: img
                    .planes
                    .iter()
                    .map(|p| resize_plane(p, img.w, img.h, w, h))
                    .collect(),
            });
        }
    }
    if scales.contains(&1.0) {
        out.splice(0..0, images);
    }
    out
}

/// Where pixel `(x, y)` of a `p × p` patch reads from under symmetry `t` (0–7) of the square:
/// bit 0 transposes, bit 1 mirrors x, bit 2 mirrors y.
pub fn symmetry(t: u8, x: usize, y: usize, p: usize) -> (usize, usize) {
    let (mut sx, mut sy) = if t & 1 == 1 { (y, x) } else { (x, y) };
    if t & 2 == 2 {
        sx = p - 1 - sx;
    }
    if t & 4 == 4 {
        sy = p - 1 - sy;
    }
    (sx, sy)
}

/// Draws random patches, area-weighted over images, with random flips and rotations.
pub struct PatchSampler<'a> {
    images: Vec<&'a TrainImage>,
    cumulative: Vec<f64>,
    patch: usize,
}

impl<'a> PatchSampler<'a> {
    pub fn new(images: &'a [TrainImage], patch: usize) -> Result<Self> {
        let images: Vec<&TrainImage> = images
            .iter()
            .filter(|i| i.w >= patch && i.h >= patch)
            .collect();
        if images.is_empty() {
            return Err(Error::Other(format!(
                "no training image is at least {patch}×{patch} pixels"
            )));
        }
        let mut acc = 0.0;
        let cumulative = images
            .iter()
            .map(|i| {
                acc += (i.w * i.h) as f64;
                acc
            })
            .collect();
        Ok(Self {
            images,
            cumulative,
            patch,
        })
    }

    /// One clean patch, `patch × patch`, row-major.
    pub fn clean<R: Rng>(&self, rng: &mut R) -> Vec<f32> {
        let total = *self.cumulative.last().unwrap_or(&1.0);
        let r = rng.random::<f64>() * total;
        let idx = self
            .cumulative
            .partition_point(|&c| c <= r)
            .min(self.images.len() - 1);
        let img = self.images[idx];
        let plane = &img.planes[rng.random_range(0..img.planes.len())];
        let p = self.patch;
        let x0 = rng.random_range(0..=img.w - p);
        let y0 = rng.random_range(0..=img.h - p);
        let t = rng.random_range(0..8u8);
        let mut out = vec![0f32; p * p];
        for y in 0..p {
            for x in 0..p {
                let (sx, sy) = symmetry(t, x, y, p);
                out[y * p + x] = plane[(y0 + sy) * img.w + x0 + sx];
            }
        }
        out
    }

    /// A batch of (noisy, clean) patches, σ uniform in [0, sigma_max] per patch, quantised
    /// to 8-bit levels like a noisy file.
    /// `n` clean patches, and copies that lost a random fraction in `[lo, hi]` of their pixels
    /// (set to 0, "missing").
    pub fn masked_batch<R: Rng>(
        &self,
        rng: &mut R,
        n: usize,
        lo: f32,
        hi: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let mut masked = Vec::with_capacity(n * self.patch * self.patch);
        let mut clean = Vec::with_capacity(n * self.patch * self.patch);
        for _ in 0..n {
            let c = self.clean(rng);
            let mut x = c.clone();
            let p = lo + rng.random::<f32>() * (hi - lo).max(0.0);
            corrupt::mask(&mut x, p, rng);
            masked.extend(x);
            clean.extend(c);
        }
        (masked, clean)
    }

    pub fn batch<R: Rng>(&self, rng: &mut R, n: usize, sigma_max: f32) -> (Vec<f32>, Vec<f32>) {
        let (noisy, clean, _) = self.batch_with_sigmas(rng, n, sigma_max);
        (noisy, clean)
    }

    /// [`Self::batch`], also returning each patch's σ (0–255 scale).
    pub fn batch_with_sigmas<R: Rng>(
        &self,
        rng: &mut R,
        n: usize,
        sigma_max: f32,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut noisy = Vec::with_capacity(n * self.patch * self.patch);
        let mut clean = Vec::with_capacity(n * self.patch * self.patch);
        let mut sigmas = Vec::with_capacity(n);
        for _ in 0..n {
            let c = self.clean(rng);
            let mut x = c.clone();
            let sigma = rng.random::<f32>() * sigma_max;
            corrupt::gaussian(&mut x, sigma, true, rng);
            noisy.extend(x);
            clean.extend(c);
            sigmas.push(sigma);
        }
        (noisy, clean, sigmas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkerboard(w: usize, h: usize) -> TrainImage {
        TrainImage {
            path: PathBuf::from("board.png"),
            w,
            h,
            planes: vec![(0..w * h).map(|i| ((i % w + i / w) % 2) as f32).collect()],
        }
    }

    /// Downscaled copies have the scaled size, are antialiased (a one-pixel checkerboard
    /// halves to flat grey, not to an aliased pattern), and copies too small are left out.
    #[test]
    fn scaled_copies_are_area_filtered() {
        let out = with_scales(vec![checkerboard(64, 48)], &[1.0, 0.5, 0.25], 16);
        assert_eq!(out.len(), 2, "the 16×12 copy is below the minimum side");
        assert_eq!((out[0].w, out[0].h), (64, 48));
        assert_eq!((out[1].w, out[1].h), (32, 24));
        assert!(out[1].path.to_string_lossy().ends_with("@0.5"));
        let half = &out[1].planes[0];
        let worst = half.iter().map(|v| (v - 0.5).abs()).fold(0f32, f32::max);
        assert!(
            worst < 0.05,
            "downscaled checkerboard strays {worst} from grey"
        );
        // Without 1.0 in the list, only the copies remain.
        let only = with_scales(vec![checkerboard(64, 48)], &[0.5], 16);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].w, 32);
    }
}
