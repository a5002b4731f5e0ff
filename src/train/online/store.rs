//! The fine-tuner's checkpoint folder: one [`Checkpoint`] per swapped-in version, named by its
//! number, the newest loadable one served after a restart, the last `keep` kept.
//!
//! Version `N` of pipeline `P` is `DIR/P-vN.safetensors` (weights, AdamW moments and step) and
//! `DIR/P-vN.safetensors.json` ([`CheckpointMeta`]), both written atomically, the metadata last.
//! Folders written before the shared checkpoint format kept the optimizer state in
//! `P-vN.opt.safetensors` and the metadata in `P-vN.json`; those still load. The version's
//! number travels as a number ([`Restored::number`], [`Resume::number`]), never parsed back
//! out of the version string.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::model::checkpoint::{read_meta, Checkpoint, OptimizerState};
use crate::model::version::ModelVersion;
use crate::model::weights;
use crate::serving::Generation;

/// Metadata written beside each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub pipeline: String,
    pub version: String,
    pub number: u64,
    pub parent: String,
    pub steps: u64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub serving_val_loss: f64,
    pub frames_seen: u64,
    pub time: String,
    /// The weights file this line of versions was fine-tuned from
    /// ([`ModelVersion::weights_id`]). A restart serves the file instead of the checkpoint
    /// when the file has been replaced since. Absent from checkpoints written before it was
    /// recorded; those are served whatever the file holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_weights: Option<String>,
}

/// Why a version was set aside (the suffix its files get).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retired {
    /// Served, then rolled back (SIGUSR1).
    RolledBack,
    /// Never served: a reload replaced the model it was trained from before its swap.
    Superseded,
}

/// The checkpoint folder of one pipeline.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    pipeline: String,
    keep: usize,
}

/// A version loaded from the checkpoint folder.
pub struct Restored {
    pub number: u64,
    pub tensors: HashMap<String, Tensor>,
    pub optimizer: Option<OptimizerState>,
    pub meta: Option<CheckpointMeta>,
}

impl Restored {
    /// Converts a version written before the NCHW kernel layout, weights and moments alike.
    pub fn upgrade(&mut self, arch: &crate::model::Arch) -> Result<usize> {
        let mut c = Checkpoint::<()> {
            weights: std::mem::take(&mut self.tensors),
            optimizer: self.optimizer.take(),
            meta: None,
        };
        let n = c.upgrade(arch);
        (self.tensors, self.optimizer) = (c.weights, c.optimizer);
        n
    }
}

/// What a restarted trainer continues from: the checkpoint it serves and the optimizer state
/// that was saved with it.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The checkpoint's number; the next version is `number + 1`. 0: none (numbers start at 1).
    pub number: u64,
    pub optimizer: Option<OptimizerState>,
    /// The weights file the checkpoint descends from, if on record.
    pub base_weights: Option<String>,
}

impl Resume {
    /// Steps on record (0 without optimizer state).
    pub fn steps(&self) -> u64 {
        self.optimizer.as_ref().map_or(0, |o| o.step)
    }
}

impl Restored {
    /// What [`super::Finetuner::start`] needs to continue from this version.
    pub fn resume(&self) -> Resume {
        Resume {
            number: self.number,
            optimizer: self.optimizer.clone(),
            base_weights: self.meta.as_ref().and_then(|m| m.base_weights.clone()),
        }
    }

    /// Refuses a version fine-tuned from other weights than `file` (the pipeline's weights
    /// now): the operator replaced the file since, and means the new weights to serve. A
    /// version without a record of its base is accepted.
    pub fn descends_from(&self, file: &ModelVersion) -> Result<()> {
        match self.meta.as_ref().and_then(|m| m.base_weights.as_deref()) {
            Some(base) if base != file.weights_id() => Err(Error::Other(format!(
                "fine-tuned from weights {base}, but the pipeline's weights are now {} \
                 (replaced since): they are served instead",
                file.weights_id()
            ))),
            _ => Ok(()),
        }
    }
}

/// The files one version may have, current and older layouts.
const SUFFIXES: [&str; 4] = [
    ".safetensors",
    ".safetensors.json",
    ".opt.safetensors",
    ".json",
];

impl Checkpoints {
    pub fn new(dir: PathBuf, pipeline: &str, keep: usize) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        Ok(Self {
            dir,
            pipeline: pipeline.to_string(),
            keep: keep.max(1),
        })
    }

    fn path(&self, n: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}-v{n}{suffix}", self.pipeline))
    }

    /// Version numbers that have a weights file, newest first.
    fn numbers(&self) -> Vec<u64> {
        let prefix = format!("{}-v", self.pipeline);
        let mut v: Vec<u64> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix(&prefix)?
                            .strip_suffix(".safetensors")?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }

    /// The highest version number on disk (loadable or not).
    pub fn highest(&self) -> Option<u64> {
        self.numbers().first().copied()
    }

    /// Version `n`, with the optimizer state and metadata of the older layout when the
    /// checkpoint file itself has none.
    fn load(&self, n: u64, device: &Device) -> Result<Restored> {
        let mut c = Checkpoint::<CheckpointMeta>::load(&self.path(n, ".safetensors"), device)?;
        if c.optimizer.is_none() {
            c.optimizer = Checkpoint::<()>::load(&self.path(n, ".opt.safetensors"), device)
                .ok()
                .and_then(|o| o.optimizer);
        }
        let meta = c.meta.or_else(|| read_meta(&self.path(n, ".json")));
        Ok(Restored {
            number: n,
            tensors: c.weights,
            optimizer: c.optimizer,
            meta,
        })
    }

    /// The newest version whose weights load; older ones are tried when a newer one is damaged.
    pub fn newest(&self, device: &Device) -> Option<Restored> {
        self.newest_with(device, Ok)
    }

    /// What `serve` makes of the newest version that loads and that it accepts (it builds the
    /// model: a checkpoint that parses may still not fit the pipeline, e.g. one edited or
    /// written for other `[model]` settings). Older versions are tried after one that fails,
    /// so a bad newest file cannot stop every start (a crash loop under systemd).
    pub fn newest_with<T>(
        &self,
        device: &Device,
        mut serve: impl FnMut(Restored) -> Result<T>,
    ) -> Option<T> {
        for n in self.numbers() {
            match self.load(n, device).and_then(&mut serve) {
                Ok(t) => return Some(t),
                Err(e) => tracing::warn!(
                    "{}: {e}: cannot serve it; trying an older one",
                    self.path(n, ".safetensors").display()
                ),
            }
        }
        None
    }

    /// Writes version `n` (one atomic file, then its metadata), then prunes.
    pub(super) fn write(
        &self,
        n: u64,
        tensors: &HashMap<String, Tensor>,
        optimizer: OptimizerState,
        meta: CheckpointMeta,
    ) -> Result<()> {
        Checkpoint {
            weights: tensors.clone(),
            optimizer: Some(optimizer),
            meta: Some(meta),
        }
        .save(&self.path(n, ".safetensors"))?;
        for old in self.numbers().into_iter().skip(self.keep) {
            for s in SUFFIXES {
                let _ = std::fs::remove_file(self.path(old, s));
            }
        }
        Ok(())
    }

    /// Sets version `n` aside so a restart does not serve it again; renamed, not deleted.
    pub(super) fn retire(&self, n: u64, why: Retired) {
        for s in SUFFIXES {
            let p = self.path(n, s);
            let mut to = p.as_os_str().to_owned();
            to.push(match why {
                Retired::RolledBack => ".rolled-back",
                Retired::Superseded => ".superseded",
            });
            let _ = std::fs::rename(&p, PathBuf::from(to));
        }
    }
}

/// Fine-tuned version `n`: `NAME-vN@HASH`, the hash over the weights.
pub(super) fn version_of(name: &str, n: u64, t: &HashMap<String, Tensor>) -> ModelVersion {
    let mut keys: Vec<&String> = t.keys().collect();
    keys.sort();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for k in keys {
        h.update(k.as_bytes());
        if let Ok(v) = t[k].flatten_all().and_then(|x| x.to_vec1::<f32>()) {
            for x in v {
                h.update(&x.to_le_bytes());
            }
        }
    }
    ModelVersion::finetuned(name, n, h.digest() as u32)
}

/// The generation a restart serves: the newest checkpoint's weights.
pub fn restored_generation(
    cfg: &PipelineConfig,
    r: Restored,
    dev: &Device,
    number: u64,
) -> Result<Generation> {
    let version = version_of(&cfg.name, r.number, &r.tensors);
    let model = weights::serving(&cfg.model.arch, &r.tensors, dev, cfg.infer.dtype)?;
    Ok(Generation::new(cfg.clone(), model, version, number).with_tensors(Arc::new(r.tensors)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path().to_path_buf(), "p", 3).unwrap();
        let dev = Device::Cpu;
        let t1 = HashMap::from([("w".to_string(), Tensor::ones(4, DType::F32, &dev).unwrap())]);
        let meta = CheckpointMeta {
            pipeline: "p".into(),
            version: "p-v1@0".into(),
            number: 1,
            parent: "base".into(),
            steps: 1,
            train_loss: 0.0,
            val_loss: 0.0,
            serving_val_loss: 0.0,
            frames_seen: 0,
            time: String::new(),
            base_weights: None,
        };
        let opt = OptimizerState {
            step: 1,
            moments: HashMap::new(),
        };
        c.write(1, &t1, opt, meta).unwrap();
        // Killed mid-write of v2: its optimizer state is there, its weights only as a partial
        // temporary file (renamed never happened).
        std::fs::write(dir.path().join("p-v2.opt.safetensors"), b"partial").unwrap();
        std::fs::write(dir.path().join(".aestream-999-0.tmp"), b"partial").unwrap();
        assert_eq!(c.newest(&dev).unwrap().number, 1);
        // Even a damaged newest file (a disk error, not our writer) falls back to v1.
        std::fs::write(dir.path().join("p-v3.safetensors"), b"garbage").unwrap();
        let r = c.newest(&dev).unwrap();
        assert_eq!(r.number, 1);
        assert_eq!(r.tensors["w"].to_vec1::<f32>().unwrap(), vec![1.0; 4]);
        // A newest version that parses but holds a NaN, or that does not fit the model (the
        // caller's `serve` refuses it): the one before is served.
        let mut bad = t1.clone();
        bad.insert(
            "w".into(),
            Tensor::new(&[1f32, f32::NAN, 1.0, 1.0], &dev).unwrap(),
        );
        crate::model::checkpoint::save_tensors(&dir.path().join("p-v4.safetensors"), &bad).unwrap();
        let t5 = HashMap::from([("w".to_string(), Tensor::ones(5, DType::F32, &dev).unwrap())]);
        crate::model::checkpoint::save_tensors(&dir.path().join("p-v5.safetensors"), &t5).unwrap();
        let fits = |r: Restored| {
            if r.tensors["w"].dims() == [4] {
                Ok(r.number)
            } else {
                Err(Error::Other("w: shape mismatch".into()))
            }
        };
        assert_eq!(c.newest_with(&dev, fits), Some(1));
    }

    /// A folder in the layout before the shared format (weights, `.opt.safetensors` with the
    /// moments and step, `.json`) restores with its optimizer state and metadata.
    #[test]
    fn the_older_layout_still_loads() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path().to_path_buf(), "p", 3)?;
        let dev = Device::Cpu;
        let w = HashMap::from([("w".to_string(), Tensor::ones(4, DType::F32, &dev)?)]);
        crate::model::checkpoint::save_tensors(&dir.path().join("p-v4.safetensors"), &w)?;
        let opt = OptimizerState {
            step: 17,
            moments: HashMap::from([(
                "optim.m.w".to_string(),
                Tensor::zeros(4, DType::F32, &dev)?,
            )]),
        };
        crate::model::checkpoint::save_tensors(
            &dir.path().join("p-v4.opt.safetensors"),
            &opt.to_tensors()?,
        )?;
        std::fs::write(
            dir.path().join("p-v4.json"),
            br#"{"pipeline":"p","version":"p-v4@1","number":4,"parent":"b","steps":17,
"train_loss":0,"val_loss":0,"serving_val_loss":0,"frames_seen":3,"time":""}"#,
        )
        .unwrap();
        let r = c.newest(&dev).expect("a checkpoint");
        assert_eq!(r.number, 4);
        assert_eq!(r.resume().steps(), 17);
        assert_eq!(r.optimizer.unwrap().moments.len(), 1);
        assert_eq!(r.meta.unwrap().version, "p-v4@1");
        assert_eq!(r.tensors.len(), 1);
        Ok(())
    }
}
