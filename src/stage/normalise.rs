//! The normalise stage: float planes → the model's channels, cut into model-sized units.

use super::tiling::{split, TilePlan, Unit};
use crate::config::ColourMode;
use crate::frame::Planes;

/// A frame ready for the model: per output plane, its units.
#[derive(Debug)]
pub struct Prepared {
    pub width: usize,
    pub height: usize,
    /// One entry per plane the model will process (1 grey or 3 colour channels).
    pub planes: Vec<Vec<Unit>>,
    pub alpha: Option<Vec<f32>>,
}

impl Prepared {
    pub fn unit_count(&self) -> usize {
        self.planes.iter().map(Vec::len).sum()
    }
}

pub fn run(planes: Planes, mode: ColourMode, plan: &TilePlan) -> Prepared {
    let (w, h) = (planes.width, planes.height);
    let chans: Vec<Vec<f32>> = match mode {
        ColourMode::Grey if planes.is_colour() => vec![planes.luma()],
        _ => planes.planes,
    };
    Prepared {
        width: w,
        height: h,
        planes: chans.iter().map(|p| split(p, w, h, plan)).collect(),
        alpha: planes.alpha,
    }
}
