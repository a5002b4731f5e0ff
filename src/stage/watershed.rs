//! A seeded watershed on a 2-D height map, in two steps: the markers (the h-maxima: peaks
//! that rise at least `h` above the lowest pass to any higher peak, one marker per peak
//! region) and the flooding, which grows every marker over the pixels of a mask in order of
//! altitude, so two objects that touch part along the valley between their peaks.
//!
//! Hand-written because no well-kept crate has it: `imageproc` (which `stage::instances` uses
//! for the distance transform and the smoothing) has neither a watershed nor the grey-level
//! reconstruction that h-maxima need. Both steps are priority-queue floods (Vincent & Soille
//! 1991; Vincent 1993), O(n log n), deterministic: ties are broken by arrival order, never by
//! a hash. All neighbourhoods are 8-connected. Pixels outside the mask take no part: they are
//! neither flooded nor walked through.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The 8 neighbours of pixel `i` of a `w × h` grid that lie on the grid.
fn neighbours(i: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = ((i % w) as isize, (i / w) as isize);
    const STEPS: [(isize, isize); 8] = [
        (-1, -1),
        (0, -1),
        (1, -1),
        (-1, 0),
        (1, 0),
        (-1, 1),
        (0, 1),
        (1, 1),
    ];
    STEPS.into_iter().filter_map(move |(dx, dy)| {
        let (nx, ny) = (x + dx, y + dy);
        (nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h)
            .then(|| ny as usize * w + nx as usize)
    })
}

/// `v` as an unsigned key in the order of `f32::total_cmp`, so heap entries pack into one
/// integer (the sign bit flipped for positives, all bits for negatives).
fn key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// A max-heap entry: the key above the pixel's index (indices fit 32 bits: see [`flood`]).
fn pack(k: u32, i: usize) -> u64 {
    (u64::from(k) << 32) | i as u64
}

/// The h-maxima of `height` within `inside`, as markers numbered 1..=M in raster order of
/// their first pixel (0 elsewhere), and M.
///
/// The regional maxima of the reconstruction by dilation of `height − depth` under `height`:
/// a peak whose top stands less than `depth` above the pass to a higher one is flattened into
/// it and seeds nothing of its own. Every 8-connected component of `inside` keeps at least one
/// marker (its highest peak), so flooding reaches all of it.
pub fn h_maxima(
    height: &[f32],
    inside: &[bool],
    w: usize,
    h: usize,
    depth: f32,
) -> (Vec<u32>, u32) {
    let n = w * h;
    debug_assert!(height.len() == n && inside.len() == n);
    // Reconstruction: each pixel rises to the highest level at which a path of pixels, each
    // at least that high in `height`, joins it to a lowered peak. A max-first flood: a pixel
    // is final when it leaves the heap at its present level (later, stale entries are skipped).
    let mut r: Vec<f32> = height.iter().map(|&v| v - depth).collect();
    let mut heap: BinaryHeap<u64> = (0..n)
        .filter(|&i| inside[i])
        .map(|i| pack(key(r[i]), i))
        .collect();
    while let Some(e) = heap.pop() {
        let p = (e & 0xffff_ffff) as usize;
        if (e >> 32) as u32 != key(r[p]) {
            continue;
        }
        let v = r[p];
        for q in neighbours(p, w, h) {
            if inside[q] {
                let nv = v.min(height[q]);
                if nv > r[q] {
                    r[q] = nv;
                    heap.push(pack(key(nv), q));
                }
            }
        }
    }
    drop(heap);
    regional_maxima(&r, inside, w, h)
}

/// The plateaus of `r` (8-connected pixels of one value, within `inside`) that no neighbour
/// rises above, numbered 1..=M in raster order of their first pixel.
fn regional_maxima(r: &[f32], inside: &[bool], w: usize, h: usize) -> (Vec<u32>, u32) {
    let n = w * h;
    let mut labels = vec![0u32; n];
    let mut seen = vec![false; n];
    // u32 indices (the caller keeps frames under 2³² pixels): a plateau may be the whole frame.
    let (mut plateau, mut stack): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
    let mut count = 0u32;
    for s in 0..n {
        if !inside[s] || seen[s] {
            continue;
        }
        let v = r[s];
        let mut top = true;
        plateau.clear();
        seen[s] = true;
        stack.push(s as u32);
        while let Some(p) = stack.pop() {
            plateau.push(p);
            for q in neighbours(p as usize, w, h) {
                if !inside[q] {
                    continue;
                }
                // Exact comparison on purpose: the reconstruction copies values, it does not
                // compute new ones, so a plateau's pixels hold the very same float.
                if r[q] > v {
                    top = false;
                } else if r[q] == v && !seen[q] {
                    seen[q] = true;
                    stack.push(q as u32);
                }
            }
        }
        if top {
            count += 1;
            for &p in &plateau {
                labels[p as usize] = count;
            }
        }
    }
    (labels, count)
}

/// Grows the `markers` (label per pixel, 0 = unlabelled) over the pixels of `inside`, lowest
/// `altitude` first; among equals, the pixel reached first goes first, so a plateau is shared
/// by distance. A pixel takes the label of the neighbour that reached it. Pixels of `inside`
/// that no marker can reach stay 0. `w × h` must be below 2³² (the caller checks).
pub fn flood(altitude: &[f32], markers: &mut [u32], inside: &[bool], w: usize, h: usize) {
    let n = w * h;
    debug_assert!(altitude.len() == n && markers.len() == n && inside.len() == n);
    // Min-heap on (altitude, arrival): the arrival count and the index share one u64.
    let mut heap: BinaryHeap<Reverse<(u32, u64)>> = BinaryHeap::new();
    let mut arrival = 0u64;
    let mut push = |heap: &mut BinaryHeap<_>, i: usize| {
        heap.push(Reverse((key(altitude[i]), (arrival << 32) | i as u64)));
        arrival += 1;
    };
    for i in 0..n {
        if markers[i] != 0 && inside[i] {
            push(&mut heap, i);
        }
    }
    while let Some(Reverse((_, e))) = heap.pop() {
        let p = (e & 0xffff_ffff) as usize;
        let l = markers[p];
        for q in neighbours(p, w, h) {
            if inside[q] && markers[q] == 0 {
                markers[q] = l;
                push(&mut heap, q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_order_of_floats() {
        let vs = [-1e9f32, -2.5, -0.0, 0.0, 1e-9, 0.5, 3.0, f32::MAX];
        for pair in vs.windows(2) {
            assert!(key(pair[0]) <= key(pair[1]), "{pair:?}");
        }
        assert!(key(-1.0) < key(1.0));
    }

    /// Two peaks 3 apart with a saddle 1 below the lower one: at h = 0.5 both seed a marker,
    /// at h = 2 only the higher one does.
    #[test]
    fn h_maxima_keep_only_deep_enough_peaks() {
        let height = [1.0, 3.0, 2.0, 4.0, 1.0];
        let inside = [true; 5];
        let (m, k) = h_maxima(&height, &inside, 5, 1, 0.5);
        assert_eq!((m, k), (vec![0, 1, 0, 2, 0], 2));
        // The lower peak is flattened into the higher one's plateau: one marker region.
        let (m, k) = h_maxima(&height, &inside, 5, 1, 2.0);
        assert_eq!((m, k), (vec![0, 1, 1, 1, 0], 1));
    }

    /// A pixel outside the mask is a wall: the two peaks are in separate components and each
    /// keeps its marker however large h is.
    #[test]
    fn each_component_keeps_a_marker() {
        let height = [1.0, 2.0, 0.0, 5.0, 1.0];
        let inside = [true, true, false, true, true];
        let (m, k) = h_maxima(&height, &inside, 5, 1, 100.0);
        assert_eq!(k, 2, "{m:?}");
        assert_eq!(m[2], 0);
    }

    #[test]
    fn flooding_parts_at_the_valley_and_stays_inside() {
        // Altitude is a valley profile: markers at both ends, the ridge at x = 4.
        let alt = [0.0, 1.0, 2.0, 3.0, 9.0, 2.0, 1.0, 0.0, 0.0];
        let inside = [true, true, true, true, true, true, true, true, false];
        let mut m = vec![1, 0, 0, 0, 0, 0, 0, 2, 0];
        flood(&alt, &mut m, &inside, 9, 1);
        assert_eq!(&m[..4], &[1, 1, 1, 1]);
        assert_eq!(&m[5..8], &[2, 2, 2]);
        assert!(m[4] == 1 || m[4] == 2);
        assert_eq!(m[8], 0, "outside the mask stays 0");
    }
}
