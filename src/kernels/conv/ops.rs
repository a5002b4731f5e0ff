//! The convolution custom ops: `conv2d` as im2col + gemm per image, `conv_transpose2d` as
//! gemm + col2im per image, each with its bias and activation fused. Both work through an
//! image in blocks of output rows ([`Geom::blocks`]) whose im2col matrix stays a few MiB in a
//! reused per-thread scratch ([`with_scratch`]), so a large frame neither allocates nor
//! streams a whole-image im2col. Their backward passes are in [`super::backward`].

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::backward::{conv2d_backward, conv_transpose2d_backward, Need};
use super::gather::{col2im_block, im2col_block};
use super::thin::{self, ThinInputGrad, ThinWeightGrad};
use super::{f32_slice, Act, Geom};
use crate::kernels::{gemm, threads, with_scratch, Mat};

/// Runs `one(out_image, in_image, threads)` for every image of a batch: one image per task
/// with serial kernels when the batch can keep every thread busy, else image after image with
/// the threads inside each kernel (gemm and the gathers).
pub(super) fn for_each_image(
    out: &mut [f32],
    x: &[f32],
    in_img: usize,
    one: impl Fn(&mut [f32], &[f32], usize) + Sync,
) {
    let b = x.len() / in_img.max(1);
    if b == 0 {
        return;
    }
    let out_img = out.len() / b;
    let nt = threads();
    if b >= nt && nt > 1 {
        out.par_chunks_mut(out_img)
            .zip(x.par_chunks(in_img))
            .for_each(|(o, xi)| one(o, xi, 1));
    } else {
        for (o, xi) in out.chunks_mut(out_img).zip(x.chunks(in_img)) {
            one(o, xi, nt);
        }
    }
}

/// `y = act(W · im2col(x) + bias)` per image. Inputs `x [b, c, h, w]`, `w [cout, c, kh, kw]`,
/// `bias [cout]`.
pub(super) struct Conv2dOp {
    pub(super) g: Geom,
    pub(super) cout: usize,
    pub(super) act: Act,
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let b = xl.shape().dims4()?.0;
        let x = f32_slice(xs, xl, "conv2d")?;
        let w = f32_slice(ws, wl, "conv2d")?;
        let bias = f32_slice(bs, bl, "conv2d")?;
        let (rows, l, cout) = (g.rows(), g.cols(), self.cout);
        let mut out = vec![0f32; b * cout * l];
        let shape = Shape::from((b, cout, g.oh, g.ow));
        if cout == 1 {
            thin::forward(g, self.act, x, w, bias[0], &mut out);
            return Ok((CpuStorage::F32(out), shape));
        }
        let w = Mat::new(w, rows);
        // One image's output rows `part` (`o`: `[cout, part·ow]`): bias, im2col and gemm
        // block by block on `nt` threads, then the activation.
        let rows_of = |o: &mut [f32], xi: &[f32], part: Range<usize>, nt: usize| {
            let width = part.len() * g.ow;
            for (p, b) in o.chunks_mut(width).zip(bias) {
                p.fill(*b);
            }
            with_scratch(rows * g.block_cols(), |cols| {
                for blk in g.blocks_of(part.clone()) {
                    let (c0, n) = ((blk.start - part.start) * g.ow, blk.len() * g.ow);
                    im2col_block(xi, g, blk, cols, nt > 1);
                    let cols = Mat::new(&cols[..rows * n], n);
                    gemm((cout, n, rows), &mut o[c0..], width, true, w, cols, nt);
                }
            });
            self.act.apply(o);
        };
        for_each_image(&mut out, x, g.c * g.plane(), |o, xi, nt| {
            if nt == 1 {
                return rows_of(o, xi, 0..g.oh, 1);
            }
            // Several threads on one image: its output rows in parts, one task each with a
            // serial gemm, then copied into place (one fork-join per layer instead of one per
            // gather, gemm and block: at batch 1 the thread wake-ups cost more than that).
            let parts = g.split_rows(nt);
            let done: Vec<Vec<f32>> = parts
                .par_iter()
                .map(|part| {
                    let mut t = vec![0f32; cout * part.len() * g.ow];
                    rows_of(&mut t, xi, part.clone(), 1);
                    t
                })
                .collect();
            for (part, t) in parts.iter().zip(done) {
                let (c0, n) = (part.start * g.ow, part.len() * g.ow);
                for (dst, src) in o.chunks_mut(l).zip(t.chunks(n)) {
                    dst[c0..c0 + n].copy_from_slice(src);
                }
            }
        });
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let b = x.dim(0)?;
        if self.cout == 1 {
            // Thin: direct loops; an im2col here would be c·kh·kw times the input's size.
            let dy = self.act.grad(grad, res)?.reshape((b, 1, g.oh, g.ow))?;
            let gb = if bias.track_op() {
                Some(dy.sum_all()?.reshape(1)?)
            } else {
                None
            };
            let gw = if w.track_op() {
                Some(
                    x.apply_op2_no_bwd(&dy, &ThinWeightGrad(g))?
                        .reshape(w.shape())?,
                )
            } else {
                None
            };
            let gx = if x.track_op() {
                Some(dy.apply_op2_no_bwd(&w.contiguous()?, &ThinInputGrad(g))?)
            } else {
                None
            };
            return Ok((gx, gw, gb));
        }
        let need = Need::of(x, w, bias);
        conv2d_backward((g, self.cout, self.act), need, [x, w, res, grad])
    }
}

/// `y = act(col2im(Wᵀ · x) + bias)` per image. Inputs `x [b, cin, h, w]`, `w [cin, cout, kh,
/// kw]`, `bias [cout]`; `g` is the geometry of the adjoint convolution (from the output
/// `[cout, oh', ow']` back to `x`).
pub(super) struct ConvTranspose2dOp {
    pub(super) g: Geom,
    pub(super) cin: usize,
    pub(super) act: Act,
}

impl CustomOp3 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "conv-transpose2d-gemm-col2im"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let b = xl.shape().dims4()?.0;
        let x = f32_slice(xs, xl, "conv_transpose2d")?;
        let w = f32_slice(ws, wl, "conv_transpose2d")?;
        let bias = f32_slice(bs, bl, "conv_transpose2d")?;
        let (rows, l, cin) = (g.rows(), g.cols(), self.cin);
        let mut out = vec![0f32; b * g.c * g.plane()];
        let k2 = g.kh * g.kw;
        // Output channels `chans` of one image (`o`: their planes): bias, then per block
        // cols = Wᵀ[chans] · x[:, block] and col2im onto those planes, on `nt` threads.
        let chans_of = |o: &mut [f32], xi: &[f32], chans: Range<usize>, nt: usize| {
            for (p, b) in o.chunks_mut(g.plane()).zip(&bias[chans.clone()]) {
                p.fill(*b);
            }
            let sub = chans.len() * k2;
            // Wᵀ's rows for these channels: columns chans·k2.. of w ([cin, cout·kh·kw]).
            let wt = Mat::t(&w[chans.start * k2..], rows);
            with_scratch(sub * g.block_cols(), |cols| {
                for blk in g.blocks() {
                    let (c0, n) = (blk.start * g.ow, blk.len() * g.ow);
                    let xb = Mat::new(&xi[c0..], l);
                    gemm((sub, n, cin), cols, n, false, wt, xb, nt);
                    col2im_block(&cols[..sub * n], g, blk, o, nt > 1);
                }
            });
            self.act.apply(o);
        };
        for_each_image(&mut out, x, cin * l, |o, xi, nt| {
            if nt == 1 {
                return chans_of(o, xi, 0..g.c, 1);
            }
            // Several threads on one image: its output channels in groups, one task each
            // (disjoint planes; one fork-join per layer, as for the convolution above).
            let per = g.c.div_ceil(nt);
            o.par_chunks_mut(per * g.plane())
                .enumerate()
                .for_each(|(i, planes)| {
                    let c0 = i * per;
                    chans_of(planes, xi, c0..(c0 + per).min(g.c), 1)
                });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, g.c, g.h, g.w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need = Need::of(x, w, bias);
        conv_transpose2d_backward((self.g, self.cin, self.act), need, [x, w, res, grad])
    }
}
