//! The reference networks of the CPU-speed comparison (issue 6), built into the binary so that
//! `aestream bench` and an outside PyTorch script measure exactly the same work:
//! - `conv-ae-ref`: NCHW 1×64×64, conv 1→32 s1, 32→64 s2, 64→64 s2, transposed 64→64 s2 op1,
//!   64→32 s2 op1, conv 32→1 s1 (all 3×3, padding 1), ReLU between, sigmoid output;
//! - `dense-ae-ref`: 625-2000-1000-500-30-500-1000-2000-625, ReLU except the linear 30-D code
//!   and the sigmoid output.
//!
//! Both train with MSE against the input. The convolutions run on our kernels
//! ([`crate::kernels::conv`]) or, with `candle_ops`, on candle's own, so both can be timed
//! from one binary.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use super::layers::kaiming;
use crate::kernels::conv::{conv2d, conv_transpose2d};

/// Which implementation the convolutions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvImpl {
    /// im2col / col2im + gemm custom ops.
    #[default]
    Ours,
    /// candle's `conv2d` / `conv_transpose2d`.
    Candle,
}

/// A square convolution with bias; weight `[cout, cin, k, k]` (candle's layout).
#[derive(Debug, Clone)]
pub struct Conv {
    w: Tensor,
    b: Tensor,
    stride: usize,
    pad: usize,
    imp: ConvImpl,
}

impl Conv {
    pub fn new(
        vb: VarBuilder,
        (cin, cout, k): (usize, usize, usize),
        stride: usize,
        pad: usize,
        imp: ConvImpl,
    ) -> Result<Self> {
        let w = vb.get_with_hints((cout, cin, k, k), "weight", kaiming(cin * k * k))?;
        let b = vb.get_with_hints(cout, "bias", Init::Const(0.))?;
        Ok(Self {
            w,
            b,
            stride,
            pad,
            imp,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.imp {
            ConvImpl::Ours => conv2d(x, &self.w, Some(&self.b), self.stride, self.pad),
            ConvImpl::Candle => x
                .conv2d(&self.w, self.pad, self.stride, 1, 1)?
                .broadcast_add(&self.b.reshape((1, (), 1, 1))?),
        }
    }
}

/// A square transposed convolution with bias; weight `[cin, cout, k, k]` (candle's layout).
#[derive(Debug, Clone)]
pub struct ConvT {
    w: Tensor,
    b: Tensor,
    stride: usize,
    pad: usize,
    output_padding: usize,
    imp: ConvImpl,
}

impl ConvT {
    pub fn new(
        vb: VarBuilder,
        (cin, cout, k): (usize, usize, usize),
        stride: usize,
        pad: usize,
        output_padding: usize,
        imp: ConvImpl,
    ) -> Result<Self> {
        let w = vb.get_with_hints(
            (cin, cout, k, k),
            "weight",
            kaiming(cin * k * k / (stride * stride)),
        )?;
        let b = vb.get_with_hints(cout, "bias", Init::Const(0.))?;
        Ok(Self {
            w,
            b,
            stride,
            pad,
            output_padding,
            imp,
        })
    }
}

impl Module for ConvT {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.imp {
            ConvImpl::Ours => conv_transpose2d(
                x,
                &self.w,
                Some(&self.b),
                self.stride,
                self.pad,
                self.output_padding,
            ),
            ConvImpl::Candle => x
                .conv_transpose2d(&self.w, self.pad, self.output_padding, self.stride, 1)?
                .broadcast_add(&self.b.reshape((1, (), 1, 1))?),
        }
    }
}

/// `conv-ae-ref`: `[b, 1, h, w]` (h, w multiples of 4) → same shape in (0, 1).
#[derive(Debug, Clone)]
pub struct ConvAeRef {
    enc: [Conv; 3],
    dec: [ConvT; 2],
    out: Conv,
}

impl ConvAeRef {
    pub fn new(vb: VarBuilder, imp: ConvImpl) -> Result<Self> {
        Ok(Self {
            enc: [
                Conv::new(vb.pp("enc1"), (1, 32, 3), 1, 1, imp)?,
                Conv::new(vb.pp("enc2"), (32, 64, 3), 2, 1, imp)?,
                Conv::new(vb.pp("enc3"), (64, 64, 3), 2, 1, imp)?,
            ],
            dec: [
                ConvT::new(vb.pp("dec1"), (64, 64, 3), 2, 1, 1, imp)?,
                ConvT::new(vb.pp("dec2"), (64, 32, 3), 2, 1, 1, imp)?,
            ],
            out: Conv::new(vb.pp("out"), (32, 1, 3), 1, 1, imp)?,
        })
    }
}

impl Module for ConvAeRef {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for c in &self.enc {
            h = c.forward(&h)?.relu()?;
        }
        for c in &self.dec {
            h = c.forward(&h)?.relu()?;
        }
        candle_nn::ops::sigmoid(&self.out.forward(&h)?)
    }
}

/// The widths of `dense-ae-ref`, input to output.
pub const DENSE_WIDTHS: [usize; 9] = [625, 2000, 1000, 500, 30, 500, 1000, 2000, 625];

/// `dense-ae-ref`: `[b, 625]` → `[b, 625]` in (0, 1).
#[derive(Debug, Clone)]
pub struct DenseAeRef {
    layers: Vec<Linear>,
}

impl DenseAeRef {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let layers = DENSE_WIDTHS
            .windows(2)
            .enumerate()
            .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("fc{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }
}

impl Module for DenseAeRef {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let code = DENSE_WIDTHS.len() / 2 - 1;
        let last = self.layers.len() - 1;
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            // The 30-D code stays linear; the output is a sigmoid.
            if i != code && i != last {
                h = h.relu()?;
            }
        }
        candle_nn::ops::sigmoid(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// Our kernels and candle's ops give the same network output and the same weight
    /// gradients for the same weights.
    #[test]
    fn conv_ae_ref_ours_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let ours = ConvAeRef::new(vb.clone(), ConvImpl::Ours)?;
        let theirs = ConvAeRef::new(vb, ConvImpl::Candle)?;
        let x = Tensor::rand(0f32, 1., (2, 1, 16, 16), &dev)?;
        let (yo, yt) = (ours.forward(&x)?, theirs.forward(&x)?);
        assert_eq!(yo.dims(), &[2, 1, 16, 16]);
        let d = (&yo - &yt)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "outputs differ by {d}");
        let go = (yo - &x)?.sqr()?.mean_all()?.backward()?;
        let gt = (yt - &x)?.sqr()?.mean_all()?.backward()?;
        for v in vm.all_vars() {
            let (a, b) = (go.get(&v).expect("grad"), gt.get(&v).expect("grad"));
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
            assert!(d < 1e-3, "gradient differs by {d} (relative)");
        }
        Ok(())
    }

    #[test]
    fn dense_ae_ref_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let net = DenseAeRef::new(VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let y = net.forward(&Tensor::rand(0f32, 1., (3, 625), &dev)?)?;
        assert_eq!(y.dims(), &[3, 625]);
        assert_eq!(vm.all_vars().len(), 16);
        Ok(())
    }
}
