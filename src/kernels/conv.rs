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

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::{sgemm, threads};

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

/// Fills row `r` = (ci, ky, kx) of one image's im2col matrix.
fn im2col_row(src: &[f32], g: &Geom, r: usize, row: &mut [f32]) {
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
fn im2col_image(src: &[f32], g: &Geom, dst: &mut [f32], parallel: bool) {
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
fn col2im_plane(cols: &[f32], g: &Geom, ci: usize, plane: &mut [f32], init: f32) {
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
fn add_shifted(plane: &mut [f32], g: &Geom, (ky, kx): (usize, usize), row: &[f32], scale: f32) {
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

/// Thin convolution backward (cout = 1), without im2col: `dx = Σ_taps w · shifted dy` per
/// input plane. Inputs `dy [b, 1, oh, ow]`, `w [1, c, kh, kw]`; output `[b, c, h, w]`.
struct ThinInputGrad(Geom);

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
                        add_shifted(plane, g, (ky, kx), row, wv);
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
struct ThinWeightGrad(Geom);

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

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{what}: only f32 is supported")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("{what}: input must be contiguous")
    };
    Ok(&v[a..b])
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
            .for_each(|(o, (g, y))| {
                for ((o, g), y) in o.iter_mut().zip(g).zip(y) {
                    *o = if *y > 0.0 { *g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `y = act(W · im2col(x) + bias)` per image. Inputs `x [b, c, h, w]`, `w [cout, c, kh, kw]`,
/// `bias [cout]`.
struct Conv2dOp {
    g: Geom,
    cout: usize,
    act: Act,
}

impl Conv2dOp {
    /// Thin convolution (cout = 1): each output row accumulates shifted input rows directly.
    fn thin(&self, x: &[f32], w: &[f32], bias: f32, out: &mut [f32]) {
        let g = &self.g;
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
            self.act.apply(o);
        });
    }
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
            self.thin(x, w, bias[0], &mut out);
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
struct ConvTranspose2dOp {
    g: Geom,
    cin: usize,
    act: Act,
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

    /// Central finite differences of `sum(y · r)` in f64 against the analytic gradients, on an
    /// 8×9 input (odd and even strided sizes).
    fn check_fd(f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>, b: usize) -> Result<()> {
        let dev = Device::Cpu;
        let (c, cout) = (3, 2);
        let x = Var::randn(0f32, 1., (b, c, 8, 9), &dev)?;
        let k = Var::randn(0f32, 1., (cout, c, 3, 3), &dev)?;
        let bias = Var::randn(0f32, 1., cout, &dev)?;
        let y = f(x.as_tensor(), k.as_tensor(), bias.as_tensor())?;
        let r = Tensor::randn(0f32, 1., y.shape(), &dev)?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let loss = |x: &Tensor, k: &Tensor, bias: &Tensor| -> Result<f64> {
            let y = f(x, k, bias)?.to_dtype(DType::F64)?;
            (y * r.to_dtype(DType::F64)?)?.sum_all()?.to_scalar::<f64>()
        };
        for (vi, v) in [&x, &k, &bias].into_iter().enumerate() {
            let g = grads
                .get(v)
                .expect("grad")
                .flatten_all()?
                .to_vec1::<f32>()?;
            let base = v.flatten_all()?.to_vec1::<f32>()?;
            for i in (0..base.len()).step_by(base.len() / 7 + 1) {
                // The loss is linear in each argument, so a large step loses no accuracy.
                let eps = 0.25f32;
                let at = |d: f32| -> Result<f64> {
                    let mut p = base.clone();
                    p[i] += d;
                    let p = Tensor::from_vec(p, v.shape(), &dev)?;
                    let mut args = [
                        x.as_tensor().clone(),
                        k.as_tensor().clone(),
                        bias.as_tensor().clone(),
                    ];
                    args[vi] = p;
                    loss(&args[0], &args[1], &args[2])
                };
                let fd = (at(eps)? - at(-eps)?) / (2.0 * eps as f64);
                let err = (fd - g[i] as f64).abs() / fd.abs().max(1.0);
                assert!(err < 1e-3, "var {vi} elem {i}: fd {fd} vs grad {}", g[i]);
            }
        }
        Ok(())
    }

    #[test]
    fn conv2d_gradients_match_finite_differences() -> Result<()> {
        check_fd(&|x, k, b| conv2d(x, k, Some(b), 2, 1), 2)?;
        // Thin: one output channel.
        check_fd(
            &|x, k, b| conv2d(x, &k.narrow(0, 0, 1)?, Some(&b.narrow(0, 0, 1)?), 1, 1),
            2,
        )
    }

    #[test]
    fn conv_transpose2d_gradients_match_finite_differences() -> Result<()> {
        // k is [2, 3, 3, 3] here: as a transposed kernel, cin 2 → cout 3, so x gets 2 channels.
        check_fd(
            &|x, k, b| {
                let x = x.narrow(1, 0, 2)?;
                let b = Tensor::cat(&[b, &b.narrow(0, 0, 1)?], 0)?;
                conv_transpose2d(&x, k, Some(&b), 2, 1, 1)
            },
            2,
        )
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
