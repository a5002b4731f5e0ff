//! The convolutional autoencoder (`conv-ae`): strided convolutions down, learnable transposed
//! convolutions up, and a small latent feature map in between that can be emitted.
//!
//! Per level of the encoder: a 3×3 convolution + ReLU, then a learnable 2×2 stride-2
//! convolution + ReLU. A 3×3 convolution makes the `code_channels`-deep latent map at
//! 1/2^levels resolution. The decoder mirrors it with 2×2 stride-2 transposed convolutions (no
//! fixed interpolation) and ends in a 3×3 convolution and a sigmoid. NHWC in and out (the latent
//! map too, so an emitted code keeps its order), NCHW inside.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{to_nchw, to_nhwc, Conv3x3, Down2x2, Up2x2};
use crate::kernels::conv::Act;

#[derive(Debug, Clone, PartialEq)]
pub struct ConvAeConfig {
    /// Feature channels per level, finest first (each level halves H and W).
    pub channels: Vec<usize>,
    /// Depth of the latent feature map.
    pub code_channels: usize,
}

#[derive(Debug, Clone)]
pub struct ConvAe {
    enc_convs: Vec<Conv3x3>,
    downs: Vec<Down2x2>,
    to_code: Conv3x3,
    from_code: Conv3x3,
    ups: Vec<Up2x2>,
    dec_convs: Vec<Conv3x3>,
    out: Conv3x3,
}

impl ConvAe {
    pub fn new(vb: VarBuilder, cfg: &ConvAeConfig) -> Result<Self> {
        let ch = &cfg.channels;
        if ch.is_empty() || cfg.code_channels == 0 {
            candle_core::bail!("conv-ae: needs at least one level and a code depth");
        }
        let n = ch.len();
        let mut enc_convs = Vec::new();
        let mut downs = Vec::new();
        let mut cin = 1;
        for (i, &c) in ch.iter().enumerate() {
            enc_convs.push(Conv3x3::new(vb.pp(format!("enc{i}.conv")), cin, c)?);
            let next = ch.get(i + 1).copied().unwrap_or(c);
            downs.push(Down2x2::new(vb.pp(format!("enc{i}.down")), c, next)?);
            cin = next;
        }
        let to_code = Conv3x3::new(vb.pp("to_code"), cin, cfg.code_channels)?;
        let from_code = Conv3x3::new(vb.pp("from_code"), cfg.code_channels, cin)?;
        let mut ups = Vec::new();
        let mut dec_convs = Vec::new();
        for i in (0..n).rev() {
            let c = ch[i];
            ups.push(Up2x2::new(vb.pp(format!("dec{i}.up")), cin, c)?);
            dec_convs.push(Conv3x3::new(vb.pp(format!("dec{i}.conv")), c, c)?);
            cin = c;
        }
        let out = Conv3x3::new(vb.pp("out"), cin, 1)?;
        Ok(Self {
            enc_convs,
            downs,
            to_code,
            from_code,
            ups,
            dec_convs,
            out,
        })
    }

    /// H and W must be a multiple of this.
    pub fn size_multiple(&self) -> usize {
        1 << self.downs.len()
    }

    /// `[b, h, w, 1]` → latent map `[b, h/m, w/m, code_channels]`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = to_nchw(x)?;
        for (c, d) in self.enc_convs.iter().zip(&self.downs) {
            h = c.forward_act(&h, Act::Relu)?;
            h = d.forward_act(&h, Act::Relu)?;
        }
        to_nhwc(&self.to_code.forward(&h)?)
    }

    /// Latent map → logits `[b, h, w, 1]`.
    pub fn decode_raw(&self, code: &Tensor) -> Result<Tensor> {
        let mut h = self.from_code.forward_act(&to_nchw(code)?, Act::Relu)?;
        for (u, c) in self.ups.iter().zip(&self.dec_convs) {
            h = u.forward_act(&h, Act::Relu)?;
            h = c.forward_act(&h, Act::Relu)?;
        }
        to_nhwc(&self.out.forward(&h)?)
    }
}

impl Module for ConvAe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.decode_raw(&self.encode(x)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn shapes() -> Result<()> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = ConvAe::new(
            vb,
            &ConvAeConfig {
                channels: vec![8, 16],
                code_channels: 4,
            },
        )?;
        assert_eq!(net.size_multiple(), 4);
        let x = Tensor::rand(0f32, 1., (3, 28, 28, 1), &Device::Cpu)?;
        assert_eq!(net.encode(&x)?.dims(), &[3, 7, 7, 4]);
        assert_eq!(net.forward(&x)?.dims(), &[3, 28, 28, 1]);
        Ok(())
    }
}
