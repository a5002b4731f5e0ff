//! Image quality metrics: PSNR and SSIM on [0, 1] planes.
//!
//! SSIM follows scikit-image's `structural_similarity` defaults (7×7 uniform window, K1 = 0.01,
//! K2 = 0.03, sample covariance, borders of the window's half-width left out) so our numbers can
//! be compared with the PEERS table.

/// Mean squared error between two equally long planes.
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "mse: planes differ in size");
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (*x as f64) - (*y as f64);
            d * d
        })
        .sum();
    s / a.len().max(1) as f64
}

/// PSNR in dB for data range 1.0 (infinite when identical).
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let m = mse(a, b);
    if m == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / m).log10()
    }
}

/// Mean SSIM of two `w × h` planes with data range 1.0.
pub fn ssim(a: &[f32], b: &[f32], w: usize, h: usize) -> f64 {
    const WIN: usize = 7;
    if w < WIN || h < WIN {
        return if a == b { 1.0 } else { 0.0 };
    }
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let np = (WIN * WIN) as f64;
    let cov_norm = np / (np - 1.0);
    // Box sums over each 7×7 window via a summed-area table for each needed product.
    let table = |f: &dyn Fn(usize) -> f64| {
        let mut t = vec![0f64; (w + 1) * (h + 1)];
        for y in 0..h {
            let mut row = 0.0;
            for x in 0..w {
                row += f(y * w + x);
                t[(y + 1) * (w + 1) + x + 1] = t[y * (w + 1) + x + 1] + row;
            }
        }
        t
    };
    let ta = table(&|i| a[i] as f64);
    let tb = table(&|i| b[i] as f64);
    let taa = table(&|i| (a[i] as f64).powi(2));
    let tbb = table(&|i| (b[i] as f64).powi(2));
    let tab = table(&|i| a[i] as f64 * b[i] as f64);
    let boxsum = |t: &[f64], x: usize, y: usize| {
        let (x1, y1) = (x + WIN, y + WIN);
        t[y1 * (w + 1) + x1] - t[y * (w + 1) + x1] - t[y1 * (w + 1) + x] + t[y * (w + 1) + x]
    };
    let mut total = 0.0;
    let mut count = 0usize;
    for y in 0..=h - WIN {
        for x in 0..=w - WIN {
            let ux = boxsum(&ta, x, y) / np;
            let uy = boxsum(&tb, x, y) / np;
            let vx = cov_norm * (boxsum(&taa, x, y) / np - ux * ux);
            let vy = cov_norm * (boxsum(&tbb, x, y) / np - uy * uy);
            let vxy = cov_norm * (boxsum(&tab, x, y) / np - ux * uy);
            let s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2))
                / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
            total += s;
            count += 1;
        }
    }
    total / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_error() {
        let a = vec![0.5f32; 100];
        let b = vec![0.6f32; 100];
        // MSE 0.01 -> 20 dB.
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-3);
        assert!(psnr(&a, &a).is_infinite());
    }

    #[test]
    fn ssim_is_one_for_identical_and_lower_for_noise() {
        let (w, h) = (32, 24);
        let a: Vec<f32> = (0..w * h).map(|i| (i % w) as f32 / w as f32).collect();
        assert!((ssim(&a, &a, w, h) - 1.0).abs() < 1e-9);
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 0.1 } else { -0.1 })
            .collect();
        let s = ssim(&a, &b, w, h);
        assert!(s < 0.9 && s > 0.0, "ssim {s}");
    }
}
