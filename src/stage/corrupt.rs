//! The corrupt stage: synthetic noise for denoising and inpainting runs (and training).
//!
//! Gaussian noise (σ on the 0–255 scale), salt-and-pepper (fraction p of pixels set to 0 or 1)
//! and random masking (fraction p set to 0, "missing"). Each frame gets its own RNG stream derived
//! from the configured seed and the frame's identity, so a run is repeatable.

use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::config::CorruptConfig;
use crate::frame::{FrameId, Planes};

/// Adds N(0, σ²) noise (σ on the 0–255 scale) in place, clipping to [0, 1]; with `quantise`,
/// values are also rounded to 8-bit levels, as a noisy 8-bit file would hold them.
pub fn gaussian<R: Rng>(plane: &mut [f32], sigma255: f32, quantise: bool, rng: &mut R) {
    if sigma255 <= 0.0 {
        return;
    }
    for v in plane.iter_mut() {
        let n: f32 = rng.sample(StandardNormal);
        let x = *v * 255.0 + sigma255 * n;
        let x = if quantise { x.round() } else { x };
        *v = x.clamp(0.0, 255.0) / 255.0;
    }
}

/// Sets a fraction `p` of pixels to 0 or 1 (equally likely).
pub fn salt_pepper<R: Rng>(plane: &mut [f32], p: f32, rng: &mut R) {
    if p <= 0.0 {
        return;
    }
    for v in plane.iter_mut() {
        if rng.random::<f32>() < p {
            *v = if rng.random::<bool>() { 1.0 } else { 0.0 };
        }
    }
}

/// Sets a fraction `p` of pixels to 0 and returns the mask (1 = kept, 0 = missing).
pub fn mask<R: Rng>(plane: &mut [f32], p: f32, rng: &mut R) -> Vec<f32> {
    plane
        .iter_mut()
        .map(|v| {
            if p > 0.0 && rng.random::<f32>() < p {
                *v = 0.0;
                0.0
            } else {
                1.0
            }
        })
        .collect()
}

/// Where the mask of the input at relative path `rel` is: the same path under `dir`, or the
/// same name with a `.png` extension.
pub fn mask_path(dir: &std::path::Path, rel: &std::path::Path) -> Option<std::path::PathBuf> {
    [dir.join(rel), dir.join(rel).with_extension("png")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Marks the pixels that are black in the mask image at `path` as missing (0) in every plane.
pub fn apply_mask_file(path: &std::path::Path, planes: &mut Planes) -> crate::error::Result<()> {
    let m = crate::frame::read_image(path, Default::default())?;
    if (m.width, m.height) != (planes.width, planes.height) {
        return Err(crate::error::Error::Other(format!(
            "{}: mask is {}×{}, the frame {}×{}",
            path.display(),
            m.width,
            m.height,
            planes.width,
            planes.height
        )));
    }
    let missing: Vec<bool> = m.luma().iter().map(|&v| v < 0.5).collect();
    for p in planes.planes.iter_mut() {
        for (v, &gone) in p.iter_mut().zip(&missing) {
            if gone {
                *v = 0.0;
            }
        }
    }
    Ok(())
}

/// Applies the configured corruptions to every colour plane of a frame.
pub fn apply(cfg: &CorruptConfig, planes: &mut Planes, frame_key: u64) {
    if cfg.is_off() {
        return;
    }
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(cfg.seed ^ frame_key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for plane in planes.planes.iter_mut() {
        gaussian(plane, cfg.gaussian_sigma, false, &mut rng);
        salt_pepper(plane, cfg.salt_pepper, &mut rng);
        if cfg.mask > 0.0 {
            mask(plane, cfg.mask, &mut rng);
        }
    }
}

/// The corrupt stage for one frame: its mask file (inpainting with `--masks`), then the
/// configured corruption, seeded by the frame's sequence number so a rerun is identical.
pub fn frame(
    seq: u64,
    id: &FrameId,
    mask_dir: Option<&std::path::Path>,
    cfg: &CorruptConfig,
    mut planes: Planes,
) -> crate::error::Result<Planes> {
    if let (Some(dir), FrameId::File { rel, .. }) = (mask_dir, id) {
        let path = mask_path(dir, rel).ok_or_else(|| {
            crate::error::Error::Other(format!(
                "{id}: no mask {} in {}",
                rel.display(),
                dir.display()
            ))
        })?;
        apply_mask_file(&path, &mut planes)?;
    }
    apply(cfg, &mut planes, seq);
    Ok(planes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    fn stats(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
        (m, var.sqrt())
    }

    #[test]
    fn gaussian_has_the_requested_sigma() {
        let mut rng = StdRng::seed_from_u64(1);
        // Mid-grey so clipping is negligible at σ = 25.
        let mut p = vec![0.5f32; 200_000];
        gaussian(&mut p, 25.0, false, &mut rng);
        let (m, s) = stats(&p);
        assert!((m - 0.5).abs() < 0.002, "mean {m}");
        assert!((s * 255.0 - 25.0).abs() < 0.3, "sigma {}", s * 255.0);
        let mut q = vec![0.5f32; 1000];
        gaussian(&mut q, 10.0, true, &mut rng);
        assert!(q
            .iter()
            .all(|v| ((v * 255.0) - (v * 255.0).round()).abs() < 1e-3));
    }

    #[test]
    fn salt_pepper_hits_the_requested_fraction() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut p = vec![0.5f32; 100_000];
        salt_pepper(&mut p, 0.1, &mut rng);
        let hit = p.iter().filter(|&&v| v != 0.5).count() as f64 / p.len() as f64;
        assert!((hit - 0.1).abs() < 0.005, "fraction {hit}");
        let white = p.iter().filter(|&&v| v == 1.0).count() as f64;
        let black = p.iter().filter(|&&v| v == 0.0).count() as f64;
        assert!((white / (white + black) - 0.5).abs() < 0.03);
    }

    #[test]
    fn mask_zeroes_the_requested_fraction_and_reports_it() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = vec![0.7f32; 100_000];
        let m = mask(&mut p, 0.25, &mut rng);
        let missing = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((missing - 0.25).abs() < 0.005, "fraction {missing}");
        for (v, k) in p.iter().zip(&m) {
            assert_eq!(*v == 0.0, *k == 0.0);
        }
    }
}
