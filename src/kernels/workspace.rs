//! Scratch memory the kernels reuse across calls: one buffer per thread, grown to the largest
//! request up to a cap and kept, so the im2col blocks and masked gradients of every
//! convolution call do not go back to the allocator (and the kernel's zeroed pages) each time.

use std::cell::RefCell;

/// Floats a thread keeps between calls (16 MiB). Larger requests get a buffer of their own,
/// freed afterwards, so a rare huge layer does not pin its memory for the process's life.
const KEEP: usize = 1 << 22;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of scratch (contents unspecified: `f` must write before it reads).
/// Re-entrant: a nested call on the same thread (rayon runs other tasks while a thread waits
/// inside a parallel gemm) gets a fresh buffer instead of the borrowed one.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    if len > KEEP {
        return f(&mut vec![0f32; len]);
    }
    SCRATCH.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return f(&mut vec![0f32; len]);
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nested calls get distinct buffers; the outer one is intact afterwards.
    #[test]
    fn nested_calls_get_their_own_buffer() {
        with_scratch(8, |a| {
            a.fill(1.0);
            with_scratch(8, |b| {
                b.fill(2.0);
                assert!(!std::ptr::eq(a.as_ptr(), b.as_ptr()));
            });
            assert!(a.iter().all(|&v| v == 1.0));
        });
        // Over the cap: a buffer of its own, of the size asked.
        with_scratch(KEEP + 1, |big| assert_eq!(big.len(), KEEP + 1));
    }
}
