//! `--temporal N`: less flicker on static parts of a video, no ghosts on moving ones.
//!
//! Each frame is denoised on its own, so what noise is left differs from frame to frame: on a
//! static scene the output shimmers (docs/video.md measures it). This filter averages each
//! denoised frame with the `N` denoised frames before it, motion-compensated: for every 8×8
//! block of Y' the best match in each past frame is searched within ±4 pixels (ties keep the
//! block where it is, so still blocks stay put), and the past frame is read through that
//! offset (scaled down for subsampled chroma). A still shot averages in place; a pan or a
//! moving object averages along its motion instead of smearing across it. A block whose best
//! match is still poor (something appeared, an occlusion, a cut) gets no weight: its mean
//! squared difference is compared with the frame's median over blocks (beyond `STILL` times
//! it the weight falls away) and with an absolute bound (an RMS difference of 20 levels of
//! 255), so nothing of it is blended in (no ghost).
//!
//! It runs where frames are in order (the stdout sink) and looks only backwards, so it adds
//! no delay; past frames are the denoised ones, not earlier outputs, so no error feeds back.

use std::collections::VecDeque;

use crate::frame::Planes;

/// Most frames `--temporal` may look back.
pub const MAX_FRAMES: usize = 8;

/// Blocks of Y' matched between frames.
const BLOCK: usize = 8;

/// How far (pixels of Y', each way) a block's match is searched.
const SEARCH: isize = 4;

/// A block counts fully up to this many times the frame's median match error; beyond, its
/// weight falls as `exp(-(r - STILL))`.
const STILL: f32 = 8.0;

/// A block's match error beyond this (mean squared, 0–1 scale: 20 levels of 255 RMS) is
/// never blended, whatever the rest of the frame does (a scene cut makes every block bad).
const MAX_ERROR: f32 = (20.0 / 255.0) * (20.0 / 255.0);

/// The smallest median error taken: a frame with no noise left must not turn every tiny
/// difference into motion by dividing by zero.
const FLOOR: f32 = (0.5 / 255.0) * (0.5 / 255.0);

pub struct Temporal {
    n: usize,
    /// The last denoised frames, newest first.
    past: VecDeque<Planes>,
}

impl Temporal {
    /// Looks back `n` frames (at most [`MAX_FRAMES`]; 0: the filter is off).
    pub fn new(n: usize) -> Self {
        Self {
            n: n.min(MAX_FRAMES),
            past: VecDeque::new(),
        }
    }

    /// Forgets the past (after a frame that failed: its neighbours are not comparable).
    pub fn reset(&mut self) {
        self.past.clear();
    }

    /// The filtered frame; `frame` (denoised) joins the past.
    pub fn apply(&mut self, frame: Planes) -> Planes {
        if self.n == 0 {
            return frame;
        }
        let same_shape = |p: &Planes| {
            (p.width, p.height, p.planes.len()) == (frame.width, frame.height, frame.planes.len())
                && p.yuv == frame.yuv
        };
        if !self.past.iter().all(same_shape) {
            self.reset();
        }
        let (w, h) = (frame.width, frame.height);
        let mut sum = frame.planes.clone();
        let mut weight: Vec<Vec<f32>> = sum.iter().map(|p| vec![1.0; p.len()]).collect();
        for past in &self.past {
            let motion = Motion::estimate(&frame.planes[0], &past.planes[0], w, h);
            for (i, (s, wt)) in sum.iter_mut().zip(&mut weight).enumerate() {
                let (pw, ph) = frame.plane_size(i);
                motion.accumulate(&past.planes[i], pw, ph, (w / pw, h / ph), s, wt);
            }
        }
        let mut out = frame.clone();
        for ((o, s), wt) in out.planes.iter_mut().zip(sum).zip(&weight) {
            *o = s.iter().zip(wt).map(|(s, w)| s / w).collect();
        }
        self.past.push_front(frame);
        self.past.truncate(self.n);
        out
    }
}

/// Per 8×8 block of Y': where it is in a past frame, and how much that frame counts there.
struct Motion {
    /// Blocks across and down.
    bw: usize,
    bh: usize,
    offsets: Vec<(isize, isize)>,
    weights: Vec<f32>,
}

impl Motion {
    /// Matches every block of `cur` in `past` (both `w`×`h`).
    fn estimate(cur: &[f32], past: &[f32], w: usize, h: usize) -> Motion {
        let (bw, bh) = (w.div_ceil(BLOCK), h.div_ceil(BLOCK));
        let mut offsets = Vec::with_capacity(bw * bh);
        let mut errors = Vec::with_capacity(bw * bh);
        // Candidates nearest first: a later one must be clearly better, so a still block
        // stays put instead of fitting its leftover noise.
        let mut candidates: Vec<(isize, isize)> = (-SEARCH..=SEARCH)
            .flat_map(|dy| (-SEARCH..=SEARCH).map(move |dx| (dx, dy)))
            .collect();
        candidates.sort_by_key(|&(dx, dy)| dx * dx + dy * dy);
        for by in 0..bh {
            for bx in 0..bw {
                let (x0, y0) = (bx * BLOCK, by * BLOCK);
                let (x1, y1) = ((x0 + BLOCK).min(w), (y0 + BLOCK).min(h));
                let n = ((x1 - x0) * (y1 - y0)) as f32;
                let mut best = (0, 0, f32::INFINITY);
                for &(dx, dy) in &candidates {
                    let mut e = 0.0f32;
                    for y in y0..y1 {
                        let py = clamp(y as isize + dy, h);
                        let (row, prow) = (&cur[y * w..y * w + x1], &past[py * w..(py + 1) * w]);
                        for (x, &c) in row.iter().enumerate().skip(x0) {
                            let d = c - prow[clamp(x as isize + dx, w)];
                            e += d * d;
                        }
                    }
                    if e < best.2 * 0.9 {
                        best = (dx, dy, e);
                    }
                }
                offsets.push((best.0, best.1));
                errors.push(best.2 / n);
            }
        }
        let mut sorted = errors.clone();
        let k = sorted.len() / 2;
        let median = sorted
            .select_nth_unstable_by(k, f32::total_cmp)
            .1
            .max(FLOOR);
        let weights = errors
            .iter()
            .map(|&e| {
                if e > MAX_ERROR {
                    0.0
                } else {
                    (-(e / median - STILL).max(0.0)).exp()
                }
            })
            .collect();
        Motion {
            bw,
            bh,
            offsets,
            weights,
        }
    }

    /// Adds `past` (a plane of `pw`×`ph`, subsampled by `scale` from Y') read through the
    /// motion, weighted, into `sum` and `weight`.
    fn accumulate(
        &self,
        past: &[f32],
        pw: usize,
        ph: usize,
        scale: (usize, usize),
        sum: &mut [f32],
        weight: &mut [f32],
    ) {
        let (sx, sy) = (scale.0.max(1), scale.1.max(1));
        for y in 0..ph {
            let by = (y * sy / BLOCK).min(self.bh - 1);
            for x in 0..pw {
                let b = by * self.bw + (x * sx / BLOCK).min(self.bw - 1);
                let k = self.weights[b];
                if k <= 0.0 {
                    continue;
                }
                // Rounded to the plane's grid: half a chroma sample is within the blur the
                // averaging brings anyway.
                let (dx, dy) = self.offsets[b];
                let px = clamp(x as isize + dx / sx as isize, pw);
                let py = clamp(y as isize + dy / sy as isize, ph);
                let i = y * pw + x;
                sum[i] += k * past[py * pw + px];
                weight[i] += k;
            }
        }
    }
}

/// `v` clamped into `0..n`.
fn clamp(v: isize, n: usize) -> usize {
    v.clamp(0, n as isize - 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    /// A 32×32 grey frame: a bright square at `x0`, leftover noise of 2 levels.
    fn frame(x0: usize, seed: u64) -> Planes {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = Normal::new(0.0f32, 2.0 / 255.0).unwrap();
        let data = (0..32 * 32)
            .map(|i| {
                let x = i % 32;
                let base = if (x0..x0 + 8).contains(&x) { 0.8 } else { 0.3 };
                base + n.sample(&mut rng)
            })
            .collect();
        Planes::grey(32, 32, data)
    }

    fn mad(a: &Planes, b: &Planes) -> f32 {
        let (a, b) = (&a.planes[0], &b.planes[0]);
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    }

    #[test]
    fn static_frames_flicker_less() {
        let mut t = Temporal::new(4);
        let outs: Vec<Planes> = (0..8).map(|s| t.apply(frame(10, s))).collect();
        let before = mad(&frame(10, 6), &frame(10, 7));
        let after = mad(&outs[6], &outs[7]);
        assert!(after < before * 0.5, "flicker {before} -> {after}");
    }

    /// The square moves 2 pixels a frame: followed, so the output is the moved frame with its
    /// noise averaged down, not a blur of positions.
    #[test]
    fn slow_motion_is_followed() {
        let mut t = Temporal::new(4);
        let mut out = None;
        for s in 0..5 {
            out = Some(t.apply(frame(4 + 2 * s as usize, s)));
        }
        let clean = |x: usize| if (12..20).contains(&x) { 0.8 } else { 0.3 };
        let out = out.unwrap();
        let err = out.planes[0]
            .iter()
            .enumerate()
            .map(|(i, v)| (v - clean(i % 32)).abs())
            .sum::<f32>()
            / out.planes[0].len() as f32;
        let alone = frame(12, 4).planes[0]
            .iter()
            .enumerate()
            .map(|(i, v)| (v - clean(i % 32)).abs())
            .sum::<f32>()
            / 1024.0;
        assert!(
            err < alone * 0.8,
            "{} vs {} levels",
            err * 255.0,
            alone * 255.0
        );
    }

    /// A cut: nothing of the old scene comes through.
    #[test]
    fn a_cut_blends_nothing() {
        let mut t = Temporal::new(4);
        for s in 0..4 {
            t.apply(frame(4, s));
        }
        let mut cut = frame(20, 7);
        cut.planes[0].iter_mut().for_each(|v| *v = 1.0 - *v);
        assert_eq!(t.apply(cut.clone()), cut);
    }

    /// The square jumps 8 pixels: the output is the new frame there, not a blend with the old.
    #[test]
    fn moving_content_leaves_no_ghost() {
        let mut t = Temporal::new(4);
        for s in 0..4 {
            t.apply(frame(4, s));
        }
        let moved = frame(12, 9);
        let out = t.apply(moved.clone());
        let worst = out.planes[0]
            .iter()
            .zip(&moved.planes[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 12.0 / 255.0, "a ghost of {} levels", worst * 255.0);
    }
}
