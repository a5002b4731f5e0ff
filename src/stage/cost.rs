//! What a frame will cost in memory through the stages, from its header alone.
//!
//! A few bytes of PNG, GIF, BMP-RLE or TIFF-deflate can declare a frame of tens of megapixels;
//! the decoder's own limits bound only its own allocations, while the stages after it hold the
//! frame as 32-bit floats, cut it into overlapping tiles, keep the model's outputs beside them
//! and (with the SURE blend) two more copies. So the per-frame budget is checked against the
//! most any one stage holds at once for this frame, computed from its size, channels and bit
//! depth and the pipeline's settings, before any pixel is decoded.
//!
//! The terms follow the code of each stage (see the comments), and were checked against what
//! the stages really allocate: `tests/frame_cost.rs` runs every stage on frames of several
//! shapes under a counting allocator and asserts the estimate bounds the measured peak (and is
//! not far above it). Not counted: the model's working memory for one forward pass, which
//! `infer.max_batch_pixels` bounds once for the whole process, not per frame.

use crate::config::{ColourMode, PipelineConfig};
use crate::frame::Header;
use crate::model::Task;
use crate::stage::tiling::{unit_pixels, TilePlan};

/// Bytes a frame holds at the peak of each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    pub decode: u64,
    pub normalise: u64,
    pub infer: u64,
    pub postprocess: u64,
    pub encode: u64,
}

impl Cost {
    /// The most the frame holds at any one time.
    pub fn peak(&self) -> u64 {
        [
            self.decode,
            self.normalise,
            self.infer,
            self.postprocess,
            self.encode,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// What a pipeline does with a frame that changes its cost.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub plan: TilePlan,
    /// Fixed-size models: one grey unit of this size.
    pub fixed_size: Option<(usize, usize)>,
    /// The decoded frame is kept to the end (overlay outputs).
    pub keep_input: bool,
}

const F32: u64 = 4;
/// Cutting a segmentation into objects (`stage::instances`), beside the probability plane:
/// masks, distances (f64 while imageproc computes them), the reconstruction, marker labels, the
/// plateau walk's stacks, the flood's queue (16 bytes per foreground pixel), then the 16-bit
/// map and its PNG. At most this many bytes per pixel, as `tests/frame_cost.rs` measures on a
/// frame all foreground (one plateau, the longest walk) and on scattered objects.
const INSTANCES_PER_PIXEL: u64 = 40;
/// The codecs' own working memory beside the pixels (row filters, deflate windows, growing
/// output buffers): measured at under 2 MiB for the PNG decoder and encoder.
const CODEC_WORK: u64 = 2 << 20;

/// The frame's cost through the pipeline `cfg` (raw bytes `raw` included until decode ends).
pub fn estimate(h: &Header, raw: u64, cfg: &PipelineConfig, shape: &Shape) -> Cost {
    let (w, ht) = (h.size.0 as u64, h.size.1 as u64);
    let px = w.saturating_mul(ht);
    let m = |k: u64| px.saturating_mul(k);
    let colour_planes: u64 = if h.colour { 3 } else { 1 };
    let alpha = u64::from(h.alpha);
    // Planes::from_dynamic: the decoded image as stored, then at 16 bits (RGBA for colour,
    // grey+alpha otherwise), then one f32 plane per channel (alpha included).
    let decoded = m(h.bytes_per_pixel as u64);
    let sixteen = m(if h.colour { 8 } else { 4 });
    let planes = m(F32 * (colour_planes + alpha));
    let decode = raw
        .saturating_add(CODEC_WORK)
        .saturating_add(decoded)
        .saturating_add(sixteen)
        .saturating_add(planes);
    let input_kept = if shape.keep_input { planes } else { 0 };

    // normalise: a grey model of a colour frame sees its luma; a 16-bit frame's stretch
    // sorts a copy of one plane; then each model plane is cut into units.
    let grey = cfg.normalise.colour == ColourMode::Grey || shape.fixed_size.is_some();
    let model_planes = if grey { 1 } else { colour_planes };
    let luma = if grey && h.colour { m(F32) } else { 0 };
    let sort = m(F32);
    let unit_px = match shape.fixed_size {
        Some((fw, fh)) => (fw as u64) * (fh as u64),
        None => unit_pixels(w as usize, ht as usize, &shape.plan),
    };
    let units = unit_px.saturating_mul(F32 * model_planes);
    let normalise = [planes, luma, sort, units, input_kept]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b));

    // infer (serving::workers::infer_worker, stage::infer): the prepared units, the copy
    // handed to the model, one output per unit, and with the SURE blend the plain outputs
    // and divergences, then per plane three gathered planes, the blend and its weights.
    let model_plane = match shape.fixed_size {
        Some(_) => unit_px.saturating_mul(F32),
        None => m(F32),
    };
    let per_unit_copies = if cfg.infer.sure_blend { 5 } else { 3 };
    let blend = if cfg.infer.sure_blend {
        model_plane.saturating_mul(6)
    } else {
        0
    };
    let alpha_plane = m(F32 * alpha);
    let infer = units
        .saturating_mul(per_unit_copies)
        .saturating_add(blend)
        .saturating_add(alpha_plane)
        .saturating_add(input_kept);

    // post-process: the units and their outputs until the merged planes are made.
    let merged = model_plane.saturating_mul(model_planes);
    let postprocess = units
        .saturating_mul(2)
        .saturating_add(merged)
        .saturating_add(alpha_plane)
        .saturating_add(input_kept);

    // encode: the planes, interleaved at the output depth, the encoder's filtered rows and
    // its output (noise does not compress: as large as the samples, in a buffer that grows by
    // doubling).
    let out_px = merged / F32;
    let depth = if h.bytes_per_pixel > h.channels { 2 } else { 1 };
    let interleaved = (out_px + m(alpha)).saturating_mul(depth);
    // A segmenter may be asked for objects (HTTP requests choose their kinds): counted always.
    let objects = if cfg.model.arch.task() == Task::Segment {
        m(INSTANCES_PER_PIXEL)
    } else {
        0
    };
    let encode = merged
        .saturating_add(objects)
        .saturating_add(alpha_plane)
        .saturating_add(CODEC_WORK)
        .saturating_add(interleaved.saturating_mul(4))
        .saturating_add(input_kept.saturating_mul(2));
    Cost {
        decode,
        normalise,
        infer,
        postprocess,
        encode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PadMode;

    fn shape() -> Shape {
        Shape {
            plan: TilePlan {
                multiple: 8,
                tile: 512,
                overlap: 32,
                pad: PadMode::Reflect,
            },
            fixed_size: None,
            keep_input: false,
        }
    }

    fn rgb(w: u32, h: u32) -> Header {
        Header {
            size: (w, h),
            channels: 3,
            bytes_per_pixel: 3,
            colour: true,
            alpha: false,
        }
    }

    /// The 64-megapixel colour frame a few KB of PNG can declare costs gigabytes in the
    /// stages after decode: what the old default admitted.
    #[test]
    fn a_large_colour_frame_costs_gigabytes_after_decode() {
        let cfg = PipelineConfig::load("denoise").unwrap();
        let c = estimate(&rgb(8000, 8000), 4000, &cfg, &shape());
        assert!(c.infer > 4 << 30, "{c:?}");
        assert!(c.infer > c.decode, "{c:?}");
        assert_eq!(c.peak(), c.infer);
        // The default per-frame budget refuses it, and admits an 8-megapixel colour photo
        // and a 16-megapixel grey frame.
        let budget = cfg.budget.max_frame_bytes();
        assert!(c.peak() > budget);
        let photo = estimate(&rgb(3264, 2448), 8 << 20, &cfg, &shape()).peak();
        assert!(photo <= budget, "{} MiB", photo >> 20);
        let grey = Header {
            size: (4000, 4000),
            channels: 1,
            bytes_per_pixel: 1,
            colour: false,
            alpha: false,
        };
        let grey = estimate(&grey, 8 << 20, &cfg, &shape()).peak();
        assert!(grey <= budget, "{} MiB", grey >> 20);
    }

    /// A thin frame pads each tile up to the model's multiple: its units cost far more than
    /// its pixels, and the estimate counts them, not the pixels.
    #[test]
    fn thin_frames_are_counted_by_their_padded_units() {
        let cfg = PipelineConfig::load("denoise").unwrap();
        let thin = estimate(&rgb(1, 1 << 20), 100, &cfg, &shape());
        let square = estimate(&rgb(1024, 1024), 100, &cfg, &shape());
        assert!(thin.infer > 4 * square.infer, "{thin:?} vs {square:?}");
    }
}
