//! NCHW `conv2d` and `conv_transpose2d` (any kernel size, stride, zero padding) as candle
//! custom ops that run at gemm speed forward and backward.
//!
//! A convolution is `W [cout, c·kh·kw] · im2col(x) [c·kh·kw, oh·ow]` per image, which already
//! is NCHW output (no transpose afterwards, unlike candle's im2col path); a transposed
//! convolution is its adjoint, `col2im(Wᵀ · x)`. Backward reuses the same two gathers, and
//! skips the input gradient when the input needs none (candle's generic matmul backward
//! would compute it anyway). A convolution with one output channel (a "thin" conv, e.g. the
//! last layer of an autoencoder) is a direct multiply-accumulate over shifted rows instead:
//! its im2col would be `c·kh·kw` times the input's size for a gemm with one row.
//!
//! Files: `gather` (im2col / col2im, the data movement), `ops` (the convolution custom ops),
//! `backward` (their backward passes, fused per image), `thin` (the one-output-channel case
//! without im2col); this file holds the geometry, the fused activation and the entry points,
//! which pick the custom ops on CPU f32 and candle's own ops elsewhere.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

mod backward;
mod gather;
mod ops;
mod thin;

pub use gather::{Col2Im, Im2Col};
use ops::{Conv2dOp, ConvTranspose2dOp};

/// Floats of one block's im2col matrix (2 MiB): it stays in cache between the gather and the
/// gemm that reads it, and bounds the scratch a large frame needs.
const BLOCK_FLOATS: usize = 1 << 19;

/// The geometry of one convolution: its input planes, kernel and output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    pub fn new(
        c: usize,
        (h, w): (usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        if stride == 0 || kh == 0 || kw == 0 {
            bail!("conv: stride and kernel size must be positive");
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            bail!("conv: kernel {kh}×{kw} larger than the padded input {h}×{w} (pad {pad})");
        }
        Ok(Self {
            c,
            h,
            w,
            kh,
            kw,
            stride,
            pad,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (w + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the im2col matrix: one per (input channel, ky, kx).
    pub fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the im2col matrix: one per output pixel.
    pub fn cols(&self) -> usize {
        self.oh * self.ow
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Output rows per block: as many as keep a block's im2col matrix within
    /// [`BLOCK_FLOATS`], at least one. A small image is one block.
    fn block_rows(&self) -> usize {
        (BLOCK_FLOATS / (self.rows() * self.ow).max(1)).clamp(1, self.oh.max(1))
    }

    /// Columns (output pixels) of the largest block.
    fn block_cols(&self) -> usize {
        self.block_rows() * self.ow
    }

    /// The blocks of output rows the ops work through, in order.
    fn blocks(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        self.blocks_of(0..self.oh)
    }

    /// The blocks of output rows `rows` (a part of the image) is worked through in.
    fn blocks_of(
        &self,
        rows: std::ops::Range<usize>,
    ) -> impl Iterator<Item = std::ops::Range<usize>> {
        let (n, end) = (self.block_rows(), rows.end);
        rows.step_by(n).map(move |y| y..(y + n).min(end))
    }

    /// The output rows in at least `parts` near-equal parts (fewer if the image has fewer
    /// rows), each at most a block.
    fn split_rows(&self, parts: usize) -> Vec<std::ops::Range<usize>> {
        let n = self.oh.div_ceil(parts.max(1)).min(self.block_rows()).max(1);
        (0..self.oh)
            .step_by(n)
            .map(|y| y..(y + n).min(self.oh))
            .collect()
    }

    /// Output columns `[lo, hi)` whose input column `ox·stride + kx − pad` lies inside the row.
    fn x_range(&self, kx: usize) -> (usize, usize) {
        axis_range(self.w, self.ow, kx, self.stride, self.pad)
    }

    /// The input row read by output row `oy` at kernel row `ky`, if inside the image.
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.pad)
            .filter(|&iy| iy < self.h)
    }
}

fn axis_range(n: usize, out: usize, k: usize, s: usize, p: usize) -> (usize, usize) {
    let lo = if k >= p { 0 } else { (p - k).div_ceil(s) };
    let hi = if n + p > k {
        out.min((n - 1 + p - k) / s + 1)
    } else {
        0
    };
    (lo.min(hi), hi)
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: only f32 is supported")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what}: input must be contiguous")
    };
    Ok(&v[a..b])
}

/// The activation fused into a convolution's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Identity,
    Relu,
}

impl Act {
    pub(crate) fn apply(self, y: &mut [f32]) {
        if self == Act::Relu {
            for v in y {
                *v = v.max(0.0);
            }
        }
    }

    /// The gradient at the activation's input, from the output's gradient and the output.
    pub(crate) fn grad(self, grad: &Tensor, res: &Tensor) -> Result<Tensor> {
        let grad = grad.contiguous()?;
        match self {
            Act::Identity => Ok(grad),
            Act::Relu => grad.apply_op2_no_bwd(&res.contiguous()?, &ReluGrad),
        }
    }
}

/// `grad · [y > 0]` in one pass (candle's relu backward takes four, with three temporaries).
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, y) = (
            f32_slice(gs, gl, "relu-grad")?,
            f32_slice(ys, yl, "relu-grad")?,
        );
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(1 << 14)
            .zip(g.par_chunks(1 << 14).zip(y.par_chunks(1 << 14)))
            .for_each(|(o, (g, y))| relu_mask(o, g, y));
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `dst = grad · [y > 0]` (+0 where y ≤ 0) over `dst`'s length. The select is a bit mask
/// so that it compiles to vector compares and ands: written as `if y > 0 { g } else { 0 }` it
/// compiled to a scalar loop with a branch per element (perf annotate).
pub(crate) fn relu_mask(dst: &mut [f32], grad: &[f32], y: &[f32]) {
    let n = dst.len();
    let (grad, y) = (&grad[..n], &y[..n]);
    for ((d, g), y) in dst.iter_mut().zip(grad).zip(y) {
        let keep = u32::from(*y > 0.0).wrapping_neg();
        *d = f32::from_bits(g.to_bits() & keep);
    }
}

fn fast_path(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32
}

/// The activation on candle's own ops (the fallback path).
fn finish(y: Tensor, bias: Option<&Tensor>, act: Act) -> Result<Tensor> {
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
        None => y,
    };
    match act {
        Act::Identity => Ok(y),
        Act::Relu => y.relu(),
    }
}

/// The bias as the op takes it: contiguous `[cout]`, zeros (untracked) when there is none.
fn bias_or_zeros(bias: Option<&Tensor>, cout: usize, like: &Tensor) -> Result<Tensor> {
    match bias {
        Some(b) if b.elem_count() == cout => b.flatten_all()?.contiguous(),
        Some(b) => bail!(
            "conv: bias has {} values for {cout} channels",
            b.elem_count()
        ),
        None => Tensor::zeros(cout, like.dtype(), like.device()),
    }
}

/// 2-D convolution, NCHW: `x [b, c, h, w]`, `w [cout, c, kh, kw]`, optional `bias [cout]`;
/// same result as candle's `x.conv2d(w, pad, stride, 1, 1)` (+ bias).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    conv2d_act(x, w, bias, stride, pad, Act::Identity)
}

/// [`conv2d`] followed by `act`, fused: applied while the output is in cache, and its
/// backward folded into the convolution's.
pub fn conv2d_act(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
    act: Act,
) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (cout, wc, kh, kw) = w.dims4()?;
    if wc != c {
        bail!("conv2d: input has {c} channels, kernel expects {wc}");
    }
    if !fast_path(x, w) {
        return finish(x.conv2d(w, pad, stride, 1, 1)?, bias, act);
    }
    let g = Geom::new(c, (h, wd), (kh, kw), stride, pad)?;
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &bias_or_zeros(bias, cout, x)?,
        Conv2dOp { g, cout, act },
    )
}

/// 2-D transposed convolution, NCHW: `x [b, cin, h, w]`, `w [cin, cout, kh, kw]` (candle's
/// layout), optional `bias [cout]`; output `(h−1)·stride − 2·pad + k + output_padding`. Same
/// result as candle's `x.conv_transpose2d(w, pad, output_padding, stride, 1)` (+ bias).
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
    output_padding: usize,
) -> Result<Tensor> {
    conv_transpose2d_act(x, w, bias, (stride, pad, output_padding), Act::Identity)
}

/// [`conv_transpose2d`] followed by `act`, fused; `geom` is `(stride, pad, output_padding)`.
pub fn conv_transpose2d_act(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    (stride, pad, output_padding): (usize, usize, usize),
    act: Act,
) -> Result<Tensor> {
    let (_, cin, h, wd) = x.dims4()?;
    let (wcin, cout, kh, kw) = w.dims4()?;
    if wcin != cin {
        bail!("conv_transpose2d: input has {cin} channels, kernel expects {wcin}");
    }
    if output_padding >= stride.max(1) {
        bail!("conv_transpose2d: output_padding {output_padding} must be below stride {stride}");
    }
    if !fast_path(x, w) {
        let y = x.conv_transpose2d(w, pad, output_padding, stride, 1)?;
        return finish(y, bias, act);
    }
    let size = |n: usize, k: usize| ((n - 1) * stride + k + output_padding).checked_sub(2 * pad);
    let (Some(oh), Some(ow)) = (size(h, kh), size(wd, kw)) else {
        bail!("conv_transpose2d: padding {pad} too large for a {h}×{wd} input");
    };
    let g = Geom::new(cout, (oh, ow), (kh, kw), stride, pad)?;
    if (g.oh, g.ow) != (h, wd) {
        bail!("conv_transpose2d: inconsistent geometry {g:?} for a {h}×{wd} input");
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &bias_or_zeros(bias, cout, x)?,
        ConvTranspose2dOp { g, cin, act },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
    }

    struct Case {
        b: usize,
        c: usize,
        cout: usize,
        hw: (usize, usize),
        k: (usize, usize),
        stride: usize,
        pad: usize,
        /// Output padding (transposed convolution only).
        op: usize,
    }

    const fn case(b: usize, c: usize, cout: usize, hw: (usize, usize), k: (usize, usize)) -> Case {
        Case {
            b,
            c,
            cout,
            hw,
            k,
            stride: 1,
            pad: 0,
            op: 0,
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            Case {
                pad: 1,
                ..case(2, 3, 4, (7, 6), (3, 3))
            },
            // (candle's own conv2d backward fails on an 8×9 input here, a size mismatch in its
            // transposed-conv input gradient; the finite-difference test covers ours there.)
            Case {
                stride: 2,
                pad: 1,
                op: 1,
                ..case(3, 4, 5, (9, 7), (3, 3))
            },
            case(1, 2, 3, (5, 5), (1, 1)),
            Case {
                stride: 3,
                pad: 2,
                op: 2,
                ..case(2, 3, 2, (9, 7), (5, 3))
            },
            // Thin convolutions (one output channel), padded and strided.
            Case {
                pad: 1,
                ..case(2, 5, 1, (6, 8), (3, 3))
            },
            Case {
                stride: 2,
                pad: 1,
                op: 1,
                ..case(3, 2, 1, (7, 6), (3, 2))
            },
            // A batch larger than the thread count takes the one-image-per-task path.
            Case {
                stride: 2,
                pad: 1,
                ..case(9, 3, 4, (6, 6), (3, 3))
            },
            // Over one block of im2col columns (see `Geom::blocks`), as a convolution and as
            // a transposed one, at stride 2.
            Case {
                stride: 2,
                pad: 1,
                op: 1,
                ..case(1, 32, 16, (96, 96), (3, 3))
            },
        ]
    }

    /// Forward values and the gradients of x, w and bias agree with candle's conv2d (or
    /// conv_transpose2d) over every case.
    fn agrees_with_candle(transposed: bool, act: Act) -> Result<()> {
        let dev = Device::Cpu;
        for cs in cases() {
            let (h, w) = cs.hw;
            let x = Var::randn(0f32, 1., (cs.b, cs.c, h, w), &dev)?;
            let (kh, kw) = cs.k;
            let kshape = if transposed {
                (cs.c, cs.cout, kh, kw)
            } else {
                (cs.cout, cs.c, kh, kw)
            };
            let k = Var::randn(0f32, 1., kshape, &dev)?;
            let bias = Var::randn(0f32, 1., cs.cout, &dev)?;
            let b4 = bias.reshape((1, cs.cout, 1, 1))?;
            let (ours, theirs) = if transposed {
                let geom = (cs.stride, cs.pad, cs.op);
                (
                    conv_transpose2d_act(&x, &k, Some(bias.as_tensor()), geom, act)?,
                    x.conv_transpose2d(&k, cs.pad, cs.op, cs.stride, 1)?,
                )
            } else {
                (
                    conv2d_act(&x, &k, Some(bias.as_tensor()), cs.stride, cs.pad, act)?,
                    x.conv2d(&k, cs.pad, cs.stride, 1, 1)?,
                )
            };
            let pre = theirs.broadcast_add(&b4)?;
            assert_eq!(ours.dims(), pre.dims());
            let theirs = if act == Act::Relu {
                let d = max_rel(&ours, &pre.relu()?)?;
                assert!(d < 1e-4, "forward differs by {d} (k {:?})", cs.k);
                // A pre-activation within rounding of 0 may fall on either side of the ReLU in
                // the two summation orders, and its whole gradient with it; so the gradients
                // are compared through our forward's own mask, which the check above ties to
                // candle's values.
                let mask = ours.gt(0f32)?.to_dtype(DType::F32)?.detach();
                (pre * mask)?
            } else {
                let d = max_rel(&ours, &pre)?;
                assert!(d < 1e-4, "forward differs by {d} (k {:?})", cs.k);
                pre
            };
            let r = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
            let go = (ours * &r)?.sum_all()?.backward()?;
            let gt = (theirs * &r)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("w", &k), ("bias", &bias)] {
                let (a, b) = (go.get(v).expect("grad"), gt.get(v).expect("grad"));
                // 1e-3: a bias gradient sums hundreds of ±1 terms whose f32 rounding differs
                // with the summation order; a wrong gradient is off by O(1).
                let d = max_rel(a, b)?;
                assert!(d < 1e-3, "grad of {name} differs by {d} (k {:?})", cs.k);
            }
        }
        Ok(())
    }

    #[test]
    fn conv2d_matches_candle() -> Result<()> {
        agrees_with_candle(false, Act::Identity)
    }

    #[test]
    fn conv_transpose2d_matches_candle() -> Result<()> {
        agrees_with_candle(true, Act::Identity)
    }

    /// The fused ReLU: forward and all three gradients as candle's conv + bias + relu.
    #[test]
    fn fused_relu_matches_candle() -> Result<()> {
        agrees_with_candle(false, Act::Relu)?;
        agrees_with_candle(true, Act::Relu)
    }

    type Dims4 = (usize, usize, usize, usize);

    /// `f(x, k, bias)`'s gradients against f64 finite differences, for x of shape `xs`, k of
    /// `ks` and `nb` bias values.
    fn check_fd(
        f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
        xs: Dims4,
        ks: Dims4,
        nb: usize,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., xs, &dev)?;
        let k = Var::randn(0f32, 1., ks, &dev)?;
        let bias = Var::randn(0f32, 1., nb, &dev)?;
        let g = |a: &[Tensor]| f(&a[0], &a[1], &a[2]);
        crate::kernels::fd::check_grads(&g, &[&x, &k, &bias], 7)
    }

    #[test]
    fn conv2d_gradients_match_finite_differences() -> Result<()> {
        // An 8×9 input: odd and even strided sizes.
        check_fd(
            &|x, k, b| conv2d(x, k, Some(b), 2, 1),
            (2, 3, 8, 9),
            (2, 3, 3, 3),
            2,
        )?;
        // Thin: one output channel.
        check_fd(
            &|x, k, b| conv2d(x, k, Some(b), 1, 1),
            (2, 3, 8, 9),
            (1, 3, 3, 3),
            1,
        )
    }

    #[test]
    fn conv_transpose2d_gradients_match_finite_differences() -> Result<()> {
        // k [2, 3, 3, 3]: a transposed kernel from 2 channels to 3.
        check_fd(
            &|x, k, b| conv_transpose2d(x, k, Some(b), 2, 1, 1),
            (2, 2, 8, 9),
            (2, 3, 3, 3),
            3,
        )
    }

    /// Frames whose im2col matrix is larger than one block go through the ops in blocks of
    /// output rows; their gradients, too, match finite differences (both threading paths:
    /// one image, threads inside; three images, one per task).
    #[test]
    fn blocked_gradients_match_finite_differences() -> Result<()> {
        for b in [1, 3] {
            // conv: 16·9 im2col rows × 64·64 pixels is over one block.
            let g = Geom::new(16, (64, 64), (3, 3), 1, 1)?;
            assert!(g.blocks().count() > 1);
            check_fd(
                &|x, k, bias| conv2d(x, k, Some(bias), 1, 1),
                (b, 16, 64, 64),
                (2, 16, 3, 3),
                2,
            )?;
            // transposed, 2 → 16 channels at stride 2: its adjoint geometry is over one block.
            let g = Geom::new(16, (128, 128), (3, 3), 2, 1)?;
            assert!(g.blocks().count() > 1 && (g.oh, g.ow) == (64, 64));
            check_fd(
                &|x, k, bias| conv_transpose2d(x, k, Some(bias), 2, 1, 1),
                (b, 2, 64, 64),
                (2, 16, 3, 3),
                16,
            )?;
        }
        Ok(())
    }

    /// Off the CPU-f32 path (f64 here; any tensor on a GPU likewise) the entry points run
    /// candle's own `conv2d` / `conv_transpose2d`, whole-tensor ops a GPU backend implements,
    /// with the bias and activation after them; they agree with our kernels.
    #[test]
    fn other_devices_and_dtypes_take_candles_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 8, 6), &dev)?;
        let k = Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev)?;
        let kt = Tensor::randn(0f32, 1., (4, 2, 2, 2), &dev)?;
        let (b, bt) = (
            Tensor::randn(0f32, 1., 4, &dev)?,
            Tensor::randn(0f32, 1., 2, &dev)?,
        );
        let f64s = |t: &Tensor| t.to_dtype(DType::F64);
        for act in [Act::Identity, Act::Relu] {
            assert!(!fast_path(&f64s(&x)?, &f64s(&k)?));
            let ours = conv2d_act(&x, &k, Some(&b), 2, 1, act)?;
            let theirs = conv2d_act(&f64s(&x)?, &f64s(&k)?, Some(&f64s(&b)?), 2, 1, act)?;
            assert!(max_rel(&ours, &theirs.to_dtype(DType::F32)?)? < 1e-5);
            let ours = conv_transpose2d_act(&ours, &kt, Some(&bt), (2, 0, 0), act)?;
            let theirs =
                conv_transpose2d_act(&theirs, &f64s(&kt)?, Some(&f64s(&bt)?), (2, 0, 0), act)?;
            assert_eq!(ours.dims(), &[2, 2, 8, 6]);
            assert!(max_rel(&ours, &theirs.to_dtype(DType::F32)?)? < 1e-5);
        }
        Ok(())
    }

    /// im2col and col2im are adjoint: ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩.
    #[test]
    fn im2col_and_col2im_are_adjoint() -> Result<()> {
        let dev = Device::Cpu;
        let g = Geom::new(3, (7, 5), (3, 2), 2, 1)?;
        let x = Tensor::randn(0f32, 1., (2, 3, 7, 5), &dev)?;
        let c = Tensor::randn(0f32, 1., (2, g.rows(), g.cols()), &dev)?;
        let lhs = (x.apply_op1(Im2Col(g))? * &c)?
            .sum_all()?
            .to_scalar::<f32>()?;
        let rhs = (x * c.apply_op1(Col2Im(g))?)?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
        Ok(())
    }

    /// The network's input (a plain tensor) gets no gradient; the weights still do.
    #[test]
    fn no_input_gradient_for_a_constant_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 6, 6), &dev)?;
        let k = Var::randn(0f32, 1., (4, 3, 3, 3), &dev)?;
        let kt = Var::randn(0f32, 1., (4, 2, 3, 3), &dev)?;
        let y = conv2d(&x, &k, None, 2, 1)?;
        let z = conv_transpose2d(&y, &kt, None, 2, 1, 1)?;
        let grads = z.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&k).is_some() && grads.get(&kt).is_some());
        Ok(())
    }
}
