//! A fused, in-place AdamW update over contiguous f32 buffers: one pass reads the gradient and
//! updates the moments and the weight where they lie, instead of the ten or so tensors a
//! step built from candle ops allocates per variable.

use std::cell::RefCell;

use candle_core::{bail, CpuStorage, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

/// The scalars of one AdamW step for one variable, as f32 constants derived in f64 exactly as
/// candle's scalar tensor ops derive theirs, so the fused update rounds like the tensor-op
/// formula step for step (bit-identical results).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// `1 / (1 − βᵢᵗ)`: candle divides by a scalar as a multiply by its reciprocal.
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    lr: f32,
    decay: f32,
}

impl AdamWStep {
    /// Step `t` (from 1); `decay` multiplies the weight first (`1 − lr·weight_decay`, or 1).
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, decay: f64, t: i32) -> Self {
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            inv_bc1: (1.0 / (1.0 - beta1.powi(t))) as f32,
            inv_bc2: (1.0 / (1.0 - beta2.powi(t))) as f32,
            eps: eps as f32,
            lr: lr as f32,
            decay: decay as f32,
        }
    }
}

/// Elements per parallel task: large enough that rayon's overhead does not show.
const CHUNK: usize = 1 << 14;

/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `w ← decay·w − lr·(m/bc1)/(√(v/bc2)+ε)`, each
/// product rounded in the same order as the tensor-op version.
pub fn adamw_update(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    assert!(
        g.len() == w.len() && m.len() == w.len() && v.len() == w.len(),
        "adamw_update: buffers of different lengths"
    );
    let one = |w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        for (((w, g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * s.beta1 + *g * s.one_minus_beta1;
            *v = *v * s.beta2 + (*g * *g) * s.one_minus_beta2;
            let update = (*m * s.inv_bc1) / ((*v * s.inv_bc2).sqrt() + s.eps);
            *w = *w * s.decay - update * s.lr;
        }
    };
    if w.len() <= CHUNK {
        one(w, g, m, v);
        return;
    }
    w.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((w, g), m), v)| one(w, g, m, v));
}

/// The in-place op on a weight tensor, given its gradient; the moments live in host buffers
/// the caller owns (borrowed for the call; `RefCell` because candle hands the op out as `&self`).
struct FusedAdamW<'a> {
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
    step: AdamWStep,
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        ws: &mut CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(w), CpuStorage::F32(g)) = (ws, gs) else {
            bail!("fused adamw: only f32 is supported")
        };
        let (Some((w0, w1)), Some((g0, g1))) = (wl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            bail!("fused adamw: weight and gradient must be contiguous")
        };
        let (mut m, mut v) = (self.m.borrow_mut(), self.v.borrow_mut());
        if w1 - w0 != m.len() || g1 - g0 != m.len() {
            bail!("fused adamw: weight, gradient and moments differ in size");
        }
        adamw_update(&mut w[w0..w1], &g[g0..g1], &mut m, &mut v, &self.step);
        Ok(())
    }
}

/// Updates the CPU f32 weight `w` in place from its gradient `g` and the moments `m`, `v`.
pub fn adamw_step_inplace(
    w: &Tensor,
    g: &Tensor,
    m: &mut [f32],
    v: &mut [f32],
    step: AdamWStep,
) -> Result<()> {
    let g = g.contiguous()?;
    w.inplace_op2(
        &g,
        &FusedAdamW {
            m: RefCell::new(m),
            v: RefCell::new(v),
            step,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused update gives exactly what the same formula in candle tensor ops gives, in place.
    #[test]
    fn fused_update_matches_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        // Longer than one chunk, so the parallel split is exercised.
        let n = CHUNK * 2 + 37;
        let w = Var::randn(0f32, 1., n, &dev)?;
        let w0 = w.as_tensor().copy()?;
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let (mut mt, mut vt) = (w0.zeros_like()?, w0.zeros_like()?);
        let mut wt = w0.clone();
        let (b1, b2, lr, eps, decay) = (0.9f64, 0.999f64, 1e-2f64, 1e-8f64, 1.0 - 1e-4);
        for t in 1..=3 {
            let g = Tensor::randn(0f32, 1., n, &dev)?;
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            let step = AdamWStep::new(lr, b1, b2, eps, decay, t);
            adamw_step_inplace(w.as_tensor(), &g, &mut m, &mut v, step)?;
            mt = ((mt * b1)? + (&g * (1.0 - b1))?)?;
            vt = ((vt * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let upd = ((&mt / bc1)? / ((&vt / bc2)?.sqrt()? + eps)?)?;
            wt = ((wt * decay)? - (upd * lr)?)?;
        }
        let diff = (w.as_tensor() - &wt)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "weights differ by {diff}");
        let mdiff = (Tensor::from_slice(&m, n, &dev)? - &mt)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(mdiff < 1e-6, "first moments differ by {mdiff}");
        Ok(())
    }

    /// Mismatched sizes are an error, not a panic or a partial update.
    #[test]
    fn rejects_mismatched_moments() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::zeros(4, candle_core::DType::F32, &dev)?;
        let g = Tensor::ones(4, candle_core::DType::F32, &dev)?;
        let (mut m, mut v) = (vec![0f32; 3], vec![0f32; 3]);
        let step = AdamWStep::new(0.1, 0.9, 0.999, 1e-8, 1.0, 1);
        assert!(adamw_step_inplace(w.as_tensor(), &g, &mut m, &mut v, step).is_err());
        assert_eq!(w.as_tensor().to_vec1::<f32>()?, vec![0.0; 4]);
        Ok(())
    }
}
