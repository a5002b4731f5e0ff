//! `--temporal N`: less flicker on static parts of a video, no ghosts on moving ones.
//!
//! Each frame is denoised on its own, so what noise is left differs from frame to frame: on a
//! static scene the output shimmers (docs/video.md measures it). This filter averages each
//! denoised frame with the `N` denoised frames before it, pixel by pixel, weighting a past
//! frame by how well it agrees with the current one around that pixel: the weight is
//! `exp(-(d/τ)²)` where `d` is their difference box-blurred over 5×5 (the blur averages the
//! leftover noise away, so it measures real change). Where the scene is still, `d` is tiny and
//! the frames average; where something moved or the scene cut, `d` is far above τ and the
//! past frame gets no weight, so nothing of it is smeared in (no ghost). Each plane is
//! filtered at its own size.
//!
//! It runs where frames are in order (the stdout sink) and looks only backwards, so it adds
//! no delay; past frames are the denoised ones, not earlier outputs, so no error feeds back.

use std::collections::VecDeque;

use crate::frame::Planes;

/// Most frames `--temporal` may look back.
pub const MAX_FRAMES: usize = 8;

/// Half the side of the box the difference is averaged over (5×5).
const RADIUS: usize = 2;

/// τ on the 0–1 scale: 3 levels of 255. Leftover noise after denoising is a few levels and
/// the box averages it down to under one; motion and cuts differ by tens.
const TAU: f32 = 3.0 / 255.0;

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
        let mut out = frame.clone();
        for (i, plane) in out.planes.iter_mut().enumerate() {
            let (w, h) = frame.plane_size(i);
            let cur = &frame.planes[i];
            let mut sum = cur.clone();
            let mut weight = vec![1.0f32; cur.len()];
            for past in &self.past {
                let p = &past.planes[i];
                let diff: Vec<f32> = cur.iter().zip(p).map(|(a, b)| a - b).collect();
                let d = box_blur(&diff, w, h, RADIUS);
                for (((s, wt), &v), &d) in sum.iter_mut().zip(&mut weight).zip(p).zip(&d) {
                    let k = (-(d / TAU) * (d / TAU)).exp();
                    *s += k * v;
                    *wt += k;
                }
            }
            for (s, wt) in sum.iter_mut().zip(&weight) {
                *s /= wt;
            }
            *plane = sum;
        }
        self.past.push_front(frame);
        self.past.truncate(self.n);
        out
    }
}

/// The mean over a (2r+1)² box around each pixel (the box shrinks at the edges), separably:
/// along rows, then along columns a whole row at a time (memory in order).
fn box_blur(p: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let mut rows = vec![0.0f32; p.len()];
    for (row, out) in p.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
        for (x, o) in out.iter_mut().enumerate() {
            let (a, b) = (x.saturating_sub(r), (x + r + 1).min(w));
            *o = row[a..b].iter().sum::<f32>() / (b - a) as f32;
        }
    }
    let mut out = vec![0.0f32; p.len()];
    for (y, o) in out.chunks_exact_mut(w).enumerate() {
        let (a, b) = (y.saturating_sub(r), (y + r + 1).min(h));
        for src in rows[a * w..b * w].chunks_exact(w) {
            o.iter_mut().zip(src).for_each(|(o, v)| *o += v);
        }
        let inv = 1.0 / (b - a) as f32;
        o.iter_mut().for_each(|v| *v *= inv);
    }
    out
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

    #[test]
    fn box_blur_averages_and_keeps_constants() {
        let p: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let b = box_blur(&p, 5, 4, 1);
        assert_eq!(b[6], (1 + 2 + 5 + 6 + 7 + 10 + 11 + 12) as f32 / 9.0);
        assert!(box_blur(&[0.5; 12], 4, 3, 2)
            .iter()
            .all(|v| (v - 0.5).abs() < 1e-6));
    }
}
