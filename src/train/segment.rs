//! Training the segmentation net: random patches of the training region with their masks,
//! BCE on the logits; validated by IoU of the foreground outside the training region.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;

use super::loss::loss_of;
use super::{Job, TrainArgs, Val};
use crate::config::PipelineConfig;
use crate::data::dataset;
use crate::error::{Error, Result};
use crate::eval::score::score_segmentation;
use crate::model::{Net, NetModel};
use crate::stage::tiling::TilePlan;

/// Segmentation: random patches of the training region with their masks, BCE on the logits;
/// validated by IoU of the foreground outside the training region.
pub(super) fn segment_job<'a>(
    cfg: &'a PipelineConfig,
    args: &'a TrainArgs,
    net: &'a Net,
    model: &'a NetModel,
) -> Result<Job<'a>> {
    let tc = &cfg.train;
    let masks = args.masks.as_ref().ok_or_else(|| Error::Config {
        origin: "--masks".into(),
        message: "segmentation training needs --masks (a mask file or folder)".into(),
    })?;
    let pairs = dataset::load_pairs(&args.data, masks, &cfg.normalise)?;
    let names: Vec<String> = pairs.iter().map(|p| p.name.clone()).collect();
    let pairs = Arc::new(pairs);
    let pairs2 = pairs.clone();
    let dev = args.device.clone();
    let p = tc.patch;
    let plan = TilePlan::for_pipeline(cfg, net.size_multiple());
    let region = tc.region;
    Ok(Job {
        step_loss: Box::new(move |rng| {
            let mut xs = Vec::with_capacity(tc.batch * p * p);
            let mut ys = Vec::with_capacity(tc.batch * p * p);
            for _ in 0..tc.batch {
                let (x, y) = dataset::pair_patch(&pairs, region, p, rng)?;
                xs.extend(x);
                ys.extend(y);
            }
            let x = Tensor::from_vec(xs, (tc.batch, p, p, 1), &dev)?;
            let y = Tensor::from_vec(ys, (tc.batch, p, p, 1), &dev)?;
            Ok(loss_of(net, tc.loss, &net.forward_raw(&x)?.raw, &y)?)
        }),
        validate: Box::new(move || {
            // With a training region, validate on everything outside it.
            let tally = score_segmentation(
                model,
                &pairs2,
                &plan,
                (&cfg.infer).into(),
                |x, y| region.is_none() || !dataset::in_region(region, x, y),
                |_, _| {},
            )?;
            let m = tally.overlap;
            Ok(Val {
                loss: 1.0 - m.iou(),
                measure: "1 − IoU",
                metrics: BTreeMap::from([
                    ("iou".to_string(), m.iou()),
                    ("dice".to_string(), m.dice()),
                ]),
                line: format!("val IoU {:.4}, Dice {:.4}", m.iou(), m.dice()),
            })
        }),
        data: args.data.display().to_string(),
        train_names: names.clone(),
        val_names: names,
        pretrain: Vec::new(),
    })
}
