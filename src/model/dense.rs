//! Deep dense autoencoders: the `faces` network (625-…-30 with a mirrored decoder) and the
//! sparse `digits-sparse` one (a ReLU code with an L1 penalty and at most `topk` active units).
//!
//! The encoder is a stack of ReLU layers ending in the code layer; the decoder mirrors it and
//! ends in a sigmoid (for [0, 1] images trained with BCE) or a linear output (MSE). With
//! `bypass`, a linear path runs beside each half (input → code, code → output): the deep layers
//! then learn what a linear (PCA-like) code misses, which is what makes a deep autoencoder beat
//! PCA on a few hundred faces instead of over-fitting them.
//!
//! Each layer runs the fused linear kernel ([`crate::kernels::linear`]: matmul, bias and ReLU
//! in one op), as the dense reference net of `bench` does; the weights are candle-nn's `Linear`.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::kernels::conv::Act;
use crate::kernels::linear::linear_act;

/// How the code layer is activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CodeActivation {
    /// A linear code (as in Hinton & Salakhutdinov's deep autoencoder).
    #[default]
    Linear,
    /// ReLU: non-negative codes, exact zeros (sparse autoencoders).
    Relu,
}

/// How the reconstruction is produced from the decoder's last layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OutputActivation {
    #[default]
    Sigmoid,
    Linear,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DenseAeConfig {
    /// Layer widths from the input to the code, e.g. `[625, 2000, 1000, 500, 30]`.
    pub layers: Vec<usize>,
    pub code: CodeActivation,
    pub output: OutputActivation,
    /// Linear paths beside the encoder and the decoder.
    pub bypass: bool,
    /// Keep only the `topk` largest code units per frame (0 = all).
    pub topk: usize,
}

/// The dense autoencoder.
#[derive(Debug, Clone)]
pub struct DenseAe {
    enc: Vec<Linear>,
    dec: Vec<Linear>,
    enc_bypass: Option<Linear>,
    dec_bypass: Option<Linear>,
    cfg: DenseAeConfig,
}

impl DenseAe {
    pub fn new(vb: VarBuilder, cfg: &DenseAeConfig) -> Result<Self> {
        let l = &cfg.layers;
        if l.len() < 2 || l.contains(&0) {
            candle_core::bail!("dense-ae: `layers` needs at least an input and a code width");
        }
        let n = l.len() - 1;
        let enc = (0..n)
            .map(|i| linear(l[i], l[i + 1], vb.pp(format!("enc{i}"))))
            .collect::<Result<Vec<_>>>()?;
        // Decoder layer i maps width l[n-i] to l[n-i-1].
        let dec = (0..n)
            .map(|i| linear(l[n - i], l[n - i - 1], vb.pp(format!("dec{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let (enc_bypass, dec_bypass) = if cfg.bypass && n > 1 {
            (
                Some(linear(l[0], l[n], vb.pp("enc_bypass"))?),
                Some(linear(l[n], l[0], vb.pp("dec_bypass"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            enc,
            dec,
            enc_bypass,
            dec_bypass,
            cfg: cfg.clone(),
        })
    }

    pub fn input_len(&self) -> usize {
        self.cfg.layers[0]
    }

    pub fn code_len(&self) -> usize {
        self.cfg.layers[self.cfg.layers.len() - 1]
    }

    pub fn config(&self) -> &DenseAeConfig {
        &self.cfg
    }

    /// Layers of weights in each half (`layers.len() − 1`).
    pub fn depth(&self) -> usize {
        self.enc.len()
    }

    /// `x`: `[b, input_len]` → code `[b, code_len]`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for i in 0..self.depth() {
            h = self.encode_layer(i, &h)?;
        }
        if let Some(b) = &self.enc_bypass {
            h = (h + apply(b, x, Act::Identity)?)?;
        }
        self.code_activation(&h)
    }

    /// Encoder layer `i` alone: ReLU, except the code layer's pre-activation (the last).
    pub fn encode_layer(&self, i: usize, h: &Tensor) -> Result<Tensor> {
        self.half_layer(&self.enc, i, h)
    }

    /// What the code layer does to its pre-activation: ReLU and top-k where asked.
    pub fn code_activation(&self, h: &Tensor) -> Result<Tensor> {
        let mut h = h.clone();
        if self.cfg.code == CodeActivation::Relu {
            h = h.relu()?;
        }
        if self.cfg.topk > 0 && self.cfg.topk < self.code_len() {
            h = keep_topk(&h, self.cfg.topk)?;
        }
        Ok(h)
    }

    /// Code → the decoder's last pre-activation (logits for a sigmoid output).
    pub fn decode_raw(&self, code: &Tensor) -> Result<Tensor> {
        let mut h = code.clone();
        for j in 0..self.depth() {
            h = self.decode_layer(j, &h)?;
        }
        if let Some(b) = &self.dec_bypass {
            h = (h + apply(b, code, Act::Identity)?)?;
        }
        Ok(h)
    }

    /// Decoder layer `j` alone (it mirrors encoder layer `depth − 1 − j`): ReLU, except the
    /// output layer's pre-activation (the last).
    pub fn decode_layer(&self, j: usize, h: &Tensor) -> Result<Tensor> {
        self.half_layer(&self.dec, j, h)
    }

    /// Layer `i` of one half: ReLU, except the half's last layer, which gives its
    /// pre-activation (the code layer's, or the output's).
    fn half_layer(&self, half: &[Linear], i: usize, h: &Tensor) -> Result<Tensor> {
        let layer = half.get(i).ok_or_else(|| {
            candle_core::Error::Msg(format!("dense-ae: no layer {i} of {}", half.len()))
        })?;
        let act = if i + 1 < half.len() {
            Act::Relu
        } else {
            Act::Identity
        };
        apply(layer, h, act)
    }

    pub fn activate(&self, raw: &Tensor) -> Result<Tensor> {
        match self.cfg.output {
            OutputActivation::Sigmoid => candle_nn::ops::sigmoid(raw),
            OutputActivation::Linear => Ok(raw.clone()),
        }
    }
}

/// `act(x · Wᵀ + b)` for a layer built by `candle_nn::linear` (which always has a bias).
fn apply(l: &Linear, x: &Tensor, act: Act) -> Result<Tensor> {
    match l.bias() {
        Some(b) => linear_act(x, l.weight(), b, act),
        None => candle_core::bail!("dense-ae: a layer without bias"),
    }
}

/// Zeroes all but the `k` largest entries of each row (ties at the threshold are kept).
/// The mask is a constant, so gradients flow only through the kept units.
fn keep_topk(h: &Tensor, k: usize) -> Result<Tensor> {
    let sorted = h.detach().sort_last_dim(false)?.0;
    let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
    let mask = h.detach().broadcast_ge(&kth)?.to_dtype(h.dtype())?;
    h * mask
}

impl Module for DenseAe {
    /// `x`: `[b, input_len]` → reconstruction `[b, input_len]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.activate(&self.decode_raw(&self.encode(x)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn net(topk: usize, bypass: bool) -> Result<DenseAe> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        DenseAe::new(
            vb,
            &DenseAeConfig {
                layers: vec![16, 12, 8],
                code: CodeActivation::Relu,
                output: OutputActivation::Sigmoid,
                bypass,
                topk,
            },
        )
    }

    #[test]
    fn shapes_and_topk_sparsity() -> Result<()> {
        let n = net(3, true)?;
        let x = Tensor::rand(0f32, 1., (5, 16), &Device::Cpu)?;
        let code = n.encode(&x)?;
        assert_eq!(code.dims(), &[5, 8]);
        for row in code.to_vec2::<f32>()? {
            assert!(row.iter().filter(|v| **v != 0.0).count() <= 3, "{row:?}");
            assert!(row.iter().all(|v| *v >= 0.0));
        }
        let y = n.forward(&x)?;
        assert_eq!(y.dims(), &[5, 16]);
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        assert!(v.iter().all(|v| (0.0..=1.0).contains(v)));
        Ok(())
    }

    /// Gradients reach the encoder through the kept units only.
    #[test]
    fn topk_gradient_flows_through_kept_units() -> Result<()> {
        let h = candle_core::Var::new(&[[0.5f32, 2.0, -1.0, 1.0]], &Device::Cpu)?;
        let y = keep_topk(h.as_tensor(), 2)?;
        assert_eq!(y.to_vec2::<f32>()?, vec![vec![0.0, 2.0, 0.0, 1.0]]);
        let g = y.sum_all()?.backward()?;
        let gh = g.get(h.as_tensor()).expect("grad").to_vec2::<f32>()?;
        assert_eq!(gh, vec![vec![0.0, 1.0, 0.0, 1.0]]);
        Ok(())
    }
}
