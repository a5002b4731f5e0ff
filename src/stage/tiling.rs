//! Padding and tiling: how a plane of any size becomes model-sized units and back.
//!
//! A plane that fits in one tile is padded (reflect or zero) up to the model's size multiple and
//! runs whole. A larger plane is cut into `tile × tile` units whose centres (`tile − 2·overlap`)
//! tile the plane; each unit sees `overlap` pixels of real context (mirrored at the border) and
//! only its centre is kept, so the result has no seams and memory per unit is bounded. All tiles
//! of all frames have the same shape, so they batch together.

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

/// Cuts a `w × h` plane into units.
pub fn split(plane: &[f32], w: usize, h: usize, plan: &TilePlan) -> Vec<Unit> {
    if w <= plan.tile && h <= plan.tile {
        let (uw, uh) = (round_up(w, plan.multiple), round_up(h, plan.multiple));
        return vec![Unit {
            data: window(plane, w, h, 0, 0, uw, uh, plan.pad),
            uw,
            uh,
            src_x: 0,
            src_y: 0,
            dst_x: 0,
            dst_y: 0,
            keep_w: w,
            keep_h: h,
        }];
    }
    let core = plan.tile - 2 * plan.overlap;
    let mut units = Vec::new();
    for cy in (0..h).step_by(core) {
        for cx in (0..w).step_by(core) {
            let x0 = cx as isize - plan.overlap as isize;
            let y0 = cy as isize - plan.overlap as isize;
            units.push(Unit {
                data: window(plane, w, h, x0, y0, plan.tile, plan.tile, plan.pad),
                uw: plan.tile,
                uh: plan.tile,
                src_x: plan.overlap,
                src_y: plan.overlap,
                dst_x: cx,
                dst_y: cy,
                keep_w: core.min(w - cx),
                keep_h: core.min(h - cy),
            });
        }
    }
    units
}

/// Puts units' outputs (same order as [`split`] returned them) back into a `w × h` plane.
pub fn merge(units: &[Unit], outputs: &[Vec<f32>], w: usize, h: usize) -> Vec<f32> {
    let mut plane = vec![0f32; w * h];
    for (u, out) in units.iter().zip(outputs) {
        for y in 0..u.keep_h {
            let s = (u.src_y + y) * u.uw + u.src_x;
            let d = (u.dst_y + y) * w + u.dst_x;
            plane[d..d + u.keep_w].copy_from_slice(&out[s..s + u.keep_w]);
        }
    }
    plane
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
                prop_assert_eq!(u.data.len(), u.uw * u.uh);
            }
            let outs: Vec<Vec<f32>> = units.iter().map(|u| u.data.clone()).collect();
            prop_assert_eq!(merge(&units, &outs, w, h), plane);
        }
    }
}
