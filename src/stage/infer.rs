//! The infer stage: runs model-sized units through the network in batches.
//!
//! Units of the same shape (all tiles, and equally sized whole frames) are stacked into one
//! NHWC batch of at most `max_batch`; each batch is one forward pass.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::tiling::{merge, split, TilePlan, Unit};
use crate::error::Result;
use crate::model::Model;

/// Runs units through the model, at most `max_batch` at once; returns outputs in input order.
pub fn run_units(model: &dyn Model, units: &[Unit], max_batch: usize) -> Result<Vec<Vec<f32>>> {
    let mut by_shape: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, u) in units.iter().enumerate() {
        by_shape.entry((u.uh, u.uw)).or_default().push(i);
    }
    let mut outputs: Vec<Vec<f32>> = vec![Vec::new(); units.len()];
    for ((uh, uw), idx) in by_shape {
        for chunk in idx.chunks(max_batch.max(1)) {
            let mut data = Vec::with_capacity(chunk.len() * uh * uw);
            for &i in chunk {
                data.extend_from_slice(&units[i].data);
            }
            let x = Tensor::from_vec(data, (chunk.len(), uh, uw, 1), model.device())?;
            let y = model.forward(&x)?;
            let y = y.flatten_all()?.to_vec1::<f32>()?;
            for (k, &i) in chunk.iter().enumerate() {
                outputs[i] = y[k * uh * uw..(k + 1) * uh * uw].to_vec();
            }
        }
    }
    Ok(outputs)
}

/// Denoises one plane end to end (split, run, merge): for eval, training validation and tests.
pub fn run_plane(
    model: &dyn Model,
    plane: &[f32],
    w: usize,
    h: usize,
    plan: &TilePlan,
    max_batch: usize,
) -> Result<Vec<f32>> {
    let units = split(plane, w, h, plan);
    let outs = run_units(model, &units, max_batch)?;
    Ok(merge(&units, &outs, w, h))
}
