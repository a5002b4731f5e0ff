//! The normalise stage: float planes → the model's channels, cut into model-sized units.
//!
//! Fully convolutional models get the frame's planes padded and tiled; fixed-size autoencoders
//! get one grey unit resized to the model's size. An optional percentile stretch comes first.

use super::tiling::{split, TilePlan, Unit};
use crate::config::{ColourMode, NormaliseConfig, Stretch};
use crate::frame::{resize_plane, stretch_percentiles, Planes};

/// A frame ready for the model: per output plane, its units.
#[derive(Debug)]
pub struct Prepared {
    /// Size of the output planes (the frame's, or the model's for fixed-size models).
    pub width: usize,
    pub height: usize,
    /// One entry per plane the model will process (1 grey or 3 colour channels).
    pub planes: Vec<Vec<Unit>>,
    pub alpha: Option<Vec<f32>>,
    /// The decoded frame, kept when an output draws on it (overlays).
    pub input: Option<Planes>,
}

impl Prepared {
    pub fn unit_count(&self) -> usize {
        self.planes.iter().map(Vec::len).sum()
    }
}

/// How frames are prepared: from the pipeline's `[normalise]` and the model's needs.
#[derive(Debug, Clone)]
pub struct NormaliseOpts {
    pub cfg: NormaliseConfig,
    pub plan: TilePlan,
    /// Resize to this `(width, height)`, grey, as one unit.
    pub fixed_size: Option<(usize, usize)>,
    /// Keep the decoded frame in [`Prepared::input`].
    pub keep_input: bool,
}

pub fn run(planes: Planes, opts: &NormaliseOpts) -> Prepared {
    let grey = opts.cfg.colour == ColourMode::Grey || opts.fixed_size.is_some();
    let luma = (grey && planes.is_colour()).then(|| planes.luma());
    // The frame itself is kept only when an output draws on it (no copy otherwise).
    let input = opts.keep_input.then(|| planes.clone());
    let Planes {
        width: w,
        height: h,
        planes: chans,
        alpha,
    } = planes;
    let mut chans = luma.map(|l| vec![l]).unwrap_or(chans);
    if opts.cfg.stretch == Stretch::Percentile {
        let [lo, hi] = opts.cfg.percentiles;
        chans
            .iter_mut()
            .for_each(|p| stretch_percentiles(p, lo, hi));
    }
    if let Some((mw, mh)) = opts.fixed_size {
        let data = resize_plane(&chans[0], w, h, mw, mh);
        let unit = Unit {
            data,
            uw: mw,
            uh: mh,
            src_x: 0,
            src_y: 0,
            dst_x: 0,
            dst_y: 0,
            keep_w: mw,
            keep_h: mh,
        };
        return Prepared {
            width: mw,
            height: mh,
            planes: vec![vec![unit]],
            alpha: None,
            input,
        };
    }
    Prepared {
        width: w,
        height: h,
        planes: chans.iter().map(|p| split(p, w, h, &opts.plan)).collect(),
        alpha,
        input,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PadMode;

    #[test]
    fn fixed_size_models_get_one_grey_unit_of_their_size() {
        let planes = Planes {
            width: 40,
            height: 30,
            planes: vec![vec![0.2; 1200], vec![0.4; 1200], vec![0.6; 1200]],
            alpha: None,
        };
        let opts = NormaliseOpts {
            cfg: NormaliseConfig::default(),
            plan: TilePlan {
                multiple: 1,
                tile: 512,
                overlap: 32,
                pad: PadMode::Reflect,
            },
            fixed_size: Some((25, 20)),
            keep_input: false,
        };
        let p = run(planes, &opts);
        assert_eq!((p.width, p.height, p.unit_count()), (25, 20, 1));
        let u = &p.planes[0][0];
        assert_eq!(u.data.len(), 500);
        let luma = 0.2125 * 0.2 + 0.7154 * 0.4 + 0.0721 * 0.6;
        assert!(u.data.iter().all(|v| (v - luma).abs() < 1e-5));
    }
}
