//! The segmentation U-Net (`segment-nuclei`): an encoder-decoder with skip connections across
//! levels that gives a foreground logit per pixel.
//!
//! Unlike the denoiser, the first level works at full resolution (boundaries between touching
//! nuclei are a pixel or two wide). Each encoder level is a 3×3 convolution + ReLU and a residual
//! block; a learnable 2×2 stride-2 convolution goes down. The decoder goes up with learnable 2×2
//! transposed convolutions, concatenates the encoder's features of that level (the U-Net skip),
//! fuses them with a 3×3 convolution and a residual block. NHWC in and out, NCHW inside; fully
//! convolutional.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{to_nchw, to_nhwc, Conv3x3, Down2x2, ResBlock, Up2x2};
use crate::kernels::conv::Act;

#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Feature channels per level, full resolution first.
    pub channels: Vec<usize>,
}

#[derive(Debug, Clone)]
struct EncLevel {
    conv: Conv3x3,
    block: ResBlock,
}

#[derive(Debug, Clone)]
struct DecLevel {
    up: Up2x2,
    fuse: Conv3x3,
    block: ResBlock,
}

#[derive(Debug, Clone)]
pub struct UNet {
    enc: Vec<EncLevel>,
    downs: Vec<Down2x2>,
    dec: Vec<DecLevel>,
    head: Conv3x3,
}

impl UNet {
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let ch = &cfg.channels;
        if ch.is_empty() {
            candle_core::bail!("unet-segment: `channels` must not be empty");
        }
        let mut enc = Vec::new();
        let mut downs = Vec::new();
        let mut cin = 1;
        for (i, &c) in ch.iter().enumerate() {
            let v = vb.pp(format!("enc{i}"));
            enc.push(EncLevel {
                conv: Conv3x3::new(v.pp("conv"), cin, c)?,
                block: ResBlock::new(v.pp("block"), c)?,
            });
            if i + 1 < ch.len() {
                downs.push(Down2x2::new(v.pp("down"), c, c)?);
            }
            cin = c;
        }
        let mut dec = Vec::new();
        for i in (0..ch.len() - 1).rev() {
            let v = vb.pp(format!("dec{i}"));
            dec.push(DecLevel {
                up: Up2x2::new(v.pp("up"), ch[i + 1], ch[i])?,
                fuse: Conv3x3::new(v.pp("fuse"), 2 * ch[i], ch[i])?,
                block: ResBlock::new(v.pp("block"), ch[i])?,
            });
        }
        let head = Conv3x3::new(vb.pp("head"), ch[0], 1)?;
        Ok(Self {
            enc,
            downs,
            dec,
            head,
        })
    }

    pub fn size_multiple(&self) -> usize {
        1 << self.downs.len()
    }

    /// `[b, h, w, 1]` → foreground logits `[b, h, w, 1]`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = to_nchw(x)?;
        let mut skips = Vec::new();
        for (i, l) in self.enc.iter().enumerate() {
            h = l.conv.forward_act(&h, Act::Relu)?;
            h = l.block.forward(&h)?;
            if let Some(d) = self.downs.get(i) {
                skips.push(h.clone());
                h = d.forward_act(&h, Act::Relu)?;
            }
        }
        for l in &self.dec {
            let skip = skips.pop().expect("one skip per decoder level");
            h = l.up.forward_act(&h, Act::Relu)?;
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = l.fuse.forward_act(&h, Act::Relu)?;
            h = l.block.forward(&h)?;
        }
        to_nhwc(&self.head.forward(&h)?)
    }
}

impl Module for UNet {
    /// Foreground probability per pixel.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.logits(x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn keeps_shape() -> Result<()> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let net = UNet::new(
            vb,
            &UNetConfig {
                channels: vec![4, 8, 8],
            },
        )?;
        assert_eq!(net.size_multiple(), 4);
        let x = Tensor::rand(0f32, 1., (2, 16, 12, 1), &Device::Cpu)?;
        assert_eq!(net.forward(&x)?.dims(), &[2, 16, 12, 1]);
        Ok(())
    }
}
