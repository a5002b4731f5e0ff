//! The convolution custom ops: `conv2d` as im2col + gemm per image, `conv_transpose2d` as
//! gemm + col2im per image, each with its bias and activation fused. Both work through an
//! image in blocks of output rows ([`Geom::blocks`]) whose im2col matrix stays a few MiB in a
//! reused per-thread scratch ([`with_scratch`]), so a large frame neither allocates nor
//! streams a whole-image im2col. Their backward passes are in [`super::backward`].

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
        for_each_image(&mut out, x, g.c * g.plane(), |o, xi, nt| {
            for (p, b) in o.chunks_mut(l).zip(bias) {
                p.fill(*b);
            }
            with_scratch(rows * g.block_cols(), |cols| {
                for blk in g.blocks() {
                    let (c0, n) = (blk.start * g.ow, blk.len() * g.ow);
                    im2col_block(xi, g, blk, cols, nt > 1);
                    let cols = Mat::new(&cols[..rows * n], n);
                    gemm(
                        (cout, n, rows),
                        &mut o[c0..],
                        l,
                        true,
                        Mat::new(w, rows),
                        cols,
                        nt,
                    );
                }
            });
            self.act.apply(o);
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
        for_each_image(&mut out, x, cin * l, |o, xi, nt| {
            for (p, b) in o.chunks_mut(g.plane()).zip(bias) {
                p.fill(*b);
            }
            with_scratch(rows * g.block_cols(), |cols| {
                for blk in g.blocks() {
                    let (c0, n) = (blk.start * g.ow, blk.len() * g.ow);
                    // cols [cout·kh·kw, n] = Wᵀ (w is [cin, cout·kh·kw]) · x[:, block]
                    let xb = Mat::new(&xi[c0..], l);
                    gemm((rows, n, cin), cols, n, false, Mat::t(w, rows), xb, nt);
                    col2im_block(&cols[..rows * n], g, blk, o, nt > 1);
                }
            });
            self.act.apply(o);
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
