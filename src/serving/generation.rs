//! Hot swap: the settings and model a frame is processed with ([`Generation`]) live behind a
//! [`ModelSlot`] that a reload (SIGHUP) or the fine-tuner swaps atomically. Each frame takes the
//! generation current when it is decoded and keeps it to the end, so a swap never changes a
//! frame in flight, and every output names the model version that made it.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use candle_core::Tensor;

use crate::config::PipelineConfig;
use crate::model::version::ModelVersion;
use crate::model::Model;
use crate::stage::tiling::TilePlan;

/// The settings and model a frame is processed with, from decode to sink.
#[derive(Clone)]
pub struct Generation {
    pub cfg: PipelineConfig,
    pub model: Arc<dyn Model>,
    /// Names the pipeline and weights, e.g. `denoise@1f2e3d4c`; recorded with every output.
    pub version: ModelVersion,
    /// 1 for the model a run starts with, +1 for each swap.
    pub number: u64,
    /// The weights, when known (the fine-tuner starts from them).
    pub tensors: Option<Arc<HashMap<String, Tensor>>>,
    /// How frames are padded and tiled for this model (derived from `cfg` and the model).
    pub plan: TilePlan,
}

impl Generation {
    pub fn new(
        cfg: PipelineConfig,
        model: Arc<dyn Model>,
        version: ModelVersion,
        number: u64,
    ) -> Self {
        let plan = TilePlan::for_pipeline(&cfg, model.spec().size_multiple);
        Self {
            cfg,
            model,
            version,
            number,
            tensors: None,
            plan,
        }
    }

    pub fn with_tensors(mut self, t: Arc<HashMap<String, Tensor>>) -> Self {
        self.tensors = Some(t);
        self
    }
}

/// The serving generation; swapped atomically, read once per frame.
pub type ModelSlot = Arc<ArcSwap<Generation>>;

/// Creates a slot holding `g`.
pub fn slot(g: Generation) -> ModelSlot {
    Arc::new(ArcSwap::from_pointee(g))
}

/// Serves `g` (a reload), numbered after whatever serves at the moment of the swap rather than
/// when `g` was built. Loading takes a while, and the fine-tuner may swap a version in
/// meanwhile; two generations with one number would look like one to it (it notices a reload
/// by the number changing) and its next swap would replace the reload with a model trained
/// from the weights the reload replaced. Returns (the generation replaced, the one serving).
pub fn publish(slot: &ModelSlot, g: Generation) -> (Arc<Generation>, Arc<Generation>) {
    let mut now = None;
    // `rcu` retries the closure if another swap lands between its load and its store.
    let old = slot.rcu(|cur| {
        let mut next = g.clone();
        next.number = cur.number + 1;
        let next = Arc::new(next);
        now = Some(next.clone());
        next
    });
    let now = now.expect("rcu runs its closure at least once");
    (old, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::tests::{tiny_config, tiny_model_and_frame, version};

    /// A reload built while the fine-tuner swapped a version in is numbered after that
    /// version, so the fine-tuner sees that something else now serves.
    #[test]
    fn a_reload_is_numbered_after_what_serves_when_it_lands() {
        let cfg = tiny_config();
        let (model, _) = tiny_model_and_frame(&cfg);
        let s = slot(Generation::new(cfg.clone(), model.clone(), version("a"), 1));
        // The reload is built against generation 1 ...
        let reload = Generation::new(cfg.clone(), model.clone(), version("file"), 2);
        // ... while the fine-tuner swaps in its version 2.
        let tuned = Arc::new(Generation::new(cfg, model, version("tuned"), 2));
        s.store(tuned.clone());
        let (old, now) = publish(&s, reload);
        assert!(Arc::ptr_eq(&old, &tuned));
        assert_eq!(now.number, 3);
        assert_eq!(now.version, version("file"));
        assert!(Arc::ptr_eq(&s.load_full(), &now));
    }
}
