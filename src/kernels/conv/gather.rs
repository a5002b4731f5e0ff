//! The data movement of the convolutions: im2col (each output pixel's receptive field as a
//! column) and its adjoint col2im (columns summed back onto the planes), per row or plane so the
//! callers can run them in parallel, and as custom ops over a batch for the backward passes.

use std::ops::Range;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, Geom};

/// Fills row `r` = (ci, ky, kx) of one image's im2col matrix for the output rows from `y0`
/// on (as many as `row` holds, `ow` columns each).
pub(super) fn im2col_row(src: &[f32], g: &Geom, r: usize, row: &mut [f32], y0: usize) {
    let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
    let plane = &src[ci * g.plane()..(ci + 1) * g.plane()];
    let (lo, hi) = g.x_range(kx);
    for (j, out) in row.chunks_exact_mut(g.ow).enumerate() {
        let Some(iy) = g.in_row(y0 + j, ky) else {
            out.fill(0.0);
            continue;
        };
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        if lo == hi {
            continue;
        }
        let line = &plane[iy * g.w..(iy + 1) * g.w];
        let x0 = lo * g.stride + kx - g.pad;
        gather(&mut out[lo..hi], &line[x0..], g.stride);
    }
}

/// `out[j] = src[j·stride]`. Stride 1 is a copy, stride 2 (every downsampling layer here)
/// takes the first of each pair, which the compiler turns into shuffles; measured 2–3× faster
/// than the indexed loop, which compiled to scalar loads with a bounds check each.
fn gather(out: &mut [f32], src: &[f32], stride: usize) {
    let n = out.len();
    match stride {
        1 => out.copy_from_slice(&src[..n]),
        2 if n > 0 => {
            let (head, last) = out.split_at_mut(n - 1);
            for (o, p) in head.iter_mut().zip(src.chunks_exact(2)) {
                *o = p[0];
            }
            last[0] = src[2 * (n - 1)];
        }
        _ => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = src[j * stride];
            }
        }
    }
}

/// `dst[j·stride] += scale · src[j]`, the adjoint of [`gather`], specialised the same way.
fn scatter_add(dst: &mut [f32], src: &[f32], stride: usize, scale: f32) {
    let n = src.len();
    match stride {
        1 => {
            for (d, v) in dst[..n].iter_mut().zip(src) {
                *d += scale * v;
            }
        }
        2 if n > 0 => {
            for (p, v) in dst.chunks_exact_mut(2).zip(&src[..n - 1]) {
                p[0] += scale * v;
            }
            dst[2 * (n - 1)] += scale * src[n - 1];
        }
        _ => {
            for (j, v) in src.iter().enumerate() {
                dst[j * stride] += scale * v;
            }
        }
    }
}

/// One image's im2col for output rows `rows` (`[c, h, w] -> [c·kh·kw, rows·ow]`), the rows of
/// the matrix in parallel when asked.
pub(super) fn im2col_block(
    src: &[f32],
    g: &Geom,
    rows: Range<usize>,
    dst: &mut [f32],
    parallel: bool,
) {
    let n = rows.len() * g.ow;
    let dst = &mut dst[..g.rows() * n];
    if parallel {
        dst.par_chunks_mut(n)
            .enumerate()
            .for_each(|(r, row)| im2col_row(src, g, r, row, rows.start));
    } else {
        for (r, row) in dst.chunks_mut(n).enumerate() {
            im2col_row(src, g, r, row, rows.start);
        }
    }
}

/// Sums the columns of output rows `rows` of one image's im2col matrix (`cols`, `[c·kh·kw,
/// rows·ow]`) back onto its input planes `planes` (`[c, h, w]`): the adjoint of
/// [`im2col_block`], adding to what the planes hold. Planes in parallel when asked (each
/// plane sums only its own channel's rows, so the tasks never write the same pixel).
pub(super) fn col2im_block(
    cols: &[f32],
    g: &Geom,
    rows: Range<usize>,
    planes: &mut [f32],
    parallel: bool,
) {
    let n = rows.len() * g.ow;
    let one = |ci: usize, plane: &mut [f32]| {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &cols[r * n..(r + 1) * n];
                add_shifted(plane, g, (ky, kx), row, 1.0, rows.start);
            }
        }
    };
    if parallel {
        planes
            .par_chunks_mut(g.plane())
            .enumerate()
            .for_each(|(ci, p)| one(ci, p));
    } else {
        for (ci, p) in planes.chunks_mut(g.plane()).enumerate() {
            one(ci, p);
        }
    }
}

/// `plane[iy, ix] += scale · row[oy − y0, ox]` for every output pixel `(oy, ox)` (from output
/// row `y0` on, as many rows as `row` holds) whose kernel tap `(ky, kx)` reads input pixel
/// `(iy, ix)`: one kernel tap's share of col2im.
pub(super) fn add_shifted(
    plane: &mut [f32],
    g: &Geom,
    (ky, kx): (usize, usize),
    row: &[f32],
    scale: f32,
    y0: usize,
) {
    let (lo, hi) = g.x_range(kx);
    if lo == hi {
        return;
    }
    let x0 = lo * g.stride + kx - g.pad;
    for (j, src) in row.chunks_exact(g.ow).enumerate() {
        let Some(iy) = g.in_row(y0 + j, ky) else {
            continue;
        };
        let line = &mut plane[iy * g.w..(iy + 1) * g.w];
        scatter_add(&mut line[x0..], &src[lo..hi], g.stride, scale);
    }
}

/// im2col over a batch: `[b, c, h, w] -> [b, c·kh·kw, oh·ow]`; backward is [`Col2Im`].
#[derive(Debug, Clone, Copy)]
pub struct Im2Col(pub Geom);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-nchw"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (b, c, h, w) = l.shape().dims4()?;
        if (c, h, w) != (g.c, g.h, g.w) {
            bail!("im2col: input {:?} does not match {g:?}", l.shape());
        }
        let src = f32_slice(s, l, "im2col")?;
        let (rows, cols) = (g.rows(), g.cols());
        let mut dst = vec![0f32; b * rows * cols];
        dst.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            let (bi, r) = (i / rows, i % rows);
            im2col_row(&src[bi * c * h * w..(bi + 1) * c * h * w], g, r, row, 0);
        });
        Ok((CpuStorage::F32(dst), Shape::from((b, rows, cols))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

/// col2im over a batch: `[b, c·kh·kw, oh·ow] -> [b, c, h, w]`, summing overlapping windows;
/// backward is [`Im2Col`].
#[derive(Debug, Clone, Copy)]
pub struct Col2Im(pub Geom);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im-nchw"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (b, rows, cols) = l.shape().dims3()?;
        if (rows, cols) != (g.rows(), g.cols()) {
            bail!("col2im: input {:?} does not match {g:?}", l.shape());
        }
        let src = f32_slice(s, l, "col2im")?;
        let mut dst = vec![0f32; b * g.c * g.plane()];
        let img = g.c * g.plane();
        dst.par_chunks_mut(img)
            .enumerate()
            .for_each(|(bi, planes)| {
                let src = &src[bi * rows * cols..(bi + 1) * rows * cols];
                col2im_block(src, g, 0..g.oh, planes, false);
            });
        Ok((CpuStorage::F32(dst), Shape::from((b, g.c, g.h, g.w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}
