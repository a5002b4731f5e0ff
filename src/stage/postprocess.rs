//! The post-process stage: model outputs → merged, un-padded, clipped planes, plus the label
//! maps and overlays that segmentation outputs are drawn from.

use super::encode::Code;
use super::normalise::Prepared;
use super::tiling::merge;
use crate::config::PostprocessConfig;
use crate::error::{Error, Result};
use crate::frame::Planes;

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
    for units in &prepared.planes {
        let outs = &outputs[at..at + units.len()];
        at += units.len();
        let mut p = merge(units, outs, prepared.width, prepared.height);
        if cfg.clip {
            p.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        }
        planes.push(p);
    }
    Finished {
        planes: Planes {
            width: prepared.width,
            height: prepared.height,
            planes,
            alpha: prepared.alpha,
        },
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

/// The input with its foreground tinted and the outline of each region drawn solid.
pub fn overlay(input: &Planes, labels: &[u8]) -> Planes {
    let (w, h) = (input.width, input.height);
    let grey;
    let rgb: [&Vec<f32>; 3] = if input.is_colour() {
        [&input.planes[0], &input.planes[1], &input.planes[2]]
    } else {
        grey = input.planes[0].clone();
        [&grey, &grey, &grey]
    };
    let mut out: Vec<Vec<f32>> = rgb.iter().map(|p| (*p).clone()).collect();
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
    }
}

pub(super) fn png_u8(w: usize, h: usize, data: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    let img = image::GrayImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| Error::Other(format!("{what}: label map of the wrong size")))?;
    let mut out = Vec::new();
    image::DynamicImage::ImageLuma8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| Error::Encode {
            what: what.to_string(),
            message: e.to_string(),
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
