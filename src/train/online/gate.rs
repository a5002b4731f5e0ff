//! The gate: is the candidate better than the model that serves? Both are scored on the same
//! held-out patches (seeded, so successive rounds compare alike): by MSE against the clean
//! patch for `target = "clean"`, and for `target = "noisy"`, where nothing clean exists, by
//! Monte-Carlo SURE ([`crate::stage::sure::mc_sure`]), an unbiased estimate of that MSE from
//! the noisy patches and the noise σ.
//!
//! The Neighbor2Neighbor loss is no gate: it rewards blur and once let a worse model through.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use rand::SeedableRng;

use super::Finetuner;
use crate::config::FinetuneTarget;
use crate::data::patches::PatchSampler;
use crate::error::Result;
use crate::model::{weights, Model};
use crate::stage::sure::{mc_sure, median_noise_sigma, rademacher};

impl Finetuner {
    /// Runs `f` with the candidate weights (the moving average, if kept) in the shadow, then
    /// puts the training weights back.
    pub(super) fn with_candidate<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let Some(ema) = self.ema.clone() else {
            return f(self);
        };
        let training = weights::snapshot(&self.vm)?;
        weights::set_vars(&self.vm, &ema, "fine-tune: the moving average")?;
        let r = f(self);
        weights::set_vars(&self.vm, &training, "fine-tune: the training weights")?;
        r
    }

    /// Validation losses (candidate, serving) on the same held-out patches.
    pub fn validate(&self) -> Result<(f64, f64)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a1);
        if self.fc.target == FinetuneTarget::Noisy {
            return self.validate_sure(&mut rng);
        }
        let (x, y, _) = self.batch(&self.holdout, self.fc.val_patches, true, &mut rng)?;
        let loss = |out: Tensor| -> Result<f64> {
            Ok((out - &y)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
        };
        let candidate = loss(self.net.forward_raw(&x)?.raw)?;
        let serving = loss(self.serving_model().forward(&x)?)?;
        Ok((candidate, serving))
    }

    /// The model candidates are compared with: the last accepted version.
    fn serving_model(&self) -> Arc<dyn Model> {
        match self.history.last() {
            Some(a) => a.gen.model.clone(),
            None => self.slot.load().model.clone(),
        }
    }

    /// `target = "noisy"`: Monte-Carlo SURE of (candidate, serving) on the same noisy
    /// held-out patches and the same probe.
    fn validate_sure(&self, rng: &mut rand::rngs::StdRng) -> Result<(f64, f64)> {
        let p = self.patch_for(&self.holdout, self.fc.patch);
        let s = PatchSampler::new(&self.holdout, p)?;
        let n = self.fc.val_patches;
        let y: Vec<f32> = (0..n).flat_map(|_| s.clean(rng)).collect();
        let probe = rademacher(y.len(), rng);
        let sigma = if self.fc.stream_sigma > 0.0 {
            self.fc.stream_sigma as f64 / 255.0
        } else {
            let est = self.holdout_sigma.get().unwrap_or_else(|| {
                median_noise_sigma(self.holdout.iter().map(|i| (&i.planes[0][..], i.w, i.h)))
            });
            self.holdout_sigma.set(Some(est));
            est
        };
        self.tel.gauge(
            "aestream_finetune_noise_sigma",
            "target = noisy: the noise σ (0-255 scale) the SURE gate assumes.",
            sigma * 255.0,
        );
        let y = Tensor::from_vec(y, (n, p, p, 1), &self.dev)?;
        let probe = Tensor::from_vec(probe, (n, p, p, 1), &self.dev)?;
        let serving_model = self.serving_model();
        // Only pixels whose clean value (as the serving model sees it) is 2σ away from black
        // and white: there the noise was almost never clipped.
        let est = serving_model.forward(&y)?;
        let lo = 2.0 * sigma;
        let mask = est.ge(lo)?.mul(&est.le(1.0 - lo)?)?.to_dtype(DType::F32)?;
        let forward = |x: &Tensor| Ok(self.net.forward_raw(x)?.raw);
        let candidate = mc_sure(&y, &forward(&y)?, &probe, Some(&mask), sigma, forward)?;
        let serving = mc_sure(&y, &est, &probe, Some(&mask), sigma, |x| {
            serving_model.forward(x)
        })?;
        Ok((candidate, serving))
    }
}
