//! A fully connected layer `act(x · Wᵀ + b)` as one custom op. candle's `Linear` backward
//! produces the weight gradient transposed (`(xᵀ·dy)` for `Wᵀ`) and then adds it to the
//! contiguous gradient buffer element by element through strided indexing, which cost more
//! than the matmuls on the dense reference net; here `dW = dyᵀ · x` is computed in W's own
//! layout, the bias and activation are fused, and the input gradient is skipped when the input
//! needs none. The forward product runs on the unpacked dot-product kernel of
//! [`super::xwt`] where the CPU and the batch allow, else on the gemm crate.

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::conv::{f32_slice, Act};
use super::xwt::xwt;
use super::{sgemm, threads};

struct LinearOp {
    act: Act,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-gemm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (m, wk) = wl.shape().dims2()?;
        if wk != k || bl.shape().elem_count() != m {
            bail!(
                "linear: x {:?}, w {:?}, b {:?} do not fit",
                xl.shape(),
                wl.shape(),
                bl.shape()
            );
        }
        let x = f32_slice(xs, xl, "linear")?;
        let w = f32_slice(ws, wl, "linear")?;
        let b = f32_slice(bs, bl, "linear")?;
        let mut y = vec![0f32; n * m];
        if !xwt((n, m, k), x, w, b, self.act, &mut y, threads()) {
            for row in y.chunks_mut(m) {
                row.copy_from_slice(b);
            }
            // y [n, m] += x [n, k] · Wᵀ (W is [m, k], i.e. Wᵀ stored transposed)
            sgemm(n, m, k, &mut y, true, x, false, w, true, threads());
            self.act.apply(&mut y);
        }
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = self.act.grad(grad, res)?;
        let gx = if x.track_op() {
            Some(dy.matmul(w)?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(dy.t()?.matmul(x)?)
        } else {
            None
        };
        let gb = if b.track_op() { Some(dy.sum(0)?) } else { None };
        Ok((gx, gw, gb))
    }
}

/// `act(x · wᵀ + b)` for `x [n, in]`, `w [out, in]` (candle-nn's `Linear` layout), `b [out]`.
pub fn linear_act(x: &Tensor, w: &Tensor, b: &Tensor, act: Act) -> Result<Tensor> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32) {
        let y = x.matmul(&w.t()?)?.broadcast_add(b)?;
        return match act {
            Act::Identity => Ok(y),
            Act::Relu => y.relu(),
        };
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp { act })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward and the gradients of x, w and b agree with candle's matmul + bias + activation.
    #[test]
    fn linear_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        for act in [Act::Identity, Act::Relu] {
            let x = Var::randn(0f32, 1., (5, 7), &dev)?;
            let w = Var::randn(0f32, 1., (3, 7), &dev)?;
            let b = Var::randn(0f32, 1., 3, &dev)?;
            let ours = linear_act(&x, &w, &b, act)?;
            let pre = x.matmul(&w.t()?)?.broadcast_add(&b)?;
            let expected = if act == Act::Relu {
                pre.relu()?
            } else {
                pre.clone()
            };
            let d = (&ours - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "forward differs by {d}");
            // Gradients go through our forward's own ReLU mask: a pre-activation within
            // rounding of 0 may land on either side in the two summation orders.
            let theirs = if act == Act::Relu {
                (pre * ours.gt(0f32)?.to_dtype(DType::F32)?.detach())?
            } else {
                pre
            };
            let r = Tensor::randn(0f32, 1., (5, 3), &dev)?;
            let go = (ours * &r)?.sum_all()?.backward()?;
            let gt = (theirs * &r)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let (a, c) = (go.get(v).expect("grad"), gt.get(v).expect("grad"));
                let d = (a - c)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-4, "gradient differs by {d}");
            }
        }
        Ok(())
    }

    /// The gradients of x, w and b against f64 finite differences, through both forward
    /// paths (the dot-product kernel takes the small batch, the gemm crate the one too large
    /// for it).
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (n, k, m) in [(5, 37, 6), (600, 300, 3)] {
            let x = Var::randn(0f32, 1., (n, k), &dev)?;
            let w = Var::randn(0f32, 1., (m, k), &dev)?;
            let b = Var::randn(0f32, 1., m, &dev)?;
            let f = |a: &[Tensor]| linear_act(&a[0], &a[1], &a[2], Act::Identity);
            crate::kernels::fd::check_grads(&f, &[&x, &w, &b], 5)?;
        }
        Ok(())
    }

    /// A constant input gets no gradient; the layer's parameters do.
    #[test]
    fn no_gradient_for_a_constant_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (4, 6), &dev)?;
        let w = Var::randn(0f32, 1., (2, 6), &dev)?;
        let b = Var::zeros(2, DType::F32, &dev)?;
        let grads = linear_act(&x, &w, &b, Act::Relu)?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&w).is_some() && grads.get(&b).is_some());
        Ok(())
    }
}
