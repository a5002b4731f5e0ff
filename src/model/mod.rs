//! The networks aestream runs and trains, and how a pipeline's `[model]` becomes one.
//!
//! Every model takes and returns NHWC tensors in [0, 1]. Weights are safetensors files, loaded
//! through candle's `VarBuilder` so names in the file match the module tree.

pub mod arch;
pub mod checkpoint;
pub mod conv_ae;
pub mod denoise;
pub mod dense;
pub mod device;
pub mod init;
pub mod layers;
pub mod reference;
pub mod unet;
pub mod version;
pub mod weights;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

pub use arch::{Arch, ArchKind};
pub use device::{describe_device, select_device, Precision};

/// What a network is for; decides its outputs and how it is trained and evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Image in, cleaned image of the same size out (denoise, inpaint).
    Denoise,
    /// Fixed-size image in, code and reconstruction out (autoencoders).
    Reconstruct,
    /// Image in, per-pixel foreground probability out.
    Segment,
}

/// What the pipeline needs to know about a network to feed it.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// Channels the network takes (1 = grey).
    pub channels: usize,
    /// H and W must be a multiple of this.
    pub size_multiple: usize,
    /// Frames are resized to this `(width, height)` (fixed-size autoencoders).
    pub fixed_size: Option<(usize, usize)>,
    pub task: Task,
}

/// A network's outputs for a batch: the image-like output, and the code where there is one.
pub struct Outputs {
    /// `[b, h, w, 1]`: denoised frame, reconstruction or foreground probability.
    pub image: Tensor,
    /// `[b, …]`: the latent code (flattened per frame by the caller).
    pub code: Option<Tensor>,
}

/// A network the infer stage can run.
pub trait Model: Send + Sync {
    fn spec(&self) -> ModelSpec;
    /// `x`: `[b, h, w, c]` in [0, 1]; returns the image output of the same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.run(x, false)?.image)
    }
    /// Image output and, with `want_code`, the code.
    fn run(&self, x: &Tensor, want_code: bool) -> Result<Outputs>;
    fn device(&self) -> &Device;
}

/// One of the architectures, built from its [`Arch`].
#[derive(Debug, Clone)]
pub enum Net {
    Denoise(denoise::Denoiser),
    /// The denoiser's network given the frame and its mask of known pixels (1 = known).
    /// Missing pixels arrive as 0; known pixels pass through unchanged.
    Inpaint(denoise::Denoiser),
    Dense(dense::DenseAe),
    Conv(conv_ae::ConvAe),
    Segment(unet::UNet),
}

/// A forward pass as training needs it: the output before its final activation (logits for
/// a sigmoid output, so BCE can be computed stably) and the code.
pub struct RawOutputs {
    pub raw: Tensor,
    pub code: Option<Tensor>,
}

impl Net {
    pub fn new(vb: VarBuilder, arch: &Arch) -> candle_core::Result<Self> {
        Ok(match arch {
            Arch::UnetDenoiser(c) => Net::Denoise(denoise::Denoiser::new(vb, c)?),
            Arch::UnetInpaint(c) => Net::Inpaint(denoise::Denoiser::new(vb, c)?),
            Arch::DenseAe { net, .. } => Net::Dense(dense::DenseAe::new(vb, net)?),
            Arch::ConvAe { net, .. } => Net::Conv(conv_ae::ConvAe::new(vb, net)?),
            Arch::UnetSegment(c) => Net::Segment(unet::UNet::new(vb, c)?),
        })
    }

    pub fn task(&self) -> Task {
        match self {
            Net::Denoise(_) | Net::Inpaint(_) => Task::Denoise,
            Net::Dense(_) | Net::Conv(_) => Task::Reconstruct,
            Net::Segment(_) => Task::Segment,
        }
    }

    pub fn size_multiple(&self) -> usize {
        match self {
            Net::Denoise(n) | Net::Inpaint(n) => n.size_multiple(),
            Net::Dense(_) => 1,
            Net::Conv(n) => n.size_multiple(),
            Net::Segment(n) => n.size_multiple(),
        }
    }

    /// `x`: NHWC `[b, h, w, 1]`.
    pub fn forward_raw(&self, x: &Tensor) -> candle_core::Result<RawOutputs> {
        Ok(match self {
            Net::Denoise(n) => RawOutputs {
                raw: n.forward(x)?,
                code: None,
            },
            Net::Inpaint(n) => {
                // Exactly-zero pixels are the missing ones. The network refines a classical
                // fill-in (normalised convolution) rather than starting from the holes: its
                // residual is added to that base, so it only has to learn what the base misses.
                let known = x.ne(0.0)?.to_dtype(x.dtype())?;
                let base = normalised_convolution(x, &known)?;
                let pred = n.forward(&Tensor::cat(&[&base, &known, x], 3)?)?;
                let missing = (1.0 - &known)?;
                RawOutputs {
                    raw: ((x * &known)? + (pred * missing)?)?,
                    code: None,
                }
            }
            Net::Dense(n) => {
                let (b, h, w, c) = x.dims4()?;
                let code = n.encode(&x.reshape((b, h * w * c))?)?;
                let raw = n.decode_raw(&code)?.reshape((b, h, w, c))?;
                RawOutputs {
                    raw,
                    code: Some(code),
                }
            }
            Net::Conv(n) => {
                let code = n.encode(x)?;
                RawOutputs {
                    raw: n.decode_raw(&code)?,
                    code: Some(code),
                }
            }
            Net::Segment(n) => RawOutputs {
                raw: n.logits(x)?,
                code: None,
            },
        })
    }

    /// Whether the final activation is a sigmoid (so `raw` are logits).
    pub fn sigmoid_output(&self) -> bool {
        match self {
            Net::Denoise(_) | Net::Inpaint(_) => false,
            Net::Dense(n) => n.config().output == dense::OutputActivation::Sigmoid,
            Net::Conv(_) | Net::Segment(_) => true,
        }
    }

    pub fn activate(&self, raw: &Tensor) -> candle_core::Result<Tensor> {
        if self.sigmoid_output() {
            candle_nn::ops::sigmoid(raw)
        } else {
            Ok(raw.clone())
        }
    }
}

/// Fills each missing pixel with the Gaussian-weighted (σ = 0.7 px) mean of the known pixels
/// around it: `G * (x·known) / G * known`; pixels with no known neighbour in reach get 0.
/// `x`, `known`: `[b, h, w, 1]`.
pub fn normalised_convolution(x: &Tensor, known: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if c != 1 {
        candle_core::bail!("normalised_convolution: one channel expected, got {c}");
    }
    const R: usize = 2;
    let sigma = 0.7f32;
    let k: Vec<f32> = (0..(2 * R + 1) * (2 * R + 1))
        .map(|i| {
            let (dy, dx) = (
                (i / (2 * R + 1)) as f32 - R as f32,
                (i % (2 * R + 1)) as f32 - R as f32,
            );
            (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let k = Tensor::from_vec(k, (1, 1, 2 * R + 1, 2 * R + 1), x.device())?.to_dtype(x.dtype())?;
    // With one channel, NHWC and NCHW share a layout: reshapes are free.
    let nchw = |t: &Tensor| t.reshape((b, 1, h, w));
    let num = nchw(&(x * known)?)?.conv2d(&k, R, 1, 1, 1)?;
    let den = nchw(known)?.conv2d(&k, R, 1, 1, 1)?;
    (num / (den + 1e-6)?)?.reshape((b, h, w, 1))
}

/// A [`Net`] ready to serve. Its inputs and outputs are f32 whatever the type its weights
/// were loaded in ([`load`] with a [`Precision`]): a half-precision model converts the batch on
/// the device, where the conversion is one cheap pass.
pub struct NetModel {
    net: Net,
    device: Device,
    fixed_size: Option<(usize, usize)>,
    dtype: DType,
}

impl NetModel {
    /// A model whose weights are f32.
    pub fn new(net: Net, device: Device, fixed_size: Option<(usize, usize)>) -> Self {
        Self {
            net,
            device,
            fixed_size,
            dtype: DType::F32,
        }
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The type the network computes in (its weights' type).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

impl Model for NetModel {
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            channels: 1,
            size_multiple: self.net.size_multiple(),
            fixed_size: self.fixed_size,
            task: self.net.task(),
        }
    }

    fn run(&self, x: &Tensor, want_code: bool) -> Result<Outputs> {
        let o = self.net.forward_raw(&x.to_dtype(self.dtype)?)?;
        let f32 = |t: Tensor| t.to_dtype(DType::F32);
        Ok(Outputs {
            image: f32(self.net.activate(&o.raw)?)?,
            code: match o.code {
                Some(c) if want_code => Some(f32(c)?),
                _ => None,
            },
        })
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// Builds `arch` with the safetensors `weights` on `device`, the weights converted to
/// `precision`; `what` names the weights (a path or a built-in name) in errors. Any precision
/// loads on any device here (candle's own ops run f16 on a CPU, slowly); whether a pipeline may
/// serve in it is [`Precision::check_device`]'s call, made by the config that asks.
pub fn load(
    arch: &Arch,
    weights: &[u8],
    what: &str,
    device: &Device,
    precision: Precision,
) -> Result<Box<dyn Model>> {
    let dtype = precision.dtype();
    // Read once, on the CPU: checked, then moved to `device` in `precision` tensor by tensor
    // as the layers ask for them.
    let tensors = candle_core::safetensors::load_buffer(weights, &Device::Cpu).map_err(|e| {
        Error::Config {
            origin: what.to_string(),
            message: format!("not a safetensors file: {e}"),
        }
    })?;
    weights::check_values(&tensors, what)?;
    let net = weights::build_using_all(tensors, dtype, device, what, |vb| {
        Net::new(vb, arch).map_err(|e| Error::Config {
            origin: what.to_string(),
            message: format!("weights do not fit the pipeline's [model]: {e}"),
        })
    })?;
    Ok(Box::new(NetModel {
        dtype,
        ..NetModel::new(net, device.clone(), arch.fixed_size())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weights file with one NaN (or an integer tensor) is refused at load, naming the file
    /// and the tensor, before any layer is built from it.
    #[test]
    fn weights_that_are_not_finite_floats_are_refused() {
        use crate::model::dense::{CodeActivation, DenseAeConfig, OutputActivation};
        let arch = Arch::DenseAe {
            size: [4, 4],
            net: DenseAeConfig {
                layers: vec![16, 6, 3],
                code: CodeActivation::Relu,
                output: OutputActivation::Sigmoid,
                bypass: false,
                topk: 2,
            },
        };
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, t: Tensor| {
            let p = dir.path().join(name);
            let map = std::collections::HashMap::from([("enc.0.weight".to_string(), t)]);
            candle_core::safetensors::save(&map, &p).unwrap();
            std::fs::read(p).unwrap()
        };
        let dev = Device::Cpu;
        let nan = Tensor::new(&[0.5f32, f32::NAN, 1.0], &dev).unwrap();
        let err =
            |bytes: Vec<u8>| match load(&arch, &bytes, "bad.safetensors", &dev, Precision::F32) {
                Ok(_) => panic!("loaded"),
                Err(e) => e.to_string(),
            };
        let e = err(file("nan.safetensors", nan));
        assert!(
            e.contains("bad.safetensors") && e.contains("enc.0.weight") && e.contains("1 values"),
            "{e}"
        );
        let inf = Tensor::new(&[f32::INFINITY], &dev).unwrap();
        assert!(err(file("inf.safetensors", inf)).contains("NaN or infinite"));
        let ints = Tensor::new(&[1u32, 2], &dev).unwrap();
        assert!(err(file("int.safetensors", ints)).contains("not a float type"));
    }

    /// Weights made for other `[model]` settings, with every tensor this model asks for and
    /// more (here: one more layer), are refused with the unused tensors named; optimizer state
    /// beside the weights (a checkpoint served as a weights file) is fine.
    #[test]
    fn weights_with_tensors_the_model_does_not_use_are_refused() {
        use crate::model::dense::{CodeActivation, DenseAeConfig, OutputActivation};
        let arch = |layers: Vec<usize>| Arch::DenseAe {
            size: [4, 4],
            net: DenseAeConfig {
                layers,
                code: CodeActivation::Relu,
                output: OutputActivation::Sigmoid,
                bypass: false,
                topk: 0,
            },
        };
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = crate::model::init::seeded_builder(&vm, 1, DType::F32, &dev);
        Net::new(vb, &arch(vec![16, 8, 3])).unwrap();
        let mut t: std::collections::HashMap<String, Tensor> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let bytes = |t: &std::collections::HashMap<String, Tensor>| {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("w.safetensors");
            candle_core::safetensors::save(t, &p).unwrap();
            std::fs::read(p).unwrap()
        };
        // Exactly the tensors, plus optimizer state: loads.
        let first = t.keys().next().unwrap().clone();
        t.insert(format!("optim.m.{first}"), t[&first].clone());
        load(&arch(vec![16, 8, 3]), &bytes(&t), "w", &dev, Precision::F32).unwrap();
        // One tensor more than the model uses.
        t.insert("dec.9.weight".into(), t[&first].clone());
        let e = match load(
            &arch(vec![16, 8, 3]),
            &bytes(&t),
            "w.safetensors",
            &dev,
            Precision::F32,
        ) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("w.safetensors") && e.contains("dec.9.weight") && e.contains("1 tensor"),
            "{e}"
        );
    }

    /// A missing pixel in a flat region gets the flat value; known pixels stay as they are.
    #[test]
    fn normalised_convolution_fills_from_known_neighbours() -> candle_core::Result<()> {
        let mut v = vec![0.5f32; 36];
        v[14] = 0.0; // (2, 2) missing
        let x = Tensor::from_vec(v, (1, 6, 6, 1), &Device::Cpu)?;
        let known = x.ne(0.0)?.to_dtype(DType::F32)?;
        let y = normalised_convolution(&x, &known)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(y.iter().all(|v| (v - 0.5).abs() < 1e-4), "{y:?}");
        Ok(())
    }
}
