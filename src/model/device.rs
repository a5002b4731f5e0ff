//! Where the models run, and in which floating-point type: the `--device` names (`cpu`,
//! `cuda`, `cuda:N`, `auto`), the features this binary was built with, and [`Precision`]
//! (`infer.dtype`).
//!
//! A device that cannot be had is a usage error (exit 2) that says why: this binary was built
//! without CUDA, or CUDA found no such GPU. Precision is f32 for training and by default for
//! inference; f16 / bf16 inference halves the weights' and activations' memory traffic on a
//! GPU. On a CPU our gemm kernels are f32-only and candle's generic f16 ops are slower than
//! them, so half precision is refused there instead of silently running slower and less exactly.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Whether this binary was built with `--features cuda`.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// The optional features compiled in, as `--version` names them: `cuda`, or `none`.
pub const FEATURES: &str = if CUDA_COMPILED { "cuda" } else { "none" };

fn device_error(name: &str, message: String) -> Error {
    Error::Config {
        origin: format!("--device {name}"),
        message,
    }
}

/// Picks the device: `cpu`; `cuda` (= `cuda:0`) or `cuda:N`, the N-th GPU; `auto`, the first
/// GPU when built with CUDA and one is there, else the CPU.
pub fn select_device(name: &str) -> Result<Device> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "auto" => return Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map_err(|_| {
                device_error(
                    name,
                    format!("{n:?} is not a GPU number (cuda:0, cuda:1, …)"),
                )
            })?,
            None => {
                return Err(device_error(
                    name,
                    "unknown device (cpu, cuda, cuda:N or auto)".into(),
                ))
            }
        },
    };
    if !CUDA_COMPILED {
        return Err(device_error(
            name,
            "CUDA is not compiled into this aestream (features: none): build it with \
             `cargo build --release --features cuda`, or use --device cpu"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        device_error(
            name,
            format!("no CUDA device {ordinal} found (is there a GPU and its driver?): {e}"),
        )
    })
}

/// How a device is named in the start-up log: `cpu`, or `cuda:N (GPU)`.
pub fn describe_device(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id} (GPU)"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id} (GPU)"),
    }
}

/// The floating-point type a model is served in (`infer.dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats: what the models are trained in; the CPU kernels' type.
    #[default]
    F32,
    /// IEEE half precision (10-bit mantissa): on a GPU only.
    F16,
    /// bfloat16 (8-bit mantissa, f32's range): on a GPU only.
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The name used in pipeline files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// Whether a model may be served in this precision on `device`; the message says why not.
    pub fn check_device(self, device: &Device) -> std::result::Result<(), String> {
        if self.is_f32() || !device.is_cpu() {
            return Ok(());
        }
        Err(format!(
            "{} inference runs on a GPU only, and this run's device is the CPU (our CPU \
             kernels are f32): set infer.dtype = \"f32\", or run with --device cuda",
            self.name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str) -> String {
        match select_device(name) {
            Err(Error::Config { origin, message }) => format!("{origin}: {message}"),
            Err(e) => panic!("{name}: not a usage error: {e}"),
            Ok(d) => panic!("{name}: got {}", describe_device(&d)),
        }
    }

    /// The names that never need a GPU, and the malformed ones, each named in its error.
    #[test]
    fn device_names_parse_or_say_what_is_wrong() {
        assert!(select_device("cpu").unwrap().is_cpu());
        let auto = select_device("auto").unwrap();
        assert!(CUDA_COMPILED || auto.is_cpu());
        assert!(message("gpu").contains("--device gpu: unknown device (cpu, cuda, cuda:N"));
        assert!(message("cuda:x").contains("\"x\" is not a GPU number"));
        assert!(message("cuda:-1").contains("is not a GPU number"));
        assert!(message("cuda:").contains("is not a GPU number"));
    }

    /// Without the feature, every CUDA name says that CUDA is not compiled in; with it, a GPU
    /// number no machine has says that no such device was found.
    #[test]
    fn a_cuda_device_that_cannot_be_had_says_why() {
        if CUDA_COMPILED {
            let m = message("cuda:999");
            assert!(m.contains("no CUDA device 999 found"), "{m}");
        } else {
            for name in ["cuda", "cuda:0", "cuda:3"] {
                let m = message(name);
                assert!(
                    m.contains(&format!("--device {name}: CUDA is not compiled")),
                    "{m}"
                );
                assert!(m.contains("--features cuda"), "{m}");
            }
        }
    }

    #[test]
    fn half_precision_is_refused_on_the_cpu_only() {
        assert!(Precision::F32.check_device(&Device::Cpu).is_ok());
        for p in [Precision::F16, Precision::Bf16] {
            let e = p.check_device(&Device::Cpu).unwrap_err();
            assert!(e.contains(p.name()) && e.contains("GPU only"), "{e}");
        }
    }
}
