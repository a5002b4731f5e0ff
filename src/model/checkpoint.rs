//! The one checkpoint format, shared by `aestream train`, `train --resume` and the online
//! fine-tuner: a model's weights, the optimizer's moments and step, and optional metadata.
//!
//! On disk a checkpoint is one safetensors file (weights under their own names, the AdamW
//! moments under `optim.*`, the step as a one-element tensor) written atomically, plus, when
//! there is metadata, a JSON file beside it (`<file>.json`) written after it. One file for all
//! tensors means a crash can never leave weights without the moments they were trained with.
//! The step is kept as a tensor, not in the header, so that checkpoints written before this
//! type existed (`weights/*.safetensors.ckpt`, the fine-tuner's `-vN.opt.safetensors`) load as
//! they are. The step's tensor name is known here and nowhere else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Name of the tensor that holds the optimizer's step (an f32, exact up to 2²⁴ steps).
const STEP_KEY: &str = "train.step";

/// Whether `name` is optimizer state (a moment or the step) rather than a weight: a checkpoint
/// holds both, and may be served as a weights file.
pub fn is_optimizer_state(name: &str) -> bool {
    name == STEP_KEY || name.starts_with(MOMENT_PREFIX)
}

/// Prefix of the optimizer's moment tensors (`optim.m.<var>`, `optim.v.<var>`); AdamW names
/// its state with it, and loading tells moments from weights by it.
pub const MOMENT_PREFIX: &str = "optim.";

/// Where an optimizer stands: its step and its moment tensors.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    pub step: u64,
    pub moments: HashMap<String, Tensor>,
}

impl OptimizerState {
    /// The moments and the step as one tensor map, as they are stored.
    pub fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut t = self.moments.clone();
        t.insert(
            STEP_KEY.into(),
            Tensor::new(&[self.step as f32], &Device::Cpu)?,
        );
        Ok(t)
    }
}

/// Weights, optimizer state (absent in a weights-only file) and metadata `M`.
#[derive(Debug, Clone)]
pub struct Checkpoint<M> {
    pub weights: HashMap<String, Tensor>,
    pub optimizer: Option<OptimizerState>,
    pub meta: Option<M>,
}

impl<M> Checkpoint<M> {
    /// Converts a checkpoint written before the NCHW kernel layout, weights and moments alike
    /// (see [`super::weights::upgrade`]).
    pub fn upgrade(&mut self, arch: &super::Arch) -> Result<usize> {
        let mut all = std::mem::take(&mut self.weights);
        if let Some(o) = &mut self.optimizer {
            all.extend(std::mem::take(&mut o.moments));
        }
        let n = super::weights::upgrade(arch, &mut all);
        for (k, v) in all {
            match &mut self.optimizer {
                Some(o) if k.starts_with(MOMENT_PREFIX) => {
                    o.moments.insert(k, v);
                }
                _ => {
                    self.weights.insert(k, v);
                }
            }
        }
        n
    }
}

/// The metadata file that belongs to a checkpoint file: `<file>.json`.
pub fn meta_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Writes `tensors` as a safetensors file, atomically.
pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let bytes = safetensors::serialize(
        tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>(),
        None,
    )
    .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    Ok(crate::runtime::write_atomic(path, &bytes)?)
}

impl<M: Serialize + DeserializeOwned> Checkpoint<M> {
    /// Sorts a file's tensors into weights, moments and step. Moments without a step (or a
    /// step without moments) are no optimizer state.
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Result<Self> {
        let (mut weights, mut moments, mut step) = (HashMap::new(), HashMap::new(), None);
        for (k, v) in tensors {
            if k == STEP_KEY {
                step = Some(v.flatten_all()?.to_vec1::<f32>()?.first().copied());
            } else if k.starts_with(MOMENT_PREFIX) {
                moments.insert(k, v);
            } else {
                weights.insert(k, v);
            }
        }
        let optimizer = match step.flatten() {
            Some(s) if !moments.is_empty() => Some(OptimizerState {
                step: s as u64,
                moments,
            }),
            _ => None,
        };
        Ok(Self {
            weights,
            optimizer,
            meta: None,
        })
    }

    /// Loads `path` and, if there is one, its metadata file (unreadable metadata is left out:
    /// it describes the checkpoint, the tensors are the checkpoint).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, device)
            .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        // Weights and moments alike: a NaN moment would poison every step after it.
        super::weights::check_values(&tensors, &path.display().to_string())?;
        let mut c = Self::from_tensors(tensors)?;
        c.meta = read_meta(&meta_path(path));
        Ok(c)
    }

    /// Writes the tensors (atomically), then the metadata: a checkpoint whose metadata exists
    /// is complete.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t = self.weights.clone();
        if let Some(o) = &self.optimizer {
            t.extend(o.to_tensors()?);
        }
        save_tensors(path, &t)?;
        if let Some(m) = &self.meta {
            let json = serde_json::to_vec_pretty(m).map_err(|e| Error::Other(e.to_string()))?;
            crate::runtime::write_atomic(&meta_path(path), &json)?;
        }
        Ok(())
    }
}

/// Metadata read from a JSON file, `None` if it is missing or does not parse.
pub fn read_meta<M: DeserializeOwned>(path: &Path) -> Option<M> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Meta {
        note: String,
    }

    /// Saved and loaded back: weights, moments, step and metadata as they were; a weights-only
    /// file loads as a checkpoint without optimizer state.
    #[test]
    fn round_trip_and_weights_only() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?;
        let m = Tensor::ones(6, DType::F32, &dev)?;
        let c = Checkpoint {
            weights: HashMap::from([("enc.weight".to_string(), w.clone())]),
            optimizer: Some(OptimizerState {
                step: 1234,
                moments: HashMap::from([(format!("{MOMENT_PREFIX}m.enc.weight"), m)]),
            }),
            meta: Some(Meta { note: "x".into() }),
        };
        let p = dir.path().join("a.ckpt");
        c.save(&p)?;
        let back = Checkpoint::<Meta>::load(&p, &dev)?;
        assert_eq!(back.weights.len(), 1);
        assert_eq!(
            back.weights["enc.weight"].flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?
        );
        let o = back.optimizer.expect("optimizer state");
        assert_eq!(o.step, 1234);
        assert_eq!(o.moments.len(), 1);
        assert_eq!(back.meta, Some(Meta { note: "x".into() }));

        let q = dir.path().join("b.safetensors");
        save_tensors(&q, &c.weights)?;
        let plain = Checkpoint::<Meta>::load(&q, &dev)?;
        assert!(plain.optimizer.is_none() && plain.meta.is_none());
        assert_eq!(plain.weights.len(), 1);
        Ok(())
    }

    /// The checkpoint `aestream train` wrote for the shipped denoiser, before this type existed,
    /// loads as one: the weights file's tensors as weights, two moments for each, and a step.
    #[test]
    fn the_shipped_training_checkpoint_loads() -> Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
        let c = Checkpoint::<()>::load(&dir.join("denoise.safetensors.ckpt"), &Device::Cpu)?;
        let w = candle_core::safetensors::load(dir.join("denoise.safetensors"), &Device::Cpu)?;
        let (mut have, mut want): (Vec<_>, Vec<_>) =
            (c.weights.keys().collect(), w.keys().collect());
        have.sort();
        want.sort();
        assert_eq!(have, want);
        let o = c.optimizer.expect("optimizer state");
        assert!(o.step > 0);
        assert_eq!(o.moments.len(), 2 * w.len());
        Ok(())
    }
}
