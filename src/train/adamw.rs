//! AdamW whose moments can be saved and restored (candle-nn's cannot), so `--resume` continues
//! training exactly where it stopped instead of restarting the moment estimates.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Result, Tensor, Var};

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

/// Decoupled-weight-decay Adam over named variables.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub step: usize,
    pub params: AdamWParams,
}

impl AdamW {
    pub fn new(mut vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
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
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Gradients carry the step's graph; without detaching, the moments would keep every
            // past step's activations alive.
            let g = g.detach();
            let g = &g;
            let m = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + p.eps)?)?;
            // Decay weight matrices and kernels only: decaying biases (rank 1) just pulls
            // them off their needed offsets.
            let w = var.as_tensor();
            let decayed = if w.rank() >= 2 {
                (w * (1.0 - p.lr * p.weight_decay))?
            } else {
                w.clone()
            };
            var.set(&(decayed - (update * p.lr)?)?)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    /// The optimizer's state as named tensors (for a checkpoint file).
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("optim.m.{name}"), self.m[i].clone());
            out.insert(format!("optim.v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`]; missing entries are an error.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let get = |k: String| {
                state
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {k}")))
            };
            self.m[i] = get(format!("optim.m.{name}"))?;
            self.v[i] = get(format!("optim.v.{name}"))?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
}
