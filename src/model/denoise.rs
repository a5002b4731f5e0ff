//! The flagship blind denoiser: a small residual U-Net (NHWC in and out, NCHW inside).
//!
//! Encoder: learnable 2×2 stride-2 convolutions and 3×3 residual blocks; decoder: learnable 2×2
//! stride-2 transposed convolutions with additive skip connections. The first strided
//! convolution takes the image straight to half resolution (as FFDNet does), so no 3×3
//! convolution runs at full resolution: most of the cost of a denoiser, for little of its
//! quality. The last transposed convolution returns to full resolution. The network predicts
//! the noise and the output is `x - noise` (residual learning, as in DnCNN), which is what makes
//! a small network train quickly. Fully convolutional: any H, W that are a multiple of
//! [`Denoiser::size_multiple`].

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::layers::{to_nchw, to_nhwc, Conv3x3, Down2x2, ResBlock, Up2x2};
use crate::kernels::conv::Act;

/// Architecture of the denoiser; lives in the pipeline file under `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenoiserConfig {
    /// Output channels of the network (1: grey, applied per channel to colour).
    pub image_channels: usize,
    /// Extra input channels after the image ones (the inpainter's mask).
    pub extra_inputs: usize,
    /// Feature channels per level, finest first; each further level halves H and W.
    pub channels: Vec<usize>,
    /// Residual blocks per level (the coarsest level's blocks form the bottleneck).
    pub blocks: Vec<usize>,
    /// `[channels, blocks]` of the full-resolution refinement stage (`[0, 0]`: none).
    pub full_res: [usize; 2],
}

impl Default for DenoiserConfig {
    fn default() -> Self {
        Self {
            image_channels: 1,
            extra_inputs: 0,
            channels: vec![64, 128, 192],
            blocks: vec![1, 1, 2],
            full_res: [0, 0],
        }
    }
}

/// Full-resolution refinement: sees the input and the U-Net's estimate, adds a correction.
/// Its last layer starts near zero, so it can be added to trained U-Net weights
/// (`train --init`) without changing their output at first.
#[derive(Debug, Clone)]
struct Refine {
    head: Conv3x3,
    blocks: Vec<ResBlock>,
    tail: Conv3x3,
}

impl Refine {
    fn new(vb: VarBuilder, cin: usize, cout: usize, c: usize, nb: usize) -> Result<Self> {
        Ok(Self {
            head: Conv3x3::new(vb.pp("head"), cin + cout, c)?,
            blocks: (0..nb)
                .map(|j| ResBlock::new(vb.pp(format!("block{j}")), c))
                .collect::<Result<Vec<_>>>()?,
            tail: Conv3x3::with_gain(vb.pp("tail"), c, cout, 0.01)?,
        })
    }

    /// `x`, `estimate`: NCHW.
    fn forward(&self, x: &Tensor, estimate: &Tensor) -> Result<Tensor> {
        let mut h = self
            .head
            .forward_act(&Tensor::cat(&[x, estimate], 1)?, Act::Relu)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        estimate + self.tail.forward(&h)?
    }
}

#[derive(Debug, Clone)]
struct Level {
    enc: Vec<ResBlock>,
    dec: Vec<ResBlock>,
}

/// The denoiser network.
#[derive(Debug, Clone)]
pub struct Denoiser {
    head: Down2x2,
    levels: Vec<Level>,
    downs: Vec<Down2x2>,
    ups: Vec<Up2x2>,
    tail: Up2x2,
    refine: Option<Refine>,
    multiple: usize,
    image_channels: usize,
}

impl Denoiser {
    pub fn new(vb: VarBuilder, cfg: &DenoiserConfig) -> Result<Self> {
        let n = cfg.channels.len();
        if n == 0 || cfg.blocks.len() != n {
            candle_core::bail!(
                "denoiser: `channels` and `blocks` must be non-empty and equally long"
            );
        }
        let head = Down2x2::new(
            vb.pp("head"),
            cfg.image_channels + cfg.extra_inputs,
            cfg.channels[0],
        )?;
        let mut levels = Vec::with_capacity(n);
        let mut downs = Vec::new();
        let mut ups = Vec::new();
        for (i, (&c, &nb)) in cfg.channels.iter().zip(&cfg.blocks).enumerate() {
            let vl = vb.pp(format!("level{i}"));
            let enc = (0..nb)
                .map(|j| ResBlock::new(vl.pp(format!("enc{j}")), c))
                .collect::<Result<Vec<_>>>()?;
            // The bottleneck has no decoder half.
            let dec = if i + 1 < n {
                (0..nb)
                    .map(|j| ResBlock::new(vl.pp(format!("dec{j}")), c))
                    .collect::<Result<Vec<_>>>()?
            } else {
                vec![]
            };
            levels.push(Level { enc, dec });
            if i + 1 < n {
                let next = cfg.channels[i + 1];
                downs.push(Down2x2::new(vl.pp("down"), c, next)?);
                ups.push(Up2x2::new(vl.pp("up"), next, c)?);
            }
        }
        let tail = Up2x2::with_gain(vb.pp("tail"), cfg.channels[0], cfg.image_channels, 0.01)?;
        let [rc, rb] = cfg.full_res;
        let refine = if rc > 0 {
            Some(Refine::new(
                vb.pp("refine"),
                cfg.image_channels + cfg.extra_inputs,
                cfg.image_channels,
                rc,
                rb,
            )?)
        } else {
            None
        };
        Ok(Self {
            head,
            levels,
            downs,
            ups,
            tail,
            refine,
            multiple: 1 << n,
            image_channels: cfg.image_channels,
        })
    }

    /// H and W of an input must be a multiple of this.
    pub fn size_multiple(&self) -> usize {
        self.multiple
    }
}

impl Module for Denoiser {
    /// `x`: NHWC in [0, 1]; returns the denoised NHWC tensor (not clipped).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = &to_nchw(x)?;
        let mut h = self.head.forward(x)?;
        let mut skips = Vec::with_capacity(self.levels.len());
        for (i, level) in self.levels.iter().enumerate() {
            for b in &level.enc {
                h = b.forward(&h)?;
            }
            if let Some(down) = self.downs.get(i) {
                skips.push(h.clone());
                h = down.forward(&h)?;
            }
        }
        for i in (0..self.ups.len()).rev() {
            h = (self.ups[i].forward(&h)? + &skips[i])?;
            for b in &self.levels[i].dec {
                h = b.forward(&h)?;
            }
        }
        let noise = self.tail.forward(&h)?;
        // With extra inputs (a mask), the residual applies to the image channels only.
        let image = if x.dim(1)? != self.image_channels {
            x.narrow(1, 0, self.image_channels)?
        } else {
            x.clone()
        };
        let estimate = (image - noise)?;
        to_nhwc(&match &self.refine {
            Some(r) => r.forward(x, &estimate)?,
            None => estimate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn any_multiple_of_eight_keeps_its_shape() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let net = Denoiser::new(vb, &DenoiserConfig::default())?;
        assert_eq!(net.size_multiple(), 8);
        for (h, w) in [(8, 8), (16, 24), (40, 8)] {
            let x = Tensor::rand(0f32, 1., (2, h, w, 1), &dev)?;
            assert_eq!(net.forward(&x)?.dims(), &[2, h, w, 1]);
        }
        Ok(())
    }
}
