//! `[output]`: which results a pipeline writes — the cleaned frame, a reconstruction, the
//! latent code, a label map, an overlay, an object (instance) label map or the probability. Which of them a model can make depends on its task
//! (a rule across sections, checked in `PipelineConfig::validate`).

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::model::Task;

/// What the pipeline writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// The denoised (or inpainted) frame, same size as the input.
    Denoised,
    /// An autoencoder's reconstruction, at the model's size.
    Reconstruction,
    /// The code: `.npy` per frame in a folder, JSON lines on stdout.
    Latent,
    /// 8-bit PNG label map: value = class index, 0 background.
    Segmentation,
    /// The input with the segmentation drawn over it.
    Overlay,
    /// 16-bit PNG label map of objects: 0 background, each object one value of 1..N.
    Instances,
    /// 16-bit PNG of the foreground probability: 0..65535 for 0..1.
    Probability,
}

impl OutputKind {
    pub const ALL: [OutputKind; 7] = [
        OutputKind::Denoised,
        OutputKind::Reconstruction,
        OutputKind::Latent,
        OutputKind::Segmentation,
        OutputKind::Overlay,
        OutputKind::Instances,
        OutputKind::Probability,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Denoised => "denoised",
            OutputKind::Reconstruction => "reconstruction",
            OutputKind::Latent => "latent",
            OutputKind::Segmentation => "segmentation",
            OutputKind::Overlay => "overlay",
            OutputKind::Instances => "instances",
            OutputKind::Probability => "probability",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputKind::Latent => "npy",
            _ => "png",
        }
    }

    /// The kinds a model of this task can produce.
    pub fn for_task(task: Task) -> &'static [OutputKind] {
        match task {
            Task::Denoise => &[OutputKind::Denoised],
            Task::Reconstruct => &[OutputKind::Reconstruction, OutputKind::Latent],
            Task::Segment => &[
                OutputKind::Segmentation,
                OutputKind::Overlay,
                OutputKind::Instances,
                OutputKind::Probability,
            ],
        }
    }
}

impl std::str::FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        OutputKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = OutputKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown output kind {s:?} (known: {})", names.join(", "))
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    pub kinds: Vec<OutputKind>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            kinds: vec![OutputKind::Denoised],
        }
    }
}

impl OutputConfig {
    /// A pipeline writes something.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.kinds.is_empty() {
            return Err(Invalid::new(
                "output.kinds",
                &self.kinds,
                "must name at least one output",
            ));
        }
        Ok(())
    }
}
