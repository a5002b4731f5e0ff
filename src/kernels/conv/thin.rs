//! The thin convolution (one output channel, e.g. an autoencoder's last layer) without
//! im2col: its im2col would be `c·kh·kw` times the input's size for a gemm with one row, so
//! forward and both gradients are multiply-accumulates over shifted rows instead.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;

use super::gather::add_shifted;
use super::{f32_slice, Act, Geom};

/// Thin convolution forward (cout = 1): each output row accumulates shifted input rows
/// directly, then `act`. Inputs `x [b, c, h, w]`, `w [1, c, kh, kw]`; `out [b, 1, oh, ow]`.
pub(super) fn forward(g: &Geom, act: Act, x: &[f32], w: &[f32], bias: f32, out: &mut [f32]) {
    let ranges: Vec<(usize, usize)> = (0..g.kw).map(|kx| g.x_range(kx)).collect();
    out.par_chunks_mut(g.ow).enumerate().for_each(|(i, o)| {
        let (bi, oy) = (i / g.oh, i % g.oh);
        o.fill(bias);
        let img = &x[bi * g.c * g.plane()..(bi + 1) * g.c * g.plane()];
        for ci in 0..g.c {
            for ky in 0..g.kh {
                let Some(iy) = g.in_row(oy, ky) else { continue };
                let line = &img[ci * g.plane() + iy * g.w..ci * g.plane() + (iy + 1) * g.w];
                for (kx, &(lo, hi)) in ranges.iter().enumerate() {
                    if lo == hi {
                        continue;
                    }
                    let wv = w[(ci * g.kh + ky) * g.kw + kx];
                    let x0 = lo * g.stride + kx - g.pad;
                    if g.stride == 1 {
                        for (d, v) in o[lo..hi].iter_mut().zip(&line[x0..x0 + hi - lo]) {
                            *d += wv * v;
                        }
                    } else {
                        for (j, d) in o[lo..hi].iter_mut().enumerate() {
                            *d += wv * line[x0 + j * g.stride];
                        }
                    }
                }
            }
        }
        act.apply(o);
    });
}

/// Thin convolution backward (cout = 1), without im2col: `dx = Σ_taps w · shifted dy` per
/// input plane. Inputs `dy [b, 1, oh, ow]`, `w [1, c, kh, kw]`; output `[b, c, h, w]`.
pub(super) struct ThinInputGrad(pub(super) Geom);

impl CustomOp2 for ThinInputGrad {
    fn name(&self) -> &'static str {
        "thin-conv-input-grad"
    }

    fn cpu_fwd(
        &self,
        ds: &CpuStorage,
        dl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (dy, w) = (
            f32_slice(ds, dl, "thin-grad")?,
            f32_slice(ws, wl, "thin-grad")?,
        );
        let b = dl.shape().dims4()?.0;
        let mut dx = vec![0f32; b * g.c * g.plane()];
        dx.par_chunks_mut(g.plane())
            .enumerate()
            .for_each(|(i, plane)| {
                let (bi, ci) = (i / g.c, i % g.c);
                let row = &dy[bi * g.cols()..(bi + 1) * g.cols()];
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let wv = w[(ci * g.kh + ky) * g.kw + kx];
                        add_shifted(plane, g, (ky, kx), row, wv, 0);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from((b, g.c, g.h, g.w))))
    }
}

/// A dot product in 8 independent lanes (a single running sum would not vectorise).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Thin convolution weight gradient (cout = 1), without im2col: each tap's gradient is the dot
/// product of dy with the input shifted by that tap. Inputs `x [b, c, h, w]`, `dy [b, 1, oh,
/// ow]`; output `[c·kh·kw]`.
pub(super) struct ThinWeightGrad(pub(super) Geom);

impl CustomOp2 for ThinWeightGrad {
    fn name(&self) -> &'static str {
        "thin-conv-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (x, dy) = (
            f32_slice(xs, xl, "thin-grad")?,
            f32_slice(ds, dl, "thin-grad")?,
        );
        let b = xl.shape().dims4()?.0;
        let mut dw = vec![0f32; g.rows()];
        dw.par_iter_mut().enumerate().for_each(|(r, acc)| {
            let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
            let (lo, hi) = g.x_range(kx);
            if lo == hi {
                return;
            }
            let x0 = lo * g.stride + kx - g.pad;
            let mut sum = 0f32;
            for bi in 0..b {
                let plane = &x[(bi * g.c + ci) * g.plane()..(bi * g.c + ci + 1) * g.plane()];
                let d = &dy[bi * g.cols()..(bi + 1) * g.cols()];
                for (oy, drow) in d.chunks_exact(g.ow).enumerate() {
                    let Some(iy) = g.in_row(oy, ky) else { continue };
                    let line = &plane[iy * g.w..(iy + 1) * g.w];
                    sum += if g.stride == 1 {
                        // Contiguous on both sides: lets the compiler vectorise the dot product.
                        dot(&drow[lo..hi], &line[x0..x0 + hi - lo])
                    } else {
                        drow[lo..hi]
                            .iter()
                            .enumerate()
                            .map(|(j, v)| v * line[x0 + j * g.stride])
                            .sum::<f32>()
                    };
                }
            }
            *acc = sum;
        });
        Ok((CpuStorage::F32(dw), Shape::from(g.rows())))
    }
}
