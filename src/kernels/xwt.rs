//! `y = act(x · Wᵀ + b)` for a fully connected layer's forward pass, without packing: the
//! rows of `x` and of `W` are both contiguous along the shared dimension, so each output is a
//! dot product, computed a register block at a time (4 rows of x by 4 rows of W on AVX-512,
//! 4 by 2 on AVX2) with the bias and ReLU applied as the block is stored.
//!
//! Why hand-written: with a batch of 64 the `gemm` crate repacks the whole weight matrix on
//! every call, and `perf` put that packing at 50 % of `dense-ae-ref` inference once its
//! AVX-512 kernels had halved the arithmetic (25 % on AVX2). Here every weight is read once
//! per call, in place, from a block of four rows that stays in L1 while the batch's rows
//! stream past from L2. Measured on the 2-core AMD EPYC (Zen 5): see docs/benchmarks.md.
//!
//! The instruction set is picked at run time (AVX-512F, else AVX2 + FMA); elsewhere, and for
//! batches too large for the batch's rows to stay in L2, [`xwt`] declines and the caller uses
//! the gemm crate.

use rayon::prelude::*;

use super::conv::Act;

/// Largest batch × inputs the kernel takes (floats): the batch's rows must stay in L2 while
/// every block of weight rows streams past them.
const MAX_X: usize = 1 << 17;

/// What is done with each dot product before it is stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `y = act(dot + bias[j])`.
    Bias(&'a [f32], Act),
    /// `y += dot`.
    Accumulate,
}

/// `y[n×m] = act(x[n×k] · w[m×k]ᵀ + bias[m])` on `threads` rayon threads, if this CPU has a
/// kernel for it and the batch is small enough; false (and `y` untouched) otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn xwt(
    (n, m, k): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    act: Act,
    y: &mut [f32],
    threads: usize,
) -> bool {
    let ops = (Rows::new(x, k), Rows::new(w, k));
    dot_rows((n, m, k), ops, (y, m), Epilogue::Bias(bias, act), threads)
}

/// Rows of a row-major matrix operand, contiguous along the shared dimension: `data` with
/// row stride `ld`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub data: &'a [f32],
    pub ld: usize,
}

impl<'a> Rows<'a> {
    pub(crate) fn new(data: &'a [f32], ld: usize) -> Self {
        Self { data, ld }
    }

    /// Whether `rows` rows of `k` values fit.
    fn holds(&self, rows: usize, k: usize) -> bool {
        rows == 0 || (k <= self.ld && (rows - 1) * self.ld + k <= self.data.len())
    }
}

/// `y[i, j] (op)= x[i, :] · w[j, :]` for `i < n`, `j < m` over `k` values (`y` row-major
/// with row stride `ldy`, `op` the epilogue), on `threads` rayon threads, if this CPU has a
/// kernel for it and `x` is small enough to stay in L2; false (and `y` untouched) otherwise.
pub(crate) fn dot_rows(
    (n, m, k): (usize, usize, usize),
    (x, w): (Rows, Rows),
    (y, ldy): (&mut [f32], usize),
    epi: Epilogue,
    threads: usize,
) -> bool {
    assert!(
        x.holds(n, k) && w.holds(m, k),
        "dot_rows: operand too small"
    );
    assert!(
        n == 0 || (m <= ldy && (n - 1) * ldy + m <= y.len()),
        "dot_rows: y too small"
    );
    if let Epilogue::Bias(b, _) = epi {
        assert!(b.len() >= m, "dot_rows: bias too short");
    }
    let Some(isa) = Isa::detect() else {
        return false;
    };
    if n * k > MAX_X || n == 0 || m == 0 || k == 0 {
        return false;
    }
    let (bias, relu) = match epi {
        Epilogue::Bias(b, act) => (Some(b), act == Act::Relu),
        Epilogue::Accumulate => (None, false),
    };
    // Chunks of whole 4-row blocks of W, a few per thread so rayon can balance them.
    let chunk = m.div_ceil(threads.max(1) * 4).next_multiple_of(4).max(4);
    let out = SendPtr(y.as_mut_ptr());
    let run = |j0: usize| {
        let j1 = (j0 + chunk).min(m);
        let args = Args {
            x: x.data.as_ptr(),
            ldx: x.ld,
            w: w.data.as_ptr(),
            ldw: w.ld,
            y: out.get(),
            ldy,
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            relu,
            n,
            k,
        };
        // SAFETY: the asserts above bound every index of x, w, bias and y the kernels touch;
        // `isa` was detected on this CPU; each task writes only the columns j0..j1 of y.
        unsafe { isa.run(&args, (j0, j1)) }
    };
    if threads > 1 && m > chunk {
        (0..m)
            .step_by(chunk)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(run);
    } else {
        (0..m).step_by(chunk).for_each(run);
    }
    true
}

/// The operands of one kernel call (see [`dot_rows`]); `bias` null to accumulate into `y`.
struct Args {
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    y: *mut f32,
    ldy: usize,
    bias: *const f32,
    relu: bool,
    n: usize,
    k: usize,
}

/// A raw output pointer the tasks share; each writes its own columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (see `xwt`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The instruction sets with a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Some(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Some(Isa::Avx2);
            }
        }
        None
    }

    /// Columns `j0..j1` of `y`.
    ///
    /// # Safety
    /// The CPU has this instruction set; `args` points at operands of the sizes it states;
    /// no other thread writes columns `j0..j1` of `y` meanwhile.
    unsafe fn run(self, args: &Args, cols: (usize, usize)) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::columns(args, cols),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::columns(args, cols),
        }
    }
}

/// One instruction set's kernel: `$w` floats per vector, blocks of up to `$rx` rows of x by
/// `$rw` rows of W (their products held in registers), `$load` / `$load_tail` / `$fma` /
/// `$sum` the vector operations.
macro_rules! kernel {
    ($feat:literal, $v:ty, $w:literal, $rx:literal, $rw:literal, $zero:expr,
     $load:ident, $load_tail:ident, $fma:ident, $sum:ident) => {
        /// Columns `j0..j1` of `y (op)= x · wᵀ`: blocks of `w`'s rows outermost (each read
        /// from memory once), the rows of `x` streaming past each.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn columns(a: &super::Args, (j0, j1): (usize, usize)) {
            let mut j = j0;
            while j < j1 {
                let rw = (j1 - j).min($rw);
                let mut i = 0;
                while i < a.n {
                    let rx = (a.n - i).min($rx);
                    let (xb, wb) = (a.x.add(i * a.ldx), a.w.add(j * a.ldw));
                    let mut out = [[0f32; $rw]; $rx];
                    dispatch(rx, rw, (xb, a.ldx), (wb, a.ldw), a.k, &mut out);
                    for r in 0..rx {
                        let dst = a.y.add((i + r) * a.ldy + j);
                        for c in 0..rw {
                            let v = out[r][c];
                            *dst.add(c) = if a.bias.is_null() {
                                *dst.add(c) + v
                            } else {
                                let v = v + *a.bias.add(j + c);
                                if a.relu {
                                    v.max(0.0)
                                } else {
                                    v
                                }
                            };
                        }
                    }
                    i += rx;
                }
                j += rw;
            }
        }

        /// The block kernel for `rx` × `rw` (at most the register block).
        #[target_feature(enable = $feat)]
        unsafe fn dispatch(
            rx: usize,
            rw: usize,
            x: (*const f32, usize),
            w: (*const f32, usize),
            k: usize,
            out: &mut [[f32; $rw]; $rx],
        ) {
            debug_assert!((1..=$rx).contains(&rx) && (1..=$rw).contains(&rw));
            // Arms past the register block ($rw < 4 on AVX2) are never taken.
            match (rx, rw.min($rw)) {
                (1, 1) => block::<1, 1>(x, w, k, out),
                (1, 2) => block::<1, 2>(x, w, k, out),
                (1, 3) => block::<1, 3>(x, w, k, out),
                (1, 4) => block::<1, 4>(x, w, k, out),
                (2, 1) => block::<2, 1>(x, w, k, out),
                (2, 2) => block::<2, 2>(x, w, k, out),
                (2, 3) => block::<2, 3>(x, w, k, out),
                (2, 4) => block::<2, 4>(x, w, k, out),
                (3, 1) => block::<3, 1>(x, w, k, out),
                (3, 2) => block::<3, 2>(x, w, k, out),
                (3, 3) => block::<3, 3>(x, w, k, out),
                (3, 4) => block::<3, 4>(x, w, k, out),
                (4, 1) => block::<4, 1>(x, w, k, out),
                (4, 2) => block::<4, 2>(x, w, k, out),
                (4, 3) => block::<4, 3>(x, w, k, out),
                _ => block::<4, 4>(x, w, k, out),
            }
        }

        /// `out[a][b] = x[a, :] · w[b, :]` for `RX` rows of x and `RW` rows of w (each with
        /// its row stride), `$w` columns at a time in `RX·RW` vector accumulators.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn block<const RX: usize, const RW: usize>(
            (x, ldx): (*const f32, usize),
            (w, ldw): (*const f32, usize),
            k: usize,
            out: &mut [[f32; $rw]; $rx],
        ) {
            let mut acc: [[$v; RW]; RX] = [[$zero; RW]; RX];
            let mut p = 0;
            while p + $w <= k {
                let mut wv: [$v; RW] = [$zero; RW];
                for b in 0..RW {
                    wv[b] = $load(w.add(b * ldw + p));
                }
                for a in 0..RX {
                    let xv = $load(x.add(a * ldx + p));
                    for b in 0..RW {
                        acc[a][b] = $fma(xv, wv[b], acc[a][b]);
                    }
                }
                p += $w;
            }
            if p < k {
                let rem = k - p;
                let mut wv: [$v; RW] = [$zero; RW];
                for b in 0..RW {
                    wv[b] = $load_tail(w.add(b * ldw + p), rem);
                }
                for a in 0..RX {
                    let xv = $load_tail(x.add(a * ldx + p), rem);
                    for b in 0..RW {
                        acc[a][b] = $fma(xv, wv[b], acc[a][b]);
                    }
                }
            }
            for a in 0..RX {
                for b in 0..RW {
                    out[a][b] = $sum(acc[a][b]);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    /// The first `rem` (< 16) floats at `p`, zeros after; reads nothing past them.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_tail(p: *const f32, rem: usize) -> __m512 {
        _mm512_maskz_loadu_ps(((1u32 << rem) - 1) as __mmask16, p)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    kernel!(
        "avx512f",
        __m512,
        16,
        4,
        4,
        _mm512_setzero_ps(),
        load,
        load_tail,
        fma,
        sum
    );
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    /// The first `rem` (< 8) floats at `p`, zeros after; reads nothing past them.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_tail(p: *const f32, rem: usize) -> __m256 {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lanes);
        _mm256_maskload_ps(p, mask)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    kernel!(
        "avx2,fma",
        __m256,
        8,
        4,
        2,
        _mm256_setzero_ps(),
        load,
        load_tail,
        fma,
        sum
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The instruction sets this CPU has a kernel for.
    fn isas() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx2);
            }
        }
        v
    }

    /// Every instruction set this CPU has, over shapes with every kind of tail (rows of x and
    /// of w not multiples of the block, lengths not multiples of a vector), with padded row
    /// strides, for both epilogues, against f64 sums.
    #[test]
    fn matches_f64_dot_products() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for &(n, m, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (4, 4, 16),
            (5, 9, 17),
            (9, 33, 40),
            (2, 7, 8),
            (64, 30, 500),
        ] {
            let (ldx, ldw, ldy) = (k + 3, k + 1, m + 2);
            let mut val = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
            };
            let (x, w, bias, y0) = (val(n * ldx), val(m * ldw), val(m), val(n * ldy));
            let dot = |i: usize, j: usize| -> f64 {
                (0..k)
                    .map(|p| x[i * ldx + p] as f64 * w[j * ldw + p] as f64)
                    .sum()
            };
            for relu in [None, Some(false), Some(true)] {
                let want = |i: usize, j: usize| -> f64 {
                    match relu {
                        None => y0[i * ldy + j] as f64 + dot(i, j),
                        Some(r) => {
                            let v = dot(i, j) + bias[j] as f64;
                            if r {
                                v.max(0.0)
                            } else {
                                v
                            }
                        }
                    }
                };
                let check = |y: &[f32], what: &str| {
                    for i in 0..n {
                        for j in 0..m {
                            let (got, want) = (y[i * ldy + j] as f64, want(i, j));
                            let tol = 1e-4 * (k as f64).sqrt();
                            assert!(
                                (got - want).abs() < tol,
                                "{what} {n}×{m}×{k} [{i},{j}]: {got} vs {want}"
                            );
                        }
                        // Padding past column m is never written.
                        for j in m..ldy {
                            assert_eq!(y[i * ldy + j], y0[i * ldy + j], "{what}: pad written");
                        }
                    }
                };
                let epi = match relu {
                    None => Epilogue::Accumulate,
                    Some(r) => Epilogue::Bias(&bias, if r { Act::Relu } else { Act::Identity }),
                };
                for isa in isas() {
                    let mut y = y0.clone();
                    let args = Args {
                        x: x.as_ptr(),
                        ldx,
                        w: w.as_ptr(),
                        ldw,
                        y: y.as_mut_ptr(),
                        ldy,
                        bias: match epi {
                            Epilogue::Bias(b, _) => b.as_ptr(),
                            Epilogue::Accumulate => std::ptr::null(),
                        },
                        relu: relu == Some(true),
                        n,
                        k,
                    };
                    // SAFETY: the operands have the sizes `args` states; one thread writes all
                    // columns; `isa` was detected on this CPU.
                    unsafe { isa.run(&args, (0, m)) };
                    check(&y, &format!("{isa:?}"));
                }
                // The public entry, with threads, agrees too.
                let mut y = y0.clone();
                let ops = (Rows::new(&x, ldx), Rows::new(&w, ldw));
                if dot_rows((n, m, k), ops, (&mut y, ldy), epi, 2) {
                    check(&y, "dot_rows");
                }
            }
        }
    }
}
