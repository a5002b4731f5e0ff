//! The fine-tuner's two training objectives and its step: `clean` (the frames are clean: learn
//! x + n → x with σ ~ U(0, sigma_max), as offline training does) and `noisy` (no clean frame
//! exists: Neighbor2Neighbor, Huang et al. CVPR 2021, sub-images of one noisy patch as input
//! and target, with its regulariser), plus the moving average of the weights that candidates
//! are taken from.
//!
//! Both objectives draw patches with the same sampler offline training uses; `batch` also
//! gives the held-out patches the `clean` gate compares on (see [`super::gate`]).

use std::collections::HashMap;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};

use super::Finetuner;
use crate::config::FinetuneTarget;
use crate::data::patches::{PatchSampler, TrainImage};
use crate::error::{Error, Result};
use crate::model::weights;
use crate::stage::corrupt;

impl Finetuner {
    /// The patch side that every buffered frame can give (≤ `patch`).
    pub(super) fn patch_for(&self, imgs: &[TrainImage], want: usize) -> usize {
        let m = self.net.size_multiple().max(1);
        let smallest = imgs.iter().map(|i| i.w.min(i.h)).max().unwrap_or(want);
        let p = want.min(smallest);
        (p / m * m).max(m)
    }

    /// (input, target) batch for the objective, NHWC.
    pub(super) fn batch<R: Rng>(
        &self,
        imgs: &[TrainImage],
        n: usize,
        val: bool,
        rng: &mut R,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let fc = &self.fc;
        match fc.target {
            FinetuneTarget::Clean => {
                let p = self.patch_for(imgs, fc.patch);
                let s = PatchSampler::new(imgs, p)?;
                let (noisy, clean) = if val {
                    let mut noisy = Vec::new();
                    let mut clean = Vec::new();
                    for _ in 0..n {
                        let c = s.clean(rng);
                        let mut x = c.clone();
                        corrupt::gaussian(&mut x, fc.val_sigma, true, rng);
                        noisy.extend(x);
                        clean.extend(c);
                    }
                    (noisy, clean)
                } else {
                    s.batch(rng, n, fc.sigma_max)
                };
                let x = Tensor::from_vec(noisy, (n, p, p, 1), &self.dev)?;
                let y = Tensor::from_vec(clean, (n, p, p, 1), &self.dev)?;
                Ok((x, y, None))
            }
            FinetuneTarget::Noisy => {
                // Sub-images of half size must still be a multiple of the model's.
                let m = self.net.size_multiple().max(1);
                let full = self.patch_for(imgs, fc.patch.max(2 * m));
                let full = (full / (2 * m) * (2 * m)).max(2 * m);
                let s = PatchSampler::new(imgs, full)?;
                let h = full / 2;
                let (mut g1, mut g2, mut whole, mut picks) = (vec![], vec![], vec![], vec![]);
                for _ in 0..n {
                    let y = s.clean(rng);
                    for cy in 0..h {
                        for cx in 0..h {
                            let a = rng.random_range(0..4usize);
                            let b = (a + rng.random_range(1..4usize)) % 4;
                            let at = |k: usize| (2 * cy + k / 2) * full + 2 * cx + k % 2;
                            g1.push(y[at(a)]);
                            g2.push(y[at(b)]);
                            picks.push((a, b));
                        }
                    }
                    whole.extend(y);
                }
                let g1 = Tensor::from_vec(g1, (n, h, h, 1), &self.dev)?;
                let g2 = Tensor::from_vec(g2, (n, h, h, 1), &self.dev)?;
                if val {
                    return Ok((g1, g2, None));
                }
                // The regulariser's target: sub-images of the output on the whole patch, fixed.
                let fy = self
                    .net
                    .forward_raw(&Tensor::from_vec(whole, (n, full, full, 1), &self.dev)?)?
                    .raw
                    .detach()
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let mut diff = Vec::with_capacity(n * h * h);
                for (i, (a, b)) in picks.iter().enumerate() {
                    let (f, rest) = (i / (h * h), i % (h * h));
                    let (cy, cx) = (rest / h, rest % h);
                    let at = |k: usize| f * full * full + (2 * cy + k / 2) * full + 2 * cx + k % 2;
                    diff.push(fy[at(*a)] - fy[at(*b)]);
                }
                let diff = Tensor::from_vec(diff, (n, h, h, 1), &self.dev)?;
                Ok((g1, g2, Some(diff)))
            }
        }
    }

    /// One AdamW step on a fresh batch from the replay buffer; returns the loss.
    pub fn step(&mut self) -> Result<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.rng.random());
        let (x, y, reg) = self.batch(&self.buffer, self.fc.batch, false, &mut rng)?;
        let out = self.net.forward_raw(&x)?.raw;
        let mut loss = (&out - &y)?.sqr()?.mean_all()?;
        if let Some(d) = reg {
            // Neighbor2Neighbor's regulariser, γ = 1.
            let r = ((&out - &y)? - d)?.sqr()?.mean_all()?;
            loss = (loss + r)?;
        }
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            // Stepping on it would spread the NaN through the moments and the average, and
            // every later step would fail as well: start again from what serves instead.
            self.restart_from_serving()?;
            return Err(Error::Other(format!(
                "fine-tune: loss {l} at step {}; training starts again from the serving weights",
                self.opt.step
            )));
        }
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        self.update_ema()?;
        self.train_loss = if self.train_loss.is_nan() {
            l
        } else {
            0.95 * self.train_loss + 0.05 * l
        };
        self.tel.count(
            "aestream_finetune_steps_total",
            "Fine-tuning steps taken.",
            1.0,
        );
        self.tel.gauge(
            "aestream_finetune_train_loss",
            "Fine-tuning training loss (moving average).",
            self.train_loss,
        );
        Ok(l)
    }

    /// Sets the shadow weights back to the serving version's, with fresh moments and no moving
    /// average (the step count goes on).
    fn restart_from_serving(&mut self) -> Result<()> {
        self.shadow_from_serving()?;
        let step = self.opt.step;
        self.opt = super::AdamW::new(weights::vars(&self.vm), self.opt.params)?;
        self.opt.step = step;
        Ok(())
    }

    /// Sets the shadow weights to `t` (`what` names them in errors) and drops the moving
    /// average, which was of other weights.
    pub(super) fn shadow_from(&mut self, t: &HashMap<String, Tensor>, what: &str) -> Result<()> {
        weights::set_vars(&self.vm, t, what)?;
        self.ema = None;
        Ok(())
    }

    /// [`Self::shadow_from`] the serving version's weights.
    pub(super) fn shadow_from_serving(&mut self) -> Result<()> {
        if let Some(a) = self.history.last() {
            let t = a.weights.clone();
            self.shadow_from(&t, "fine-tune: the serving weights")?;
        }
        Ok(())
    }

    /// ema ← β·ema + (1−β)·w after a step (started from the weights the shadow began with).
    fn update_ema(&mut self) -> Result<()> {
        let beta = self.fc.ema;
        if !(beta > 0.0 && beta < 1.0) {
            return Ok(());
        }
        let now = weights::snapshot(&self.vm)?;
        let next = match self.ema.take() {
            None => now,
            Some(old) => {
                let mut next = HashMap::with_capacity(now.len());
                for (k, w) in now {
                    let e = match old.get(&k) {
                        Some(e) => ((e * beta)? + (w * (1.0 - beta))?)?.detach(),
                        None => w,
                    };
                    next.insert(k, e);
                }
                next
            }
        };
        self.ema = Some(next);
        Ok(())
    }
}
