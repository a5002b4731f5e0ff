//! The data movement of the convolutions: im2col (each output pixel's receptive field as a
//! column) and its adjoint col2im (columns summed back onto the planes), per row or plane so the
//! callers can run them in parallel, and as custom ops over a batch for the backward passes.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, Geom};

/// Fills row `r` = (ci, ky, kx) of one image's im2col matrix.
pub(super) fn im2col_row(src: &[f32], g: &Geom, r: usize, row: &mut [f32]) {
    let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
    let plane = &src[ci * g.plane()..(ci + 1) * g.plane()];
    let (lo, hi) = g.x_range(kx);
    for (oy, out) in row.chunks_exact_mut(g.ow).enumerate() {
        let Some(iy) = g.in_row(oy, ky) else {
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
        if g.stride == 1 {
            out[lo..hi].copy_from_slice(&line[x0..x0 + hi - lo]);
        } else {
            for (j, o) in out[lo..hi].iter_mut().enumerate() {
                *o = line[x0 + j * g.stride];
            }
        }
    }
}

/// One image's im2col: `[c, h, w] -> [c·kh·kw, oh·ow]`, rows in parallel when asked.
pub(super) fn im2col_image(src: &[f32], g: &Geom, dst: &mut [f32], parallel: bool) {
    let l = g.cols();
    if parallel {
        dst.par_chunks_mut(l)
            .enumerate()
            .for_each(|(r, row)| im2col_row(src, g, r, row));
    } else {
        for (r, row) in dst.chunks_mut(l).enumerate() {
            im2col_row(src, g, r, row);
        }
    }
}

/// Sums one image's im2col columns back onto input plane `ci` (the adjoint of im2col), on top
/// of `init` (a bias, or 0).
pub(super) fn col2im_plane(cols: &[f32], g: &Geom, ci: usize, plane: &mut [f32], init: f32) {
    let l = g.cols();
    plane.fill(init);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let r = (ci * g.kh + ky) * g.kw + kx;
            add_shifted(plane, g, (ky, kx), &cols[r * l..(r + 1) * l], 1.0);
        }
    }
}

/// `plane[iy, ix] += scale · row[oy, ox]` for every output pixel `(oy, ox)` whose kernel tap
/// `(ky, kx)` reads input pixel `(iy, ix)`: one kernel tap's share of col2im.
pub(super) fn add_shifted(
    plane: &mut [f32],
    g: &Geom,
    (ky, kx): (usize, usize),
    row: &[f32],
    scale: f32,
) {
    let (lo, hi) = g.x_range(kx);
    if lo == hi {
        return;
    }
    let x0 = lo * g.stride + kx - g.pad;
    for (oy, src) in row.chunks_exact(g.ow).enumerate() {
        let Some(iy) = g.in_row(oy, ky) else { continue };
        let line = &mut plane[iy * g.w..(iy + 1) * g.w];
        if g.stride == 1 {
            for (d, v) in line[x0..x0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                *d += scale * v;
            }
        } else {
            for (j, v) in src[lo..hi].iter().enumerate() {
                line[x0 + j * g.stride] += scale * v;
            }
        }
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
            im2col_row(&src[bi * c * h * w..(bi + 1) * c * h * w], g, r, row);
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
        // One task per output plane: each sums only the rows of its own channel, so no races.
        dst.par_chunks_mut(g.plane())
            .enumerate()
            .for_each(|(i, plane)| {
                let (bi, ci) = (i / g.c, i % g.c);
                col2im_plane(
                    &src[bi * rows * cols..(bi + 1) * rows * cols],
                    g,
                    ci,
                    plane,
                    0.0,
                );
            });
        Ok((CpuStorage::F32(dst), Shape::from((b, g.c, g.h, g.w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}
