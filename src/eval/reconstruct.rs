//! Evaluating an autoencoder: reconstruction MSE of the frames (optionally corrupted first),
//! the code's length and sparsity, and, where there are labels, the 5-NN accuracy of the codes
//! against that of raw pixels; `--pca-fit` adds a PCA of the same code length as baseline.

use std::path::Path;
use std::time::Instant;

use rand::SeedableRng;

use super::montage::{tile_of, write_montage, MONTAGE_COLUMNS};
use super::score::recon_stats;
use super::{quantise, EvalArgs, EvalReport, Noise, ReconScores};
use crate::config::PipelineConfig;
use crate::data::dataset::{self, Sample};
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::Model;

/// Labels for a folder of frames from a `name,label` CSV.
fn read_labels(path: &Path, samples: &[Sample]) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut map = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let Some((name, label)) = line.rsplit_once(',') else {
            continue;
        };
        let l: u8 = label.trim().parse().map_err(|_| {
            Error::Other(format!(
                "{} line {}: label {label:?} is not 0-255",
                path.display(),
                i + 1
            ))
        })?;
        map.insert(name.trim().to_string(), l);
    }
    samples
        .iter()
        .map(|s| {
            map.get(&s.name)
                .copied()
                .ok_or_else(|| Error::Other(format!("{}: no label for {}", path.display(), s.name)))
        })
        .collect()
}

/// Loads frames and their labels; labelled CSV data with `train.per_class_train` is split into
/// (test frames, training frames) the way training split it.
fn load_labelled(path: &Path, cfg: &PipelineConfig) -> Result<(Vec<Sample>, Vec<Sample>)> {
    let all = dataset::load_samples(path, &[])?;
    let pc = cfg.train.per_class_train;
    if pc > 0 && all.iter().all(|s| s.label.is_some()) {
        let (train, test) = dataset::split(all, pc, cfg.train.val_fraction);
        return Ok((test, train));
    }
    Ok((all, Vec::new()))
}

pub(super) fn evaluate_reconstruct(
    cfg: &PipelineConfig,
    model: &dyn Model,
    args: &EvalArgs,
) -> Result<EvalReport> {
    let noise = args.noise.unwrap_or(Noise::None);
    let size = model
        .spec()
        .fixed_size
        .ok_or_else(|| Error::Other(format!("{}: the model needs `model.size`", cfg.origin)))?;
    let started = Instant::now();
    let (mut samples, split_fit) = load_labelled(&args.data, cfg)?;
    if samples.is_empty() {
        return Err(Error::Other(format!("{}: no frames", args.data.display())));
    }
    if let Some(l) = &args.labels {
        let labels = read_labels(l, &samples)?;
        samples
            .iter_mut()
            .zip(labels)
            .for_each(|(s, l)| s.label = Some(l));
    }
    let clean: Vec<Vec<f32>> = samples
        .iter()
        .map(|s| {
            let mut v = dataset::resized(s, size);
            quantise(&mut v);
            v
        })
        .collect();
    let noisy: Vec<Vec<f32>> = clean
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = c.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(i as u64));
            noise.apply(&mut v, &mut rng);
            v
        })
        .collect();
    let stats = recon_stats(model, &noisy, size)?;
    let n = clean.len();
    let mse = clean
        .iter()
        .zip(&stats.outputs)
        .map(|(c, o)| {
            let mut o = o.clone();
            quantise(&mut o);
            metrics::mse(&o, c)
        })
        .sum::<f64>()
        / n as f64;
    let code_len = stats.codes.first().map(Vec::len).unwrap_or(0);
    let active_per_frame = stats
        .codes
        .iter()
        .map(|c| c.iter().filter(|v| v.abs() >= 0.01).count() as f64 / c.len().max(1) as f64)
        .sum::<f64>()
        / n as f64;
    // PCA with as many components as the code has values.
    let mut pca_recons = None;
    let mut pca_components = code_len;
    let (mut pca_mse, mut pca_fit) = (None, None);
    if let Some(fit_path) = &args.pca_fit {
        let (test_part, train_part) = load_labelled(fit_path, cfg)?;
        let fit_samples = if train_part.is_empty() {
            test_part
        } else {
            train_part
        };
        let rows: Vec<Vec<f32>> = fit_samples
            .iter()
            .map(|s| {
                let mut v = dataset::resized(s, size);
                quantise(&mut v);
                v
            })
            .collect();
        pca_components = code_len.min(rows.len().saturating_sub(1));
        let pca = crate::eval::analysis::Pca::fit(&rows, pca_components).ok_or_else(|| {
            Error::Other(format!(
                "{}: too few frames to fit a PCA",
                fit_path.display()
            ))
        })?;
        let recons: Vec<Vec<f32>> = noisy.iter().map(|x| pca.reconstruct(x)).collect();
        let m = clean
            .iter()
            .zip(&recons)
            .map(|(c, r)| {
                let mut r = r.clone();
                quantise(&mut r);
                metrics::mse(&r, c)
            })
            .sum::<f64>()
            / n as f64;
        pca_mse = Some(m);
        pca_fit = Some(format!(
            "{} ({} frames, {} components)",
            fit_path.display(),
            rows.len(),
            pca_components
        ));
        pca_recons = Some(recons);
    }
    // k-NN on the codes, fitted on labelled codes from --knn-fit or the data's training split.
    let labels: Option<Vec<u8>> = samples.iter().map(|s| s.label).collect();
    let (mut knn, mut knn_px, mut knn_fit) = (None, None, None);
    if let Some(test_labels) = &labels {
        let fit_samples = match &args.knn_fit {
            Some(p) => {
                knn_fit = Some(p.display().to_string());
                let (a, b) = load_labelled(p, cfg)?;
                if b.is_empty() {
                    a
                } else {
                    b
                }
            }
            None => {
                knn_fit = Some(format!("{} (training split)", args.data.display()));
                split_fit
            }
        };
        let fit_labels: Option<Vec<u8>> = fit_samples.iter().map(|s| s.label).collect();
        if let (Some(fl), false) = (fit_labels, fit_samples.is_empty()) {
            let fit_frames: Vec<Vec<f32>> = fit_samples
                .iter()
                .map(|s| dataset::resized(s, size))
                .collect();
            let fit_stats = recon_stats(model, &fit_frames, size)?;
            knn = Some(crate::eval::analysis::knn_accuracy(
                &fit_stats.codes,
                &fl,
                &stats.codes,
                test_labels,
                5,
            ));
            knn_px = Some(crate::eval::analysis::knn_accuracy(
                &fit_frames,
                &fl,
                &clean,
                test_labels,
                5,
            ));
        } else {
            knn_fit = None;
        }
    }
    if let Some(m) = &args.montage {
        let (w, h) = size;
        let mut tiles = Vec::new();
        // Frames spread over the data set, not the first few (often one class or person).
        let cols = n.min(MONTAGE_COLUMNS);
        for i in (0..cols).map(|k| k * n / cols) {
            tiles.push((0, tile_of(&clean[i], w, h)));
            if noise != Noise::None {
                tiles.push((1, tile_of(&noisy[i], w, h)));
            }
            let mut o = stats.outputs[i].clone();
            o.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
            tiles.push((2, tile_of(&o, w, h)));
            if let Some(r) = &pca_recons {
                let mut r = r[i].clone();
                r.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
                tiles.push((3, tile_of(&r, w, h)));
            }
        }
        if pca_recons.is_none() {
            tracing::warn!(
                "{}: no PCA row (give --pca-fit with frames like those the model trained on)",
                m.display()
            );
        }
        // As the lecture's figure: the frames, the model's reconstructions (named by the
        // pipeline), and PCA's with the same number of values per frame.
        let pca_label = format!("PCA-{pca_components}");
        let original = match noise {
            Noise::None => "original",
            _ => "clean",
        };
        write_montage(
            m,
            &tiles,
            &[original, noise.row_label(), &cfg.name, &pca_label],
        )?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(EvalReport {
        pipeline: cfg.name.clone(),
        data: args.data.display().to_string(),
        noise,
        frames: n,
        mse,
        seconds,
        seconds_per_frame: seconds / n as f64,
        denoise: None,
        reconstruct: Some(ReconScores {
            code_len,
            pca_ratio: pca_mse.filter(|p| *p > 0.0).map(|p| mse / p),
            pca_mse,
            pca_fit,
            sparsity: stats.sparsity,
            active_per_frame,
            knn5_accuracy: knn,
            knn_fit,
            knn5_accuracy_pixels: knn_px,
        }),
        segment: None,
    })
}
