//! Training the autoencoders: whole frames resized to the model's size (augmented if asked)
//! are reconstructed, with an L1 penalty on the code when `train.l1` > 0; a bypassed dense
//! autoencoder may start as PCA (`train.pca_init`), a plain one from layer-wise pretraining
//! (`train.pretrain_steps`, [`super::pretrain`]). Validation: reconstruction MSE, sparsity
//! and the 5-NN accuracy of the codes, scored as `eval` scores them.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::loss::loss_of;
use super::pretrain;
use super::{Job, TrainArgs, Val};
use crate::config::PipelineConfig;
use crate::data::dataset;
use crate::error::{Error, Result};
use crate::eval::score::recon_stats;
use crate::model::{Arch, Model, Net, NetModel};

/// Autoencoders: whole frames resized to the model's size (augmented if asked), reconstruct
/// the input; an L1 penalty on the code when `train.l1` > 0.
pub(super) fn reconstruct_job<'a>(
    cfg: &'a PipelineConfig,
    args: &'a TrainArgs,
    net: &'a Net,
    model: &'a NetModel,
    vm: &VarMap,
) -> Result<Job<'a>> {
    let tc = &cfg.train;
    let size = model
        .spec()
        .fixed_size
        .ok_or_else(|| Error::Other(format!("{}: the model needs `model.size`", cfg.origin)))?;
    let all = dataset::load_samples(&args.data, &tc.exclude)?;
    let (train_s, mut val_s) = match &args.val {
        Some(v) => (all, dataset::load_samples(v, &tc.exclude)?),
        None => dataset::split(all, tc.per_class_train, tc.val_fraction),
    };
    if train_s.is_empty() {
        return Err(Error::Other(format!(
            "{}: no training samples",
            args.data.display()
        )));
    }
    // Validation stays quick: at most 2000 frames.
    val_s.truncate(2000);
    let train_names: Vec<String> = train_s.iter().map(|s| s.name.clone()).collect();
    let val_names: Vec<String> = val_s.iter().map(|s| s.name.clone()).collect();
    let train_plain: Vec<Vec<f32>> = train_s.iter().map(|s| dataset::resized(s, size)).collect();
    let val_plain: Vec<Vec<f32>> = val_s.iter().map(|s| dataset::resized(s, size)).collect();
    let augment = dataset::augments(tc);
    if tc.pca_init {
        pca_init(cfg, vm, &train_s, size, args.seed)?;
    }
    let dev = args.device.clone();
    let (w, h) = size;
    let sparse = tc.l1 > 0.0 || matches!(net, Net::Dense(d) if d.config().topk > 0);
    let labels_train: Option<Vec<u8>> = train_s.iter().map(|s| s.label).collect();
    let labels_val: Option<Vec<u8>> = val_s.iter().map(|s| s.label).collect();
    let stack = move |frames: &[&Vec<f32>], dev: &Device| -> candle_core::Result<Tensor> {
        let n = frames.len();
        let data: Vec<f32> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        Tensor::from_vec(data, (n, h, w, 1), dev)
    };
    let train_plain = Arc::new(train_plain);
    let train_plain2 = train_plain.clone();
    // A batch of training frames (augmented if asked), drawn with the step's RNG.
    let draw = move |rng: &mut StdRng| -> candle_core::Result<Tensor> {
        let frames: Vec<Vec<f32>> = (0..tc.batch)
            .map(|_| {
                let i = rng.random_range(0..train_s.len());
                if augment {
                    dataset::augmented(&train_s[i], size, tc, rng)
                } else {
                    train_plain[i].clone()
                }
            })
            .collect();
        stack(&frames.iter().collect::<Vec<_>>(), &dev)
    };
    let pretrained = pretrain_stack(cfg, args, net, vm, &draw)?;
    Ok(Job {
        step_loss: Box::new(move |rng| {
            let x = draw(rng)?;
            let o = net.forward_raw(&x)?;
            let mut loss = loss_of(net, tc.loss, &o.raw, &x)?;
            if tc.l1 > 0.0 {
                if let Some(code) = &o.code {
                    let l1 = (code.abs()?.sum_all()? * (tc.l1 / tc.batch as f64))?;
                    loss = (loss + l1)?;
                }
            }
            Ok(loss)
        }),
        validate: Box::new(move || {
            let r = recon_stats(model, &val_plain, size)?;
            let mut metrics = BTreeMap::from([("mse".to_string(), r.mse)]);
            let mut line = format!("val MSE {:.5} per pixel", r.mse);
            if sparse {
                metrics.insert("sparsity".into(), r.sparsity);
                line += &format!(", {:.1}% of |h| < 0.01", 100.0 * r.sparsity);
                if let (Some(lt), Some(lv)) = (&labels_train, &labels_val) {
                    let fit = recon_stats(model, &train_plain2, size)?;
                    let acc = crate::eval::analysis::knn_accuracy(&fit.codes, lt, &r.codes, lv, 5);
                    metrics.insert("knn5_accuracy".into(), acc);
                    line += &format!(", 5-NN accuracy {acc:.3}");
                }
            }
            Ok(Val {
                loss: r.mse,
                measure: "MSE",
                metrics,
                line,
            })
        }),
        data: args.data.display().to_string(),
        train_names,
        val_names,
        pretrain: pretrained,
    })
}

/// Layer-wise pretraining (`train.pretrain_steps`) of a dense autoencoder, unless the run
/// starts from other weights (`--resume` from a checkpoint, `--init`), which replace it.
fn pretrain_stack(
    cfg: &PipelineConfig,
    args: &TrainArgs,
    net: &Net,
    vm: &VarMap,
    draw: &pretrain::Draw,
) -> Result<Vec<pretrain::LayerPretrain>> {
    let tc = &cfg.train;
    if tc.pretrain_steps == 0 {
        return Ok(Vec::new());
    }
    if args.resume && super::checkpoint_path(&args.out).is_file() {
        tracing::info!("layer-wise pretraining skipped: resuming from the checkpoint");
        return Ok(Vec::new());
    }
    if let Some(init) = &args.init {
        tracing::info!(
            "layer-wise pretraining skipped: starting from {}",
            init.display()
        );
        return Ok(Vec::new());
    }
    let Net::Dense(dense) = net else {
        // The configuration refuses pretraining for any other network.
        return Err(Error::Config {
            origin: cfg.origin.clone(),
            message: "key `train.pretrain_steps`: needs a dense-ae".into(),
        });
    };
    let p = pretrain::Pretrain {
        steps: tc.pretrain_steps,
        noise: tc.pretrain_noise,
        target: tc.pretrain_target,
        lr: tc.pretrain_lr.unwrap_or(tc.lr),
        weight_decay: tc.weight_decay,
        seed: args.seed,
    };
    pretrain::pretrain(dense, vm, draw, &p)
}

/// Starts a bypassed dense autoencoder as PCA: the linear paths get the principal directions
/// of the (augmented) training frames and the deep paths' last layers start at zero, so
/// training begins at PCA's reconstruction and the deep layers only add what it misses
/// (our stand-in for Hinton & Salakhutdinov's layer-wise pretraining).
fn pca_init(
    cfg: &PipelineConfig,
    vm: &VarMap,
    samples: &[dataset::Sample],
    size: (usize, usize),
    seed: u64,
) -> Result<()> {
    let tc = &cfg.train;
    // `n` layers of weights; the code's width `k` is the PCA's rank.
    let (n, k) =
        match &cfg.model.arch {
            Arch::DenseAe { net, .. } if net.bypass && net.layers.len() > 2 => {
                let n = net.layers.len() - 1;
                (n, net.layers[n])
            }
            _ => return Err(Error::Config {
                origin: cfg.origin.clone(),
                message:
                    "key `train.pca_init`: needs a dense-ae with `bypass = true` and hidden layers"
                        .into(),
            }),
        };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut rows: Vec<Vec<f32>> = samples.iter().map(|s| dataset::resized(s, size)).collect();
    if dataset::augments(tc) {
        for _ in 0..9 {
            rows.extend(
                samples
                    .iter()
                    .map(|s| dataset::augmented(s, size, tc, &mut rng)),
            );
        }
    }
    let pca = crate::eval::analysis::Pca::fit(&rows, k)
        .ok_or_else(|| Error::Other("pca_init: too few training frames".into()))?;
    let d = pca.mean.len();
    let c: Vec<f32> = (0..d)
        .flat_map(|i| (0..k).map(move |j| (i, j)))
        .map(|(i, j)| pca.components[(i, j)] as f32)
        .collect();
    let comp = Tensor::from_vec(c, (d, k), &Device::Cpu)?; // d × k
    let mean = Tensor::from_vec(
        pca.mean.iter().map(|&m| m as f32).collect::<Vec<_>>(),
        d,
        &Device::Cpu,
    )?;
    let enc_w = comp.t()?.contiguous()?; // k × d: code = Cᵀ(x − μ)
    let enc_b = enc_w.matmul(&mean.unsqueeze(1)?)?.squeeze(1)?.neg()?;
    let set = |name: &str, t: &Tensor| -> Result<()> {
        let data = vm.data().lock().expect("varmap lock");
        let v = data
            .get(name)
            .ok_or_else(|| Error::Other(format!("pca_init: no variable {name}")))?;
        v.set(&t.to_device(v.device())?)?;
        Ok(())
    };
    set("enc_bypass.weight", &enc_w)?;
    set("enc_bypass.bias", &enc_b)?;
    set("dec_bypass.weight", &comp)?;
    set("dec_bypass.bias", &mean)?;
    for last in [format!("enc{}", n - 1), format!("dec{}", n - 1)] {
        for part in ["weight", "bias"] {
            let name = format!("{last}.{part}");
            let zeros = {
                let data = vm.data().lock().expect("varmap lock");
                data.get(&name)
                    .ok_or_else(|| Error::Other(format!("pca_init: no variable {name}")))?
                    .as_tensor()
                    .zeros_like()?
            };
            set(&name, &zeros)?;
        }
    }
    tracing::info!(
        "initialised from a {k}-component PCA of {} frames",
        rows.len()
    );
    Ok(())
}
