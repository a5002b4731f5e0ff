//! Objects from a segmentation: the foreground probability → a label map with one number per
//! object (`--emit instances`, and the instance scores of `aestream eval`).
//!
//! The foreground is the probability (optionally Gaussian-smoothed) above
//! `instances.threshold`. Touching objects are parted by a seeded watershed on the distance
//! to the background ([`watershed`]): a roundish nucleus has one peak of distance at its
//! centre, two touching ones have two peaks with a saddle at their neck. Each peak that
//! stands at least `instances.h` above its saddle seeds one object (the h-maxima), the
//! flood grows the seeds over the foreground, and objects under `instances.min_area` pixels
//! are dropped. The labels are renumbered 1..N in raster order of each object's first pixel,
//! so they are contiguous and the same input always gives the same map.
//!
//! `imageproc` gives the Euclidean distance transform (Felzenszwalb & Huttenlocher, exact,
//! linear time) and the Gaussian blur; it has no watershed, which [`watershed`] hand-writes.

use image::{ImageBuffer, Luma};

use super::watershed;
use crate::config::InstancesConfig;
use crate::error::{Error, Result};

/// A label map: 0 background, objects 1..=count.
#[derive(Debug, Clone, PartialEq)]
pub struct Instances {
    pub width: usize,
    pub height: usize,
    pub labels: Vec<u32>,
    pub count: u32,
}

/// Cuts the foreground of `prob` (`w × h`, row-major) into objects as `cfg` says.
pub fn label(prob: &[f32], w: usize, h: usize, cfg: &InstancesConfig) -> Result<Instances> {
    let n = w * h;
    if prob.len() != n {
        return Err(Error::Other(format!(
            "instances: a probability map of {} values is not {w}×{h}",
            prob.len()
        )));
    }
    // The floods pack a pixel's index in 32 bits, and imageproc's images are u32-sized.
    if n >= 1 << 32 {
        return Err(Error::Other(format!(
            "instances: a {w}×{h} frame has too many pixels to label (at most 2³² − 1)"
        )));
    }
    // `>` leaves NaN out of the foreground.
    let above = |p: &[f32]| -> Vec<bool> { p.iter().map(|&v| v > cfg.threshold).collect() };
    let inside = if cfg.smooth > 0.0 {
        above(&blur(prob, w, h, cfg.smooth))
    } else {
        above(prob)
    };
    if !inside.iter().any(|&v| v) {
        return Ok(Instances {
            width: w,
            height: h,
            labels: vec![0; n],
            count: 0,
        });
    }
    let dist = distance_to_background(&inside, w, h);
    let (mut labels, _) = watershed::h_maxima(&dist, &inside, w, h, cfg.h);
    // Flood from the centres outwards: altitude is the negated distance.
    let altitude: Vec<f32> = dist.iter().map(|d| -d).collect();
    drop(dist);
    watershed::flood(&altitude, &mut labels, &inside, w, h);
    let count = renumber(&mut labels, cfg.min_area);
    Ok(Instances {
        width: w,
        height: h,
        labels,
        count,
    })
}

/// `prob` blurred by a Gaussian of σ = `sigma` pixels (edges padded by continuity).
fn blur(prob: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    let img: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(w as u32, h as u32, prob.to_vec())
            .expect("the length was checked against w × h");
    imageproc::filter::gaussian_blur_f32(&img, sigma).into_raw()
}

/// Each pixel's Euclidean distance to the nearest background pixel (0 on the background).
/// A frame with no background at all is one plateau: every pixel gets the frame's diagonal,
/// so it is one object rather than infinities.
fn distance_to_background(inside: &[bool], w: usize, h: usize) -> Vec<f32> {
    // imageproc measures the distance to the nearest non-zero pixel: the background is
    // marked 255 here.
    let bg: image::GrayImage = ImageBuffer::from_raw(
        w as u32,
        h as u32,
        inside.iter().map(|&v| if v { 0 } else { 255 }).collect(),
    )
    .expect("the length was checked against w × h");
    let far = ((w * w + h * h) as f64).sqrt() as f32;
    imageproc::distance_transform::euclidean_squared_distance_transform(&bg)
        .into_raw()
        .into_iter()
        .map(|d2| {
            let d = d2.sqrt() as f32;
            if d.is_finite() {
                d.min(far)
            } else {
                far
            }
        })
        .collect()
}

/// Drops the objects of fewer than `min_area` pixels and numbers the rest 1..=N in raster
/// order of their first pixel; returns N.
fn renumber(labels: &mut [u32], min_area: u32) -> u32 {
    let top = labels.iter().copied().max().unwrap_or(0) as usize;
    let mut area = vec![0u32; top + 1];
    for &l in labels.iter() {
        area[l as usize] += 1;
    }
    // 0: not yet seen; u32::MAX: dropped.
    let mut new = vec![0u32; top + 1];
    let mut count = 0u32;
    for l in labels.iter_mut() {
        if *l == 0 {
            continue;
        }
        let old = *l as usize;
        if new[old] == 0 {
            new[old] = if area[old] < min_area {
                u32::MAX
            } else {
                count += 1;
                count
            };
        }
        *l = if new[old] == u32::MAX { 0 } else { new[old] };
    }
    count
}

/// The label map as a 16-bit grey PNG. A frame of more than 65535 objects cannot be written
/// in 16 bits: that is an error naming the count, not a wrapped label.
pub fn png(inst: &Instances, what: &str) -> Result<Vec<u8>> {
    if inst.count > u32::from(u16::MAX) {
        return Err(Error::Encode {
            what: what.to_string(),
            message: format!(
                "{} objects do not fit a 16-bit label map (at most 65535)",
                inst.count
            ),
        });
    }
    let data = inst.labels.iter().map(|&l| l as u16).collect();
    super::postprocess::png_u16(inst.width, inst.height, data, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disc of radius `r` at `(cx, cy)` drawn into `p` with probability `v`.
    fn disc(p: &mut [f32], w: usize, (cx, cy): (f32, f32), r: f32, v: f32) {
        for (i, px) in p.iter_mut().enumerate() {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            if (x - cx).powi(2) + (y - cy).powi(2) <= r * r {
                *px = v;
            }
        }
    }

    fn cfg() -> InstancesConfig {
        InstancesConfig {
            threshold: 0.5,
            smooth: 0.0,
            h: 1.0,
            min_area: 10,
        }
    }

    /// Two discs of radius 10 whose centres are 16 apart overlap in a neck: one connected
    /// foreground, two objects, each holding its own centre and about half the pixels.
    #[test]
    fn touching_discs_are_split_and_a_single_disc_stays_whole() {
        let (w, h) = (64, 40);
        let mut p = vec![0.0; w * h];
        disc(&mut p, w, (22.0, 20.0), 10.0, 0.9);
        disc(&mut p, w, (38.0, 20.0), 10.0, 0.9);
        let inst = label(&p, w, h, &cfg()).unwrap();
        assert_eq!(inst.count, 2, "two touching discs");
        let (a, b) = (inst.labels[20 * w + 22], inst.labels[20 * w + 38]);
        assert!(a != 0 && b != 0 && a != b, "centres {a} and {b}");
        let fg = p.iter().filter(|&&v| v > 0.5).count();
        let labelled = inst.labels.iter().filter(|&&l| l != 0).count();
        assert_eq!(labelled, fg, "every foreground pixel is labelled");
        let size_a = inst.labels.iter().filter(|&&l| l == a).count();
        assert!(
            (size_a as f64 / fg as f64 - 0.5).abs() < 0.05,
            "{size_a} of {fg}"
        );
        // Each side of the neck keeps its own label.
        assert!(inst.labels[20 * w + 15] == a && inst.labels[20 * w + 45] == b);

        let mut one = vec![0.0; w * h];
        disc(&mut one, w, (30.0, 20.0), 12.0, 0.8);
        let inst = label(&one, w, h, &cfg()).unwrap();
        assert_eq!(inst.count, 1);
        let whole = one.iter().filter(|&&v| v > 0.5).count();
        assert_eq!(inst.labels.iter().filter(|&&l| l == 1).count(), whole);
    }

    /// Labels are 1..N with none missing, numbered in raster order; a speck under min_area
    /// is dropped without leaving a gap in the numbers.
    #[test]
    fn labels_are_contiguous_from_one() {
        let (w, h) = (80, 60);
        let mut p = vec![0.0; w * h];
        let centres = [(10.0, 10.0), (50.0, 12.0), (20.0, 40.0), (60.0, 45.0)];
        for c in centres {
            disc(&mut p, w, c, 6.0, 1.0);
        }
        p[30 * w + 40] = 1.0; // one pixel: under min_area
        let inst = label(&p, w, h, &cfg()).unwrap();
        assert_eq!(inst.count, 4);
        let mut seen: Vec<u32> = inst.labels.iter().copied().filter(|&l| l != 0).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert_eq!(inst.labels[30 * w + 40], 0, "the speck is dropped");
        // Raster order of first pixels: (10,10) starts at row 4, (50,12) at row 6, ...
        let at = |(x, y): (f32, f32)| inst.labels[y as usize * w + x as usize];
        assert_eq!(centres.map(at), [1, 2, 3, 4]);
    }

    /// Nothing above the threshold (black, constant, NaN) gives no objects; a frame all
    /// foreground is one object; tiny frames and smoothing do not panic.
    #[test]
    fn blank_and_degenerate_frames() {
        let smooth = InstancesConfig {
            smooth: 2.0,
            ..cfg()
        };
        for c in [cfg(), smooth.clone()] {
            for v in [0.0, 0.3, f32::NAN] {
                let inst = label(&vec![v; 32 * 24], 32, 24, &c).unwrap();
                assert_eq!(inst.count, 0, "constant {v}");
                assert!(inst.labels.iter().all(|&l| l == 0));
            }
            let full = label(&vec![1.0; 32 * 24], 32, 24, &c).unwrap();
            assert_eq!(full.count, 1);
            for (w, h) in [(1, 1), (1, 7), (5, 1)] {
                label(
                    &vec![1.0; w * h],
                    w,
                    h,
                    &InstancesConfig {
                        min_area: 0,
                        ..c.clone()
                    },
                )
                .unwrap();
            }
        }
        assert!(label(&[1.0; 5], 2, 2, &cfg()).is_err());
    }

    #[test]
    fn the_png_is_16_bit_and_holds_the_labels() {
        let inst = Instances {
            width: 3,
            height: 1,
            labels: vec![0, 1, 300],
            count: 300,
        };
        let bytes = png(&inst, "t").unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!(img.color(), image::ColorType::L16);
        assert_eq!(img.into_luma16().into_raw(), vec![0, 1, 300]);
        let many = Instances {
            count: 70_000,
            ..inst
        };
        assert!(png(&many, "t").is_err());
    }
}
