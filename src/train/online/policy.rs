//! When a candidate is served: after each round of steps the candidate is swapped in if the
//! gate finds it better than the serving model by `min_improvement` (checkpointed first, so
//! what serves is always on disk); otherwise training goes on from it, and only a candidate
//! worse than the serving model three rounds in a row is thrown away (the shadow restarts from
//! the serving weights). `rollback` returns to the previous accepted version; a reload
//! (SIGHUP) is followed.
//!
//! Every accepted version keeps its number as a number, so a rollback retires the right
//! checkpoint without reading the version string.
//!
//! A reload can land at any moment, also between a round's validation and its swap. The
//! trainer therefore swaps with compare-and-swap against the generation it validated against:
//! if a reload came in meanwhile, the reload keeps serving and the candidate, trained from the
//! weights the reload replaced, is set aside (its checkpoint renamed `*.superseded`). The
//! operator's explicit act wins over the trainer's automatic one.

use std::sync::Arc;

use super::store::{version_of, CheckpointMeta, Retired};
use super::{Accepted, Finetuner};
use crate::error::Result;
use crate::model::weights;
use crate::serving::Generation;

/// What a round ended with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Round {
    Swapped {
        candidate: f64,
        serving: f64,
    },
    Rejected {
        candidate: f64,
        serving: f64,
    },
    /// A reload replaced the serving model during the round; the candidate was not served.
    Superseded,
}

impl Finetuner {
    /// Validates the shadow and swaps it in if it is better by the margin.
    pub fn round(&mut self) -> Result<Round> {
        self.follow_reloads()?;
        let validated_against = self.slot.load_full();
        self.round_against(validated_against)
    }

    /// The round, given the generation that served when it began (the one the candidate is
    /// validated against and may replace).
    pub(super) fn round_against(&mut self, old: Arc<Generation>) -> Result<Round> {
        let ((candidate, serving), cand_weights) =
            self.with_candidate(|t| Ok((t.validate()?, weights::snapshot(&t.vm)?)))?;
        self.tel.gauge(
            "aestream_finetune_val_loss",
            "Validation loss of the latest candidate.",
            candidate,
        );
        self.tel.gauge(
            "aestream_finetune_serving_val_loss",
            "Validation loss of the serving model on the same patches.",
            serving,
        );
        // NaN compares false: a NaN candidate is rejected too.
        let better = candidate < serving * (1.0 - self.fc.min_improvement);
        if !better {
            self.tel.count(
                "aestream_finetune_rejected_total",
                "Candidates not swapped in (not better by the margin).",
                1.0,
            );
            // Not better enough yet: training goes on from the candidate. Only a candidate
            // that is worse than what serves, three rounds in a row, is thrown away.
            if candidate > serving * (1.0 + self.fc.min_improvement) || !candidate.is_finite() {
                self.rejected_in_a_row += 1;
            } else {
                self.rejected_in_a_row = 0;
            }
            tracing::info!(
                "fine-tune: candidate rejected (validation {candidate:.4e} vs serving {serving:.4e})"
            );
            if self.rejected_in_a_row >= 3 {
                // Drifting: start again from what serves.
                self.shadow_from_serving()?;
                self.rejected_in_a_row = 0;
            }
            return Ok(Round::Rejected { candidate, serving });
        }
        self.rejected_in_a_row = 0;
        let tensors = cand_weights;
        let n = self.next_number;
        self.next_number += 1;
        let version = version_of(&self.cfg.name, n, &tensors);
        let base_weights = self.history.last().and_then(|a| a.base_weights.clone());
        let model = weights::serving(
            &old.cfg.model.arch,
            &tensors,
            &self.dev,
            old.cfg.infer.dtype,
        )?;
        let tensors = Arc::new(tensors);
        let gen = Arc::new(
            Generation::new(old.cfg.clone(), model, version.clone(), old.number + 1)
                .with_tensors(tensors.clone()),
        );
        if let Some(c) = &self.ckpt {
            let meta = CheckpointMeta {
                pipeline: self.cfg.name.clone(),
                version: version.to_string(),
                number: n,
                parent: old.version.to_string(),
                steps: self.steps(),
                train_loss: self.train_loss,
                val_loss: candidate,
                serving_val_loss: serving,
                frames_seen: self.offered,
                time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                base_weights: base_weights.clone(),
            };
            // Written before the swap: what serves is always on disk.
            c.write(n, &tensors, self.optimizer_state(), meta)?;
        }
        let was = self.slot.compare_and_swap(&old, gen.clone());
        if !Arc::ptr_eq(&was, &old) {
            // A reload landed since the round began: it stays, and this candidate (trained
            // from the weights it replaced) must not be served after a restart either.
            if let Some(c) = &self.ckpt {
                c.retire(n, Retired::Superseded);
            }
            tracing::warn!(
                "fine-tune: {version} not swapped in: a reload replaced {} meanwhile; \
                 training on from the reloaded weights",
                old.version
            );
            self.follow_reloads()?;
            return Ok(Round::Superseded);
        }
        self.tel.set_model(&gen.version.to_string(), gen.number);
        self.tel.count(
            "aestream_finetune_swaps_total",
            "Fine-tuned versions swapped in.",
            1.0,
        );
        tracing::info!(
            "fine-tune: swapped in {version} (validation {candidate:.4e} vs {serving:.4e} of {}), {} steps",
            old.version,
            self.steps()
        );
        self.history.push(Accepted {
            gen,
            weights: tensors,
            number: Some(n),
            base_weights,
        });
        let keep = self.fc.keep.max(2);
        if self.history.len() > keep {
            self.history.remove(0);
        }
        Ok(Round::Swapped { candidate, serving })
    }

    /// A reload (SIGHUP) replaced the model under us: train on from the new weights.
    fn follow_reloads(&mut self) -> Result<()> {
        let now = self.slot.load_full();
        let ours = self.history.last().map(|a| a.gen.number);
        if Some(now.number) != ours {
            if let Some(t) = now.tensors.clone() {
                tracing::info!("fine-tune: following the reload to {}", now.version);
                self.shadow_from(&t, "fine-tune: the reloaded weights")?;
                self.cfg = now.cfg.clone();
                // A reload loads the pipeline's weights file: a new line starts here.
                self.history.push(Accepted {
                    base_weights: Some(now.version.weights_id()),
                    gen: now,
                    weights: t,
                    number: None,
                });
            }
        }
        Ok(())
    }

    /// Returns to the previous version (and trains on from it).
    /// A reload is a version like any other here: rolling back after one returns to what
    /// served before it.
    pub fn rollback(&mut self) -> Result<bool> {
        self.follow_reloads()?;
        if self.history.len() < 2 {
            tracing::warn!("rollback: no previous version");
            return Ok(false);
        }
        let serving = self.slot.load_full();
        let prev = self.history[self.history.len() - 2].clone();
        let (prev, t) = (prev.gen, prev.weights);
        let back = Arc::new(
            Generation::new(
                prev.cfg.clone(),
                prev.model.clone(),
                prev.version.clone(),
                serving.number + 1,
            )
            .with_tensors(t.clone()),
        );
        let was = self.slot.compare_and_swap(&serving, back.clone());
        if !Arc::ptr_eq(&was, &serving) {
            tracing::warn!("rollback: a reload landed at the same moment; it stays");
            self.follow_reloads()?;
            return Ok(false);
        }
        let gone = self.history.pop().expect("two versions");
        self.shadow_from(&t, "fine-tune: the previous weights")?;
        // The history's last entry must carry the number now serving.
        if let Some(last) = self.history.last_mut() {
            last.gen = back.clone();
        }
        // The number is kept with the version, not read back out of its name.
        if let (Some(c), Some(n)) = (&self.ckpt, gone.number) {
            c.retire(n, Retired::RolledBack);
        }
        self.tel.set_model(&back.version.to_string(), back.number);
        tracing::info!("rollback: {} -> {}", gone.gen.version, back.version);
        Ok(true)
    }
}
