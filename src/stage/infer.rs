//! The infer stage: runs model-sized units through the network in batches.
//!
//! Units of the same shape (all tiles, and equally sized whole frames) are stacked into one
//! NHWC batch of at most `max_batch`; each batch is one forward pass. With `ensemble` > 1 each
//! unit also runs flipped (left-right, up-down, both; with 8, each of those also transposed:
//! the eight symmetries of the square) and the un-flipped outputs are averaged: slower, and a
//! little better, since the model's errors differ between orientations. With
//! `sure_blend` each unit also runs once on a slightly perturbed copy, which gives the model's
//! divergence for the SURE-guided blend of output and input ([`super::sure`]).

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::sure;
use super::tiling::{self, merge, split, TilePlan, Unit};
use crate::config::InferConfig;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::stage::encode::Code;

/// How units are run.
#[derive(Debug, Clone, Copy)]
pub struct RunOpts {
    pub max_batch: usize,
    /// Most pixels in one forward pass (memory bound); at least one unit always runs.
    pub max_batch_pixels: usize,
    /// 1 (off), 2 (+ left-right flip), 4 (+ up-down flip and both) or 8 (+ the four
    /// transposed).
    pub ensemble: usize,
    /// Denoisers: one more pass on a perturbed input, then the SURE-guided residual blend
    /// ([`super::sure`]).
    pub sure_blend: bool,
    /// Known noise σ (0–1 scale) for the blend; `None`: estimated per plane.
    pub noise_sigma: Option<f64>,
}

impl From<&InferConfig> for RunOpts {
    fn from(c: &InferConfig) -> Self {
        Self {
            max_batch: c.max_batch,
            max_batch_pixels: c.max_batch_pixels,
            ensemble: c.ensemble,
            sure_blend: c.sure_blend,
            noise_sigma: (c.noise_sigma > 0.0).then(|| c.noise_sigma as f64 / 255.0),
        }
    }
}

/// Flips a `w × h` plane left-right and/or up-down (each flip is its own inverse).
fn flip(data: &[f32], w: usize, h: usize, lr: bool, ud: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for y in 0..h {
        let sy = if ud { h - 1 - y } else { y };
        let row = &data[sy * w..(sy + 1) * w];
        if lr {
            out.extend(row.iter().rev());
        } else {
            out.extend_from_slice(row);
        }
    }
    out
}

/// Transposes an `h × w` plane (row-major) into `w × h`.
fn transpose(data: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (y, row) in data.chunks_exact(w).enumerate().take(h) {
        for (x, &v) in row.iter().enumerate() {
            out[x * h + y] = v;
        }
    }
    out
}

const FLIPS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];
/// The most views: the four flips, each also transposed.
const MAX_VIEWS: usize = 2 * FLIPS.len();
/// The work item that runs the un-flipped unit plus `EPS · probe` (for the SURE blend).
const PERTURBED: usize = MAX_VIEWS;

/// View `v` of a `w × h` unit (`v < MAX_VIEWS`): transposed when `v ≥ 4`, then flipped by
/// `FLIPS[v % 4]`. Its shape is `(h, w)` as rows × columns, swapped when transposed.
fn view_shape(v: usize, uh: usize, uw: usize) -> (usize, usize) {
    if v >= FLIPS.len() {
        (uw, uh)
    } else {
        (uh, uw)
    }
}

fn to_view(data: &[f32], v: usize, uw: usize, uh: usize) -> Vec<f32> {
    let (lr, ud) = FLIPS[v % FLIPS.len()];
    if v >= FLIPS.len() {
        flip(&transpose(data, uw, uh), uh, uw, lr, ud)
    } else {
        flip(data, uw, uh, lr, ud)
    }
}

/// The inverse of [`to_view`]: a view's output back in the unit's orientation.
fn from_view(out: &[f32], v: usize, uw: usize, uh: usize) -> Vec<f32> {
    let (lr, ud) = FLIPS[v % FLIPS.len()];
    if v >= FLIPS.len() {
        transpose(&flip(out, uh, uw, lr, ud), uh, uw)
    } else {
        flip(out, uw, uh, lr, ud)
    }
}

/// The ±1 probe of a unit, seeded by where the unit lies in its plane, so that a frame gives
/// the same output whatever else shares its batch. (Made twice per unit, for the perturbed
/// input and for the divergence: cheaper than keeping it.)
fn unit_probe(u: &Unit) -> Vec<f32> {
    let seed = [u.dst_x, u.dst_y, u.uw, u.uh]
        .iter()
        .fold(0x5eed_u64, |h, &v| {
            h.wrapping_mul(0x100_0000_01b3) ^ v as u64
        });
    sure::probe(u.uw * u.uh, seed)
}

/// The `w × h` plane that units `idx` tile, from their kept regions of `of(unit index)`.
fn gather<'a>(
    units: &'a [Unit],
    idx: &[usize],
    w: usize,
    h: usize,
    of: impl Fn(usize) -> &'a [f32],
) -> Vec<f32> {
    tiling::merge_parts(idx.iter().map(|&i| (&units[i], of(i))), w, h)
}

/// Runs units, each a plane of its own, through the model; returns outputs in input order.
pub fn run_units(model: &dyn Model, units: &[Unit], opts: RunOpts) -> Result<Vec<Vec<f32>>> {
    let planes: Vec<usize> = (0..units.len()).collect();
    Ok(run_units_with_codes(model, units, &planes, opts, false)?.0)
}

/// Runs units through the model; returns image outputs and (with `want_code`, for models that
/// have one) each unit's code with its shape, in input order. Codes come from the un-flipped
/// view only: a flipped image has a different code. `planes[i]` says which plane unit `i` is a
/// tile of: the SURE blend estimates one noise σ per plane.
#[allow(clippy::type_complexity)]
pub fn run_units_with_codes(
    model: &dyn Model,
    units: &[Unit],
    planes: &[usize],
    opts: RunOpts,
    want_code: bool,
) -> Result<(Vec<Vec<f32>>, Vec<Option<Code>>)> {
    let done = run_units_until(model, units, planes, opts, want_code, &|| false)?;
    done.ok_or_else(|| Error::Other("units abandoned".into()))
}

/// [`run_units_with_codes`], asking `give_up` before every forward pass: `None` once it said
/// yes (the frames' time is up), the work so far dropped.
#[allow(clippy::type_complexity)]
pub fn run_units_until(
    model: &dyn Model,
    units: &[Unit],
    planes: &[usize],
    opts: RunOpts,
    want_code: bool,
    give_up: &dyn Fn() -> bool,
) -> Result<Option<(Vec<Vec<f32>>, Vec<Option<Code>>)>> {
    let views = opts.ensemble.clamp(1, MAX_VIEWS);
    let mut codes: Vec<Option<Code>> = vec![None; units.len()];
    // Work items: (unit index, view), grouped by the view's shape so each batch is one tensor
    // (a transposed view of a non-square unit has the other shape). Within a shape a unit's
    // plain view comes before its perturbed one.
    let mut by_shape: BTreeMap<(usize, usize), Vec<(usize, usize)>> = BTreeMap::new();
    for (i, u) in units.iter().enumerate() {
        for v in 0..views {
            let key = view_shape(v, u.uh, u.uw);
            by_shape.entry(key).or_default().push((i, v));
        }
        if opts.sure_blend {
            by_shape
                .entry((u.uh, u.uw))
                .or_default()
                .push((i, PERTURBED));
        }
    }
    let mut outputs: Vec<Vec<f32>> = units.iter().map(|u| vec![0f32; u.uw * u.uh]).collect();
    if opts.sure_blend && planes.len() != units.len() {
        return Err(Error::Other(format!(
            "{} plane indices for {} units",
            planes.len(),
            units.len()
        )));
    }
    // With the SURE blend: each unit's un-flipped output until its perturbed output arrives
    // (always later: a unit's views come before it in the work list), then the divergence.
    let mut plain: Vec<Vec<f32>> = vec![vec![]; units.len()];
    let mut div: Vec<Vec<f32>> = vec![vec![]; units.len()];
    for ((vh, vw), items) in by_shape {
        let per_pass = opts
            .max_batch
            .min(opts.max_batch_pixels / (vh * vw).max(1))
            .max(1);
        for chunk in items.chunks(per_pass) {
            if give_up() {
                return Ok(None);
            }
            let mut data = Vec::with_capacity(chunk.len() * vh * vw);
            for &(i, v) in chunk {
                let u = &units[i];
                if v == PERTURBED {
                    let p = unit_probe(u);
                    data.extend(u.data.iter().zip(p).map(|(a, b)| a + sure::EPS * b));
                } else if v == 0 {
                    data.extend_from_slice(&u.data);
                } else {
                    data.extend(to_view(&u.data, v, u.uw, u.uh));
                }
            }
            let x = Tensor::from_vec(data, (chunk.len(), vh, vw, 1), model.device())?;
            let o = model.run(&x, want_code)?;
            let y = o.image.flatten_all()?.to_vec1::<f32>()?;
            if let Some(c) = o.code {
                let shape = c.dims()[1..].to_vec();
                let per: usize = shape.iter().product();
                let flat = c.flatten_all()?.to_vec1::<f32>()?;
                for (k, &(i, v)) in chunk.iter().enumerate() {
                    if v == 0 {
                        codes[i] = Some(Code {
                            shape: shape.clone(),
                            data: flat[k * per..(k + 1) * per].to_vec(),
                        });
                    }
                }
            }
            for (k, &(i, v)) in chunk.iter().enumerate() {
                let out = &y[k * vh * vw..(k + 1) * vh * vw];
                if v == PERTURBED {
                    let f = std::mem::take(&mut plain[i]);
                    if f.len() != out.len() {
                        return Err(Error::Other(format!(
                            "unit {i}: perturbed output before the plain one"
                        )));
                    }
                    div[i] = sure::divergence(&f, out, &unit_probe(&units[i]));
                    continue;
                }
                if v == 0 && opts.sure_blend {
                    plain[i] = out.to_vec();
                }
                let back = if v == 0 {
                    out.to_vec()
                } else {
                    from_view(out, v, units[i].uw, units[i].uh)
                };
                for (acc, b) in outputs[i].iter_mut().zip(back) {
                    *acc += b / views as f32;
                }
            }
        }
    }
    if opts.sure_blend {
        // The divergence of the un-flipped view stands in for the ensemble's: the views are the
        // same network on mirrored pixels. The blend runs per plane, on its real pixels only
        // (tiles' kept regions): one σ, one block grid, no padding.
        let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, &p) in planes.iter().enumerate() {
            members.entry(p).or_default().push(i);
        }
        for (plane, idx) in members {
            if give_up() {
                return Ok(None);
            }
            let w = idx.iter().map(|&i| units[i].dst_x + units[i].keep_w).max();
            let h = idx.iter().map(|&i| units[i].dst_y + units[i].keep_h).max();
            let (Some(w), Some(h)) = (w, h) else { continue };
            let y = gather(units, &idx, w, h, |i| &units[i].data);
            let f = gather(units, &idx, w, h, |i| &outputs[i]);
            let d = gather(units, &idx, w, h, |i| &div[i]);
            let (blended, info) = sure::blend(&y, &f, &d, w, h, opts.noise_sigma);
            if let Some(info) = info {
                tracing::debug!(
                    "plane {plane} ({w}×{h}): SURE blend σ {:.2}, mean weight {:.3}",
                    info.sigma * 255.0,
                    info.mean_weight
                );
            }
            for &i in &idx {
                tiling::take(&blended, w, &units[i], &mut outputs[i]);
            }
        }
    }
    Ok(Some((outputs, codes)))
}

/// Denoises one plane end to end (split, run, merge): for eval, training validation and tests.
pub fn run_plane(
    model: &dyn Model,
    plane: &[f32],
    w: usize,
    h: usize,
    plan: &TilePlan,
    opts: RunOpts,
) -> Result<Vec<f32>> {
    let units = split(plane, w, h, plan);
    let outs = run_units_with_codes(model, &units, &vec![0; units.len()], opts, false)?.0;
    Ok(merge(&units, &outs, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::model::{Arch, Net, NetModel};

    /// The `denoise` pipeline's settings and an untrained two-level denoiser.
    fn tiny_denoiser() -> Result<(PipelineConfig, NetModel)> {
        let cfg = PipelineConfig::load("denoise")?;
        let dev = candle_core::Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = crate::model::init::seeded_builder(&vm, 7, candle_core::DType::F32, &dev);
        let Arch::UnetDenoiser(mut mcfg) = cfg.model.arch.clone() else {
            unreachable!("the denoise pipeline runs a unet-denoiser");
        };
        (mcfg.channels, mcfg.blocks) = (vec![4, 8], vec![1, 1]);
        let net = crate::model::denoise::Denoiser::new(vb, &mcfg)?;
        Ok((cfg, NetModel::new(Net::Denoise(net), dev, None)))
    }

    /// With the SURE blend, a frame comes out the same alone or batched behind another: its
    /// probe depends on the frame, not on its place in the batch.
    #[test]
    fn the_blend_is_the_same_whatever_shares_the_batch() -> Result<()> {
        let (cfg, model) = tiny_denoiser()?;
        let plan = TilePlan::for_pipeline(&cfg, 4);
        let plane = |seed: u64| -> Vec<f32> {
            (0..96 * 64)
                .map(|k| {
                    let v = (k as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    0.3 + 0.4 * (v >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect()
        };
        let (a, b) = (
            split(&plane(1), 96, 64, &plan),
            split(&plane(2), 96, 64, &plan),
        );
        let plain_opts = RunOpts {
            max_batch: 8,
            max_batch_pixels: 1 << 20,
            ensemble: 1,
            sure_blend: false,
            noise_sigma: None,
        };
        let plain = run_units_with_codes(&model, &a, &vec![0; a.len()], plain_opts, false)?.0;
        // σ at half the residual's RMS puts the weights between 0 and 1, where they depend on
        // the probe (an estimated σ may leave an untrained model's output as it is).
        let ys: Vec<f32> = a.iter().flat_map(|u| u.data.iter().copied()).collect();
        let rms = crate::metrics::mse(&ys, &plain.concat()).sqrt();
        let opts = RunOpts {
            sure_blend: true,
            noise_sigma: Some(0.5 * rms),
            ..plain_opts
        };
        let alone = run_units_with_codes(&model, &a, &vec![0; a.len()], opts, false)?.0;
        let both: Vec<Unit> = b.iter().chain(&a).cloned().collect();
        let planes: Vec<usize> = (0..both.len()).map(|i| (i >= b.len()) as usize).collect();
        let batched = run_units_with_codes(&model, &both, &planes, opts, false)?.0;
        assert_eq!(alone, batched[b.len()..].to_vec());
        assert_ne!(alone, plain, "the blend changed the model's output");
        Ok(())
    }

    /// On a plane cut into tiles, the blend covers every pixel: told there is no noise it gives
    /// the input back exactly (weight 1 wherever the model changed anything), so no pixel kept
    /// the model's output. (The converse, weight 0 for enormous noise, holds only where the
    /// model's divergence is below 1, which an untrained model does not promise.)
    #[test]
    fn the_blend_covers_a_tiled_plane() -> Result<()> {
        let (cfg, model) = tiny_denoiser()?;
        let plan = TilePlan {
            tile: 32,
            overlap: 8,
            ..TilePlan::for_pipeline(&cfg, 4)
        };
        let (w, h) = (90, 70);
        let plane: Vec<f32> = (0..w * h)
            .map(|k| 0.5 + 0.3 * (k as f32 * 0.37).sin())
            .collect();
        assert!(split(&plane, w, h, &plan).len() > 4, "the plane is tiled");
        let opts = |sure_blend: bool, sigma: f64| RunOpts {
            max_batch: 8,
            max_batch_pixels: 1 << 20,
            ensemble: 1,
            sure_blend,
            noise_sigma: Some(sigma),
        };
        let model_only = run_plane(&model, &plane, w, h, &plan, opts(false, 0.0))?;
        let none = run_plane(&model, &plane, w, h, &plan, opts(true, 1e-9))?;
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        assert!(worst(&none, &plane) < 1e-6, "no noise: the input back");
        assert!(
            worst(&model_only, &plane) > 1e-3,
            "the model changes the plane"
        );
        Ok(())
    }

    #[test]
    fn flips_are_their_own_inverse() {
        let d: Vec<f32> = (0..12).map(|v| v as f32).collect();
        for (lr, ud) in FLIPS {
            assert_eq!(flip(&flip(&d, 4, 3, lr, ud), 4, 3, lr, ud), d);
        }
        assert_eq!(&flip(&d, 4, 3, true, false)[..4], &[3.0, 2.0, 1.0, 0.0]);
        assert_eq!(&flip(&d, 4, 3, false, true)[..4], &[8.0, 9.0, 10.0, 11.0]);
    }

    /// Eight views are the four flips of the frame and the four flips of its transpose: on a
    /// frame that is not square (its transposed views are batched apart), the 8-view output is
    /// the mean of the 4-view outputs of the frame and of its transpose, transposed back.
    #[test]
    fn eight_views_average_the_frame_and_its_transpose() -> Result<()> {
        let (cfg, model) = tiny_denoiser()?;
        let plan = TilePlan::for_pipeline(&cfg, 4);
        let (w, h) = (96, 64);
        let plane: Vec<f32> = (0..w * h)
            .map(|k| 0.5 + 0.3 * (k as f32 * 0.37).sin())
            .collect();
        let opts = |ensemble| RunOpts {
            max_batch: 8,
            max_batch_pixels: 1 << 20,
            ensemble,
            sure_blend: false,
            noise_sigma: None,
        };
        let run = |p: &[f32], w, h, n| -> Result<Vec<f32>> {
            let units = split(p, w, h, &plan);
            Ok(merge(&units, &run_units(&model, &units, opts(n))?, w, h))
        };
        let eight = run(&plane, w, h, 8)?;
        let four = run(&plane, w, h, 4)?;
        let four_t = transpose(&run(&transpose(&plane, w, h), h, w, 4)?, h, w);
        let worst = eight
            .iter()
            .zip(four.iter().zip(&four_t))
            .map(|(e, (a, b))| (e - (a + b) / 2.0).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "8 views against the two 4-view runs: {worst}");
        assert_ne!(four, four_t, "the transposed views differ");
        Ok(())
    }

    #[test]
    fn the_eight_views_are_distinct_and_undone() {
        // A 4-wide, 3-high plane: transposed views are 3 wide and 4 high.
        let d: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let views: Vec<Vec<f32>> = (0..MAX_VIEWS).map(|v| to_view(&d, v, 4, 3)).collect();
        for (v, x) in views.iter().enumerate() {
            assert_eq!(from_view(x, v, 4, 3), d, "view {v}");
            for (u, y) in views.iter().enumerate().skip(v + 1) {
                assert_ne!(x, y, "views {v} and {u}");
            }
        }
        // View 4 is the plain transpose: its first row is the plane's first column.
        assert_eq!(&views[4][..3], &[0.0, 4.0, 8.0]);
        assert_eq!(view_shape(4, 3, 4), (4, 3));
    }
}
