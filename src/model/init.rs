//! Repeatable weight initialisation: a `VarBuilder` backend that creates each new variable from
//! an RNG seeded by the run's seed and the variable's name (candle's own initialisers draw from
//! an unseeded thread RNG, so `--seed` alone would not make a run repeatable).

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

struct Seeded {
    vm: VarMap,
    seed: u64,
}

/// FNV-1a: a stable hash of a variable's name (std's hasher may change between releases).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Seeded {
    fn values(&self, s: &Shape, name: &str, h: Init) -> Vec<f64> {
        let n = s.elem_count();
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ name_hash(name));
        let (normal, a, b) = match h {
            Init::Const(c) => return vec![c; n],
            Init::Randn { mean, stdev } => (true, mean, stdev),
            Init::Uniform { lo, up } => (false, lo, up),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(s) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => (true, 0.0, std),
                    NormalOrUniform::Uniform => (false, -(3f64.sqrt()) * std, 3f64.sqrt() * std),
                }
            }
        };
        (0..n)
            .map(|_| {
                if normal {
                    a + b * rng.sample::<f64, _>(StandardNormal)
                } else {
                    a + (b - a) * rng.random::<f64>()
                }
            })
            .collect()
    }
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.vm.data().lock().expect("varmap lock");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("{name}: shape {:?}, expected {s:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let t = Tensor::from_vec(self.values(&s, name, h), s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.vm.data().lock().expect("varmap lock");
        data.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vm
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

/// A builder whose new variables land in `vm`, initialised repeatably from `seed`.
pub fn seeded_builder(vm: &VarMap, seed: u64, dtype: DType, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Seeded {
            vm: vm.clone(),
            seed,
        }),
        dtype,
        dev.clone(),
    )
}

/// A tensor of uniform values in [0, 1) from `seed`: repeatable inputs for tests and benches
/// (candle's `Tensor::rand` draws from an unseeded RNG).
pub fn seeded_uniform(seed: u64, shape: impl Into<Shape>, dev: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.elem_count())
        .map(|_| rng.random::<f32>())
        .collect();
    Tensor::from_vec(v, shape, dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() -> Result<()> {
        let make = |seed| -> Result<Vec<f32>> {
            let vm = VarMap::new();
            let vb = seeded_builder(&vm, seed, DType::F32, &Device::Cpu);
            let l = candle_nn::linear(8, 4, vb.pp("l"))?;
            let w = l.weight().flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(vm.all_vars().len(), 2);
            Ok(w)
        };
        assert_eq!(make(1)?, make(1)?);
        assert_ne!(make(1)?, make(2)?);
        // Kaiming-normal for ReLU with fan-in 8: std = sqrt(2/8) = 0.5.
        let w = make(7)?;
        let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
        assert!((0.25..0.8).contains(&std), "{std}");
        Ok(())
    }
}
