//! Training losses: MSE or a numerically stable BCE on logits ([`loss_of`]), and the
//! σ-weighted MSE that keeps strong-noise batches from dominating the denoiser's training.

use candle_core::Tensor;

use crate::config::Loss;
use crate::model::Net;

/// Mean loss between `raw` outputs and targets: MSE on the activated output, or BCE on logits
/// in the stable form `relu(z) − z·t + log(1 + exp(−|z|))`.
pub fn loss_of(
    net: &Net,
    loss: Loss,
    raw: &Tensor,
    target: &Tensor,
) -> candle_core::Result<Tensor> {
    match loss {
        Loss::Mse => (net.activate(raw)? - target)?.sqr()?.mean_all(),
        Loss::Bce if net.sigmoid_output() => {
            let softplus = (raw.abs()?.neg()?.exp()? + 1.0)?.log()?;
            ((raw.relu()? - (raw * target)?)? + softplus)?.mean_all()
        }
        Loss::Bce => candle_core::bail!("loss = \"bce\" needs a sigmoid output"),
    }
}

/// Per-patch loss weights (25 / max(σ, 5))^power: absolute, not normalised per batch, so a
/// batch of strong noise really counts less than one of weak noise.
pub fn sigma_weights(sigmas: &[f32], power: f32) -> Vec<f32> {
    sigmas
        .iter()
        .map(|s| (25.0 / s.max(5.0)).powf(power))
        .collect()
}

/// Mean over patches of `w_i` × the patch's MSE; `out`, `target` are `[n, …]`, `w` is `[n]`.
pub fn weighted_mse(out: &Tensor, target: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let n = out.dim(0)?;
    let per = (out - target)?.sqr()?.reshape((n, ()))?.mean(1)?;
    (per * w)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use crate::model::conv_ae::ConvAeConfig;
    use crate::model::dense::{CodeActivation, DenseAeConfig, OutputActivation};
    use crate::model::init::seeded_builder;
    use crate::model::unet::UNetConfig;
    use crate::model::Arch;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use rand::{Rng, SeedableRng};

    /// `[2, 4, 4, 1]` values uniform in [0, 1), the same on every run.
    fn seeded_input(seed: u64) -> Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f64> = (0..32).map(|_| rng.random::<f64>()).collect();
        Ok(Tensor::from_vec(v, (2, 4, 4, 1), &Device::Cpu)?)
    }

    /// Small networks for 4×4 frames: the segmentation U-Net and the two autoencoders.
    fn small_archs() -> [Arch; 3] {
        [
            Arch::UnetSegment(UNetConfig {
                channels: vec![2, 3],
            }),
            Arch::ConvAe {
                size: [4, 4],
                net: ConvAeConfig {
                    channels: vec![2, 3],
                    code_channels: 2,
                },
            },
            Arch::DenseAe {
                size: [4, 4],
                net: DenseAeConfig {
                    layers: vec![16, 6, 3],
                    code: CodeActivation::Relu,
                    output: OutputActivation::Sigmoid,
                    bypass: false,
                    topk: 2,
                },
            },
        ]
    }

    /// BCE on logits is finite for huge logits and equals the textbook form for moderate ones
    /// (candle's `binary_cross_entropy_with_logit` gives NaN/inf there).
    #[test]
    fn bce_is_stable_and_correct() -> Result<()> {
        let vm = VarMap::new();
        let net = Net::new(
            seeded_builder(&vm, 1, DType::F32, &Device::Cpu),
            &small_archs()[0],
        )?;
        let z = Tensor::new(&[[-200f32, -3.0, 0.5, 150.0]], &Device::Cpu)?;
        let t = Tensor::new(&[[0f32, 1.0, 0.0, 1.0]], &Device::Cpu)?;
        let l = loss_of(&net, Loss::Bce, &z, &t)?.to_scalar::<f32>()?;
        assert!(l.is_finite());
        let naive = |z: f32, t: f32| {
            let p = 1.0 / (1.0 + (-z).exp());
            -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
        };
        // The two extreme entries contribute ~0; the moderate ones as the textbook says.
        let expect = (naive(-3.0, 1.0) + naive(0.5, 0.0)) / 4.0;
        assert!((l - expect).abs() < 1e-5, "{l} vs {expect}");
        Ok(())
    }

    /// Weak noise weighs more than strong noise (below the 5/255 floor all weigh the same),
    /// and the weighted loss is the weighted mean of per-patch MSEs.
    #[test]
    fn sigma_weighting() -> Result<()> {
        let w = sigma_weights(&[0.0, 5.0, 25.0, 50.0], 1.5);
        assert_eq!(w[0], w[1]);
        assert!((w[2] - 1.0).abs() < 1e-6);
        assert!(w[1] > w[2] && w[2] > w[3]);
        assert!((w[3] - 0.5f32.powf(1.5)).abs() < 1e-6);
        let out = Tensor::new(&[[1f32, 1.0], [0.0, 2.0]], &Device::Cpu)?;
        let y = Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?;
        let wt = Tensor::new(&[2f32, 0.5], &Device::Cpu)?;
        let l = weighted_mse(&out, &y, &wt)?.to_scalar::<f32>()?;
        // Patch MSEs 1.0 and 2.0 → (2·1 + 0.5·2) / 2.
        assert!((l - 1.5).abs() < 1e-6, "{l}");
        Ok(())
    }

    /// Backprop through each architecture and its loss agrees with finite differences: guards
    /// strided (transposed) convolutions, skip concatenation, top-k and BCE. (In f64 the
    /// convolutions run on candle's own ops, the kernels' fallback; `layers.rs` and
    /// `kernels/conv` check the f32 kernels against those.)
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (arch, loss) in small_archs()
            .into_iter()
            .zip([Loss::Bce, Loss::Bce, Loss::Mse])
        {
            let vm = VarMap::new();
            let net = Net::new(seeded_builder(&vm, 2, DType::F64, &Device::Cpu), &arch)?;
            let x = Var::from_tensor(&seeded_input(3)?)?;
            let target = seeded_input(4)?;
            let f = |x: &Tensor| -> Result<f64> {
                Ok(loss_of(&net, loss, &net.forward_raw(x)?.raw, &target)?.to_scalar::<f64>()?)
            };
            let g =
                loss_of(&net, loss, &net.forward_raw(x.as_tensor())?.raw, &target)?.backward()?;
            let gx = g
                .get(x.as_tensor())
                .expect("input gradient")
                .flatten_all()?
                .to_vec1::<f64>()?;
            let x0 = x.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            let eps = 1e-6;
            for i in [0, 5, 13, 22, 31] {
                let mut xp = x0.clone();
                xp[i] += eps;
                let mut xm = x0.clone();
                xm[i] -= eps;
                let fp = f(&Tensor::from_vec(xp, (2, 4, 4, 1), &Device::Cpu)?)?;
                let fm = f(&Tensor::from_vec(xm, (2, 4, 4, 1), &Device::Cpu)?)?;
                let fd = (fp - fm) / (2.0 * eps);
                assert!(
                    (fd - gx[i]).abs() < 1e-6 + 1e-4 * fd.abs(),
                    "{}: d/dx[{i}] autograd {} vs finite difference {fd}",
                    arch.name(),
                    gx[i]
                );
            }
        }
        Ok(())
    }
}
