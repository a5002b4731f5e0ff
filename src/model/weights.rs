//! Weights in memory: copying them out of a training `VarMap`, setting them back, and building
//! a serving model from a tensor map.
//!
//! Offline training and the fine-tuner both move weights between a `VarMap` (what the
//! optimizer updates) and plain tensor maps (what is served, saved and compared); these are
//! the only places that do it. [`super::load`] builds a model from a file; [`serving`] builds
//! the same model from tensors already in memory (a fine-tuned version, a checkpoint).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::{Arch, Model, Net, NetModel, Precision};
use crate::error::{Error, Result};

/// Checks a weights map read from outside (a weights file, a checkpoint) before anything
/// serves or trains from it: float tensors only, and every value finite. A NaN would pass
/// every other check and come out as black frames; served by a reload it would replace a good
/// model, and the fine-tuner's gate (a comparison with NaN is false) could never replace it.
/// The error names `what` (the file) and the first bad tensor, in name order.
pub fn check_values(t: &HashMap<String, Tensor>, what: &str) -> Result<()> {
    use candle_core::DType;
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    for name in names {
        let v = &t[name];
        if !matches!(
            v.dtype(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(Error::Config {
                origin: what.to_string(),
                message: format!("tensor {name} is {:?}, not a float type", v.dtype()),
            });
        }
        let bad = v
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .filter(|x| !x.is_finite())
            .count();
        if bad > 0 {
            return Err(Error::Config {
                origin: what.to_string(),
                message: format!("tensor {name} holds {bad} values that are NaN or infinite"),
            });
        }
    }
    Ok(())
}

/// The variables with their names, for an optimizer to update.
pub fn vars(vm: &VarMap) -> Vec<(String, Var)> {
    let d = vm.data().lock().expect("varmap lock");
    d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The variables' current values, shared with the map (no copy): for saving them right away.
pub fn tensors(vm: &VarMap) -> HashMap<String, Tensor> {
    let data = vm.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// A copy of the variables' current values that later steps do not change.
pub fn snapshot(vm: &VarMap) -> Result<HashMap<String, Tensor>> {
    let d = vm.data().lock().expect("varmap lock");
    d.iter()
        // Detached: a copy that still tracked the variable would keep autograd history alive
        // (the fine-tuner's moving average built on such copies grew without bound: 24 GB in
        // minutes).
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
        .collect()
}

/// Sets every variable of `vm` from `t`; `what` names `t` in the error when a variable is not
/// in it.
pub fn set_vars(vm: &VarMap, t: &HashMap<String, Tensor>, what: &str) -> Result<()> {
    let d = vm.data().lock().expect("varmap lock");
    for (k, v) in d.iter() {
        let src = t
            .get(k)
            .ok_or_else(|| Error::Other(format!("{what}: {k} is missing")))?;
        // The map may live elsewhere (a checkpoint read on the CPU for a GPU run) or be served
        // in half precision: the variables stay f32 on their own device.
        v.set(&src.to_device(v.device())?.to_dtype(v.dtype())?)?;
    }
    Ok(())
}

/// Converts the convolution kernels of a weights map written before the NCHW layout (v1:
/// rank-2 kernels), and the AdamW moments saved beside them (`optim.*`), to candle's layout for
/// `arch`; returns how many kernels it converted (0 for a current file). Loaders that set
/// variables by name call it (`train --resume`, the fine-tuner's weights and checkpoints);
/// `model::load` needs no call, its layers convert what they read.
pub fn upgrade(arch: &Arch, t: &mut HashMap<String, Tensor>) -> Result<usize> {
    Ok(super::layers::upgrade_v1(t, |vb| {
        Net::new(vb, arch).map(drop)
    })?)
}

/// The pipeline's model with the weights `t` (copied, converted to `precision`), ready to
/// serve.
pub fn serving(
    arch: &Arch,
    t: &HashMap<String, Tensor>,
    dev: &Device,
    precision: Precision,
) -> Result<Arc<dyn Model>> {
    let dtype = precision.dtype();
    let vb = VarBuilder::from_tensors(t.clone(), dtype, dev);
    let net = Net::new(vb, arch)?;
    let model = NetModel::new(net, dev.clone(), arch.fixed_size());
    Ok(Arc::new(NetModel { dtype, ..model }))
}
