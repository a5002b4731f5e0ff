//! Building blocks shared by the convolutional models, in NHWC layout.
//!
//! candle's CPU `conv2d` backward goes through a direct-loop `conv_transpose2d`, which makes
//! training several times slower than the forward pass. These layers express every convolution
//! as "gather patches, then one matmul" so that forward and backward both run at gemm speed:
//! - [`Conv3x3`]: 3×3, stride 1, zero padding 1, via an im2col custom op with a hand-written
//!   col2im backward (CPU) or differentiable narrow/cat (other devices);
//! - [`Down2x2`]: a learnable 2×2 stride-2 convolution (space-to-depth + matmul);
//! - [`Up2x2`]: a learnable 2×2 stride-2 transposed convolution (matmul + depth-to-space).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

/// im2col for a 3×3 window with zero padding 1 on an NHWC tensor: `[b,h,w,c] -> [b,h,w,9c]`.
struct Im2Col3x3;

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "im2col3x3-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, c) = layout.shape().dims4()?;
        let src = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("im2col3x3: only f32 is supported"),
        };
        let Some((o0, o1)) = layout.contiguous_offsets() else {
            candle_core::bail!("im2col3x3: input must be contiguous")
        };
        let src = &src[o0..o1];
        let mut dst = vec![0f32; b * h * w * 9 * c];
        let row = w * 9 * c;
        use rayon::prelude::*;
        dst.par_chunks_mut(row).enumerate().for_each(|(by, out)| {
            let (bi, y) = (by / h, by % h);
            for x in 0..w {
                let o = &mut out[x * 9 * c..(x + 1) * 9 * c];
                for dy in 0..3 {
                    let yy = y as isize + dy as isize - 1;
                    if yy < 0 || yy >= h as isize {
                        continue;
                    }
                    for dx in 0..3 {
                        let xx = x as isize + dx as isize - 1;
                        if xx < 0 || xx >= w as isize {
                            continue;
                        }
                        let s = ((bi * h + yy as usize) * w + xx as usize) * c;
                        let k = dy * 3 + dx;
                        o[k * c..(k + 1) * c].copy_from_slice(&src[s..s + c]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((b, h, w, 9 * c))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(g.apply_op1_no_bwd(&Col2Im3x3)?))
    }
}

/// The adjoint of [`Im2Col3x3`]: `[b,h,w,9c] -> [b,h,w,c]`, summing each pixel's 9 uses.
struct Col2Im3x3;

impl CustomOp1 for Col2Im3x3 {
    fn name(&self) -> &'static str {
        "col2im3x3-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, w, c9) = layout.shape().dims4()?;
        let c = c9 / 9;
        let src = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("col2im3x3: only f32 is supported"),
        };
        let Some((o0, o1)) = layout.contiguous_offsets() else {
            candle_core::bail!("col2im3x3: input must be contiguous")
        };
        let src = &src[o0..o1];
        let mut dst = vec![0f32; b * h * w * c];
        use rayon::prelude::*;
        // Gather form: each output pixel sums the 9 columns that read it, so rows are independent.
        dst.par_chunks_mut(w * c).enumerate().for_each(|(by, out)| {
            let (bi, yy) = (by / h, by % h);
            for xx in 0..w {
                let o = &mut out[xx * c..(xx + 1) * c];
                for dy in 0..3 {
                    // The column at y read input row yy with offset dy: yy = y + dy - 1.
                    let y = yy as isize + 1 - dy as isize;
                    if y < 0 || y >= h as isize {
                        continue;
                    }
                    for dx in 0..3 {
                        let x = xx as isize + 1 - dx as isize;
                        if x < 0 || x >= w as isize {
                            continue;
                        }
                        let k = dy * 3 + dx;
                        let s = ((bi * h + y as usize) * w + x as usize) * c9 + k * c;
                        for (d, v) in o.iter_mut().zip(&src[s..s + c]) {
                            *d += v;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((b, h, w, c))))
    }
}

/// im2col on any device: the custom op on CPU, narrow/cat (differentiable) elsewhere.
pub fn im2col3x3(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1(Im2Col3x3);
    }
    let (_, h, w, _) = x.dims4()?;
    let xp = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut cols = Vec::with_capacity(9);
    for dy in 0..3 {
        let row = xp.narrow(1, dy, h)?;
        for dx in 0..3 {
            cols.push(row.narrow(2, dx, w)?.contiguous()?);
        }
    }
    Tensor::cat(&cols, 3)
}

/// Applies `x [n, k] @ w [k, m] + b` to the last dimension of an NHWC tensor.
fn channel_matmul(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let n = x.elem_count() / k;
    let y = x.reshape((n, k))?.matmul(w)?.broadcast_add(b)?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = w.dim(1)?;
    y.reshape(out)
}

pub(crate) fn kaiming(fan_in: usize) -> Init {
    // He-normal for ReLU nets.
    Init::Randn {
        mean: 0.,
        stdev: (2.0 / fan_in as f64).sqrt(),
    }
}

/// A 3×3 convolution, stride 1, zero padding 1, NHWC. Weight `[9·cin, cout]`.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    w: Tensor,
    b: Tensor,
}

impl Conv3x3 {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::with_gain(vb, cin, cout, 1.0)
    }

    /// `gain` scales the initial weights; a small gain makes a residual branch start near zero.
    pub fn with_gain(vb: VarBuilder, cin: usize, cout: usize, gain: f64) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.,
            stdev: gain * (2.0 / (9 * cin) as f64).sqrt(),
        };
        let w = vb.get_with_hints((9 * cin, cout), "weight", init)?;
        let b = vb.get_with_hints(cout, "bias", Init::Const(0.))?;
        Ok(Self { w, b })
    }
}

impl Module for Conv3x3 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        channel_matmul(&im2col3x3(x)?, &self.w, &self.b)
    }
}

/// A learnable 2×2 stride-2 convolution (halves H and W). Weight `[4·cin, cout]`.
#[derive(Debug, Clone)]
pub struct Down2x2 {
    w: Tensor,
    b: Tensor,
}

impl Down2x2 {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        let w = vb.get_with_hints((4 * cin, cout), "weight", kaiming(4 * cin))?;
        let b = vb.get_with_hints(cout, "bias", Init::Const(0.))?;
        Ok(Self { w, b })
    }
}

impl Module for Down2x2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        // [b, h/2, 2, w/2, 2, c] -> [b, h/2, w/2, 2, 2, c]: each output pixel's 2×2 block.
        let x = x
            .reshape((b, h / 2, 2, w / 2, 2, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((b, h / 2, w / 2, 4 * c))?;
        channel_matmul(&x, &self.w, &self.b)
    }
}

/// A learnable 2×2 stride-2 transposed convolution (doubles H and W). Weight `[cin, 4·cout]`.
#[derive(Debug, Clone)]
pub struct Up2x2 {
    w: Tensor,
    b: Tensor,
    cout: usize,
}

impl Up2x2 {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::with_gain(vb, cin, cout, 1.0)
    }

    /// `gain` scales the initial weights (small for an output layer that should start near 0).
    pub fn with_gain(vb: VarBuilder, cin: usize, cout: usize, gain: f64) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.,
            stdev: gain * (2.0 / cin as f64).sqrt(),
        };
        let w = vb.get_with_hints((cin, 4 * cout), "weight", init)?;
        let b = vb.get_with_hints(cout, "bias", Init::Const(0.))?;
        Ok(Self { w, b, cout })
    }
}

impl Module for Up2x2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let co = self.cout;
        let y = x.reshape((b * h * w, c))?.matmul(&self.w)?;
        // [b, h, w, 2, 2, co] -> [b, h, 2, w, 2, co]: scatter each pixel's 2×2 block.
        y.reshape((b, h, w, 2, 2, co))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((b, 2 * h, 2 * w, co))?
            .broadcast_add(&self.b)
    }
}

/// `x + conv(relu(conv(x)))`, the residual block of the denoiser's levels.
#[derive(Debug, Clone)]
pub struct ResBlock {
    c1: Conv3x3,
    c2: Conv3x3,
}

impl ResBlock {
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            c1: Conv3x3::new(vb.pp("conv1"), c, c)?,
            // Start each block close to the identity so the deep stack trains from step one.
            c2: Conv3x3::with_gain(vb.pp("conv2"), c, c, 0.1)?,
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c1.forward(x)?.relu()?;
        x + self.c2.forward(&h)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The custom im2col and its backward agree with the generic narrow/cat path.
    #[test]
    fn im2col_matches_reference_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 5, 7, 3), &dev)?)?;
        let wgt = Tensor::randn(0f32, 1., (2, 5, 7, 27), &dev)?;
        let fast = im2col3x3(x.as_tensor())?;
        let xp = x
            .as_tensor()
            .pad_with_zeros(1, 1, 1)?
            .pad_with_zeros(2, 1, 1)?;
        let mut cols = vec![];
        for dy in 0..3 {
            for dx in 0..3 {
                cols.push(xp.narrow(1, dy, 5)?.narrow(2, dx, 7)?.contiguous()?);
            }
        }
        let slow = Tensor::cat(&cols, 3)?;
        let diff = (&fast - &slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "forward differs by {diff}");
        let gf = (fast * &wgt)?.sum_all()?.backward()?;
        let gs = (slow * &wgt)?.sum_all()?.backward()?;
        let a = gf.get(x.as_tensor()).expect("grad");
        let b = gs.get(x.as_tensor()).expect("grad");
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "backward differs by {diff}");
        Ok(())
    }

    /// Down then Up keep the shapes consistent and invert the spatial size change.
    #[test]
    fn down_up_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let x = Tensor::randn(0f32, 1., (2, 8, 12, 4), &dev)?;
        let d = Down2x2::new(vb.pp("d"), 4, 6)?.forward(&x)?;
        assert_eq!(d.dims(), &[2, 4, 6, 6]);
        let u = Up2x2::new(vb.pp("u"), 6, 4)?.forward(&d)?;
        assert_eq!(u.dims(), &[2, 8, 12, 4]);
        Ok(())
    }

    /// Down2x2 is a real 2×2 stride-2 convolution: compare with candle's conv2d.
    #[test]
    fn down_matches_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let (cin, cout) = (3, 5);
        let down = Down2x2::new(vb, cin, cout)?;
        let x = Tensor::randn(0f32, 1., (1, 6, 8, cin), &dev)?;
        let ours = down.forward(&x)?;
        // Our weight [4cin, cout] is indexed (ky, kx, ci); candle's kernel is [cout, cin, ky, kx].
        let k = down
            .w
            .reshape((2, 2, cin, cout))?
            .permute((3, 2, 0, 1))?
            .contiguous()?;
        let theirs = x
            .permute((0, 3, 1, 2))?
            .contiguous()?
            .conv2d(&k, 0, 2, 1, 1)?
            .broadcast_add(&down.b.reshape((1, cout, 1, 1))?)?
            .permute((0, 2, 3, 1))?;
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "differs by {diff}");
        Ok(())
    }
}
