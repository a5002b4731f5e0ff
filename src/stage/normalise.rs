//! The normalise stage: float planes → the model's channels, cut into model-sized units.
//!
//! Fully convolutional models get the frame's planes padded and tiled; fixed-size autoencoders
//! get one grey unit resized to the model's size.
//!
//! A per-frame stretch comes first (`[normalise] stretch`): the models were trained on frames
//! that use the whole 0–1 range, and a dark 16-bit frame (a micrograph using 232 of 65535
//! levels) would reach them as black and come back flat. The linear map applied to each plane
//! is kept in [`Prepared::levels`] so post-process can undo it on image outputs, which then
//! keep the input's intensities (and, through [`Prepared::depth`], its bit depth).

use super::tiling::{split, TilePlan, Unit};
use crate::config::{ColourMode, NormaliseConfig, Stretch};
use crate::frame::y4m::{planes::to_rgb, Yuv};
use crate::frame::{percentile, resize_plane, stretch_percentiles, BitDepth, Planes};
use crate::model::Task;

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
    /// The input's bit depth, which image outputs are written at.
    pub depth: BitDepth,
    /// Per entry of `planes`, the stretch to undo on the model's output: present when one was
    /// applied and the output is an image of the frame (not a segmentation's probability).
    pub levels: Option<Vec<Levels>>,
    /// The YUV layout of a frame decoded from YUV4MPEG2 (its chroma planes are smaller).
    pub yuv: Option<Yuv>,
    /// Set when a YUV frame was converted to RGB for the model (`colour = "rgb"`): the
    /// layout post-process converts its output back to.
    pub to_yuv: Option<Yuv>,
}

/// The linear map a stretch applied to a plane: the model saw `(v - offset) * gain`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    pub offset: f32,
    pub gain: f32,
}

impl Levels {
    pub const IDENTITY: Levels = Levels {
        offset: 0.0,
        gain: 1.0,
    };

    /// A model output value back on the input's scale.
    pub fn undo(&self, v: f32) -> f32 {
        v / self.gain + self.offset
    }
}

/// The smallest high percentile `Stretch::Auto` divides by: one 16-bit level. A frame that is
/// black there (a few bright pixels on black) is scaled by its maximum instead.
const AUTO_FLOOR: f32 = 1.0 / 65535.0;

/// Stretches `plane` as `cfg` says for a frame of `depth`; returns the map applied, if any.
fn stretch(plane: &mut [f32], depth: BitDepth, cfg: &NormaliseConfig) -> Option<Levels> {
    let [lo, hi] = cfg.percentiles;
    match cfg.stretch {
        Stretch::None => None,
        Stretch::Auto if depth == BitDepth::Eight => None,
        Stretch::Auto => {
            let top = Some(percentile(plane, hi))
                .filter(|&t| t >= AUTO_FLOOR)
                .unwrap_or_else(|| plane.iter().fold(0.0, |m: f32, &v| m.max(v)));
            if top < AUTO_FLOOR {
                return None; // all black: nothing to brighten
            }
            let gain = 1.0 / top;
            plane.iter_mut().for_each(|v| *v *= gain);
            Some(Levels { offset: 0.0, gain })
        }
        Stretch::Percentile => {
            let (offset, gain) = stretch_percentiles(plane, lo, hi);
            Some(Levels { offset, gain })
        }
    }
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
    /// What the model makes: its image output is mapped back through the stretch unless it
    /// is a segmentation's probability.
    pub task: Task,
}

pub fn run(planes: Planes, opts: &NormaliseOpts) -> Prepared {
    // `colour = "rgb"`: a YUV frame reaches the model as RGB; post-process converts back.
    let (planes, to_yuv) = match planes.yuv {
        Some(y) if opts.cfg.colour == ColourMode::Rgb && opts.fixed_size.is_none() => {
            (to_rgb(&planes), Some(y))
        }
        _ => (planes, None),
    };
    let grey = opts.cfg.colour == ColourMode::Grey || opts.fixed_size.is_some();
    let luma = (grey && planes.is_colour()).then(|| planes.luma());
    // The frame itself is kept only when an output draws on it (no copy otherwise).
    let input = opts.keep_input.then(|| planes.clone());
    let sizes: Vec<(usize, usize)> = (0..planes.planes.len())
        .map(|i| planes.plane_size(i))
        .collect();
    let Planes {
        width: w,
        height: h,
        planes: chans,
        alpha,
        depth,
        yuv,
    } = planes;
    let mut chans = luma.map(|l| vec![l]).unwrap_or(chans);
    let applied: Vec<Option<Levels>> = chans
        .iter_mut()
        .map(|p| stretch(p, depth, &opts.cfg))
        .collect();
    let levels = (opts.task != Task::Segment && applied.iter().any(Option::is_some)).then(|| {
        applied
            .iter()
            .map(|l| l.unwrap_or(Levels::IDENTITY))
            .collect()
    });
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
            depth,
            levels,
            // One grey plane at the model's size: no longer the stream's layout.
            yuv: None,
            to_yuv: None,
        };
    }
    Prepared {
        width: w,
        height: h,
        planes: chans
            .iter()
            .zip(&sizes)
            .map(|(p, &(pw, ph))| split(p, pw, ph, &opts.plan))
            .collect(),
        alpha,
        input,
        depth,
        levels,
        yuv,
        to_yuv,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PadMode;

    fn opts(task: Task) -> NormaliseOpts {
        NormaliseOpts {
            cfg: NormaliseConfig::default(),
            plan: TilePlan {
                multiple: 1,
                tile: 512,
                overlap: 32,
                pad: PadMode::Reflect,
            },
            fixed_size: None,
            keep_input: false,
            task,
        }
    }

    /// A dim 16-bit plane: 0 to `top`, as 16-bit values go.
    fn dim(top: u16) -> Planes {
        let v = (0..64).map(|i| (i * top as usize / 63) as f32 / 65535.0);
        Planes::grey(8, 8, v.collect()).with_depth(BitDepth::Sixteen)
    }

    #[test]
    fn auto_brightens_dark_sixteen_bit_frames_and_records_how() {
        let p = run(dim(232), &opts(Task::Denoise));
        let u = &p.planes[0][0].data;
        let top = u.iter().fold(0.0f32, |m, &v| m.max(v));
        // The 99.8th percentile is at 1: the brightest pixel just above.
        assert!((1.0..1.01).contains(&top), "{top}");
        assert_eq!(u[0], 0.0, "black stays black");
        let l = p.levels.expect("levels to undo")[0];
        assert_eq!(l.offset, 0.0);
        assert!((l.undo(top) - 232.0 / 65535.0).abs() < 1e-7);
        assert_eq!(p.depth, BitDepth::Sixteen);
    }

    #[test]
    fn eight_bit_frames_and_black_frames_reach_the_model_as_decoded() {
        let eight = Planes::grey(8, 8, (0..64).map(|i| i as f32 / 255.0).collect());
        let p = run(eight.clone(), &opts(Task::Denoise));
        assert_eq!(p.planes[0][0].data, eight.planes[0]);
        assert!(p.levels.is_none());
        let p = run(dim(0), &opts(Task::Denoise));
        assert!(p.levels.is_none() && p.planes[0][0].data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn segmentation_probabilities_are_not_mapped_back_images_are() {
        let p = run(dim(232), &opts(Task::Segment));
        assert!(p.levels.is_none());
        let mut o = opts(Task::Denoise);
        o.cfg.stretch = Stretch::Percentile;
        let p = run(dim(232), &o);
        // `percentile` maps the low percentile to 0: an offset as well as a gain.
        assert!(p.levels.unwrap()[0].offset > 0.0);
    }

    /// `colour = "rgb"`: a 4:2:0 frame reaches the model as three full-size RGB planes, and
    /// post-process brings the output back to 4:2:0.
    #[test]
    fn rgb_mode_converts_yuv_frames_and_back() {
        use crate::frame::y4m::Format;
        let (w, h) = (16, 8);
        let smooth = |a: f32, b: f32, n: usize, cw: usize| -> Vec<f32> {
            (0..n)
                .map(|i| a + b * (i % cw) as f32 / cw as f32)
                .collect()
        };
        let frame = Planes {
            width: w,
            height: h,
            planes: vec![
                smooth(0.3, 0.4, 128, 16),
                smooth(0.45, 0.1, 32, 8),
                smooth(0.55, -0.1, 32, 8),
            ],
            alpha: None,
            depth: BitDepth::Eight,
            yuv: Some(Yuv {
                format: Format::parse("420mpeg2").unwrap(),
                full_range: false,
            }),
        };
        let mut o = opts(Task::Denoise);
        o.cfg.colour = ColourMode::Rgb;
        let p = run(frame.clone(), &o);
        assert_eq!((p.planes.len(), p.yuv, p.to_yuv), (3, None, frame.yuv));
        assert_eq!(p.planes[1][0].data.len(), w * h);
        let outs: Vec<Vec<f32>> = p.planes.iter().map(|u| u[0].data.clone()).collect();
        let back = crate::stage::postprocess::assemble(p, &outs, None, &Default::default());
        assert_eq!(back.planes.yuv, frame.yuv);
        let (got, want) = (back.planes.planes.concat(), frame.planes.concat());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 0.02, "sample {i}: {a} vs {b}");
        }
    }

    #[test]
    fn fixed_size_models_get_one_grey_unit_of_their_size() {
        let planes = Planes {
            width: 40,
            height: 30,
            planes: vec![vec![0.2; 1200], vec![0.4; 1200], vec![0.6; 1200]],
            alpha: None,
            depth: BitDepth::Eight,
            yuv: None,
        };
        let opts = NormaliseOpts {
            fixed_size: Some((25, 20)),
            ..opts(Task::Reconstruct)
        };
        let p = run(planes, &opts);
        assert_eq!((p.width, p.height, p.unit_count()), (25, 20, 1));
        let u = &p.planes[0][0];
        assert_eq!(u.data.len(), 500);
        let luma = 0.2125 * 0.2 + 0.7154 * 0.4 + 0.0721 * 0.6;
        assert!(u.data.iter().all(|v| (v - luma).abs() < 1e-5));
    }
}
