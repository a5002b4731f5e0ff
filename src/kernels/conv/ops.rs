//! The convolution custom ops: `conv2d` as im2col + one gemm per image, `conv_transpose2d` as
//! one gemm + col2im per image, each with its activation fused and a backward that reuses the
//! same gathers and skips the gradients nobody needs.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gather::{col2im_plane, im2col_image, Col2Im, Im2Col};
use super::thin::{self, ThinInputGrad, ThinWeightGrad};
use super::{f32_slice, Act, Geom};
use crate::kernels::{sgemm, threads};

/// Runs `one(out_image, in_image, scratch, threads)` for every image of a batch: one image per
/// task with serial kernels when the batch can keep every thread busy, else image after image
/// with the threads inside each kernel (gemm and the gathers).
fn for_each_image(
    out: &mut [f32],
    x: &[f32],
    in_img: usize,
    scratch: usize,
    one: impl Fn(&mut [f32], &[f32], &mut [f32], usize) + Sync,
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
            .for_each_init(|| vec![0f32; scratch], |cols, (o, xi)| one(o, xi, cols, 1));
    } else {
        let mut cols = vec![0f32; scratch];
        for (o, xi) in out.chunks_mut(out_img).zip(x.chunks(in_img)) {
            one(o, xi, &mut cols, nt);
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
        for_each_image(&mut out, x, g.c * g.plane(), rows * l, |o, xi, cols, nt| {
            im2col_image(xi, g, cols, nt > 1);
            for (p, b) in o.chunks_mut(l).zip(bias) {
                p.fill(*b);
            }
            sgemm(cout, l, rows, o, true, w, false, cols, false, nt);
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
        let dy = self
            .act
            .grad(grad, res)?
            .reshape((b, self.cout, g.cols()))?;
        let gb = bias_grad(&dy, bias)?;
        if self.cout == 1 {
            // Thin: direct loops; an im2col here would be c·kh·kw times the input's size.
            let dy4 = dy.reshape((b, 1, g.oh, g.ow))?;
            let gw = if w.track_op() {
                Some(
                    x.apply_op2_no_bwd(&dy4, &ThinWeightGrad(g))?
                        .reshape(w.shape())?,
                )
            } else {
                None
            };
            let gx = if x.track_op() {
                Some(dy4.apply_op2_no_bwd(&w.contiguous()?, &ThinInputGrad(g))?)
            } else {
                None
            };
            return Ok((gx, gw, gb));
        }
        let gw = if w.track_op() {
            let cols = x.apply_op1_no_bwd(&Im2Col(g))?;
            Some(dy.matmul(&cols.t()?)?.sum(0)?.reshape(w.shape())?)
        } else {
            None
        };
        // The input gradient is skipped for the network's input (it needs none).
        let gx = if x.track_op() {
            let wt = w.reshape((self.cout, g.rows()))?.t()?.broadcast_left(b)?;
            Some(wt.matmul(&dy)?.apply_op1_no_bwd(&Col2Im(g))?)
        } else {
            None
        };
        Ok((gx, gw, gb))
    }
}

/// The bias gradient, from the output gradient as `[b, cout, pixels]`: sums along the
/// contiguous last axis first (candle's broadcast backward reduces the strided axes at once).
fn bias_grad(dy: &Tensor, bias: &Tensor) -> Result<Option<Tensor>> {
    if !bias.track_op() {
        return Ok(None);
    }
    Ok(Some(dy.sum(2)?.sum(0)?))
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
        for_each_image(&mut out, x, cin * l, rows * l, |o, xi, cols, nt| {
            // cols [cout·kh·kw, h·w] = Wᵀ (w is [cin, cout·kh·kw]) · x [cin, h·w]
            sgemm(rows, l, cin, cols, false, w, true, xi, false, nt);
            if nt > 1 {
                o.par_chunks_mut(g.plane())
                    .enumerate()
                    .for_each(|(ci, p)| col2im_plane(cols, g, ci, p, bias[ci]));
            } else {
                for (ci, p) in o.chunks_mut(g.plane()).enumerate() {
                    col2im_plane(cols, g, ci, p, bias[ci]);
                }
            }
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
        let g = self.g;
        let b = x.dim(0)?;
        let dy = self.act.grad(grad, res)?;
        let gb = bias_grad(&dy.reshape((b, g.c, g.plane()))?, bias)?;
        let cols = dy.apply_op1_no_bwd(&Im2Col(g))?;
        let wm = w.reshape((self.cin, g.rows()))?;
        let gx = if x.track_op() {
            let gx = wm.broadcast_left(b)?.matmul(&cols)?;
            Some(gx.reshape(x.shape())?)
        } else {
            None
        };
        let gw = if w.track_op() {
            let xm = x.contiguous()?.reshape((b, self.cin, g.cols()))?;
            Some(xm.matmul(&cols.t()?)?.sum(0)?.reshape(w.shape())?)
        } else {
            None
        };
        Ok((gx, gw, gb))
    }
}
