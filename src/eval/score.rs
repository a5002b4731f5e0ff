//! Scores shared by `eval` and training's validation: reconstruction error, codes and
//! sparsity of an autoencoder over frames, and the pixel tally of a segmentation over
//! image/mask pairs. They live with evaluation so that `train` may use them while `eval`
//! never depends on `train`.

use crate::data::dataset::Pair;
use crate::error::Result;
use crate::eval::analysis::SegTally;
use crate::model::Model;
use crate::stage::{infer, tiling::TilePlan};
use candle_core::Tensor;

/// Reconstruction MSE (per pixel, [0, 1] scale) of frames, their codes, and the fraction of
/// code entries with |h| < 0.01.
pub struct ReconStats {
    pub mse: f64,
    pub outputs: Vec<Vec<f32>>,
    pub codes: Vec<Vec<f32>>,
    pub sparsity: f64,
}

pub fn recon_stats(
    model: &dyn Model,
    frames: &[Vec<f32>],
    size: (usize, usize),
) -> Result<ReconStats> {
    let (w, h) = size;
    let (mut se, mut n, mut small, mut total) = (0.0f64, 0usize, 0usize, 0usize);
    let mut outputs = Vec::with_capacity(frames.len());
    let mut codes = Vec::with_capacity(frames.len());
    for chunk in frames.chunks(256) {
        let data: Vec<f32> = chunk.iter().flat_map(|f| f.iter().copied()).collect();
        let x = Tensor::from_vec(data, (chunk.len(), h, w, 1), model.device())?;
        let o = model.run(&x, true)?;
        let y = o.image.flatten_all()?.to_vec1::<f32>()?;
        for (k, f) in chunk.iter().enumerate() {
            let out = &y[k * w * h..(k + 1) * w * h];
            for (a, b) in out.iter().zip(f) {
                let d = (a.clamp(0.0, 1.0) - b) as f64;
                se += d * d;
            }
            n += f.len();
            outputs.push(out.to_vec());
        }
        if let Some(c) = o.code {
            let per = c.elem_count() / chunk.len();
            let flat = c.flatten_all()?.to_vec1::<f32>()?;
            small += flat.iter().filter(|v| v.abs() < 0.01).count();
            total += flat.len();
            codes.extend(flat.chunks(per).map(<[f32]>::to_vec));
        }
    }
    Ok(ReconStats {
        mse: se / n.max(1) as f64,
        outputs,
        codes,
        sparsity: small as f64 / total.max(1) as f64,
    })
}

/// Runs the segmentation model over each image/mask pair and tallies the pixels for which
/// `include(x, y)` holds; `each` sees every pair with its foreground probabilities.
pub fn score_segmentation(
    model: &dyn Model,
    pairs: &[Pair],
    plan: &TilePlan,
    opts: infer::RunOpts,
    include: impl Fn(usize, usize) -> bool,
    mut each: impl FnMut(&Pair, &[f32]),
) -> Result<SegTally> {
    let mut tally = SegTally::default();
    for pair in pairs {
        let prob = infer::run_plane(model, &pair.image, pair.w, pair.h, plan, opts)?;
        tally.add_frame(&prob, &pair.mask, pair.w, &include);
        each(pair, &prob);
    }
    Ok(tally)
}
