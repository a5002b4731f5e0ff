//! Instance scores of a segmentation: how many true objects were found as objects of their
//! own. A predicted object matches a true one when their intersection over union is above
//! 0.5; precision is the share of predicted objects that match, recall the share of true
//! objects matched, F1 their harmonic mean.
//!
//! At IoU > 0.5 a match is one-to-one by itself, so no assignment has to be solved: were a
//! predicted object P above 0.5 with two true objects T1 and T2 (disjoint), each intersection
//! would exceed half of P, and together more than all of P. Within a crop both maps are cut
//! to it first: an object that crosses the crop's edge is scored by its part inside, in both.

use std::collections::HashMap;

use serde::Serialize;

/// Objects counted and matched, summed over frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceTally {
    pub predicted: usize,
    pub truth: usize,
    pub matched: usize,
}

/// What `aestream eval` reports about objects.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Objects predicted, true, and true objects found (IoU > 0.5).
    pub predicted: usize,
    pub truth: usize,
    pub matched: usize,
}

impl InstanceTally {
    pub fn add(&mut self, o: InstanceTally) {
        self.predicted += o.predicted;
        self.truth += o.truth;
        self.matched += o.matched;
    }

    /// Precision, recall and F1; an empty side scores 1 when the other is empty too (nothing
    /// to find, nothing claimed), else 0.
    pub fn scores(&self) -> InstanceScores {
        let ratio = |a: usize, b: usize, empty: f64| {
            if b == 0 {
                empty
            } else {
                a as f64 / b as f64
            }
        };
        let both_empty = if self.predicted + self.truth == 0 {
            1.0
        } else {
            0.0
        };
        InstanceScores {
            precision: ratio(self.matched, self.predicted, both_empty),
            recall: ratio(self.matched, self.truth, both_empty),
            f1: ratio(2 * self.matched, self.predicted + self.truth, both_empty),
            predicted: self.predicted,
            truth: self.truth,
            matched: self.matched,
        }
    }
}

/// Matches the objects of two label maps of width `w` (0 = background) over the pixels where
/// `include(x, y)` holds.
pub fn match_instances(
    predicted: &[u32],
    truth: &[u32],
    w: usize,
    include: impl Fn(usize, usize) -> bool,
) -> InstanceTally {
    let mut area_p: HashMap<u32, u64> = HashMap::new();
    let mut area_t: HashMap<u32, u64> = HashMap::new();
    let mut both: HashMap<(u32, u32), u64> = HashMap::new();
    for (i, (&p, &t)) in predicted.iter().zip(truth).enumerate() {
        if (p == 0 && t == 0) || !include(i % w.max(1), i / w.max(1)) {
            continue;
        }
        if p != 0 {
            *area_p.entry(p).or_default() += 1;
        }
        if t != 0 {
            *area_t.entry(t).or_default() += 1;
        }
        if p != 0 && t != 0 {
            *both.entry((p, t)).or_default() += 1;
        }
    }
    let matched = both
        .iter()
        .filter(|(&(p, t), &inter)| {
            let union = area_p[&p] + area_t[&t] - inter;
            2 * inter > union
        })
        .count();
    InstanceTally {
        predicted: area_p.len(),
        truth: area_t.len(),
        matched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w × h` map with the rectangles `(label, x0, y0, x1, y1)` (exclusive ends) drawn in.
    fn map(w: usize, h: usize, rects: &[(u32, usize, usize, usize, usize)]) -> Vec<u32> {
        let mut m = vec![0; w * h];
        for &(l, x0, y0, x1, y1) in rects {
            for y in y0..y1 {
                for x in x0..x1 {
                    m[y * w + x] = l;
                }
            }
        }
        m
    }

    const W: usize = 20;
    const H: usize = 10;
    fn everywhere(_: usize, _: usize) -> bool {
        true
    }

    /// Two 6×6 squares side by side, and one 4×4 apart.
    fn truth() -> Vec<u32> {
        map(
            W,
            H,
            &[(1, 0, 0, 6, 6), (2, 6, 0, 12, 6), (3, 14, 2, 18, 6)],
        )
    }

    #[test]
    fn perfect_labels_match_whatever_their_numbers() {
        let t = truth();
        let renumbered: Vec<u32> = t.iter().map(|&l| if l == 0 { 0 } else { 10 - l }).collect();
        let s = match_instances(&renumbered, &t, W, everywhere);
        assert_eq!(
            s,
            InstanceTally {
                predicted: 3,
                truth: 3,
                matched: 3
            }
        );
        assert_eq!(s.scores().f1, 1.0);
    }

    /// One true square cut in two halves: neither half reaches IoU 0.5 (each is exactly 0.5,
    /// which is not above it), so that object is missed and both halves are false.
    #[test]
    fn a_split_object_is_missed() {
        let p = map(
            W,
            H,
            &[
                (1, 0, 0, 3, 6),
                (4, 3, 0, 6, 6),
                (2, 6, 0, 12, 6),
                (3, 14, 2, 18, 6),
            ],
        );
        let s = match_instances(&p, &truth(), W, everywhere);
        assert_eq!((s.predicted, s.truth, s.matched), (4, 3, 2));
        let sc = s.scores();
        assert!((sc.precision - 0.5).abs() < 1e-12 && (sc.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((sc.f1 - 4.0 / 7.0).abs() < 1e-12, "{}", sc.f1);
    }

    /// The two touching squares predicted as one object: IoU 0.5 with each, so both are
    /// missed; the lone square still matches.
    #[test]
    fn merged_objects_are_missed() {
        let p = map(W, H, &[(1, 0, 0, 12, 6), (2, 14, 2, 18, 6)]);
        let s = match_instances(&p, &truth(), W, everywhere);
        assert_eq!((s.predicted, s.truth, s.matched), (2, 3, 1));
        assert!((s.scores().f1 - 0.4).abs() < 1e-12);
    }

    /// Shifted by one pixel a 6×6 square keeps IoU 30/42 > 0.5; by three it falls to
    /// 18/54 and no longer matches.
    #[test]
    fn shifted_objects_match_while_they_overlap_enough() {
        let t = map(W, H, &[(1, 2, 2, 8, 8)]);
        let near = map(W, H, &[(5, 3, 2, 9, 8)]);
        assert_eq!(match_instances(&near, &t, W, everywhere).matched, 1);
        let far = map(W, H, &[(5, 5, 2, 11, 8)]);
        let s = match_instances(&far, &t, W, everywhere);
        assert_eq!((s.predicted, s.truth, s.matched), (1, 1, 0));
        assert_eq!(s.scores().f1, 0.0);
    }

    /// A crop counts only what lies in it; objects outside are neither predicted nor true.
    #[test]
    fn a_crop_scores_only_its_pixels() {
        let p = map(W, H, &[(1, 0, 0, 12, 6), (2, 14, 2, 18, 6)]);
        let right = |x: usize, _: usize| x >= 13;
        let s = match_instances(&p, &truth(), W, right);
        assert_eq!((s.predicted, s.truth, s.matched), (1, 1, 1));
        let none = InstanceTally::default().scores();
        assert_eq!((none.precision, none.recall, none.f1), (1.0, 1.0, 1.0));
        let nothing_found = match_instances(&vec![0; W * H], &truth(), W, everywhere);
        assert_eq!(nothing_found.scores().f1, 0.0);
    }
}
