//! SURE-guided residual blend: gives back, block by block, what a blind denoiser took away as
//! noise where Stein's unbiased risk estimate says it was detail.
//!
//! A blind denoiser guesses the noise level from what it sees; in fine texture (foliage,
//! fabric, roof tiles) it guesses too high and smooths the texture away with the noise. For a
//! blend `f_a = f + a·(y − f)` of its output `f` with the noisy input `y`, SURE gives the mean
//! squared error against the clean image, which we never see, from `y`, `f`, the noise σ and the
//! divergence of `f`; one more pass of the model on a ±ε-perturbed input estimates the
//! divergence (Monte-Carlo SURE: Ramani, Blu & Unser, IEEE TIP 2008). Per block `a` has a
//! closed form:
//!
//! ```text
//! SURE(a) = (1 − a)²·m − σ² + 2σ²·(a + (1 − a)·d)     m = mean (y − f)²,  d = mean ∂f_i/∂y_i
//! a*      = clamp(1 − σ²·(1 − d) / m, 0, 1)
//! ```
//!
//! σ comes from the same statistics: by Stein's identity `m = error + σ²·(1 − 2d)`, so each
//! block with next to no clipped pixels and `d < 0.4` gives an upper bound `σ² ≤ m / (1 − 2d)`,
//! tight where the model is right (flat areas); we take a low percentile of those bounds,
//! capped by Immerkær's estimator, which also stands in where too few blocks qualify, and undo
//! the low percentile's sampling bias (σ read 2 % low gives back noise on every flat block).
//!
//! The online fine-tuner's gate uses the same estimate on tensors ([`mc_sure`]) to compare a
//! candidate with the serving model when no clean frame exists, with σ from
//! [`median_noise_sigma`].

use candle_core::Tensor;
use rand::{Rng, SeedableRng};

use crate::error::Result;

/// Side of the blocks that get one blend weight each (weights are interpolated between block
/// centres, so no seams).
pub const BLOCK: usize = 64;
/// Side of the blocks that each bound σ: smaller than `BLOCK`, so that a frame of fine texture
/// still holds some flat enough to bound it tightly.
const SIGMA_BLOCK: usize = 32;
/// Size of the ±ε probe for the divergence, on the 0–1 scale (half a grey level).
pub const EPS: f32 = 2e-3;
/// Fewest qualifying blocks for the model-based σ; below, Immerkær's estimate alone.
const MIN_BLOCKS: usize = 4;
/// Percentile of the per-block σ bounds taken as σ.
const PERCENTILE: f64 = 0.2;
/// How far below σ that percentile sits when the bounds are just σ plus sampling noise (flat
/// blocks): a block's bound `√m` over n = `SIGMA_BLOCK²` pixels spreads by about `σ/√(2n)`
/// (χ² with n degrees of freedom), and the 20th percentile of a normal is 0.8416 spreads below
/// its mean, so the estimate reads 1.9 % low. That matters more than it looks: with σ 2 % low,
/// every block the model gets right reads as "the model removed more than noise" and gets a
/// blend weight of 0.02–0.04 — noise given back. On smooth photos at σ 50 that cost 0.2 dB
/// (val-extra's "storm", 33.58 → 33.36 dB); with the correction the blend costs nothing there
/// and keeps most of its gain on foliage (china at σ 15: +0.29 dB of +0.34).
fn percentile_bias() -> f64 {
    1.0 - 0.8416 / (2.0 * (SIGMA_BLOCK * SIGMA_BLOCK) as f64).sqrt()
}

/// `n` independent ±1 values (a Rademacher probe: the Monte-Carlo divergence estimate is
/// unbiased for it, with less variance than a Gaussian probe).
pub fn rademacher<R: Rng>(n: usize, rng: &mut R) -> Vec<f32> {
    (0..n)
        .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
        .collect()
}

/// A ±1 probe of `n` values, the same for the same seed.
pub fn probe(n: usize, seed: u64) -> Vec<f32> {
    rademacher(n, &mut rand::rngs::StdRng::seed_from_u64(seed))
}

fn is_clipped(v: f32) -> bool {
    !(0.5 / 255.0..=254.5 / 255.0).contains(&v)
}

/// Noise σ (0–1 scale) of one plane by Immerkær's Laplacian-difference estimator (1996).
/// Clipping shrinks the noise near black and white, so 3×3 windows holding a clipped pixel are
/// skipped; with `refine`, twice more (with the estimate so far) windows whose mean lies within
/// 2σ of 0 or 1, and `None` with fewer than 64 usable windows (without: `None` with none).
/// Texture inflates the estimate somewhat.
pub fn immerkaer_sigma(plane: &[f32], w: usize, h: usize, refine: bool) -> Option<f64> {
    if w < 3 || h < 3 || plane.len() < w * h {
        return None;
    }
    let at = |x: usize, y: usize| plane[y * w + x] as f64;
    let mut sigma = f64::INFINITY;
    let mut estimate = None;
    let (passes, least) = if refine { (3, 64) } else { (1, 1) };
    for pass in 0..passes {
        let margin = if pass == 0 {
            f64::NEG_INFINITY
        } else {
            2.0 * sigma
        };
        let (mut sum, mut count) = (0.0, 0usize);
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let mut mean = 0.0;
                let mut clipped = false;
                for k in 0..9 {
                    let v = plane[(y + k / 3 - 1) * w + x + k % 3 - 1];
                    clipped |= is_clipped(v);
                    mean += v as f64 / 9.0;
                }
                if clipped || mean < margin || mean > 1.0 - margin {
                    continue;
                }
                count += 1;
                let v = at(x - 1, y - 1) - 2.0 * at(x, y - 1) + at(x + 1, y - 1)
                    - 2.0 * at(x - 1, y)
                    + 4.0 * at(x, y)
                    - 2.0 * at(x + 1, y)
                    + at(x - 1, y + 1)
                    - 2.0 * at(x, y + 1)
                    + at(x + 1, y + 1);
                sum += v.abs();
            }
        }
        // Too few windows left to trust a narrower estimate: keep the last one.
        if count < least {
            break;
        }
        sigma = (std::f64::consts::PI / 2.0).sqrt() * sum / (6.0 * count as f64);
        estimate = Some(sigma);
    }
    estimate
}

/// Block boundaries along an axis of `len` pixels: about `len / b` equal blocks (at least one),
/// so no block is a sliver at the edge.
fn edges(len: usize, b: usize) -> Vec<usize> {
    let n = ((len + b / 2) / b).max(1);
    (0..=n).map(|i| i * len / n).collect()
}

/// Per block of the `xe × ye` grid, row-major: mean squared residual `m`, mean divergence `d`,
/// fraction of clipped input pixels and pixel count.
fn block_means(
    y: &[f32],
    f: &[f32],
    div: &[f32],
    w: usize,
    xe: &[usize],
    ye: &[usize],
) -> Vec<(f64, f64, f64, usize)> {
    let mut out = Vec::with_capacity((xe.len() - 1) * (ye.len() - 1));
    for yb in ye.windows(2) {
        for xb in xe.windows(2) {
            let (mut m, mut d, mut clipped) = (0.0f64, 0.0f64, 0usize);
            for yy in yb[0]..yb[1] {
                for k in yy * w + xb[0]..yy * w + xb[1] {
                    let r = (y[k] - f[k]) as f64;
                    m += r * r;
                    d += div[k] as f64;
                    clipped += is_clipped(y[k]) as usize;
                }
            }
            let count = (xb[1] - xb[0]) * (yb[1] - yb[0]);
            let c = count.max(1) as f64;
            out.push((m / c, d / c, clipped as f64 / c, count));
        }
    }
    out
}

/// The noise σ (0–1 scale) of a plane from its block statistics: the 20th percentile of the
/// upper bounds `√(m / (1 − 2d))` of the `SIGMA_BLOCK` blocks that may give one, capped by
/// Immerkær's estimate, which alone decides when fewer than 4 blocks qualify; then raised by
/// the percentile's own sampling bias ([`percentile_bias`], 1.9 %).
///
/// A block qualifies with at least half a block of pixels, at most 2 % of them clipped
/// (clipping shrinks the residual) and `d` below 0.4: the bound needs `1 − 2d > 0`, and a
/// block the model passes through nearly unchanged (`d` near 1, `m` near 0) bounds nothing.
fn estimate_sigma(y: &[f32], f: &[f32], div: &[f32], w: usize, h: usize) -> Option<f64> {
    let sb = SIGMA_BLOCK;
    let mut bounds: Vec<f64> = block_means(y, f, div, w, &edges(w, sb), &edges(h, sb))
        .into_iter()
        .filter(|&(_, d, clipped, count)| 2 * count >= sb * sb && clipped <= 0.02 && d < 0.4)
        .map(|(m, d, _, _)| (m / (1.0 - 2.0 * d)).sqrt())
        .collect();
    bounds.sort_by(f64::total_cmp);
    let local = (bounds.len() >= MIN_BLOCKS)
        .then(|| bounds[((bounds.len() - 1) as f64 * PERCENTILE).round() as usize]);
    let global = immerkaer_sigma(y, w, h, true);
    // The smaller of two noisy estimates sits low as well: the correction applies to either.
    let sigma = match (local, global) {
        (Some(l), Some(g)) => Some(l.min(g)),
        (l, g) => l.or(g),
    };
    sigma.map(|s| s / percentile_bias())
}

/// What [`blend`] decided for a plane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlendInfo {
    /// The noise σ used (0–1 scale).
    pub sigma: f64,
    /// Mean blend weight over the blocks (0: the model's output, 1: the input).
    pub mean_weight: f64,
}

/// The SURE-optimal blend `f + a·(y − f)` of the model's output `f` with the noisy input `y`
/// (one whole `w × h` plane, real pixels only: mirrored padding would copy the same noise into
/// two inputs and break Stein's identity), given `div`, per-pixel estimates of ∂f_i/∂y_i (see
/// [`divergence`]). `a` is chosen per `BLOCK` block and interpolated between block centres.
/// `sigma`: the noise σ (0–1 scale) if known, else estimated. Returns `f` unchanged if no σ
/// can be had.
pub fn blend(
    y: &[f32],
    f: &[f32],
    div: &[f32],
    w: usize,
    h: usize,
    sigma: Option<f64>,
) -> (Vec<f32>, Option<BlendInfo>) {
    let n = w * h;
    if n == 0 || y.len() < n || f.len() < n || div.len() < n {
        return (f.to_vec(), None);
    }
    let Some(sigma) = sigma.or_else(|| estimate_sigma(y, f, div, w, h)) else {
        return (f.to_vec(), None);
    };
    let (xe, ye) = (edges(w, BLOCK), edges(h, BLOCK));
    let (bx, by) = (xe.len() - 1, ye.len() - 1);
    let s2 = sigma * sigma;
    let weights: Vec<f64> = block_means(y, f, div, w, &xe, &ye)
        .into_iter()
        .map(|(m, d, _, _)| {
            if m <= 1e-12 {
                0.0
            } else {
                (1.0 - s2 * (1.0 - d) / m).clamp(0.0, 1.0)
            }
        })
        .collect();
    let mean_weight = weights.iter().sum::<f64>() / weights.len() as f64;
    // Where pixel `p` lies between the centres of blocks `i0` and `i1` (weight `t` on `i1`).
    let axis = |p: usize, len: usize, nb: usize| -> (usize, usize, f64) {
        let c = ((p as f64 + 0.5) * nb as f64 / len as f64 - 0.5).clamp(0.0, (nb - 1) as f64);
        let i0 = c.floor() as usize;
        (i0, (i0 + 1).min(nb - 1), c - i0 as f64)
    };
    let xs: Vec<_> = (0..w).map(|x| axis(x, w, bx)).collect();
    let mut out = Vec::with_capacity(n);
    for yy in 0..h {
        let (j0, j1, ty) = axis(yy, h, by);
        for (xx, &(i0, i1, tx)) in xs.iter().enumerate() {
            let top = weights[j0 * bx + i0] * (1.0 - tx) + weights[j0 * bx + i1] * tx;
            let bottom = weights[j1 * bx + i0] * (1.0 - tx) + weights[j1 * bx + i1] * tx;
            let a = (top * (1.0 - ty) + bottom * ty) as f32;
            let k = yy * w + xx;
            out.push(f[k] + a * (y[k] - f[k]));
        }
    }
    (out, Some(BlendInfo { sigma, mean_weight }))
}

/// Per-pixel divergence estimates from the model's output on `y` and on `y + EPS·probe`.
pub fn divergence(f: &[f32], f_perturbed: &[f32], probe: &[f32]) -> Vec<f32> {
    f.iter()
        .zip(f_perturbed)
        .zip(probe)
        .map(|((a, b), p)| p * (b - a) / EPS)
        .collect()
}

/// Monte-Carlo SURE (Ramani, Blu & Unser 2008) on tensors, as the fine-tuner's gate uses it: for `y = x + n`, `n ~ N(0, σ²)` per pixel, an
/// unbiased estimate of the per-pixel MSE of `f(y)` against the unknown `x`:
/// `‖y − f(y)‖²/N − σ² + 2σ²·div f(y)/N`, the divergence taken along the ±1 `probe` by a finite
/// difference; `fy` is `f(y)`, which the caller has at hand. With `mask` (1 = counted) the
/// sums run over the masked pixels only: the
/// estimate stays unbiased for them, which lets the caller leave out pixels whose noise was
/// clipped at black or white (clipped noise is not Gaussian, and SURE goes wrong there).
/// Paired comparisons (same `y`, probe and mask) are what the gate uses.
pub fn mc_sure(
    y: &Tensor,
    fy: &Tensor,
    probe: &Tensor,
    mask: Option<&Tensor>,
    sigma: f64,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<f64> {
    // Small against σ, large against f32 rounding of outputs near 1.
    let eps = (sigma * 0.01).max(1e-4);
    let fyb = f(&(y + (probe * eps)?)?)?;
    let fit = (y - fy)?.sqr()?;
    let div = ((fyb - fy)? * probe)?;
    let (fit, div, count) = match mask {
        Some(m) => (
            (fit * m)?.sum_all()?,
            (div * m)?.sum_all()?,
            m.sum_all()?.to_scalar::<f32>()? as f64,
        ),
        None => (fit.sum_all()?, div.sum_all()?, y.elem_count() as f64),
    };
    if count < 1.0 {
        return Ok(f64::NAN);
    }
    let fit = fit.to_scalar::<f32>()? as f64 / count;
    let div = div.to_scalar::<f32>()? as f64 / count / eps;
    let s2 = sigma * sigma;
    Ok(fit - s2 + 2.0 * s2 * div)
}

/// Noise σ (0–1 scale) of each `(plane, width, height)` by Immerkær's estimator (skipping
/// windows with a clipped pixel, see [`immerkaer_sigma`]), the median over planes.
/// One pass, without leaving out dark windows: on fluorescence frames, mostly dark background,
/// that would leave only the textured cells. Texture inflates the estimate somewhat, so
/// `stream_sigma` is better where the camera's noise is known.
pub fn median_noise_sigma<'a>(planes: impl IntoIterator<Item = (&'a [f32], usize, usize)>) -> f64 {
    let mut est: Vec<f64> = planes
        .into_iter()
        .filter_map(|(p, w, h)| immerkaer_sigma(p, w, h, false))
        .collect();
    if est.is_empty() {
        return 0.0;
    }
    est.sort_by(f64::total_cmp);
    est[est.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::psnr;
    use crate::stage::corrupt;
    use candle_core::Device;

    /// A 5×5 box blur (edges clamped): a "denoiser" that over-smooths fine texture.
    fn blur(p: &[f32], w: usize, h: usize) -> Vec<f32> {
        let mut out = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut s = 0.0;
                for dy in -2i64..=2 {
                    for dx in -2i64..=2 {
                        let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                        let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                        s += p[yy * w + xx];
                    }
                }
                out[y * w + x] = s / 25.0;
            }
        }
        out
    }

    /// Left half flat grey, right half stripes of period 3 that a 5×5 blur wipes out.
    fn scene(w: usize, h: usize) -> Vec<f32> {
        (0..w * h)
            .map(|k| {
                let x = k % w;
                if x < w / 2 {
                    0.5
                } else {
                    0.5 + 0.2 * (2.0 * std::f32::consts::PI * x as f32 / 3.0).sin()
                }
            })
            .collect()
    }

    /// Where the blur destroyed the stripes the blend gives them back; on the flat half, where
    /// the blur was right, it adds next to no noise back; σ is estimated within 10 %.
    #[test]
    fn over_smoothing_is_given_back_and_flat_areas_are_kept() {
        let (w, h) = (256, 256);
        let clean = scene(w, h);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut y = clean.clone();
        corrupt::gaussian(&mut y, 10.0, false, &mut rng);
        let f = blur(&y, w, h);
        let p = probe(w * h, 9);
        let yp: Vec<f32> = y.iter().zip(&p).map(|(a, b)| a + EPS * b).collect();
        let div = divergence(&f, &blur(&yp, w, h), &p);
        let (out, info) = blend(&y, &f, &div, w, h, None);
        let info = info.expect("σ estimated");
        let sigma = 10.0 / 255.0;
        assert!(
            (info.sigma - sigma).abs() < 0.1 * sigma,
            "σ estimate {} vs {sigma}",
            info.sigma
        );
        // Columns a block away from the border between the halves.
        let cols = |v: &[f32], range: std::ops::Range<usize>| -> Vec<f32> {
            v.iter()
                .enumerate()
                .filter(|(k, _)| range.contains(&(k % w)))
                .map(|(_, &x)| x)
                .collect()
        };
        let (flat, tex) = (0..w / 2 - BLOCK, w / 2 + BLOCK..w);
        let half = |v: &[f32], right: bool| cols(v, if right { tex.clone() } else { flat.clone() });
        let (tex_f, tex_out) = (
            psnr(&half(&f, true), &half(&clean, true)),
            psnr(&half(&out, true), &half(&clean, true)),
        );
        assert!(
            tex_out > tex_f + 3.0,
            "texture: blur {tex_f:.2} dB, blend {tex_out:.2} dB"
        );
        let (flat_f, flat_out) = (
            psnr(&half(&f, false), &half(&clean, false)),
            psnr(&half(&out, false), &half(&clean, false)),
        );
        assert!(
            flat_out > flat_f - 0.2,
            "flat: blur {flat_f:.2} dB, blend {flat_out:.2} dB"
        );
    }

    /// Immerkær's estimate is close on noise over a smooth ramp, and clipping (a third of the
    /// frame black, σ = 50) does not drag it down.
    #[test]
    fn immerkaer_is_close_and_clip_aware() {
        let (w, h) = (192, 192);
        for (sigma, dark) in [(5.0f32, false), (20.0, false), (50.0, true)] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(sigma as u64);
            let mut p: Vec<f32> = (0..w * h)
                .map(|k| {
                    if dark && k % w < w / 3 {
                        0.0
                    } else {
                        0.3 + 0.4 * (k / w) as f32 / h as f32
                    }
                })
                .collect();
            corrupt::gaussian(&mut p, sigma, true, &mut rng);
            let est = immerkaer_sigma(&p, w, h, true).expect("estimate") * 255.0;
            assert!(
                (est - sigma as f64).abs() < 0.06 * sigma as f64 + 0.3,
                "σ {sigma}: estimated {est:.2}"
            );
        }
        assert_eq!(immerkaer_sigma(&[0.5; 4], 2, 2, true), None);
    }

    #[test]
    fn a_model_that_is_right_gets_no_noise_back() {
        // A perfect model on a flat frame: f is the clean plane, and nothing should be given
        // back. A σ read low (the 20th percentile's sampling bias, uncorrected) gives every
        // block a weight of about 0.04.
        let (w, h) = (256, 256);
        let clean = vec![0.4f32; w * h];
        let div = vec![0.0f32; w * h];
        let (mut ratio, mut weight) = (0.0, 0.0);
        let seeds = 8;
        for seed in 0..seeds {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + seed);
            let mut y = clean.clone();
            corrupt::gaussian(&mut y, 20.0, false, &mut rng);
            let info = blend(&y, &clean, &div, w, h, None).1.expect("σ estimated");
            ratio += info.sigma * 255.0 / 20.0 / seeds as f64;
            weight += info.mean_weight / seeds as f64;
        }
        assert!((ratio - 1.0).abs() < 0.01, "σ estimate / σ = {ratio:.4}");
        assert!(weight < 0.015, "mean blend weight {weight:.4}");
    }

    /// Where the model passes its input through (`d` = 1, nothing removed) the blocks bound
    /// nothing: σ still comes from the blocks it smooths, and those get no noise back. An odd
    /// size (edge blocks of other widths) comes out whole.
    #[test]
    fn pass_through_blocks_do_not_drag_sigma_down() {
        let (w, h) = (200, 130);
        let clean = vec![0.5f32; w * h];
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut y = clean.clone();
        corrupt::gaussian(&mut y, 12.0, false, &mut rng);
        let smooth = blur(&y, w, h);
        // The right 60 % is passed through untouched.
        let through = |k: usize| k % w >= 2 * w / 5;
        let f: Vec<f32> = (0..w * h)
            .map(|k| if through(k) { y[k] } else { smooth[k] })
            .collect();
        let div: Vec<f32> = (0..w * h)
            .map(|k| if through(k) { 1.0 } else { 1.0 / 25.0 })
            .collect();
        let (out, info) = blend(&y, &f, &div, w, h, None);
        assert_eq!(out.len(), w * h);
        let sigma = info.expect("σ estimated").sigma * 255.0;
        assert!((sigma - 12.0).abs() < 1.2, "σ estimate {sigma:.2} for 12");
        let left = |v: &[f32]| -> Vec<f32> {
            (0..w * h)
                .filter(|&k| k % w < w / 5)
                .map(|k| v[k])
                .collect()
        };
        let (before, after) = (
            psnr(&left(&f), &left(&clean)),
            psnr(&left(&out), &left(&clean)),
        );
        assert!(
            after > before - 0.2,
            "smoothed part: {before:.2} → {after:.2} dB"
        );
    }

    /// A perfect denoiser is left alone (weight 0); with no noise at all, an over-smoothing
    /// one is undone (weight near 1).
    #[test]
    fn weights_follow_the_risk() {
        let (w, h) = (128, 128);
        let clean = scene(w, h);
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut y = clean.clone();
        corrupt::gaussian(&mut y, 15.0, false, &mut rng);
        let zero = vec![0f32; w * h];
        let (out, info) = blend(&y, &clean, &zero, w, h, Some(15.0 / 255.0));
        assert!(info.expect("info").mean_weight < 0.02);
        assert!(psnr(&out, &clean) > 50.0);
        let f = blur(&clean, w, h);
        let div = vec![1.0 / 25.0; w * h];
        let (out, info) = blend(&clean, &f, &div, w, h, Some(0.0));
        assert!(
            info.expect("info").mean_weight > 0.45,
            "half the blocks are textured"
        );
        assert!(psnr(&out, &clean) > psnr(&f, &clean) + 20.0);
    }

    /// SURE is exact for the identity (risk σ²) and for a constant (‖y − c‖² − σ²), and its
    /// estimate of a real smoother's MSE is close to the truth on a known clean image.
    #[test]
    fn sure_estimates_the_clean_mse() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (n, p, sigma) = (4usize, 32usize, 20.0f64 / 255.0);
        let clean: Vec<f32> = (0..n * p * p)
            .map(|i| 0.4 + 0.2 * (((i % p) / 8) % 2) as f32)
            .collect();
        let mut noisy = clean.clone();
        corrupt::gaussian(&mut noisy, 20.0, false, &mut rng);
        let probe = rademacher(noisy.len(), &mut rng);
        let shape = (n, p, p, 1);
        let (x, y) = (
            Tensor::from_vec(clean, shape, &dev)?,
            Tensor::from_vec(noisy, shape, &dev)?,
        );
        let probe = Tensor::from_vec(probe, shape, &dev)?;
        let id = mc_sure(&y, &y, &probe, None, sigma, |t| Ok(t.clone()))?;
        assert!(
            (id - sigma * sigma).abs() < 1e-6,
            "{id} vs {}",
            sigma * sigma
        );
        // A 3-tap horizontal box blur: SURE vs the true MSE against the clean image.
        let blur = |t: &Tensor| -> Result<Tensor> {
            let l = t.narrow(2, 0, p - 2)?;
            let m = t.narrow(2, 1, p - 2)?;
            let r = t.narrow(2, 2, p - 2)?;
            let inner = ((l + m)? + r)?.affine(1.0 / 3.0, 0.0)?;
            Ok(Tensor::cat(
                &[&t.narrow(2, 0, 1)?, &inner, &t.narrow(2, p - 1, 1)?],
                2,
            )?)
        };
        let est = mc_sure(&y, &blur(&y)?, &probe, None, sigma, blur)?;
        let truth = (blur(&y)? - &x)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        assert!(
            (est - truth).abs() < 0.1 * truth,
            "SURE {est:.3e} vs true MSE {truth:.3e}"
        );
        assert!(est < id, "the blur removes noise: {est:.3e} < {id:.3e}");
        Ok(())
    }

    /// On a frame half black, where the noise is clipped, SURE over the unclipped pixels still
    /// estimates their MSE (over all pixels it would not: clipped noise is not Gaussian).
    #[test]
    fn masked_sure_survives_clipping() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (n, p, sigma) = (4usize, 32usize, 20.0f64 / 255.0);
        let clean: Vec<f32> = (0..n * p * p)
            .map(|i| if (i % p) < p / 2 { 0.0 } else { 0.5 })
            .collect();
        let mut noisy = clean.clone();
        corrupt::gaussian(&mut noisy, 20.0, true, &mut rng);
        let probe = rademacher(noisy.len(), &mut rng);
        let mask: Vec<f32> = clean.iter().map(|&v| f32::from(v > 0.2)).collect();
        let shape = (n, p, p, 1);
        let t = |v: Vec<f32>| Tensor::from_vec(v, shape, &dev);
        let (x, y, probe, mask) = (t(clean)?, t(noisy)?, t(probe)?, t(mask)?);
        let smooth = |t: &Tensor| -> Result<Tensor> { Ok(t.affine(0.5, 0.25)?) };
        let est = mc_sure(&y, &smooth(&y)?, &probe, Some(&mask), sigma, smooth)?;
        let err = (smooth(&y)? - &x)?.sqr()?;
        let truth = ((err * &mask)?.sum_all()?.to_scalar::<f32>()?
            / mask.sum_all()?.to_scalar::<f32>()?) as f64;
        assert!(
            (est - truth).abs() < 0.1 * truth,
            "masked SURE {est:.3e} vs true MSE {truth:.3e}"
        );
        Ok(())
    }

    /// Immerkær's estimate finds the σ of noise added to a smooth image.
    #[test]
    fn noise_sigma_estimate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (w, h) = (96, 80);
        let planes: Vec<Vec<f32>> = [6.0f32, 12.0, 25.0]
            .iter()
            .map(|&s| {
                let mut v: Vec<f32> = (0..w * h).map(|i| 0.3 + 0.002 * (i % w) as f32).collect();
                corrupt::gaussian(&mut v, s, false, &mut rng);
                v
            })
            .collect();
        let m = median_noise_sigma(planes.iter().map(|v| (&v[..], w, h))) * 255.0;
        assert!((m - 12.0).abs() < 1.0, "median σ {m}");
    }
}
