//! The post-process stage: model outputs → merged, un-padded, clipped planes → encoded file.

use super::normalise::Prepared;
use super::tiling::merge;
use crate::config::{OutputKind, PostprocessConfig};
use crate::error::Result;
use crate::frame::{encode_png, Planes};

/// Reassembles a frame from its units' outputs (in the order of `prepared.planes`).
pub fn assemble(prepared: &Prepared, outputs: &[Vec<f32>], cfg: &PostprocessConfig) -> Planes {
    let mut at = 0;
    let mut planes = Vec::with_capacity(prepared.planes.len());
    for units in &prepared.planes {
        let outs = &outputs[at..at + units.len()];
        at += units.len();
        let mut p = merge(units, outs, prepared.width, prepared.height);
        if cfg.clip {
            p.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        }
        planes.push(p);
    }
    Planes {
        width: prepared.width,
        height: prepared.height,
        planes,
        alpha: prepared.alpha.clone(),
    }
}

/// Encodes the frame as the output kind's file format.
pub fn encode(planes: &Planes, kind: OutputKind, what: &str) -> Result<Vec<u8>> {
    match kind {
        OutputKind::Denoised => encode_png(planes, what),
    }
}
