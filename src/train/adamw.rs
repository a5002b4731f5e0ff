//! AdamW whose moments can be saved and restored (candle-nn's cannot), so `--resume` continues
//! training exactly where it stopped instead of restarting the moment estimates.
//!
//! On CPU (f32) each step is the fused in-place kernel of [`crate::kernels::adamw`]: the
//! moments are plain host buffers and nothing is allocated per step. Other devices, or
//! [`AdamW::with_candle_ops`], use the same formula in candle tensor ops.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};

use crate::kernels::adamw::{adamw_step_inplace, AdamWStep};
use crate::model::checkpoint::MOMENT_PREFIX;

#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// One variable's first and second moments.
enum Moments {
    /// Host buffers updated in place by the fused kernel (CPU, f32).
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Tensors replaced each step (other devices and dtypes, or candle ops on request).
    Tensors { m: Tensor, v: Tensor },
}

impl Moments {
    fn zeros(var: &Var, fused: bool) -> Result<Self> {
        let t = var.as_tensor();
        Ok(if fused && t.device().is_cpu() && t.dtype() == DType::F32 {
            let n = t.elem_count();
            Moments::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }
        } else {
            let m = t.zeros_like()?;
            Moments::Tensors { v: m.clone(), m }
        })
    }
}

/// Decoupled-weight-decay Adam over named variables.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    moments: Vec<Moments>,
    pub step: usize,
    pub params: AdamWParams,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        Self::build(vars, params, true)
    }

    /// The same optimizer computed with candle tensor ops (the baseline the fused kernel is
    /// measured against).
    pub fn with_candle_ops(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        Self::build(vars, params, false)
    }

    fn build(mut vars: Vec<(String, Var)>, params: AdamWParams, fused: bool) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let moments = vars
            .iter()
            .map(|(_, v)| Moments::zeros(v, fused))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            moments,
            step: 0,
            params,
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        for ((_, var), moments) in self.vars.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Gradients carry the step's graph; without detaching, the moments would keep every
            // past step's activations alive.
            let g = g.detach();
            let g = &g;
            let w = var.as_tensor();
            // Decay weight matrices and kernels only: decaying biases (rank 1) just pulls
            // them off their needed offsets.
            let decay = if w.rank() >= 2 {
                1.0 - p.lr * p.weight_decay
            } else {
                1.0
            };
            match moments {
                Moments::Host { m, v } => {
                    let step = AdamWStep::new(p.lr, p.beta1, p.beta2, p.eps, decay, t);
                    adamw_step_inplace(w, g, m, v, step)?;
                }
                Moments::Tensors { m, v } => {
                    let mn = ((&*m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
                    let vn = ((&*v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
                    let update = ((&mn / bc1)? / ((&vn / bc2)?.sqrt()? + p.eps)?)?;
                    var.set(&((w * decay)? - (update * p.lr)?)?)?;
                    *m = mn.detach();
                    *v = vn.detach();
                }
            }
        }
        Ok(())
    }

    /// The optimizer's state as named tensors (for a checkpoint file).
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for ((name, var), moments) in self.vars.iter().zip(&self.moments) {
            let (m, v) = match moments {
                Moments::Host { m, v } => {
                    // Host moments exist only for CPU variables of exactly their length, so
                    // building the CPU tensor cannot fail.
                    let host = |b: &[f32]| {
                        Tensor::from_slice(b, var.as_tensor().shape(), &candle_core::Device::Cpu)
                            .expect("host moments match their variable's shape")
                    };
                    (host(m), host(v))
                }
                Moments::Tensors { m, v } => (m.clone(), v.clone()),
            };
            out.insert(format!("{MOMENT_PREFIX}m.{name}"), m);
            out.insert(format!("{MOMENT_PREFIX}v.{name}"), v);
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`]; missing entries are an error.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for ((name, var), moments) in self.vars.iter().zip(self.moments.iter_mut()) {
            let get = |k: String| {
                let t = state
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {k}")))?;
                if t.shape() != var.as_tensor().shape() {
                    candle_core::bail!("checkpoint's {k} has shape {:?}", t.shape());
                }
                Ok(t)
            };
            let (m, v) = (
                get(format!("{MOMENT_PREFIX}m.{name}"))?,
                get(format!("{MOMENT_PREFIX}v.{name}"))?,
            );
            match moments {
                Moments::Host { m: hm, v: hv } => {
                    *hm = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    *hv = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                }
                Moments::Tensors { m: tm, v: tv } => {
                    // Beside the variable, wherever the file was read to (a GPU's moments).
                    let here = |t: Tensor| t.to_device(var.device())?.to_dtype(var.dtype());
                    (*tm, *tv) = (here(m)?, here(v)?);
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// AdamW minimises a quadratic, and a restored state continues identically.
    #[test]
    fn minimises_and_resumes_identically() -> Result<()> {
        let dev = Device::Cpu;
        let target = Tensor::new(&[1.0f32, -2.0, 3.0], &dev)?;
        let run = |steps: usize,
                   from: Option<(Vec<f32>, HashMap<String, Tensor>, usize)>|
         -> Result<(Vec<f32>, HashMap<String, Tensor>, usize)> {
            let init = from.as_ref().map(|f| f.0.clone()).unwrap_or(vec![0.0; 3]);
            let x = Var::new(init.as_slice(), &dev)?;
            let mut opt = AdamW::new(
                vec![("x".into(), x.clone())],
                AdamWParams {
                    lr: 0.1,
                    weight_decay: 0.0,
                    ..Default::default()
                },
            )?;
            if let Some((_, st, step)) = &from {
                opt.load_state(st, *step)?;
            }
            for _ in 0..steps {
                let loss = (x.as_tensor() - &target)?.sqr()?.sum_all()?;
                opt.step(&loss.backward()?)?;
            }
            Ok((x.as_tensor().to_vec1()?, opt.state(), opt.step))
        };
        let (full, _, _) = run(200, None)?;
        for (a, b) in full.iter().zip([1.0f32, -2.0, 3.0]) {
            assert!((a - b).abs() < 0.05, "{full:?}");
        }
        let half = run(100, None)?;
        let (resumed, _, _) = run(100, Some(half))?;
        for (a, b) in full.iter().zip(&resumed) {
            assert!((a - b).abs() < 1e-5, "{full:?} vs {resumed:?}");
        }
        Ok(())
    }

    /// The fused in-place step and the candle-ops step follow the same trajectory, decay of
    /// matrices (not biases) included, and save the same moments.
    #[test]
    fn fused_step_matches_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        // Seeded standard-normal values, the same on every run.
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let mut randn = |shape: &[usize]| -> Result<Tensor> {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect();
            Tensor::from_vec(v, shape, &dev)
        };
        let w0 = randn(&[3, 4])?;
        let b0 = randn(&[4])?;
        let x = randn(&[5, 3])?;
        let run = |fused: bool| -> Result<(Tensor, Tensor, HashMap<String, Tensor>)> {
            let (w, b) = (Var::from_tensor(&w0)?, Var::from_tensor(&b0)?);
            let vars = vec![("w".into(), w.clone()), ("b".into(), b.clone())];
            let params = AdamWParams {
                weight_decay: 0.1,
                ..Default::default()
            };
            let mut opt = if fused {
                AdamW::new(vars, params)?
            } else {
                AdamW::with_candle_ops(vars, params)?
            };
            for _ in 0..5 {
                let y = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
                opt.step(&y.sqr()?.sum_all()?.backward()?)?;
            }
            Ok((w.as_tensor().copy()?, b.as_tensor().copy()?, opt.state()))
        };
        let (wf, bf, sf) = run(true)?;
        let (wc, bc, sc) = run(false)?;
        let close = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        // Bit-identical: the fused kernel rounds exactly as the tensor ops do.
        assert_eq!(close(&wf, &wc)?, 0.0);
        assert_eq!(close(&bf, &bc)?, 0.0);
        assert!(close(&wf, &w0)? > 1e-3, "the weights moved");
        for (k, v) in &sc {
            assert_eq!(close(&sf[k], v)?, 0.0, "{k} differs");
        }
        Ok(())
    }
}
