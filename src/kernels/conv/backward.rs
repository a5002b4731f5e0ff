//! The backward passes of the convolution ops, fused per image: the activation's mask, the
//! bias gradient, the weight gradient and the input gradient in one sweep over each image's
//! blocks of output rows, with the im2col block and the masked gradient in reused per-thread
//! scratch ([`with_scratch`]). The weight and bias gradients are summed in per-task
//! accumulators and added up once at the end, instead of a `[b, cout, c·kh·kw]` batched
//! product summed over the batch; the input gradient is written in place, without a
//! `[b, c·kh·kw, pixels]` intermediate; and no gradient nobody needs is computed.

use candle_core::{bail, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

use super::gather::{col2im_block, im2col_block};
use super::{f32_slice, relu_mask, Act, Geom};
use crate::kernels::xwt::{dot_rows, Epilogue, Rows};
use crate::kernels::{gemm, threads, with_scratch, Mat};

/// Which of a convolution's three inputs need a gradient.
#[derive(Debug, Clone, Copy)]
pub(super) struct Need {
    x: bool,
    w: bool,
    b: bool,
}

impl Need {
    pub(super) fn of(x: &Tensor, w: &Tensor, b: &Tensor) -> Self {
        Self {
            x: x.track_op(),
            w: w.track_op(),
            b: b.track_op(),
        }
    }
}

/// A CPU f32 tensor's contiguous values, borrowed through its storage guard.
fn values<'a>(
    st: &'a (impl std::ops::Deref<Target = Storage> + 'a),
    l: &Layout,
) -> Result<&'a [f32]> {
    match &**st {
        Storage::Cpu(s) => f32_slice(s, l, "conv backward"),
        _ => bail!("conv backward: the custom op runs on CPU tensors only"),
    }
}

/// The weight and bias gradients one task has summed so far.
struct Acc {
    gw: Vec<f32>,
    gb: Vec<f32>,
}

impl Acc {
    fn zeros((w, b): (usize, usize)) -> Self {
        Self {
            gw: vec![0.0; w],
            gb: vec![0.0; b],
        }
    }

    fn add(mut self, other: Acc) -> Acc {
        for (a, b) in self.gw.iter_mut().zip(&other.gw) {
            *a += b;
        }
        for (a, b) in self.gb.iter_mut().zip(&other.gb) {
            *a += b;
        }
        self
    }
}

/// Runs `one(image, its input gradient, accumulator, threads)` over a batch of `b` images:
/// in `threads()` groups of consecutive images, one task each with serial kernels, when the
/// batch can keep every thread busy; else image after image with the threads inside the
/// kernels. Returns the accumulators summed.
fn over_images(
    b: usize,
    gx: Option<&mut [f32]>,
    sizes: (usize, usize),
    one: impl Fn(usize, Option<&mut [f32]>, &mut Acc, usize) + Sync,
) -> Acc {
    let nt = threads();
    let img = gx.as_ref().map_or(0, |g| g.len() / b.max(1));
    if b >= nt && nt > 1 {
        let per = b.div_ceil(nt);
        let mut groups: Vec<(usize, Option<&mut [f32]>)> = Vec::new();
        match gx {
            Some(gx) => groups.extend(
                gx.chunks_mut(per * img)
                    .enumerate()
                    .map(|(i, s)| (i, Some(s))),
            ),
            None => groups.extend((0..b.div_ceil(per)).map(|i| (i, None))),
        }
        groups
            .into_par_iter()
            .map(|(gi, mut gxs)| {
                let mut acc = Acc::zeros(sizes);
                for i in gi * per..((gi + 1) * per).min(b) {
                    let k = i - gi * per;
                    let gxi = gxs.as_deref_mut().map(|s| &mut s[k * img..(k + 1) * img]);
                    one(i, gxi, &mut acc, 1);
                }
                acc
            })
            .reduce_with(Acc::add)
            .unwrap_or_else(|| Acc::zeros(sizes))
    } else {
        let mut acc = Acc::zeros(sizes);
        let mut gx = gx;
        for i in 0..b {
            let gxi = gx.as_deref_mut().map(|s| &mut s[i * img..(i + 1) * img]);
            one(i, gxi, &mut acc, nt);
        }
        acc
    }
}

/// A sum in 8 independent lanes (a single running sum would not vectorise).
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `dst = act'(y) · grad`: the gradient at the activation's input.
fn mask(act: Act, dst: &mut [f32], grad: &[f32], y: &[f32]) {
    match act {
        Act::Identity => dst.copy_from_slice(&grad[..dst.len()]),
        Act::Relu => relu_mask(dst, grad, y),
    }
}

/// The three gradients as tensors shaped like the op's inputs (the bias is `[channels]`).
fn tensors(
    need: Need,
    (x, w): (&Tensor, &Tensor),
    gx: Option<Vec<f32>>,
    acc: Acc,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dev = x.device();
    let gx = gx
        .map(|v| Tensor::from_vec(v, x.shape(), dev))
        .transpose()?;
    let gw = need
        .w
        .then(|| Tensor::from_vec(acc.gw, w.shape(), dev))
        .transpose()?;
    let n = acc.gb.len();
    let gb = need
        .b
        .then(|| Tensor::from_vec(acc.gb, n, dev))
        .transpose()?;
    Ok((gx, gw, gb))
}

/// `gw[a×r] += left[a×n] · colsᵀ` (`cols` is `[r, n]`, `left` has row stride `ld`): a weight
/// gradient, summed over a block's `n` pixels. Both operands are contiguous along the pixels,
/// so it runs on the unpacked dot-product kernel ([`dot_rows`]), where the gemm crate spent
/// as long packing the two operands as multiplying them (perf, conv-ae-ref training); the
/// gemm crate where that kernel declines.
fn add_weight_grad(
    gw: &mut [f32],
    (a, r, n): (usize, usize, usize),
    (left, ld): (&[f32], usize),
    cols: &[f32],
    nt: usize,
) {
    let ops = (Rows::new(left, ld), Rows::new(cols, n));
    if !dot_rows((a, r, n), ops, (gw, r), Epilogue::Accumulate, nt) {
        gemm(
            (a, r, n),
            gw,
            r,
            true,
            Mat::new(left, ld),
            Mat::t(cols, n),
            nt,
        );
    }
}

/// The values of a conv op's input, weight, output and output gradient, as its backward
/// reads them.
struct Values<'a> {
    x: &'a [f32],
    w: &'a [f32],
    y: &'a [f32],
    grad: &'a [f32],
}

/// Runs a backward pass `f` on the values of `x`, `w`, `res` (the op's output) and `grad`,
/// and returns the input gradient and the summed weight and bias gradients it computes as
/// tensors (nothing at all when no input needs a gradient).
fn run_backward(
    need: Need,
    [x, w, res, grad]: [&Tensor; 4],
    f: impl FnOnce(Values) -> (Option<Vec<f32>>, Acc),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    if !(need.x || need.w || need.b) {
        return Ok((None, None, None));
    }
    let grad = grad.contiguous()?;
    let (gx, acc) = {
        let guards = [x, w, res, &grad].map(|t| t.storage_and_layout());
        let v = guards
            .iter()
            .map(|(s, l)| values(s, l))
            .collect::<Result<Vec<_>>>()?;
        f(Values {
            x: v[0],
            w: v[1],
            y: v[2],
            grad: v[3],
        })
    };
    tensors(need, (x, w), gx, acc)
}

/// The gradients of `y = act(W · im2col(x) + bias)` (see `ops::Conv2dOp`), per image and per
/// block of output rows: `dy = act'(y) · grad`; `gb += Σ dy`; `gW += dy · im2col(x)ᵀ`;
/// `gx = col2im(Wᵀ · dy)`.
pub(super) fn conv2d_backward(
    (g, cout, act): (Geom, usize, Act),
    need: Need,
    args: [&Tensor; 4],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let b = args[0].dim(0)?;
    let (rows, l, in_img) = (g.rows(), g.cols(), g.c * g.plane());
    let nb = g.block_cols();
    run_backward(need, args, |v| {
        let mut gx = need.x.then(|| vec![0f32; b * in_img]);
        let sizes = (cout * rows, cout);
        let acc = over_images(b, gx.as_deref_mut(), sizes, |i, mut gxi, acc, nt| {
            let xi = &v.x[i * in_img..(i + 1) * in_img];
            let (gi, yi) = (&v.grad[i * cout * l..], &v.y[i * cout * l..]);
            with_scratch((rows + cout) * nb, |buf| {
                let (cols, dyb) = buf.split_at_mut(rows * nb);
                for blk in g.blocks() {
                    let (c0, n) = (blk.start * g.ow, blk.len() * g.ow);
                    let dy = &mut dyb[..cout * n];
                    for (c, d) in dy.chunks_mut(n).enumerate() {
                        let at = c * l + c0..c * l + c0 + n;
                        mask(act, d, &gi[at.clone()], &yi[at]);
                        acc.gb[c] += sum(d);
                    }
                    if need.w {
                        im2col_block(xi, &g, blk.clone(), cols, nt > 1);
                        let c = &cols[..rows * n];
                        add_weight_grad(&mut acc.gw, (cout, rows, n), (dy, n), c, nt);
                    }
                    let dy = Mat::new(dy, n);
                    if let Some(gxi) = gxi.as_deref_mut() {
                        gemm((rows, n, cout), cols, n, false, Mat::t(v.w, rows), dy, nt);
                        col2im_block(&cols[..rows * n], &g, blk, gxi, nt > 1);
                    }
                }
            });
        });
        (gx, acc)
    })
}

/// The gradients of `y = act(col2im(Wᵀ · x) + bias)` (see `ops::ConvTranspose2dOp`), per
/// image: `dy = act'(y) · grad`; `gb += Σ dy`; then per block of x's rows, with
/// `C = im2col(dy)`: `gx = W · C`, `gW += x · Cᵀ`.
pub(super) fn conv_transpose2d_backward(
    (g, cin, act): (Geom, usize, Act),
    need: Need,
    args: [&Tensor; 4],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let b = args[0].dim(0)?;
    let (rows, l, out_img) = (g.rows(), g.cols(), g.c * g.plane());
    let nb = g.block_cols();
    run_backward(need, args, |v| {
        let mut gx = need.x.then(|| vec![0f32; b * cin * l]);
        let sizes = (cin * rows, g.c);
        let acc = over_images(b, gx.as_deref_mut(), sizes, |i, mut gxi, acc, nt| {
            let xi = &v.x[i * cin * l..(i + 1) * cin * l];
            let at = i * out_img..(i + 1) * out_img;
            // The whole image's masked gradient first: im2col reads across block borders.
            with_scratch(out_img + rows * nb, |buf| {
                let (dy, cols) = buf.split_at_mut(out_img);
                mask(act, dy, &v.grad[at.clone()], &v.y[at]);
                for (c, p) in dy.chunks(g.plane()).enumerate() {
                    acc.gb[c] += sum(p);
                }
                if !(need.x || need.w) {
                    return;
                }
                for blk in g.blocks() {
                    let (c0, n) = (blk.start * g.ow, blk.len() * g.ow);
                    im2col_block(dy, &g, blk, cols, nt > 1);
                    let c = &cols[..rows * n];
                    if let Some(gxi) = gxi.as_deref_mut() {
                        let (dst, cm) = (&mut gxi[c0..], Mat::new(c, n));
                        gemm((cin, n, rows), dst, l, false, Mat::new(v.w, rows), cm, nt);
                    }
                    if need.w {
                        let xb = (&xi[c0..], l);
                        add_weight_grad(&mut acc.gw, (cin, rows, n), xb, c, nt);
                    }
                }
            });
        });
        (gx, acc)
    })
}
