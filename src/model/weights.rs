//! Weights in memory: copying them out of a training `VarMap`, setting them back, and building
//! a serving model from a tensor map.
//!
//! Offline training and the fine-tuner both move weights between a `VarMap` (what the
//! optimizer updates) and plain tensor maps (what is served, saved and compared); these are
//! the only places that do it. [`super::load`] builds a model from a file; [`serving`] builds
//! the same model from tensors already in memory (a fine-tuned version, a checkpoint).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use super::{Arch, Model, Net, NetModel, Precision};
use crate::error::{Error, Result};

/// A builder over a weights map that notes every name the network asks for, so that the
/// tensors it did not ask for can be found once it is built (see [`unused`]).
struct Noting {
    t: HashMap<String, Tensor>,
    asked: Arc<Mutex<BTreeSet<String>>>,
}

impl Noting {
    fn note(&self, name: &str) {
        if let Ok(mut a) = self.asked.lock() {
            a.insert(name.to_string());
        }
    }
}

impl SimpleBackend for Noting {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.note(name);
        SimpleBackend::get(&self.t, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.note(name);
        SimpleBackend::get_unchecked(&self.t, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.t.contains_key(name)
    }
}

/// Builds with `build` over the weights `t` and refuses a map with weights the network does
/// not use. Extra weights mean the file was made for other `[model]` settings: a file for
/// `blocks = [2, 2, 2]` has every tensor that `[1, 1, 2]` asks for, so without this check it
/// would load and serve half a network. Optimizer state (a checkpoint served as weights) is
/// not counted. The error names `what` and up to three of the unused tensors.
pub fn build_using_all<T>(
    t: HashMap<String, Tensor>,
    dtype: DType,
    dev: &Device,
    what: &str,
    build: impl FnOnce(VarBuilder<'static>) -> Result<T>,
) -> Result<T> {
    let names: Vec<String> = t.keys().cloned().collect();
    let asked = Arc::new(Mutex::new(BTreeSet::new()));
    let noting = Noting {
        t,
        asked: asked.clone(),
    };
    let built = build(VarBuilder::from_backend(
        Box::new(noting),
        dtype,
        dev.clone(),
    ))?;
    let asked = asked.lock().map(|a| a.clone()).unwrap_or_default();
    let unused = unused(&names, &asked);
    if !unused.is_empty() {
        let first: Vec<&str> = unused.iter().take(3).map(|s| s.as_str()).collect();
        return Err(Error::Config {
            origin: what.to_string(),
            message: format!(
                "{} tensor(s) that the pipeline's [model] does not use ({}{}): the weights were \
                 made for other [model] settings",
                unused.len(),
                first.join(", "),
                if unused.len() > 3 { ", …" } else { "" }
            ),
        });
    }
    Ok(built)
}

/// The weights among `names` that the build did not ask for, in name order.
fn unused(names: &[String], asked: &BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = names
        .iter()
        .filter(|n| !asked.contains(*n) && !super::checkpoint::is_optimizer_state(n))
        .cloned()
        .collect();
    v.sort();
    v
}

/// Checks a weights map read from outside (a weights file, a checkpoint) before anything
/// serves or trains from it: float tensors only, and every value finite. A NaN would pass
/// every other check and come out as black frames; served by a reload it would replace a good
/// model, and the fine-tuner's gate (a comparison with NaN is false) could never replace it.
/// The error names `what` (the file) and the first bad tensor, in name order.
pub fn check_values(t: &HashMap<String, Tensor>, what: &str) -> Result<()> {
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
