//! The infer stage: runs model-sized units through the network in batches.
//!
//! Units of the same shape (all tiles, and equally sized whole frames) are stacked into one
//! NHWC batch of at most `max_batch`; each batch is one forward pass. With `ensemble` > 1 each
//! unit also runs flipped (left-right, up-down, both) and the un-flipped outputs are averaged:
//! slower, and a little better, since the model's errors differ between orientations.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::tiling::{merge, split, TilePlan, Unit};
use crate::config::InferConfig;
use crate::error::Result;
use crate::model::Model;
use crate::sink::Code;

/// How units are run.
#[derive(Debug, Clone, Copy)]
pub struct RunOpts {
    pub max_batch: usize,
    /// Most pixels in one forward pass (memory bound); at least one unit always runs.
    pub max_batch_pixels: usize,
    /// 1 (off), 2 (+ left-right flip) or 4 (+ up-down flip and both).
    pub ensemble: usize,
}

impl From<&InferConfig> for RunOpts {
    fn from(c: &InferConfig) -> Self {
        Self {
            max_batch: c.max_batch,
            max_batch_pixels: c.max_batch_pixels,
            ensemble: c.ensemble,
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

const FLIPS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// Runs units through the model; returns outputs in input order.
pub fn run_units(model: &dyn Model, units: &[Unit], opts: RunOpts) -> Result<Vec<Vec<f32>>> {
    Ok(run_units_with_codes(model, units, opts, false)?.0)
}

/// Runs units through the model; returns image outputs and (with `want_code`, for models that
/// have one) each unit's code with its shape, in input order. Codes come from the un-flipped
/// view only: a flipped image has a different code.
#[allow(clippy::type_complexity)]
pub fn run_units_with_codes(
    model: &dyn Model,
    units: &[Unit],
    opts: RunOpts,
    want_code: bool,
) -> Result<(Vec<Vec<f32>>, Vec<Option<Code>>)> {
    let views = opts.ensemble.clamp(1, 4);
    let mut codes: Vec<Option<Code>> = vec![None; units.len()];
    // Work items: (unit index, flip), grouped by shape so each batch is one tensor.
    let mut by_shape: BTreeMap<(usize, usize), Vec<(usize, usize)>> = BTreeMap::new();
    for (i, u) in units.iter().enumerate() {
        for v in 0..views {
            by_shape.entry((u.uh, u.uw)).or_default().push((i, v));
        }
    }
    let mut outputs: Vec<Vec<f32>> = units.iter().map(|u| vec![0f32; u.uw * u.uh]).collect();
    for ((uh, uw), items) in by_shape {
        let per_pass = opts
            .max_batch
            .min(opts.max_batch_pixels / (uh * uw).max(1))
            .max(1);
        for chunk in items.chunks(per_pass) {
            let mut data = Vec::with_capacity(chunk.len() * uh * uw);
            for &(i, v) in chunk {
                let (lr, ud) = FLIPS[v];
                if v == 0 {
                    data.extend_from_slice(&units[i].data);
                } else {
                    data.extend(flip(&units[i].data, uw, uh, lr, ud));
                }
            }
            let x = Tensor::from_vec(data, (chunk.len(), uh, uw, 1), model.device())?;
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
                let out = &y[k * uh * uw..(k + 1) * uh * uw];
                let (lr, ud) = FLIPS[v];
                let back = if v == 0 {
                    out.to_vec()
                } else {
                    flip(out, uw, uh, lr, ud)
                };
                for (acc, b) in outputs[i].iter_mut().zip(back) {
                    *acc += b / views as f32;
                }
            }
        }
    }
    Ok((outputs, codes))
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
    let outs = run_units(model, &units, opts)?;
    Ok(merge(&units, &outs, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_are_their_own_inverse() {
        let d: Vec<f32> = (0..12).map(|v| v as f32).collect();
        for (lr, ud) in FLIPS {
            assert_eq!(flip(&flip(&d, 4, 3, lr, ud), 4, 3, lr, ud), d);
        }
        assert_eq!(&flip(&d, 4, 3, true, false)[..4], &[3.0, 2.0, 1.0, 0.0]);
        assert_eq!(&flip(&d, 4, 3, false, true)[..4], &[8.0, 9.0, 10.0, 11.0]);
    }
}
