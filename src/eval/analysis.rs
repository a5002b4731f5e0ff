//! Classical baselines and scores used by `eval` and training validation: PCA (fitted with
//! nalgebra's symmetric eigen-decomposition), k-nearest-neighbour accuracy on codes, and the
//! overlap scores (IoU, Dice) of segmentations.

use nalgebra::{DMatrix, SymmetricEigen};

/// A PCA model: the mean and the leading `k` principal directions.
pub struct Pca {
    pub mean: Vec<f64>,
    /// `dim × k`, orthonormal columns.
    pub components: DMatrix<f64>,
}

impl Pca {
    /// Fits `k` components to `rows` (each of the same length).
    pub fn fit(rows: &[Vec<f32>], k: usize) -> Option<Self> {
        let n = rows.len();
        let dim = rows.first()?.len();
        if n < 2 || k == 0 || k > dim {
            return None;
        }
        let mut mean = vec![0f64; dim];
        for r in rows {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += *v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let x = DMatrix::from_fn(n, dim, |i, j| rows[i][j] as f64 - mean[j]);
        let cov = (x.transpose() * &x) / (n as f64 - 1.0);
        let eig = SymmetricEigen::new(cov);
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let components = DMatrix::from_fn(dim, k, |i, j| eig.eigenvectors[(i, order[j])]);
        Some(Self { mean, components })
    }

    /// Projects onto the components and back.
    pub fn reconstruct(&self, row: &[f32]) -> Vec<f32> {
        let dim = self.mean.len();
        let x = nalgebra::DVector::from_fn(dim, |i, _| row[i] as f64 - self.mean[i]);
        let code = self.components.transpose() * x;
        let back = &self.components * code;
        (0..dim).map(|i| (back[i] + self.mean[i]) as f32).collect()
    }
}

/// Accuracy of a k-NN classifier (Euclidean, majority vote, ties to the nearest) fitted on
/// `(fit, fit_labels)` and scored on `(test, test_labels)`.
pub fn knn_accuracy(
    fit: &[Vec<f32>],
    fit_labels: &[u8],
    test: &[Vec<f32>],
    test_labels: &[u8],
    k: usize,
) -> f64 {
    use rayon::prelude::*;
    if fit.is_empty() || test.is_empty() {
        return f64::NAN;
    }
    let correct: usize = test
        .par_iter()
        .zip(test_labels)
        .filter(|(t, &label)| {
            let mut d: Vec<(f32, u8)> = fit
                .iter()
                .zip(fit_labels)
                .map(|(f, &l)| {
                    (
                        f.iter().zip(t.iter()).map(|(a, b)| (a - b) * (a - b)).sum(),
                        l,
                    )
                })
                .collect();
            let k = k.min(d.len());
            d.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
            let mut nearest = d[..k].to_vec();
            nearest.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut votes = [0usize; 256];
            for (_, l) in &nearest {
                votes[*l as usize] += 1;
            }
            let best = *votes.iter().max().unwrap_or(&0);
            // Among tied classes, the one of the nearest neighbour wins.
            let pred = nearest
                .iter()
                .find(|(_, l)| votes[*l as usize] == best)
                .map(|(_, l)| *l);
            pred == Some(label)
        })
        .count();
    correct as f64 / test.len() as f64
}

/// Counts of a binary segmentation against its ground truth.
#[derive(Debug, Default, Clone, Copy)]
pub struct Overlap {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
}

impl Overlap {
    pub fn add(&mut self, predicted: bool, truth: bool) {
        match (predicted, truth) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            _ => {}
        }
    }

    /// Intersection over union of the foreground (1 when both are empty).
    pub fn iou(&self) -> f64 {
        let u = self.tp + self.fp + self.fn_;
        if u == 0 {
            1.0
        } else {
            self.tp as f64 / u as f64
        }
    }

    pub fn dice(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            1.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
}

/// Running scores of foreground probabilities against binary masks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SegTally {
    pub overlap: Overlap,
    pub correct: u64,
    pub pixels: u64,
    pub squared_error: f64,
}

impl SegTally {
    /// Adds a `w`-wide frame's pixels for which `include(x, y)` holds; foreground is p > 0.5.
    pub fn add_frame(
        &mut self,
        prob: &[f32],
        mask: &[f32],
        w: usize,
        include: impl Fn(usize, usize) -> bool,
    ) {
        for (i, (&p, &m)) in prob.iter().zip(mask).enumerate() {
            if !include(i % w, i / w) {
                continue;
            }
            let (pf, mf) = (p > 0.5, m > 0.5);
            self.overlap.add(pf, mf);
            self.correct += u64::from(pf == mf);
            self.pixels += 1;
            self.squared_error += ((p - m) as f64).powi(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data on a 2-D plane in 5-D is reconstructed exactly by 2 components, not by 1.
    #[test]
    fn pca_recovers_a_plane() {
        let rows: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                let (a, b) = ((i as f32 * 0.37).sin(), (i as f32 * 1.3).cos());
                vec![a + 0.5, b, a - b, 2.0 * a, 0.1]
            })
            .collect();
        let p2 = Pca::fit(&rows, 2).unwrap();
        let p1 = Pca::fit(&rows, 1).unwrap();
        let err = |p: &Pca| -> f32 {
            rows.iter()
                .map(|r| {
                    p.reconstruct(r)
                        .iter()
                        .zip(r)
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f32>()
                })
                .sum()
        };
        assert!(err(&p2) < 1e-6, "{}", err(&p2));
        assert!(err(&p1) > 1e-2);
    }

    #[test]
    fn knn_and_overlap() {
        let fit = vec![vec![0.0], vec![0.1], vec![1.0], vec![1.1]];
        let acc = knn_accuracy(&fit, &[0, 0, 1, 1], &[vec![0.05], vec![0.9]], &[0, 0], 1);
        assert_eq!(acc, 0.5);
        let mut o = Overlap::default();
        o.add(true, true);
        o.add(true, false);
        o.add(false, true);
        o.add(false, false);
        assert!((o.iou() - 1.0 / 3.0).abs() < 1e-12);
        assert!((o.dice() - 0.5).abs() < 1e-12);
    }
}
