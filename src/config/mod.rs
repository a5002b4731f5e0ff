//! Pipeline files: TOML → typed configuration.
//!
//! A pipeline names its decode limits, corruption, normalisation, model and weights,
//! post-processing, outputs, batching and channel capacities. Unknown keys are errors, and every
//! error names the file, the key and what is wrong. The shipped pipelines (and their weights) are
//! embedded in the binary so `aestream run denoise` works from any directory.
//!
//! Each `[section]` lives in its own file with the rules it can check alone (its `validate`);
//! this file holds the whole pipeline, the rules that span sections, loading, and where the
//! weights come from. Sections report an [`Invalid`] key; the pipeline adds its file's name.

mod budget;
mod channels;
mod corrupt;
mod decode;
mod finetune;
mod http;
mod infer;
mod instances;
mod model;
mod normalise;
mod output;
mod postprocess;
mod queue;
mod train;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use budget::{BudgetConfig, DRAIN_TIMEOUT_S};
pub use channels::{ChannelConfig, Overload};
pub use corrupt::CorruptConfig;
pub use decode::DecodeConfig;
pub use finetune::{FinetuneConfig, FinetuneTarget};
pub use http::HttpConfig;
pub use infer::{InferConfig, ENSEMBLE_SIZES};
pub use instances::InstancesConfig;
pub use model::{ModelConfig, ModelSection};
pub use normalise::{ColourMode, NormaliseConfig, PadMode, Stretch};
pub use output::{OutputConfig, OutputKind};
pub use postprocess::PostprocessConfig;
pub use queue::{default_include, QueueKind, QueueSinkConfig, QueueSourceConfig};
pub use train::{Loss, PretrainTarget, TrainConfig, WeightsDtype};

use crate::error::{Error, Result};
use crate::model::{Arch, Model};

/// A pipeline's weights as read once ([`PipelineConfig::read_weights`]): the safetensors bytes
/// and what they are called in errors (the path read, or the built-in's name).
pub struct Weights {
    pub bytes: Vec<u8>,
    pub what: String,
}

/// What is wrong with one key of a pipeline file: the key, the value found there (absent
/// when the key is missing) and the rule it breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key `{key}`{}: {rule}", value.as_ref().map(|v| format!(" = {v}")).unwrap_or_default())]
pub struct Invalid {
    pub key: &'static str,
    pub value: Option<String>,
    pub rule: String,
}

impl Invalid {
    /// `key` holds `value` (shown as `{:?}` prints it), which breaks `rule`.
    pub fn new(key: &'static str, value: impl std::fmt::Debug, rule: impl Into<String>) -> Self {
        Self {
            key,
            value: Some(format!("{value:?}")),
            rule: rule.into(),
        }
    }

    /// `key` is needed and not given.
    pub fn missing(key: &'static str, rule: impl Into<String>) -> Self {
        Self {
            key,
            value: None,
            rule: rule.into(),
        }
    }
}

/// `v` lies in `lo..=hi` (a NaN never does): the one range rule every numeric key uses, so
/// every bound reads the same in errors ("must be between 1 and 1024").
pub(crate) fn within<T>(key: &'static str, v: T, lo: T, hi: T) -> Result<(), Invalid>
where
    T: PartialOrd + std::fmt::Debug + std::fmt::Display + Copy,
{
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(Invalid::new(
            key,
            v,
            format!("must be between {lo} and {hi}"),
        ))
    }
}

/// The pipelines built into the binary: (name, TOML text).
pub const BUILTIN_PIPELINES: &[(&str, &str)] = &[
    ("denoise", include_str!("../../pipelines/denoise.toml")),
    (
        "denoise-fast",
        include_str!("../../pipelines/denoise-fast.toml"),
    ),
    ("inpaint", include_str!("../../pipelines/inpaint.toml")),
    ("faces", include_str!("../../pipelines/faces.toml")),
    (
        "faces-deep",
        include_str!("../../pipelines/faces-deep.toml"),
    ),
    (
        "digits-sparse",
        include_str!("../../pipelines/digits-sparse.toml"),
    ),
    ("conv-ae", include_str!("../../pipelines/conv-ae.toml")),
    (
        "segment-nuclei",
        include_str!("../../pipelines/segment-nuclei.toml"),
    ),
];

/// The weights built into the binary: (file name as written in a pipeline, bytes).
pub const BUILTIN_WEIGHTS: &[(&str, &[u8])] = &[
    (
        "denoise.safetensors",
        include_bytes!("../../weights/denoise.safetensors"),
    ),
    (
        "inpaint.safetensors",
        include_bytes!("../../weights/inpaint.safetensors"),
    ),
    (
        "faces.safetensors",
        include_bytes!("../../weights/faces.safetensors"),
    ),
    // f16 on disk (`train.weights_dtype`): 15 MB instead of 30 in the binary.
    (
        "faces-deep.safetensors",
        include_bytes!("../../weights/faces-deep.safetensors"),
    ),
    (
        "digits-sparse.safetensors",
        include_bytes!("../../weights/digits-sparse.safetensors"),
    ),
    (
        "conv-ae.safetensors",
        include_bytes!("../../weights/conv-ae.safetensors"),
    ),
    (
        "segment-nuclei.safetensors",
        include_bytes!("../../weights/segment-nuclei.safetensors"),
    ),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Short name; used in logs and metadata.
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub decode: DecodeConfig,
    #[serde(default)]
    pub corrupt: CorruptConfig,
    #[serde(default)]
    pub normalise: NormaliseConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub infer: InferConfig,
    #[serde(default)]
    pub postprocess: PostprocessConfig,
    /// Segmentation: how the foreground is cut into objects (`--emit instances`). Absent from
    /// the settings hash when default, so other pipelines' versions stay as they were.
    #[serde(default, skip_serializing_if = "InstancesConfig::is_default")]
    pub instances: InstancesConfig,
    #[serde(default)]
    pub output: OutputConfig,
    #[serde(default)]
    pub channels: ChannelConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub finetune: FinetuneConfig,
    /// Limits of the HTTP server (`run --http`).
    #[serde(default)]
    pub http: HttpConfig,
    /// A queue to read frames from (`[source] kind = "redis"`), used when `--input` is a queue
    /// address or is not given.
    #[serde(default)]
    pub source: QueueSourceConfig,
    /// A queue to write results to (`[sink] kind = "redis"`).
    #[serde(default)]
    pub sink: QueueSinkConfig,
    /// Where the file came from (set on load; a path, or `builtin:NAME`).
    #[serde(skip)]
    pub origin: String,
    /// Folder that relative weight paths are resolved against (None for built-ins).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    /// Inpainting run with `--masks DIR`: each input's mask image at its relative path there
    /// (black = missing).
    #[serde(skip)]
    pub mask_dir: Option<PathBuf>,
}

impl PipelineConfig {
    /// Parses pipeline TOML; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let mut cfg: PipelineConfig = toml::from_str(text).map_err(|e| Error::Config {
            origin: origin.to_string(),
            message: describe_toml_error(&e, text),
        })?;
        cfg.origin = origin.to_string();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads a pipeline by built-in name or by path to a `.toml` file.
    pub fn load(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        let looks_like_path = spec.ends_with(".toml") || spec.contains('/') || path.exists();
        if !looks_like_path {
            if let Some((_, text)) = BUILTIN_PIPELINES.iter().find(|(n, _)| *n == spec) {
                return Self::from_toml(text, &format!("builtin:{spec}"));
            }
            let names: Vec<_> = BUILTIN_PIPELINES.iter().map(|(n, _)| *n).collect();
            return Err(Error::Config {
                origin: spec.to_string(),
                message: format!(
                    "no built-in pipeline of that name (built in: {}), and no such .toml file",
                    names.join(", ")
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut cfg = Self::from_toml(&text, &path.display().to_string())?;
        cfg.base_dir = path.parent().map(Path::to_path_buf);
        Ok(cfg)
    }

    /// Each section's own rules, then the rules across sections.
    fn validate(&self) -> Result<()> {
        self.invalid().map_err(|e| Error::Config {
            origin: self.origin.clone(),
            message: e.to_string(),
        })
    }

    fn invalid(&self) -> Result<(), Invalid> {
        let arch = &self.model.arch;
        self.decode.validate()?;
        self.corrupt.validate()?;
        self.normalise.validate()?;
        self.model.validate()?;
        // Only after the model's levels are known to be sane.
        let multiple = arch.size_multiple();
        self.infer.validate()?;
        self.output.validate()?;
        self.instances.validate()?;
        self.channels.validate()?;
        self.http.validate()?;
        self.budget.validate()?;
        self.source.validate()?;
        self.train.validate(multiple)?;
        self.finetune.validate(multiple)?;
        self.source.validate()?;
        let allowed = OutputKind::for_task(arch.task());
        if let Some(k) = self.output.kinds.iter().find(|k| !allowed.contains(k)) {
            let names: Vec<_> = allowed.iter().map(|k| k.name()).collect();
            return Err(Invalid::new(
                "output.kinds",
                k.name(),
                format!(
                    "{} cannot emit it (it can: {})",
                    arch.name(),
                    names.join(", ")
                ),
            ));
        }
        if self.train.pretrain_steps > 0 {
            let fits = matches!(arch, Arch::DenseAe { net, .. } if !net.bypass);
            if !fits || self.train.pca_init {
                return Err(Invalid::new(
                    "train.pretrain_steps",
                    self.train.pretrain_steps,
                    "layer-wise pretraining builds a dense-ae's stack of layers alone: it needs \
                     arch = \"dense-ae\" with `model.bypass = false`, and no `train.pca_init`",
                ));
            }
        }
        if self.infer.sure_blend && !matches!(arch, Arch::UnetDenoiser(_)) {
            return Err(Invalid::new(
                "infer.sure_blend",
                true,
                format!(
                    "needs a Gaussian denoiser (unet-denoiser), not {}",
                    arch.name()
                ),
            ));
        }
        Ok(())
    }

    /// The weights (`weights_override`, else the pipeline's `model.weights`: a file beside the
    /// pipeline or a built-in), read once. Build the model, its version and the fine-tuner's
    /// start all from this one read: a file replaced between two reads would otherwise serve
    /// one file's tensors under the other's version.
    pub fn read_weights(&self, weights_override: Option<&Path>) -> Result<Weights> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map(|bytes| Weights {
                    bytes,
                    what: p.display().to_string(),
                })
                .map_err(|e| Error::Io {
                    path: p.to_path_buf(),
                    source: e,
                })
        };
        if let Some(p) = weights_override {
            return read(p);
        }
        let rel = Path::new(&self.model.weights);
        let candidates: Vec<PathBuf> = match &self.base_dir {
            Some(base) => vec![base.join(rel), base.join("../weights").join(rel)],
            None => vec![],
        };
        if let Some(c) = candidates.iter().find(|c| c.is_file()) {
            return read(c);
        }
        if let Some((_, bytes)) = BUILTIN_WEIGHTS
            .iter()
            .find(|(n, _)| *n == self.model.weights)
        {
            return Ok(Weights {
                bytes: bytes.to_vec(),
                what: self.model.weights.clone(),
            });
        }
        Err(Error::Config {
            origin: self.origin.clone(),
            message: Invalid::new(
                "model.weights",
                &self.model.weights,
                "is neither a file beside the pipeline nor a built-in weight",
            )
            .to_string(),
        })
    }

    /// The version a model is known by in logs, outputs and the journal: the pipeline's name,
    /// a hash of its weights (or `weights_override`) and a hash of its settings, e.g.
    /// `denoise@1f2e3d4c.9a8b`.
    pub fn weights_version(
        &self,
        weights_override: Option<&Path>,
    ) -> Result<crate::model::version::ModelVersion> {
        Ok(self.version_of(&self.read_weights(weights_override)?))
    }

    /// [`Self::weights_version`] of weights already read.
    pub fn version_of(&self, weights: &Weights) -> crate::model::version::ModelVersion {
        let settings = serde_json::to_vec(self).unwrap_or_default();
        crate::model::version::ModelVersion::loaded(&self.name, &weights.bytes, &settings)
    }

    /// The pipeline's network with its weights (or `weights_override`), ready to serve.
    pub fn load_model(
        &self,
        weights_override: Option<&Path>,
        device: &candle_core::Device,
    ) -> Result<Box<dyn Model>> {
        self.model_from(&self.read_weights(weights_override)?, device)
    }

    /// [`Self::load_model`] from weights already read.
    pub fn model_from(
        &self,
        weights: &Weights,
        device: &candle_core::Device,
    ) -> Result<Box<dyn Model>> {
        if weights.bytes.is_empty() {
            return Err(Error::Config {
                origin: self.origin.clone(),
                message: format!(
                    "weights {} are empty: train them with `aestream train`",
                    weights.what
                ),
            });
        }
        self.check_precision(device)?;
        crate::model::load(
            &self.model.arch,
            &weights.bytes,
            &weights.what,
            device,
            self.infer.dtype,
        )
    }

    /// `infer.dtype` on `device`: half precision is refused on the CPU (exit 2, naming the
    /// file and the key).
    pub fn check_precision(&self, device: &candle_core::Device) -> Result<()> {
        self.infer
            .dtype
            .check_device(device)
            .map_err(|rule| Error::Config {
                origin: self.origin.clone(),
                message: format!("key `infer.dtype` = {:?}: {rule}", self.infer.dtype.name()),
            })
    }
}

/// Turns a toml error into one line naming the line, the text at fault and the cause.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let key = text.get(span.clone()).unwrap_or("").trim();
            // A span over several lines (a multi-line array or table that failed as one)
            // is no key to quote.
            if key.is_empty() || key.contains('\n') {
                format!("line {line}: {msg}")
            } else {
                format!("line {line}, at `{key}`: {msg}")
            }
        }
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_pipelines_parse() {
        for (name, _) in BUILTIN_PIPELINES {
            let cfg = PipelineConfig::load(name).expect("built-in parses");
            assert_eq!(&cfg.name, name);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = BUILTIN_PIPELINES[0]
            .1
            .replace("[infer]", "[infer]\nmax_bacth = 3");
        let err = PipelineConfig::from_toml(&text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml"), "{err}");
        assert!(err.contains("max_bacth"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let text = BUILTIN_PIPELINES[0]
            .1
            .replace("max_batch = 8", "max_batch = 0");
        let err = PipelineConfig::from_toml(&text, "y.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("infer.max_batch"), "{err}");
        for scales in ["[]", "[0.0]", "[1.5]", "[1.0, -0.5]"] {
            let text = BUILTIN_PIPELINES[0]
                .1
                .replace("[train]", &format!("[train]\nscales = {scales}"));
            let err = PipelineConfig::from_toml(&text, "z.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains("train.scales"), "{scales}: {err}");
        }
    }

    /// The error of built-in `pipeline` with `from` replaced by `to` (which must be there).
    fn error_of(pipeline: &str, from: &str, to: &str) -> String {
        let text = BUILTIN_PIPELINES
            .iter()
            .find(|(n, _)| *n == pipeline)
            .unwrap()
            .1;
        assert!(text.contains(from), "{pipeline} has no {from:?}");
        PipelineConfig::from_toml(&text.replace(from, to), "x.toml")
            .unwrap_err()
            .to_string()
    }

    /// An unknown architecture is refused with the key, the name given and the names known.
    #[test]
    fn unknown_arch_is_named() {
        let err = error_of("denoise", "\"unet-denoiser\"", "\"unet-denoisr\"");
        for part in ["x.toml", "model.arch", "unet-denoisr", "unet-denoiser, "] {
            assert!(err.contains(part), "{part}: {err}");
        }
    }

    /// Fixed-size autoencoders need `size`; a fully convolutional model refuses one rather
    /// than ignore it.
    #[test]
    fn size_belongs_to_the_fixed_size_models() {
        let err = error_of("conv-ae", "size = [28, 28]", "");
        assert!(
            err.contains("model.size") && err.contains("conv-ae"),
            "{err}"
        );
        let err = error_of("denoise", "[model]", "[model]\nsize = [64, 64]");
        assert!(err.contains("model.size` = [64, 64]"), "{err}");
    }

    /// A section's rule names its key and the value found; so does a rule across sections.
    #[test]
    fn section_errors_carry_key_and_value() {
        let err = error_of("digits-sparse", "topk = 10", "topk = 64");
        assert!(err.contains("model.topk` = 64"), "{err}");
        let err = error_of("denoise", "blocks = [1, 1, 2]", "blocks = [1, 1]");
        assert!(err.contains("model.blocks` = [1, 1]"), "{err}");
        let err = error_of("segment-nuclei", "[infer]", "[infer]\nsure_blend = true");
        assert!(
            err.contains("infer.sure_blend") && err.contains("unet-segment"),
            "{err}"
        );
    }

    /// Layer-wise pretraining builds a plain stack: a bypassed network (which `faces` is, with
    /// `pca_init`) or another architecture is refused, naming the key.
    #[test]
    fn pretraining_needs_a_plain_dense_stack() {
        let with = |p: &str| error_of(p, "[train]", "[train]\npretrain_steps = 10");
        for pipeline in ["faces", "conv-ae", "denoise"] {
            let err = with(pipeline);
            assert!(
                err.contains("x.toml") && err.contains("train.pretrain_steps"),
                "{pipeline}: {err}"
            );
        }
    }

    /// Keys a pipeline does not set are left out of its settings (hashed into its model's
    /// version), so adding the pretraining and storage keys changed no other pipeline's
    /// version; `faces-deep`, which sets them, has them.
    #[test]
    fn unset_training_keys_stay_out_of_the_settings_hash() {
        let json =
            |name: &str| serde_json::to_string(&PipelineConfig::load(name).unwrap()).unwrap();
        for name in ["faces", "digits-sparse", "denoise"] {
            let j = json(name);
            assert!(
                !j.contains("pretrain") && !j.contains("weights_dtype"),
                "{name}: {j}"
            );
        }
        let deep = json("faces-deep");
        for key in ["\"pretrain_steps\":1000", "\"weights_dtype\":\"f16\""] {
            assert!(deep.contains(key), "{key}: {deep}");
        }
    }

    /// An unknown key is reported on its own line.
    #[test]
    fn toml_errors_name_the_line() {
        let err = error_of("denoise", "max_batch = 8", "max_bacth = 8");
        let line = 1 + BUILTIN_PIPELINES[0]
            .1
            .lines()
            .position(|l| l.starts_with("max_batch = 8"))
            .unwrap();
        assert!(
            err.contains(&format!("line {line}, at `max_bacth`")),
            "{err}"
        );
    }

    /// Every built-in's `[model]` written back out parses to the same model, and keys its
    /// architecture does not take come out at their defaults.
    #[test]
    fn model_section_round_trips() {
        for (name, _) in BUILTIN_PIPELINES {
            let m = PipelineConfig::load(name).unwrap().model;
            let section = ModelSection::from(m.clone());
            if m.arch.fixed_size().is_none() {
                assert_eq!(section.size, None, "{name}");
            }
            let back = ModelConfig::try_from(section).unwrap();
            assert_eq!(back, m, "{name}");
        }
    }

    /// A minimal pipeline with `[section]` holding `line` (`model`: added to `[model]`).
    fn error_with(section: &str, line: &str) -> Option<String> {
        let mut text =
            String::from("name = \"t\"\n[model]\narch = \"unet-denoiser\"\nweights = \"w\"\n");
        if section != "model" {
            text.push_str(&format!("[{section}]\n"));
        }
        text.push_str(line);
        text.push('\n');
        PipelineConfig::from_toml(&text, "t.toml")
            .err()
            .map(|e| e.to_string())
    }

    /// Every numeric key is range-checked at load, the error naming the file and the key:
    /// values that used to abort the process (an allocation of 1e12 channel slots, 100000
    /// threads per stage) or make it useless (`max_pixels = 0` refused every frame).
    #[test]
    fn every_number_is_range_checked() {
        let cases = [
            ("channels", "capacity = 1000000000000", "channels.capacity"),
            ("channels", "capacity = 0", "channels.capacity"),
            ("infer", "workers = 100000", "infer.workers"),
            ("infer", "max_batch = 100000", "infer.max_batch"),
            ("infer", "max_batch_pixels = 0", "infer.max_batch_pixels"),
            ("decode", "max_pixels = 0", "decode.max_pixels"),
            ("decode", "max_pixels = 100000000000", "decode.max_pixels"),
            ("decode", "max_alloc_mib = 0", "decode.max_alloc_mib"),
            (
                "decode",
                "max_alloc_mib = 100000000",
                "decode.max_alloc_mib",
            ),
            ("corrupt", "gaussian_sigma = 1e9", "corrupt.gaussian_sigma"),
            ("corrupt", "mask = nan", "corrupt.mask"),
            (
                "model",
                "tile_overlap = 9223372036854775807",
                "model.tile_overlap",
            ),
            ("model", "tile = 1000000", "model.tile"),
            (
                "model",
                "channels = [16, 100000]\nblocks = [1, 1]",
                "model.channels",
            ),
            ("model", "blocks = [1, 1, 1000]", "model.blocks"),
            ("model", "full_res = [100000, 1]", "model.full_res"),
            ("train", "batch = 0", "train.batch"),
            ("train", "epochs = 0", "train.epochs"),
            ("train", "lr = -1.0", "train.lr"),
            ("train", "lr = inf", "train.lr"),
            ("train", "val_fraction = 1.0", "train.val_fraction"),
            ("train", "mask_min = 0.5\nmask_max = 0.2", "train.mask_max"),
            ("train", "patch = 65536", "train.patch"),
            ("train", "pretrain_noise = 0.95", "train.pretrain_noise"),
            ("train", "pretrain_lr = 0.0", "train.pretrain_lr"),
            (
                "train",
                "pretrain_steps = 100000000",
                "train.pretrain_steps",
            ),
            ("finetune", "buffer = 1000000000", "finetune.buffer"),
            ("finetune", "threads = 100000", "finetune.threads"),
            ("finetune", "min_frames = 1000", "finetune.min_frames"),
            ("finetune", "busy_share = 0.0", "finetune.busy_share"),
            ("finetune", "ema = 1.0", "finetune.ema"),
            ("finetune", "patch = 100000", "finetune.patch"),
            ("source", "block_ms = 0", "source.block_ms"),
            ("source", "max_deliveries = 0", "source.max_deliveries"),
            ("source", "batch = 0", "source.batch"),
            ("budget", "max_frame_mib = 0", "budget.max_frame_mib"),
            (
                "budget",
                "max_frame_mib = 4096\nmax_in_flight_mib = 2048",
                "budget.max_in_flight_mib",
            ),
            ("budget", "frame_timeout_s = 0.0", "budget.frame_timeout_s"),
            ("budget", "frame_timeout_s = nan", "budget.frame_timeout_s"),
            ("budget", "drain_timeout_s = -1.0", "budget.drain_timeout_s"),
        ];
        for (section, line, key) in cases {
            let err = error_with(section, line).unwrap_or_else(|| panic!("{line}: accepted"));
            assert!(
                err.contains("t.toml") && err.contains(&format!("`{key}`")),
                "{line}: {err}"
            );
        }
        // The dense autoencoder's weights are counted before a fresh one is allocated.
        let dense = "name = \"t\"\n[model]\narch = \"dense-ae\"\nweights = \"w\"\n\
                     size = [2048, 2048]\nlayers = [4194304, 4194304, 30]\n";
        let err = PipelineConfig::from_toml(dense, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers") && err.contains("weights"),
            "{err}"
        );
        // The bounds themselves are accepted.
        for (section, line) in [
            ("channels", "capacity = 1024"),
            ("budget", "drain_timeout_s = 0.0"),
            ("infer", "workers = 64"),
            ("decode", "max_pixels = 256"),
            ("source", "claim_idle_ms = 200"),
        ] {
            assert_eq!(error_with(section, line), None, "{line}");
        }
    }

    #[test]
    fn weights_read_once_name_the_file_they_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let text = BUILTIN_PIPELINES
            .iter()
            .find(|(n, _)| *n == "denoise")
            .unwrap()
            .1;
        let toml = dir.path().join("p.toml");
        std::fs::write(
            &toml,
            text.replace("denoise.safetensors", "mine.safetensors"),
        )
        .unwrap();
        let cfg = PipelineConfig::load(toml.to_str().unwrap()).unwrap();
        let file = dir.path().join("mine.safetensors");
        std::fs::write(&file, b"").unwrap();
        let w = cfg.read_weights(None).unwrap();
        assert_eq!(w.what, file.display().to_string());
        // The version of what was read is the version of the file.
        assert_eq!(
            cfg.version_of(&w).to_string(),
            cfg.weights_version(None).unwrap().to_string()
        );
        let err = cfg
            .model_from(&w, &candle_core::Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&w.what) && err.contains("empty"), "{err}");
    }
}
