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
pub mod linear;

/// `dst[m×n] (+)= a[m×k] · b[k×n]`, all row-major with the given row strides (column stride 1
/// unless the `*_t` flag says the matrix is stored transposed).
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
    assert!(dst.len() >= m * n, "sgemm: dst too small");
    assert!(
        a.len() >= m * k && b.len() >= k * n,
        "sgemm: operand too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // (column stride, row stride) of a row-major matrix, or of one stored transposed.
    let (a_cs, a_rs) = if a_t {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (b_cs, b_rs) = if b_t {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index gemm touches for these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
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

/// The thread count candle's own kernels use (RAYON_NUM_THREADS, else the machine's cores).
pub(crate) fn threads() -> usize {
    candle_core::utils::get_num_threads()
}
