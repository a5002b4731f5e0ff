//! Layer-wise pretraining of a dense autoencoder (`train.pretrain_steps`), before the whole
//! stack is fine-tuned: the recipe of Hinton & Salakhutdinov's deep autoencoder (2006), with
//! stacked autoencoders (Bengio et al., 2007), denoising ones with `pretrain_noise` (Vincent et
//! al., 2010), in place of their RBMs.
//!
//! Encoder layer `i` and its mirror, decoder layer `depth − 1 − i`, are trained first as a
//! shallow autoencoder of their own: the frames go through the layers already pretrained below
//! (fixed), a fraction `pretrain_noise` of that representation is set to zero (masking noise;
//! the rest is scaled by 1 / (1 − noise) so its mean is that of clean input), and the pair must
//! reconstruct the clean representation (MSE), `pretrain_steps` AdamW steps per pair with the
//! fine-tuning's warm-up and cosine schedule. Each pair is built exactly as it runs in the
//! deep network (ReLU hidden units, the code layer's own activation, the decoder's output
//! activation at the bottom), so the pretrained weights drop into the stack unchanged, the
//! mirrored decoder included.
//!
//! Why: each shallow problem is easy and is solved well on its own, so the deep network starts
//! near a reconstruction of its input instead of from noise, and fine-tuning only adjusts the
//! stack as a whole. With sigmoid units and plain gradient descent (the paper's setting) that
//! was what made deep autoencoders trainable at all. With ReLU units, a scaled initialisation
//! and AdamW it matters less: on `faces-deep` it makes the training persons fit faster, while
//! new persons are reconstructed as well as from a random start, and masking noise made both
//! worse (docs/experiments.md). `pretrain_target = "input"` is the other classic variant: each
//! pair reconstructs the frames themselves, through the decoder layers pretrained before it.

use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::adamw::{AdamW, AdamWParams};
use super::fit::lr_at;
use crate::config::PretrainTarget;
use crate::error::Result;
use crate::model::dense::DenseAe;
use crate::model::weights;

/// How each layer pair is pretrained.
#[derive(Debug, Clone, Copy)]
pub struct Pretrain {
    /// AdamW steps per layer pair.
    pub steps: usize,
    /// Fraction of a layer's inputs set to zero in each training batch.
    pub noise: f32,
    pub target: PretrainTarget,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

/// What pretraining did to one layer pair (written into the training metadata).
#[derive(Debug, Clone, Serialize)]
pub struct LayerPretrain {
    /// Encoder layer `layer`, pretrained with decoder layer `depth − 1 − layer`.
    pub layer: usize,
    /// `[input, output]` widths of the encoder layer.
    pub widths: [usize; 2],
    /// Reconstruction MSE of this layer's clean input, on a fixed probe batch, before and
    /// after its pretraining.
    pub loss_before: f64,
    pub loss_after: f64,
    pub seconds: f64,
}

/// A batch of frames `[b, h, w, 1]` (or already flat `[b, d]`), drawn with the given RNG.
pub type Draw<'a> = dyn Fn(&mut StdRng) -> candle_core::Result<Tensor> + 'a;

/// Pretrains every layer pair of `net`, bottom up; its variables live in `vm`.
pub fn pretrain(
    net: &DenseAe,
    vm: &VarMap,
    draw: &Draw,
    p: &Pretrain,
) -> Result<Vec<LayerPretrain>> {
    let flat = |x: Tensor| -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        x.reshape((b, ()))
    };
    // The probe that measures each layer: one batch, the same for every layer and run.
    let probe = flat(draw(&mut StdRng::seed_from_u64(
        p.seed ^ 0x9e37_79b9_7f4a_7c15,
    ))?)?;
    let depth = net.depth();
    let widths = &net.config().layers;
    let mut out = Vec::with_capacity(depth);
    for i in 0..depth {
        let started = Instant::now();
        let below = |x: &Tensor| -> candle_core::Result<Tensor> {
            let mut h = x.clone();
            for k in 0..i {
                h = net.encode_layer(k, &h)?;
            }
            Ok(h.detach())
        };
        // The loss of pair `i` on `input` (the layers below's output, perhaps damaged) when
        // the clean frames are `x` and their representation at this layer is `clean`.
        let loss_of = |input: &Tensor, clean: &Tensor, x: &Tensor| match p.target {
            PretrainTarget::Layer => pair_loss(net, i, input, clean, false),
            PretrainTarget::Input => pair_loss(net, i, input, x, true),
        };
        let probe_in = below(&probe)?;
        let loss_before = loss_of(&probe_in, &probe_in, &probe)?;
        let mut opt = AdamW::new(
            pair_vars(vm, i, depth),
            AdamWParams {
                lr: p.lr,
                weight_decay: p.weight_decay,
                ..Default::default()
            },
        )?;
        for step in 0..p.steps {
            opt.set_lr(lr_at(p.lr, step, p.steps));
            let mut rng = StdRng::seed_from_u64(
                p.seed.wrapping_mul(1_000_003) ^ ((i as u64 + 1) << 40) ^ step as u64,
            );
            let x = flat(draw(&mut rng)?)?;
            let h = below(&x)?;
            let noisy = mask(&h, p.noise, &mut rng)?;
            let loss = loss_of(&noisy, &h, &x)?;
            opt.step(&loss.backward()?)?;
            if (step + 1) % 100 == 0 {
                tracing::debug!(
                    "pretraining layer {i}: step {}/{} loss {:.4e}",
                    step + 1,
                    p.steps,
                    loss.to_scalar::<f32>()?
                );
            }
        }
        let loss_after = loss_of(&probe_in, &probe_in, &probe)?;
        let r = LayerPretrain {
            layer: i,
            widths: [widths[i], widths[i + 1]],
            loss_before: f64::from(loss_before.to_scalar::<f32>()?),
            loss_after: f64::from(loss_after.to_scalar::<f32>()?),
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            "pretrained layer {i} ({}→{}→{}): {} steps, noise {}, probe MSE {:.4e} → {:.4e}, {:.1}s",
            r.widths[0],
            r.widths[1],
            r.widths[0],
            p.steps,
            p.noise,
            r.loss_before,
            r.loss_after,
            r.seconds
        );
        out.push(r);
    }
    Ok(out)
}

/// MSE against `target` of encoder layer `i` then its mirrored decoder layer on `input`,
/// and with `to_frames` then the decoder layers above it (down to the frames); the code
/// layer gets its activation, the bottom decoder layer the output activation. Only pair `i`
/// is trained: the layers above pass gradients on, and the optimizer does not hold them.
fn pair_loss(
    net: &DenseAe,
    i: usize,
    input: &Tensor,
    target: &Tensor,
    to_frames: bool,
) -> candle_core::Result<Tensor> {
    let depth = net.depth();
    let mut code = net.encode_layer(i, input)?;
    if i + 1 == depth {
        code = net.code_activation(&code)?;
    }
    let first = depth - 1 - i;
    let last = if to_frames { depth - 1 } else { first };
    let mut rec = code;
    for j in first..=last {
        rec = net.decode_layer(j, &rec)?;
    }
    if last == depth - 1 {
        rec = net.activate(&rec)?;
    }
    (rec - target)?.sqr()?.mean_all()
}

/// The weights and biases of encoder layer `i` and decoder layer `depth − 1 − i`.
fn pair_vars(vm: &VarMap, i: usize, depth: usize) -> Vec<(String, Var)> {
    let enc = format!("enc{i}.");
    let dec = format!("dec{}.", depth - 1 - i);
    weights::vars(vm)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&enc) || k.starts_with(&dec))
        .collect()
}

/// `h` with a fraction `noise` of its values set to zero and the others scaled by
/// 1 / (1 − noise), the mask drawn from `rng`.
fn mask(h: &Tensor, noise: f32, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    if noise <= 0.0 {
        return Ok(h.clone());
    }
    let keep = 1.0 / (1.0 - noise);
    let m: Vec<f32> = (0..h.elem_count())
        .map(|_| {
            if rng.random::<f32>() < noise {
                0.0
            } else {
                keep
            }
        })
        .collect();
    h * Tensor::from_vec(m, h.shape(), h.device())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dense::{CodeActivation, DenseAeConfig, OutputActivation};
    use crate::model::init::seeded_builder;
    use candle_core::{DType, Device};

    /// Frames of 16 values in [0, 1] mixed from three fixed patterns (a structure an
    /// autoencoder can learn), with a little noise.
    fn draw(rng: &mut StdRng) -> candle_core::Result<Tensor> {
        let pattern = |k: usize, i: usize| ((i * (k + 2) + k) % 7) as f32 / 6.0;
        let mut v = Vec::with_capacity(32 * 16);
        for _ in 0..32 {
            let w: [f32; 3] = [rng.random(), rng.random(), rng.random()];
            let s = w.iter().sum::<f32>().max(1e-3);
            for i in 0..16 {
                let x = (0..3).map(|k| w[k] * pattern(k, i)).sum::<f32>() / s;
                v.push((x + 0.02 * (rng.random::<f32>() - 0.5)).clamp(0.0, 1.0));
            }
        }
        Tensor::from_vec(v, (32, 16), &Device::Cpu)
    }

    /// Every variable's name and values, sorted by name.
    type Weights = Vec<(String, Vec<f32>)>;

    /// A 16-12-8-3 autoencoder pretrained with `seed`: its report and its weights.
    fn run(seed: u64) -> Result<(Vec<LayerPretrain>, Weights)> {
        let vm = VarMap::new();
        let vb = seeded_builder(&vm, seed, DType::F32, &Device::Cpu);
        let net = DenseAe::new(
            vb,
            &DenseAeConfig {
                layers: vec![16, 12, 8, 3],
                code: CodeActivation::Linear,
                output: OutputActivation::Linear,
                bypass: false,
                topk: 0,
            },
        )?;
        let p = Pretrain {
            steps: 150,
            noise: 0.2,
            target: PretrainTarget::Layer,
            lr: 1e-2,
            weight_decay: 1e-4,
            seed,
        };
        let report = pretrain(&net, &vm, &draw, &p)?;
        let mut w: Weights = weights::tensors(&vm)
            .into_iter()
            .map(|(k, t)| Ok((k, t.flatten_all()?.to_vec1::<f32>()?)))
            .collect::<Result<_>>()?;
        w.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((report, w))
    }

    /// Each layer pair, trained on its own, reconstructs its clean input much better than
    /// at its random start; with the same seed the weights and losses are the same.
    #[test]
    fn each_layer_learns_and_the_same_seed_gives_the_same_weights() -> Result<()> {
        let (report, weights) = run(5)?;
        assert_eq!(report.len(), 3);
        let widths: Vec<[usize; 2]> = report.iter().map(|l| l.widths).collect();
        assert_eq!(widths, vec![[16, 12], [12, 8], [8, 3]]);
        for l in &report {
            assert!(
                l.loss_after < 0.5 * l.loss_before,
                "layer {}: {} → {}",
                l.layer,
                l.loss_before,
                l.loss_after
            );
        }
        let (again, same) = run(5)?;
        assert_eq!(weights, same);
        let losses = |r: &[LayerPretrain]| -> Vec<(f64, f64)> {
            r.iter().map(|l| (l.loss_before, l.loss_after)).collect()
        };
        assert_eq!(losses(&report), losses(&again));
        let (_, other) = run(6)?;
        assert_ne!(weights, other);
        Ok(())
    }

    /// Masking noise zeroes about the asked fraction and keeps the mean of the rest.
    #[test]
    fn masking_noise_drops_the_fraction_asked() -> candle_core::Result<()> {
        let h = Tensor::ones((100, 100), DType::F32, &Device::Cpu)?;
        let m = mask(&h, 0.25, &mut StdRng::seed_from_u64(1))?;
        let v = m.flatten_all()?.to_vec1::<f32>()?;
        let zeros = v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64;
        assert!((zeros - 0.25).abs() < 0.02, "{zeros}");
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 1.0).abs() < 0.03, "{mean}");
        assert_eq!(
            mask(&h, 0.0, &mut StdRng::seed_from_u64(1))?.to_vec2::<f32>()?,
            h.to_vec2::<f32>()?
        );
        Ok(())
    }
}
