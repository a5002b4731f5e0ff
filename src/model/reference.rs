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
use crate::kernels::conv::{conv2d_act, conv_transpose2d_act, Act};
use crate::kernels::linear::linear_act;

/// Which implementation the layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvImpl {
    /// Our custom ops (im2col / col2im + gemm convolutions, fused linear), bias and ReLU fused.
    #[default]
    Ours,
    /// candle's `conv2d` / `conv_transpose2d` / candle-nn's `Linear`, then bias and ReLU.
    Candle,
}

/// One layer's shape: channels in and out, square kernel, stride, padding, output padding
/// (transposed only) and the activation after it.
#[derive(Debug, Clone, Copy)]
pub struct LayerCfg {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub output_padding: usize,
    pub act: Act,
}

/// A 3×3, padding 1 layer of the reference net.
const fn l3(cin: usize, cout: usize, stride: usize, output_padding: usize, act: Act) -> LayerCfg {
    LayerCfg {
        cin,
        cout,
        k: 3,
        stride,
        pad: 1,
        output_padding,
        act,
    }
}

/// candle's convolution output plus bias, then the activation (the unfused baseline).
fn candle_finish(y: Tensor, b: &Tensor, act: Act) -> Result<Tensor> {
    let y = y.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
    match act {
        Act::Relu => y.relu(),
        Act::Identity => Ok(y),
    }
}

/// A square convolution with bias and activation; weight `[cout, cin, k, k]` (candle's layout).
#[derive(Debug, Clone)]
pub struct Conv {
    w: Tensor,
    b: Tensor,
    cfg: LayerCfg,
    imp: ConvImpl,
}

impl Conv {
    pub fn new(vb: VarBuilder, cfg: LayerCfg, imp: ConvImpl) -> Result<Self> {
        let LayerCfg { cin, cout, k, .. } = cfg;
        let w = vb.get_with_hints((cout, cin, k, k), "weight", kaiming(cin * k * k))?;
        let b = vb.get_with_hints(cout, "bias", Init::Const(0.))?;
        Ok(Self { w, b, cfg, imp })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        match self.imp {
            ConvImpl::Ours => conv2d_act(x, &self.w, Some(&self.b), c.stride, c.pad, c.act),
            ConvImpl::Candle => {
                candle_finish(x.conv2d(&self.w, c.pad, c.stride, 1, 1)?, &self.b, c.act)
            }
        }
    }
}

/// A square transposed convolution with bias and activation; weight `[cin, cout, k, k]`
/// (candle's layout).
#[derive(Debug, Clone)]
pub struct ConvT {
    w: Tensor,
    b: Tensor,
    cfg: LayerCfg,
    imp: ConvImpl,
}

impl ConvT {
    pub fn new(vb: VarBuilder, cfg: LayerCfg, imp: ConvImpl) -> Result<Self> {
        let LayerCfg { cin, cout, k, .. } = cfg;
        // Each output pixel sees about k²/stride² inputs per channel.
        let fan_in = (cin * k * k / (cfg.stride * cfg.stride)).max(1);
        let w = vb.get_with_hints((cin, cout, k, k), "weight", kaiming(fan_in))?;
        let b = vb.get_with_hints(cout, "bias", Init::Const(0.))?;
        Ok(Self { w, b, cfg, imp })
    }
}

impl Module for ConvT {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        match self.imp {
            ConvImpl::Ours => {
                let geom = (c.stride, c.pad, c.output_padding);
                conv_transpose2d_act(x, &self.w, Some(&self.b), geom, c.act)
            }
            ConvImpl::Candle => {
                let y = x.conv_transpose2d(&self.w, c.pad, c.output_padding, c.stride, 1)?;
                candle_finish(y, &self.b, c.act)
            }
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
        let relu = Act::Relu;
        Ok(Self {
            enc: [
                Conv::new(vb.pp("enc1"), l3(1, 32, 1, 0, relu), imp)?,
                Conv::new(vb.pp("enc2"), l3(32, 64, 2, 0, relu), imp)?,
                Conv::new(vb.pp("enc3"), l3(64, 64, 2, 0, relu), imp)?,
            ],
            dec: [
                ConvT::new(vb.pp("dec1"), l3(64, 64, 2, 1, relu), imp)?,
                ConvT::new(vb.pp("dec2"), l3(64, 32, 2, 1, relu), imp)?,
            ],
            // The sigmoid stays outside: candle's is already one fused pass.
            out: Conv::new(vb.pp("out"), l3(32, 1, 1, 0, Act::Identity), imp)?,
        })
    }
}

impl Module for ConvAeRef {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for c in &self.enc {
            h = c.forward(&h)?;
        }
        for c in &self.dec {
            h = c.forward(&h)?;
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
    imp: ConvImpl,
}

impl DenseAeRef {
    /// `imp` picks our fused linear op or candle-nn's `Linear` (same weights either way).
    pub fn new(vb: VarBuilder, imp: ConvImpl) -> Result<Self> {
        let layers = DENSE_WIDTHS
            .windows(2)
            .enumerate()
            .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("fc{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, imp })
    }
}

impl Module for DenseAeRef {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let code = DENSE_WIDTHS.len() / 2 - 1;
        let last = self.layers.len() - 1;
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            // The 30-D code stays linear; the output is a sigmoid.
            let act = if i != code && i != last {
                Act::Relu
            } else {
                Act::Identity
            };
            h = match (self.imp, l.bias()) {
                (ConvImpl::Ours, Some(b)) => linear_act(&h, l.weight(), b, act)?,
                _ => {
                    let y = l.forward(&h)?;
                    if act == Act::Relu {
                        y.relu()?
                    } else {
                        y
                    }
                }
            };
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
    fn dense_ae_ref_ours_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let ours = DenseAeRef::new(vb.clone(), ConvImpl::Ours)?;
        let theirs = DenseAeRef::new(vb, ConvImpl::Candle)?;
        let x = Tensor::rand(0f32, 1., (3, 625), &dev)?;
        let (yo, yt) = (ours.forward(&x)?, theirs.forward(&x)?);
        assert_eq!(yo.dims(), &[3, 625]);
        assert_eq!(vm.all_vars().len(), 16);
        let d = (yo - yt)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "outputs differ by {d}");
        Ok(())
    }
}
