//! The networks aestream runs and trains, and how a pipeline's `[model]` becomes one.
//!
//! Every model takes and returns NHWC tensors in [0, 1]. Weights are safetensors files, loaded
//! through candle's `VarBuilder` so names in the file match the module tree.

pub mod denoise;
pub mod layers;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::config::PipelineConfig;
use crate::error::{Error, Result};

/// What the pipeline needs to know about a network to feed it.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// Channels the network takes (1 = grey).
    pub channels: usize,
    /// H and W must be a multiple of this.
    pub size_multiple: usize,
}

/// A network the infer stage can run.
pub trait Model: Send + Sync {
    fn spec(&self) -> ModelSpec;
    /// `x`: `[b, h, w, c]` in [0, 1]; returns the image output of the same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    fn device(&self) -> &Device;
}

/// The denoiser as a [`Model`].
pub struct DenoiseModel {
    net: denoise::Denoiser,
    device: Device,
}

impl DenoiseModel {
    pub fn from_net(net: denoise::Denoiser, device: Device) -> Self {
        Self { net, device }
    }
}

impl Model for DenoiseModel {
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            channels: 1,
            size_multiple: self.net.size_multiple(),
        }
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.net.forward(x)?)
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// Picks the device: `auto` means CUDA when built with it and a GPU is there, else CPU.
pub fn select_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| Error::Other(format!("--device cuda: {e}"))),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        other => Err(Error::Config {
            origin: "--device".into(),
            message: format!("unknown device {other:?} (auto, cpu or cuda)"),
        }),
    }
}

/// Builds the pipeline's network with its weights (or `weights_override`).
pub fn load(
    cfg: &PipelineConfig,
    weights_override: Option<&std::path::Path>,
    device: &Device,
) -> Result<Box<dyn Model>> {
    let bytes = cfg.weights_bytes(weights_override)?;
    let what = weights_override
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| cfg.model.weights.clone());
    if bytes.is_empty() {
        return Err(Error::Config {
            origin: cfg.origin.clone(),
            message: format!("weights {what} are empty: train them with `aestream train`"),
        });
    }
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).map_err(|e| {
        Error::Config {
            origin: what.clone(),
            message: format!("not a safetensors file: {e}"),
        }
    })?;
    let net = denoise::Denoiser::new(vb, &cfg.model.denoiser()).map_err(|e| Error::Config {
        origin: what,
        message: format!("weights do not fit the pipeline's [model]: {e}"),
    })?;
    Ok(Box::new(DenoiseModel::from_net(net, device.clone())))
}
