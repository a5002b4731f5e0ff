//! Evaluating a segmentation net: IoU, Dice and pixel accuracy of the thresholded foreground
//! against the masks, optionally within a crop; with object label maps (`--instances`), the
//! objects `--emit instances` would write matched against the true ones ([`super::instances`]).

use std::time::Instant;

use super::instances::{match_instances, InstanceTally};
use super::montage::{tile_of, write_montage, MONTAGE_COLUMNS};
use super::score::score_segmentation;
use super::{EvalArgs, EvalReport, Noise, SegmentScores};
use crate::config::PipelineConfig;
use crate::data::dataset;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::stage::instances;
use crate::stage::tiling::TilePlan;

pub(super) fn evaluate_segment(
    cfg: &PipelineConfig,
    model: &dyn Model,
    args: &EvalArgs,
) -> Result<EvalReport> {
    let masks = args.masks.as_ref().ok_or_else(|| Error::Config {
        origin: "--masks".into(),
        message: "segmentation eval needs --masks (a mask file, or a folder of masks named as the images)".into(),
    })?;
    let started = Instant::now();
    let pairs = dataset::load_pairs(&args.data, masks, &cfg.normalise)?;
    let truths = match &args.instances {
        Some(l) => Some(dataset::load_instance_labels(&args.data, l, &pairs)?),
        None => None,
    };
    let spec = model.spec();
    let plan = TilePlan::for_pipeline(cfg, spec.size_multiple);
    let mut tiles = Vec::new();
    let include = |x, y| dataset::in_region(args.crop, x, y);
    // Objects of each frame, cut as the pipeline's `--emit instances` cuts them.
    let (mut objects, mut at) = (Ok(InstanceTally::default()), 0);
    let tally = score_segmentation(
        model,
        &pairs,
        &plan,
        (&cfg.infer).into(),
        include,
        |pair, prob| {
            if let (Some(truths), Ok(tally)) = (&truths, &mut objects) {
                match instances::label(prob, pair.w, pair.h, &cfg.instances) {
                    Ok(p) => tally.add(match_instances(&p.labels, &truths[at], pair.w, include)),
                    Err(e) => objects = Err(e),
                }
            }
            at += 1;
            if tiles.len() < 3 * MONTAGE_COLUMNS {
                let img: Vec<f32> = pair.image.iter().map(|v| v.clamp(0.0, 1.0)).collect();
                tiles.push((0, tile_of(&img, pair.w, pair.h)));
                tiles.push((1, tile_of(&pair.mask, pair.w, pair.h)));
                let lab: Vec<f32> = prob.iter().map(|&p| f32::from(p > 0.5)).collect();
                tiles.push((2, tile_of(&lab, pair.w, pair.h)));
            }
        },
    )?;
    let objects = objects?;
    if let Some(m) = &args.montage {
        write_montage(m, &tiles, &["input", "true mask", "output"])?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        pipeline: cfg.name.clone(),
        data: args.data.display().to_string(),
        noise: Noise::None,
        frames: pairs.len(),
        mse: tally.squared_error / tally.pixels.max(1) as f64,
        seconds,
        seconds_per_frame: seconds / pairs.len().max(1) as f64,
        denoise: None,
        reconstruct: None,
        segment: Some(SegmentScores {
            iou: tally.overlap.iou(),
            dice: tally.overlap.dice(),
            pixel_accuracy: tally.correct as f64 / tally.pixels.max(1) as f64,
            crop: args.crop,
            instances: truths.is_some().then(|| objects.scores()),
        }),
    })
}
