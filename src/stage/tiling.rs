//! Padding and tiling: how a plane of any size becomes model-sized units and back.
//!
//! A plane that fits in one tile is padded (reflect or zero) up to the model's size multiple and
//! runs whole. Along a side longer than `tile`, the plane is cut into the fewest equal spans of
//! at most `tile` whose centres cover it; each span sees `overlap` pixels of real context beyond
//! its centre (mirrored at the border) and only its centre is kept, so the result has no seams
//! and memory per unit is bounded. All units of one frame have one shape, so they batch
//! together.

use crate::config::PadMode;

/// Index into `0..n` mirrored at the ends (numpy's "reflect": … 2 1 | 0 1 2 … n-1 | n-2 …).
fn mirror(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    if m < n as isize {
        m as usize
    } else {
        (period - m) as usize
    }
}

/// One model-sized piece of a plane, and where its kept part goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Row-major `uw × uh` input values.
    pub data: Vec<f32>,
    pub uw: usize,
    pub uh: usize,
    /// The kept region: `(x, y)` in the unit maps to `(x + dst_x - src_x, …)` in the plane.
    pub src_x: usize,
    pub src_y: usize,
    pub dst_x: usize,
    pub dst_y: usize,
    pub keep_w: usize,
    pub keep_h: usize,
}

/// How a plane is cut: the model's size multiple, the tile side and overlap, and the padding.
#[derive(Debug, Clone, Copy)]
pub struct TilePlan {
    pub multiple: usize,
    pub tile: usize,
    pub overlap: usize,
    pub pad: PadMode,
}

impl TilePlan {
    /// The plan of a pipeline's `[model]` and `[normalise]` for a model of this size multiple.
    pub fn for_pipeline(cfg: &crate::config::PipelineConfig, multiple: usize) -> Self {
        Self {
            multiple,
            tile: cfg.model.tile,
            overlap: cfg.model.tile_overlap,
            pad: cfg.normalise.pad,
        }
    }
}

fn round_up(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}

#[allow(clippy::too_many_arguments)]
/// Reads a `uw × uh` window whose top-left is at `(x0, y0)` (may be negative or past the end).
fn window(
    plane: &[f32],
    w: usize,
    h: usize,
    x0: isize,
    y0: isize,
    uw: usize,
    uh: usize,
    pad: PadMode,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(uw * uh);
    for y in 0..uh as isize {
        let yy = y0 + y;
        let inside_y = yy >= 0 && (yy as usize) < h;
        for x in 0..uw as isize {
            let xx = x0 + x;
            let inside = inside_y && xx >= 0 && (xx as usize) < w;
            let v = if inside {
                plane[yy as usize * w + xx as usize]
            } else {
                match pad {
                    PadMode::Zero => 0.0,
                    PadMode::Reflect => plane[mirror(yy, h) * w + mirror(xx, w)],
                }
            };
            out.push(v);
        }
    }
    out
}

/// How one axis of length `len` is cut: (span length, [(span start, kept start, kept length)]).
///
/// An axis that fits in a tile is one span (padded up to the size multiple). A longer one is cut
/// into the fewest spans whose kept centres cover it, with the centres made equal so no span is
/// mostly padding; each span reaches `overlap` pixels beyond its centre on both sides.
fn axis(len: usize, plan: &TilePlan) -> (usize, Vec<(isize, usize, usize)>) {
    if len <= plan.tile {
        return (round_up(len, plan.multiple), vec![(0, 0, len)]);
    }
    let ov = plan.overlap;
    let n = len.div_ceil(plan.tile - 2 * ov);
    let core = round_up(len.div_ceil(n), plan.multiple);
    let span = round_up(core + 2 * ov, plan.multiple);
    let spans = (0..n)
        .map(|k| k * core)
        .take_while(|&c| c < len)
        .map(|c| (c as isize - ov as isize, c, core.min(len - c)))
        .collect();
    (span, spans)
}

/// Pixels of all the units [`split`] makes of a `w × h` plane, without making them: what a
/// frame's units will cost is known from its header (`stage::cost`).
pub fn unit_pixels(w: usize, h: usize, plan: &TilePlan) -> u64 {
    if w == 0 || h == 0 {
        return 0;
    }
    let (uw, xs) = axis(w, plan);
    let (uh, ys) = axis(h, plan);
    (uw as u64 * xs.len() as u64).saturating_mul(uh as u64 * ys.len() as u64)
}

/// Cuts a `w × h` plane into units.
pub fn split(plane: &[f32], w: usize, h: usize, plan: &TilePlan) -> Vec<Unit> {
    let (uw, xs) = axis(w, plan);
    let (uh, ys) = axis(h, plan);
    let mut units = Vec::with_capacity(xs.len() * ys.len());
    for &(y0, dst_y, keep_h) in &ys {
        for &(x0, dst_x, keep_w) in &xs {
            units.push(Unit {
                data: window(plane, w, h, x0, y0, uw, uh, plan.pad),
                uw,
                uh,
                src_x: (dst_x as isize - x0) as usize,
                src_y: (dst_y as isize - y0) as usize,
                dst_x,
                dst_y,
                keep_w,
                keep_h,
            });
        }
    }
    units
}

/// Puts units' outputs (same order as [`split`] returned them) back into a `w × h` plane.
pub fn merge(units: &[Unit], outputs: &[Vec<f32>], w: usize, h: usize) -> Vec<f32> {
    merge_parts(units.iter().zip(outputs.iter().map(Vec::as_slice)), w, h)
}

/// A `w × h` plane from the kept regions of `(unit, values laid out as the unit)` pairs.
pub fn merge_parts<'a>(
    parts: impl IntoIterator<Item = (&'a Unit, &'a [f32])>,
    w: usize,
    h: usize,
) -> Vec<f32> {
    let mut plane = vec![0f32; w * h];
    for (u, values) in parts {
        put(&mut plane, w, u, values);
    }
    plane
}

/// Rows `(start in the unit, start in the plane)` of the unit's kept region in a `w`-wide plane.
fn kept_rows(u: &Unit, w: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..u.keep_h).map(move |y| ((u.src_y + y) * u.uw + u.src_x, (u.dst_y + y) * w + u.dst_x))
}

/// Copies the kept region of `unit_values` (laid out as `u`) into a `w`-wide plane.
pub fn put(plane: &mut [f32], w: usize, u: &Unit, unit_values: &[f32]) {
    for (s, d) in kept_rows(u, w) {
        plane[d..d + u.keep_w].copy_from_slice(&unit_values[s..s + u.keep_w]);
    }
}

/// Copies the plane back over the kept region of `unit_values` (the inverse of [`put`]).
pub fn take(plane: &[f32], w: usize, u: &Unit, unit_values: &mut [f32]) {
    for (s, d) in kept_rows(u, w) {
        unit_values[s..s + u.keep_w].copy_from_slice(&plane[d..d + u.keep_w]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mirror_reflects_like_numpy() {
        let got: Vec<usize> = (-3..7).map(|i| mirror(i, 4)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(mirror(-5, 1), 0);
    }

    proptest! {
        /// Splitting and merging with the identity model gives the plane back exactly,
        /// for whole-frame padding and for tiling alike.
        #[test]
        fn split_merge_round_trip(w in 1usize..90, h in 1usize..90, reflect in any::<bool>(), tile_case in 0usize..2) {
            let plane: Vec<f32> = (0..w * h).map(|i| (i as f32 * 0.37).sin()).collect();
            let plan = TilePlan {
                multiple: 4,
                tile: if tile_case == 0 { 128 } else { 32 },
                overlap: 8,
                pad: if reflect { PadMode::Reflect } else { PadMode::Zero },
            };
            let units = split(&plane, w, h, &plan);
            for u in &units {
                prop_assert_eq!(u.uw % 4, 0);
                prop_assert_eq!(u.uh % 4, 0);
                prop_assert!(u.uw <= plan.tile.max(w.next_multiple_of(4)) && u.uh <= plan.tile.max(h.next_multiple_of(4)));
                prop_assert_eq!(u.data.len(), u.uw * u.uh);
                // Every kept pixel has `overlap` pixels of context inside the unit, or the
                // unit reaches the plane's border on that side.
                prop_assert!(u.src_x >= plan.overlap.min(u.dst_x) || u.src_x == u.dst_x);
                prop_assert!(u.src_y >= plan.overlap.min(u.dst_y) || u.src_y == u.dst_y);
                let right = u.uw - u.src_x - u.keep_w;
                let below = u.uh - u.src_y - u.keep_h;
                prop_assert!(right >= plan.overlap.min(w - u.dst_x - u.keep_w));
                prop_assert!(below >= plan.overlap.min(h - u.dst_y - u.keep_h));
            }
            let outs: Vec<Vec<f32>> = units.iter().map(|u| u.data.clone()).collect();
            let pixels: usize = units.iter().map(|u| u.data.len()).sum();
            prop_assert_eq!(unit_pixels(w, h, &plan), pixels as u64);
            prop_assert_eq!(merge(&units, &outs, w, h), plane);
        }
    }
}
