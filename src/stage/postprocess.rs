//! The post-process stage: model outputs → merged, un-padded, clipped planes, plus the label
//! maps and overlays that segmentation outputs are drawn from.
//!
//! An image output is mapped back through the stretch normalise applied
//! ([`Prepared::levels`]) before it is clipped, so a denoised 16-bit frame comes back in the
//! input's intensity range, and it keeps the input's bit depth ([`Prepared::depth`]).

use super::encode::Code;
use super::normalise::Prepared;
use super::tiling::merge;
use crate::config::PostprocessConfig;
use crate::error::{Error, Result};
use crate::frame::{stretch_percentiles, Planes};

/// A frame's results after the model.
#[derive(Debug)]
pub struct Finished {
    /// The image-like output (denoised frame, reconstruction, foreground probability).
    pub planes: Planes,
    /// The latent code, if the model has one and it was asked for.
    pub code: Option<Code>,
    /// The decoded input, when an output draws on it.
    pub input: Option<Planes>,
}

/// Reassembles a frame from its units' outputs (in the order of `prepared.planes`).
pub fn assemble(
    prepared: Prepared,
    outputs: &[Vec<f32>],
    code: Option<Code>,
    cfg: &PostprocessConfig,
) -> Finished {
    let mut at = 0;
    let mut planes = Vec::with_capacity(prepared.planes.len());
    for (i, units) in prepared.planes.iter().enumerate() {
        let outs = &outputs[at..at + units.len()];
        at += units.len();
        let (pw, ph) = match &prepared.yuv {
            Some(y) => y.format.plane_size(i, prepared.width, prepared.height),
            None => (prepared.width, prepared.height),
        };
        let mut p = merge(units, outs, pw, ph);
        // Undone before clipping: a stretched frame's bright pixels are above 1 as the model
        // sees them and within [0, 1] again on the input's scale.
        if let Some(l) = prepared.levels.as_ref().and_then(|l| l.get(i)) {
            p.iter_mut().for_each(|v| *v = l.undo(*v));
        }
        if cfg.clip {
            p.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        }
        planes.push(p);
    }
    let mut planes = Planes {
        width: prepared.width,
        height: prepared.height,
        planes,
        alpha: prepared.alpha,
        depth: prepared.depth,
        yuv: prepared.yuv,
    };
    // `colour = "rgb"`: the model saw a YUV frame as RGB; back to the frame's layout.
    if let Some(y) = prepared.to_yuv {
        planes = crate::frame::y4m::planes::from_rgb(&planes, y);
    }
    Finished {
        planes,
        code,
        input: prepared.input,
    }
}

/// Foreground probability → class index per pixel (0 background, 1 foreground).
pub fn labels(prob: &[f32]) -> Vec<u8> {
    prob.iter().map(|&p| u8::from(p > 0.5)).collect()
}

/// Overlay colour of the foreground, and how strongly it is mixed in.
const TINT: [f32; 3] = [1.0, 0.15, 0.1];
const TINT_ALPHA: f32 = 0.45;

/// Low and high percentiles of the input's brightness that an overlay shows as black and
/// white (a viewer's auto-contrast: a few outliers saturate, the rest spans the range).
const DISPLAY_PERCENTILES: [f32; 2] = [0.5, 99.5];

/// The input with its foreground tinted and the outline of each region drawn solid, at the
/// input's bit depth. The input is contrast-stretched first ([`display_levels`]): a dim 16-bit
/// micrograph (levels 0–232 of 65535) would otherwise be a black picture with red on it.
pub fn overlay(input: &Planes, labels: &[u8]) -> Planes {
    // Drawn in RGB: a YUV frame's chroma planes are not at the labels' size.
    let converted;
    let input = if input.yuv.is_some() {
        converted = crate::frame::y4m::planes::to_rgb(input);
        &converted
    } else {
        input
    };
    let (w, h) = (input.width, input.height);
    let grey;
    let rgb: [&Vec<f32>; 3] = if input.is_colour() {
        [&input.planes[0], &input.planes[1], &input.planes[2]]
    } else {
        grey = input.planes[0].clone();
        [&grey, &grey, &grey]
    };
    let (offset, gain) = display_levels(input);
    let mut out: Vec<Vec<f32>> = rgb
        .iter()
        .map(|p| {
            p.iter()
                .map(|&v| ((v - offset) * gain).clamp(0.0, 1.0))
                .collect()
        })
        .collect();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if labels.get(i).copied().unwrap_or(0) == 0 {
                continue;
            }
            let edge = [(0isize, -1isize), (0, 1), (-1, 0), (1, 0)]
                .iter()
                .any(|(dx, dy)| {
                    let (nx, ny) = (x as isize + dx, y as isize + dy);
                    nx < 0
                        || ny < 0
                        || nx >= w as isize
                        || ny >= h as isize
                        || labels[ny as usize * w + nx as usize] == 0
                });
            let a = if edge { 1.0 } else { TINT_ALPHA };
            for c in 0..3 {
                out[c][i] = out[c][i] * (1.0 - a) + TINT[c] * a;
            }
        }
    }
    Planes {
        width: w,
        height: h,
        planes: out,
        alpha: None,
        depth: input.depth,
        yuv: None,
    }
}

/// The map `(offset, gain)` that shows `input` with contrast: its brightness's
/// [`DISPLAY_PERCENTILES`] go to 0 and 1, one map for all channels so colours keep their
/// balance. A flat frame (nothing to stretch) is shown as it is.
fn display_levels(input: &Planes) -> (f32, f32) {
    let mut luma = input.luma();
    let [lo, hi] = DISPLAY_PERCENTILES;
    let (offset, gain) = stretch_percentiles(&mut luma, lo, hi);
    // Below one 16-bit level between the percentiles there is no picture to bring out.
    if gain > 65535.0 {
        (0.0, 1.0)
    } else {
        (offset, gain)
    }
}

pub(super) fn png_u8(w: usize, h: usize, data: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    let img = image::GrayImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| Error::Other(format!("{what}: label map of the wrong size")))?;
    png_of(image::DynamicImage::ImageLuma8(img), what)
}

/// A 16-bit grey PNG: an object label map, or a probability on 0..65535.
pub(super) fn png_u16(w: usize, h: usize, data: Vec<u16>, what: &str) -> Result<Vec<u8>> {
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| Error::Other(format!("{what}: 16-bit map of the wrong size")))?;
    png_of(image::DynamicImage::ImageLuma16(img), what)
}

/// The foreground probability on 0..65535 (clamped to [0, 1] first; NaN is 0).
pub fn probability_u16(prob: &[f32]) -> Vec<u16> {
    prob.iter()
        .map(|&p| (p.clamp(0.0, 1.0) * 65535.0).round() as u16)
        .collect()
}

fn png_of(img: image::DynamicImage, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| Error::Encode {
            what: what.to_string(),
            message: e.to_string(),
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::frame::BitDepth;
    use crate::stage::normalise::Levels;
    use crate::stage::tiling::Unit;

    /// A stretched 16-bit frame's output comes back on the input's scale, then is clipped.
    #[test]
    fn image_outputs_are_mapped_back_and_keep_the_depth() {
        let (w, h) = (3, 1);
        let unit = Unit {
            data: vec![0.0; 3],
            uw: w,
            uh: h,
            src_x: 0,
            src_y: 0,
            dst_x: 0,
            dst_y: 0,
            keep_w: w,
            keep_h: h,
        };
        let prepared = Prepared {
            width: w,
            height: h,
            planes: vec![vec![unit]],
            alpha: None,
            input: None,
            depth: BitDepth::Sixteen,
            levels: Some(vec![Levels {
                offset: 0.001,
                gain: 100.0,
            }]),
            yuv: None,
            to_yuv: None,
        };
        let f = assemble(
            prepared,
            &[vec![0.5, 1.2, 500.0]],
            None,
            &PostprocessConfig::default(),
        );
        let p = &f.planes.planes[0];
        assert!(
            (p[0] - 0.006).abs() < 1e-6 && (p[1] - 0.013).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(p[2], 1.0, "clipped after mapping back");
        assert_eq!(f.planes.depth, BitDepth::Sixteen);
    }

    #[test]
    fn overlay_tints_foreground_and_outlines_it() {
        let input = Planes::grey(4, 3, vec![0.5; 12]);
        let mut l = vec![0u8; 12];
        l[5] = 1; // (1, 1): every neighbour is background, so it is an edge
        let o = overlay(&input, &l);
        assert_eq!(o.planes.len(), 3);
        assert_eq!(o.planes[0][5], TINT[0]);
        assert_eq!(o.planes[1][0], 0.5);
        assert_eq!(labels(&[0.2, 0.7, 0.5]), vec![0, 1, 0]);
    }

    #[test]
    fn probability_maps_onto_16_bits() {
        let p = [0.0, 0.5, 1.0, -0.2, 1.7, f32::NAN];
        assert_eq!(probability_u16(&p), vec![0, 32768, 65535, 0, 65535, 0]);
    }

    /// A dim 16-bit micrograph (levels 0–232 of 65535) is drawn stretched: its background
    /// spans grey to white instead of being near-black, the tint and outline still show, and
    /// the overlay stays 16-bit.
    #[test]
    fn overlay_of_a_dark_16_bit_frame_is_stretched() {
        let (w, h) = (32, 32);
        // A pattern of levels 0–232 (on the 0–1 scale the decoder gives), its middle square
        // labelled foreground.
        let level = |x: usize, y: usize| ((x * 7 + y * 3) % 233) as f32 / 65535.0;
        let data: Vec<f32> = (0..w * h).map(|i| level(i % w, i / w)).collect();
        let mut input = Planes::grey(w, h, data);
        input.depth = BitDepth::Sixteen;
        let fg = |x: usize, y: usize| (12..20).contains(&x) && (12..20).contains(&y);
        let l: Vec<u8> = (0..w * h).map(|i| u8::from(fg(i % w, i / w))).collect();
        let o = overlay(&input, &l);
        assert_eq!(o.depth, BitDepth::Sixteen);
        let bg: Vec<f32> = (0..w * h)
            .filter(|&i| !fg(i % w, i / w))
            .map(|i| o.planes[1][i])
            .collect();
        let mean = bg.iter().sum::<f32>() / bg.len() as f32;
        let max = bg.iter().fold(0f32, |m, &v| m.max(v));
        assert!(mean > 0.3, "background still dark: mean {mean}");
        assert!(max > 0.95, "the brightest background is not white: {max}");
        // On the unstretched frame the mean would have been ~0.0018: the test can fail.
        let raw_mean = input.planes[0].iter().sum::<f32>() / (w * h) as f32;
        assert!(raw_mean < 0.01, "{raw_mean}");
        let edge = 12 * w + 12;
        assert_eq!(
            [o.planes[0][edge], o.planes[1][edge], o.planes[2][edge]],
            TINT
        );
        let inside = 15 * w + 15;
        assert!(
            o.planes[0][inside] > o.planes[1][inside] + 0.2,
            "tinted red"
        );
    }
}
