//! Test support: the kernels' gradients against central finite differences in f64.

use candle_core::{DType, Result, Tensor, Var};

/// Checks the analytic gradients of `sum(f(args) · r)` (r random, fixed) with respect to each
/// of `vars` against central finite differences of the same sum computed in f64, at about
/// `samples` elements of each. `f` must be linear in each argument (no activation), so that
/// a large step (1.0) loses no accuracy and keeps the f32 rounding of a large output small
/// beside the difference.
pub(crate) fn check_grads(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    vars: &[&Var],
    samples: usize,
) -> Result<()> {
    let args: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&args)?;
    let r = Tensor::randn(0f32, 1., y.shape(), y.device())?;
    let r64 = r.to_dtype(DType::F64)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    for (vi, v) in vars.iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .expect("every variable gets a gradient")
            .flatten_all()?
            .to_vec1::<f32>()?;
        let base = v.flatten_all()?.to_vec1::<f32>()?;
        for i in (0..base.len()).step_by(base.len() / samples.max(1) + 1) {
            let at = |d: f32| -> Result<f64> {
                let mut p = base.clone();
                p[i] += d;
                let mut moved = args.clone();
                moved[vi] = Tensor::from_vec(p, v.shape(), v.device())?;
                (f(&moved)?.to_dtype(DType::F64)? * &r64)?
                    .sum_all()?
                    .to_scalar::<f64>()
            };
            let fd = (at(1.0)? - at(-1.0)?) / 2.0;
            let err = (fd - g[i] as f64).abs() / fd.abs().max(1.0);
            assert!(err < 1e-3, "var {vi} elem {i}: fd {fd} vs grad {}", g[i]);
        }
    }
    Ok(())
}
