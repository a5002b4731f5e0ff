//! A fused, in-place AdamW update over contiguous f32 buffers: one pass reads the gradient and
//! updates the moments and the weight where they lie, instead of the ten or so tensors a
//! step built from candle ops allocates per variable.

use std::cell::RefCell;

use candle_core::{bail, CpuStorage, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

/// The scalars of one AdamW step for one variable.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Multiplies the weight before the update: `1 − lr·weight_decay`, or 1 for no decay.
    pub decay: f32,
    /// Bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    pub bc1: f32,
    pub bc2: f32,
}

/// Elements per parallel task: large enough that rayon's overhead does not show.
const CHUNK: usize = 1 << 14;

/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `w ← decay·w − lr·(m/bc1)/(√(v/bc2)+ε)`.
pub fn adamw_update(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    assert!(
        g.len() == w.len() && m.len() == w.len() && v.len() == w.len(),
        "adamw_update: buffers of different lengths"
    );
    let one = |w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        let (ib1, ib2) = (1.0 / s.bc1, 1.0 / s.bc2);
        for (((w, g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * s.beta1 + *g * (1.0 - s.beta1);
            *v = *v * s.beta2 + *g * *g * (1.0 - s.beta2);
            let update = (*m * ib1) / ((*v * ib2).sqrt() + s.eps);
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

    /// The fused update gives what the same formula in candle tensor ops gives, in place.
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
            let step = AdamWStep {
                lr: lr as f32,
                beta1: b1 as f32,
                beta2: b2 as f32,
                eps: eps as f32,
                decay: decay as f32,
                bc1: bc1 as f32,
                bc2: bc2 as f32,
            };
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
        let step = AdamWStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decay: 1.0,
            bc1: 0.1,
            bc2: 0.001,
        };
        assert!(adamw_step_inplace(w.as_tensor(), &g, &mut m, &mut v, step).is_err());
        assert_eq!(w.as_tensor().to_vec1::<f32>()?, vec![0.0; 4]);
        Ok(())
    }
}
