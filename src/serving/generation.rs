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
