//! The trainer end to end on the shipped `denoise-fast` weights: a round swaps a better
//! candidate in and rejects a worse one, the moving average is what serves, a restart resumes
//! from the newest checkpoint, and the `noisy` target's SURE gate tracks the true MSE.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use super::*;
use crate::data::patches::{PatchSampler, TrainImage};
use crate::model::version::ModelVersion;
use crate::model::Model;
use crate::stage::corrupt;

/// A trainer on the shipped `denoise-fast` weights, small patches for speed.
fn trainer(ckpt: Option<Checkpoints>, tweak: impl Fn(&mut FinetuneConfig)) -> Finetuner {
    let mut cfg = PipelineConfig::load("denoise-fast").unwrap();
    cfg.finetune.patch = 32;
    cfg.finetune.batch = 4;
    cfg.finetune.lr = 5e-4;
    cfg.finetune.min_frames = 2;
    tweak(&mut cfg.finetune);
    let dev = Device::Cpu;
    // One read for both, as `run` does.
    let weights = cfg.read_weights(None).unwrap();
    let t = candle_core::safetensors::load_buffer(&weights.bytes, &dev).unwrap();
    let model: Arc<dyn Model> = Arc::from(cfg.model_from(&weights, &dev).unwrap());
    let g = Generation::new(
        cfg,
        model,
        ModelVersion::loaded("denoise-fast", b"base", b""),
        1,
    )
    .with_tensors(Arc::new(t));
    Finetuner::start(
        crate::serving::slot(g),
        Arc::new(Telemetry::new()),
        ckpt,
        None,
    )
    .unwrap()
}

/// A stream unlike the photos the model was trained on: hard-edged bars and blocks.
fn stream(n: usize) -> Vec<Planes> {
    (0..n)
        .map(|k| {
            let (w, h) = (64, 64);
            let v = (0..w * h)
                .map(|i| {
                    let (x, y) = (i % w, i / w);
                    let bar = ((x + k * 3) / (4 + k % 5)) % 2;
                    let block = ((x / 16) + (y / 16) + k) % 3;
                    0.15 + 0.5 * bar as f32 + 0.15 * block as f32
                })
                .collect();
            Planes::grey(w, h, v)
        })
        .collect()
}

fn feed(t: &mut Finetuner, n: usize) {
    for p in stream(n) {
        t.add(p);
    }
    assert!(t.ready());
}

#[test]
fn fine_tuning_on_a_small_stream_lowers_the_validation_loss() {
    let mut t = trainer(None, |_| {});
    feed(&mut t, 40);
    let (before, serving) = t.validate().unwrap();
    assert_eq!(before, serving, "the shadow starts as the serving model");
    for _ in 0..40 {
        t.step().unwrap();
    }
    let (after, _) = t.validate().unwrap();
    assert!(
        after < 0.9 * before,
        "validation loss {before:.4e} -> {after:.4e}"
    );
    // And the round swaps it in, under a new version.
    match t.round().unwrap() {
        Round::Swapped { .. } => {}
        r => panic!("{r:?}"),
    }
    assert!(t
        .slot
        .load()
        .version
        .to_string()
        .starts_with("denoise-fast-v1@"));
}

#[test]
fn the_candidate_is_the_moving_average_and_training_goes_on_from_the_shadow() {
    let mut t = trainer(None, |f| {
        f.ema = 0.5;
        // Swap whatever it is, to see exactly what gets served.
        f.min_improvement = -10.0;
    });
    feed(&mut t, 16);
    let mut after = vec![];
    for _ in 0..3 {
        t.step().unwrap();
        after.push(weights::snapshot(&t.vm).unwrap());
    }
    assert!(matches!(t.round().unwrap(), Round::Swapped { .. }));
    let served = t.slot.load_full().tensors.clone().unwrap();
    let shadow = weights::snapshot(&t.vm).unwrap();
    let diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let mut moved = 0.0f32;
    for (k, w3) in &after[2] {
        let (w1, w2) = (&after[0][k], &after[1][k]);
        let want = ((((w1 * 0.5).unwrap() + (w2 * 0.5).unwrap()).unwrap() * 0.5).unwrap()
            + (w3 * 0.5).unwrap())
        .unwrap();
        assert!(
            diff(&served[k], &want) < 1e-6,
            "{k}: served is not the average"
        );
        assert!(
            diff(&shadow[k], w3) == 0.0,
            "{k}: training weights were not restored"
        );
        moved = moved.max(diff(w3, &want));
    }
    assert!(moved > 0.0, "the steps changed nothing");
    // No autograd history is kept alive by the average or by snapshots (it leaked).
    for e in t.ema.as_ref().unwrap().values().chain(shadow.values()) {
        assert!(!e.track_op());
    }
}

#[test]
fn a_worse_candidate_is_rejected_and_never_served() {
    let mut t = trainer(None, |_| {});
    feed(&mut t, 16);
    // Spoil the shadow weights.
    // Seeded noise, in a fixed order of names: the same spoiled weights on every run.
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut shadow: Vec<(String, Tensor)> = weights::snapshot(&t.vm).unwrap().into_iter().collect();
    shadow.sort_by(|a, b| a.0.cmp(&b.0));
    let spoiled: HashMap<String, Tensor> = shadow
        .into_iter()
        .map(|(k, v)| {
            let n: Vec<f32> = (0..v.elem_count())
                .map(|_| 0.2 * rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect();
            let noise = Tensor::from_vec(n, v.shape(), v.device()).unwrap();
            (k, (v + noise).unwrap())
        })
        .collect();
    weights::set_vars(&t.vm, &spoiled, "spoiled").unwrap();
    let before = t.slot.load_full();
    match t.round().unwrap() {
        Round::Rejected { candidate, serving } => assert!(candidate > serving),
        r => panic!("{r:?}"),
    }
    assert!(Arc::ptr_eq(&before, &t.slot.load_full()));
    assert_eq!(t.tel.value("aestream_finetune_rejected_total"), 1.0);
    // Nothing better on record either: no rollback target.
    assert!(!t.rollback().unwrap());
}

#[test]
fn restart_resumes_from_the_newest_checkpoint_with_its_optimizer_state() {
    let dir = tempfile::tempdir().unwrap();
    let ck = || Checkpoints::new(dir.path().to_path_buf(), "denoise-fast", 3).unwrap();
    // Accept any candidate, so that each round writes a version.
    let mut t = trainer(Some(ck()), |f| f.min_improvement = -1.0);
    feed(&mut t, 16);
    for _ in 0..2 {
        for _ in 0..3 {
            t.step().unwrap();
        }
        assert!(matches!(t.round().unwrap(), Round::Swapped { .. }));
    }
    let serving = t.slot.load().version.clone();
    let state = t.optimizer_state();
    let r = ck().newest(&Device::Cpu).expect("a checkpoint");
    assert_eq!(r.number, 2);
    assert_eq!(r.meta.as_ref().unwrap().version, serving.to_string());
    assert_eq!(r.meta.as_ref().unwrap().steps, 6);
    // The line descends from the weights file the trainer started from: a restart serves the
    // checkpoint while the file is unchanged, and the file once it was replaced.
    let file = ModelVersion::loaded("denoise-fast", b"base", b"");
    let replaced = ModelVersion::loaded("denoise-fast", b"new weights", b"");
    assert_eq!(
        r.meta.as_ref().unwrap().base_weights,
        Some(file.weights_id())
    );
    r.descends_from(&file).unwrap();
    let e = r.descends_from(&replaced).unwrap_err().to_string();
    assert!(e.contains(&replaced.weights_id()), "{e}");
    assert_eq!(r.resume().base_weights, Some(file.weights_id()));
    let opt = r.optimizer.clone().expect("optimizer state");
    for (k, v) in &state.moments {
        let d = (v - &opt.moments[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
    }
    // A new trainer (the restarted daemon) serves v2 and continues at step 6.
    let cfg = t.cfg.clone();
    let resume = r.resume();
    let g = restored_generation(&cfg, r, &Device::Cpu, 1).unwrap();
    assert_eq!(g.version, serving);
    let t2 = Finetuner::start(
        crate::serving::slot(g),
        Arc::new(Telemetry::new()),
        Some(ck()),
        Some(resume),
    )
    .unwrap();
    assert_eq!(t2.steps(), 6);
    assert_eq!(t2.next_number, 3);
    // A newer version on disk that was passed over (damaged): new versions are numbered after
    // it, or the first would be pruned at once as the oldest.
    std::fs::write(dir.path().join("denoise-fast-v7.safetensors"), b"damaged").unwrap();
    let r = ck().newest(&Device::Cpu).unwrap();
    assert_eq!(r.number, 2);
    let resume = r.resume();
    let g = restored_generation(&cfg, r, &Device::Cpu, 1).unwrap();
    let t3 = Finetuner::start(
        crate::serving::slot(g),
        Arc::new(Telemetry::new()),
        Some(ck()),
        Some(resume),
    )
    .unwrap();
    assert_eq!(t3.next_number, 8);
}

/// Without clean frames: Neighbor2Neighbor steps run, and the gate's SURE estimates track
/// the MSE against the clean frames that the trainer never sees, candidate and serving
/// model alike, and order them the same way.
#[test]
fn the_noisy_target_trains_without_clean_frames() {
    let mut t = trainer(None, |f| {
        f.target = FinetuneTarget::Noisy;
        f.stream_sigma = 25.0;
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Mid-grey frames: SURE assumes Gaussian noise, which clipping at 0 and 1 is not.
    let mid = |v: f32| 0.3 + 0.5 * (v - 0.15);
    for mut p in stream(16) {
        for pl in &mut p.planes {
            pl.iter_mut().for_each(|v| *v = mid(*v));
            corrupt::gaussian(pl, 25.0, true, &mut rng);
        }
        t.add(p);
    }
    // Held-out frames whose clean twins the test keeps.
    let twins: Vec<(TrainImage, TrainImage)> = stream(6)
        .into_iter()
        .skip(2)
        .map(|p| {
            let clean: Vec<f32> = p.planes[0].iter().map(|&v| mid(v)).collect();
            let mut noisy = clean.clone();
            corrupt::gaussian(&mut noisy, 25.0, true, &mut rng);
            let img = |v| TrainImage {
                path: PathBuf::new(),
                w: p.width,
                h: p.height,
                planes: vec![v],
            };
            (img(clean), img(noisy))
        })
        .collect();
    let (clean, noisy): (Vec<_>, Vec<_>) = twins.into_iter().unzip();
    t.holdout = noisy;
    // The true MSEs on the very patches `validate` draws (same seed, same image sizes).
    let truth = |t: &Finetuner| -> (f64, f64) {
        let p = t.patch_for(&t.holdout, t.fc.patch);
        let n = t.fc.val_patches;
        let draw = |imgs: &[TrainImage]| -> Tensor {
            let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a1);
            let s = PatchSampler::new(imgs, p).unwrap();
            let v: Vec<f32> = (0..n).flat_map(|_| s.clean(&mut rng)).collect();
            Tensor::from_vec(v, (n, p, p, 1), &Device::Cpu).unwrap()
        };
        let (x, y) = (draw(&clean), draw(&t.holdout));
        let mse = |out: Tensor| {
            (out - &x)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let cand = mse(t.net.forward_raw(&y).unwrap().raw);
        let serv = mse(t.slot.load().model.forward(&y).unwrap());
        (cand, serv)
    };
    for _ in 0..20 {
        assert!(t.step().unwrap().is_finite());
    }
    let (cand, serv) = t.validate().unwrap();
    let (true_cand, true_serv) = truth(&t);
    assert!(
        (true_cand - true_serv).abs() > 0.02 * true_serv,
        "training changed the model: {true_cand:.4e} vs {true_serv:.4e}"
    );
    for (est, truth) in [(cand, true_cand), (serv, true_serv)] {
        assert!(
            (est - truth).abs() < 0.15 * truth,
            "SURE {est:.4e} vs true MSE {truth:.4e}"
        );
    }
    assert_eq!(
        cand < serv,
        true_cand < true_serv,
        "SURE {cand:.4e} / {serv:.4e}, truth {true_cand:.4e} / {true_serv:.4e}"
    );
}

/// One step on weights that give a NaN loss fails, and sets the shadow back to the serving
/// weights with fresh moments: the next step trains again (it used to fail for good, the NaN
/// spread through the moments).
#[test]
fn a_nan_loss_restarts_training_from_the_serving_weights() {
    let mut t = trainer(None, |_| {});
    feed(&mut t, 8);
    t.step().unwrap();
    let poisoned: HashMap<String, Tensor> = weights::snapshot(&t.vm)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let nan = Tensor::full(f32::NAN, v.shape(), v.device()).unwrap();
            (k, nan)
        })
        .collect();
    weights::set_vars(&t.vm, &poisoned, "poisoned").unwrap();
    let e = t.step().unwrap_err().to_string();
    assert!(e.contains("starts again from the serving weights"), "{e}");
    for _ in 0..3 {
        assert!(t.step().unwrap().is_finite());
    }
}

/// A reload that lands between a round's validation and its swap keeps serving: the
/// candidate, trained from the weights the reload replaced, is set aside unserved (also on
/// disk, so a restart does not serve it), and the next round trains on from the reload.
#[test]
fn a_reload_during_a_round_wins_over_the_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = || Checkpoints::new(dir.path().to_path_buf(), "denoise-fast", 3).unwrap();
    // Accept any candidate, so that the round would swap.
    let mut t = trainer(Some(ck()), |f| f.min_improvement = -1.0);
    feed(&mut t, 16);
    for _ in 0..3 {
        t.step().unwrap();
    }
    // The round began with generation 1 serving; then the operator's reload landed.
    let began = t.slot.load_full();
    let reload = Arc::new(Generation {
        version: ModelVersion::loaded("denoise-fast", b"reloaded", b""),
        number: began.number + 1,
        ..(*began).clone()
    });
    t.slot.store(reload.clone());
    assert_eq!(t.round_against(began).unwrap(), Round::Superseded);
    assert!(Arc::ptr_eq(&t.slot.load_full(), &reload));
    assert!(ck().newest(&Device::Cpu).is_none());
    assert!(dir
        .path()
        .join("denoise-fast-v1.safetensors.superseded")
        .exists());
    // The next round validates against the reload and replaces it.
    for _ in 0..3 {
        t.step().unwrap();
    }
    assert!(matches!(t.round().unwrap(), Round::Swapped { .. }));
    let now = t.slot.load_full();
    assert_eq!(now.number, reload.number + 1);
    let r = ck().newest(&Device::Cpu).expect("a checkpoint");
    assert_eq!(r.number, 2);
    let meta = r.meta.unwrap();
    assert_eq!(meta.parent, reload.version.to_string());
    assert_eq!(meta.base_weights, Some(reload.version.weights_id()));
    // A rollback returns to the reload, not to what served before it.
    assert!(t.rollback().unwrap());
    assert_eq!(t.slot.load().version, reload.version);
}
