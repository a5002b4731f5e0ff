//! Fast CPU kernels as candle custom ops: NCHW convolutions (im2col / col2im around one gemm
//! per image) and a fused, in-place AdamW update. candle 0.11's own CPU conv backward goes
//! through a direct-loop transposed convolution and its optimizers allocate a tensor per
//! elementwise step; these keep forward and backward at gemm speed and the update allocation-free.
//!
//! They are the one convolution path of the crate: the shipped models (`model/layers.rs`)
//! and the `bench` reference networks run them alike, so a faster kernel is a faster daemon.
//! Every op falls back to candle's own ops on other devices (CUDA) and dtypes: there the entry
//! points call candle's `conv2d` / `conv_transpose2d` / `matmul`, then add the bias and apply
//! the activation with candle's ops.

pub mod adamw;
pub mod conv;
#[cfg(test)]
mod fd;
pub mod linear;
mod workspace;
mod xwt;

pub(crate) use workspace::with_scratch;

/// A read-only matrix operand of [`gemm`]: row-major with row stride `ld`, or, when `t` is
/// set, stored transposed (its transpose is row-major with row stride `ld`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    pub t: bool,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with row stride `ld`.
    pub fn new(data: &'a [f32], ld: usize) -> Self {
        Self { data, ld, t: false }
    }

    /// A matrix stored transposed: `data` holds its transpose, row-major with row stride `ld`.
    pub fn t(data: &'a [f32], ld: usize) -> Self {
        Self { data, ld, t: true }
    }

    /// (column stride, row stride) of a `rows × cols` view, after checking that every element
    /// lies inside `data`.
    fn strides(&self, rows: usize, cols: usize, what: &str) -> (isize, isize) {
        let (outer, inner) = if self.t { (cols, rows) } else { (rows, cols) };
        assert!(
            inner <= self.ld || outer <= 1,
            "gemm: {what} row stride {} below its width {inner}",
            self.ld
        );
        assert!(
            outer == 0 || (outer - 1) * self.ld + inner <= self.data.len(),
            "gemm: {what} too small"
        );
        if self.t {
            (self.ld as isize, 1)
        } else {
            (1, self.ld as isize)
        }
    }
}

/// `dst[m×n] (+)= a[m×k] · b[k×n]`; `dst` is row-major with row stride `ldd`. Runs on
/// `threads` rayon threads (1: on the calling thread).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= ldd || m == 1,
        "gemm: dst row stride {ldd} below its width {n}"
    );
    assert!((m - 1) * ldd + n <= dst.len(), "gemm: dst too small");
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(ldd).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let (a_cs, a_rs) = a.strides(m, k, "a");
    let (b_cs, b_rs) = b.strides(k, n, "b");
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above (and in `strides`) bound every index gemm touches.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `dst[m×n] (+)= a[m×k] · b[k×n]`, all dense row-major (or stored transposed where the `*_t`
/// flag says so).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    threads: usize,
) {
    let a = if a_t { Mat::t(a, m) } else { Mat::new(a, k) };
    let b = if b_t { Mat::t(b, k) } else { Mat::new(b, n) };
    gemm((m, n, k), dst, n, accumulate, a, b, threads);
}

/// `c = a · b` for 512×512 row-major matrices on the current thread count: the roofline
/// product `bench` reports.
pub fn sgemm512(c: &mut [f32], a: &[f32], b: &[f32]) {
    sgemm(512, 512, 512, c, false, a, false, b, false, threads());
}

/// The thread count candle's own kernels use (RAYON_NUM_THREADS, else the machine's cores).
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads()
}
