//! The `faces-deep` pipeline (the lecture's deep autoencoder, 625-2000-1000-500-30 and its
//! mirror, no bypass) and the layer-wise pretraining that trains it: the shipped network has
//! exactly those layers, reconstructs faces of persons it never saw far better than the mean
//! face, and draws the lecture's figure; `train` with `pretrain_steps` pretrains every layer
//! pair (each one's loss falls), the same seed giving the same weights.

mod common;

use std::path::Path;

use aestream::config::PipelineConfig;
use common::{bin, ok, read, samples};

/// Encoder then decoder layers: (name, [out, in]) of each weight matrix.
const LAYERS: [(&str, [usize; 2]); 8] = [
    ("enc0", [2000, 625]),
    ("enc1", [1000, 2000]),
    ("enc2", [500, 1000]),
    ("enc3", [30, 500]),
    ("dec0", [500, 30]),
    ("dec1", [1000, 500]),
    ("dec2", [2000, 1000]),
    ("dec3", [625, 2000]),
];

/// The pipeline parses to a 625-2000-1000-500-30 dense autoencoder without bypass, and its
/// built-in weights hold exactly those eight layers (weights and biases), nothing else.
#[test]
fn faces_deep_is_the_lectures_network() {
    let cfg = PipelineConfig::load("faces-deep").unwrap();
    let (size, net) = match &cfg.model.arch {
        aestream::model::Arch::DenseAe { size, net } => (*size, net.clone()),
        other => panic!("faces-deep is {}", other.name()),
    };
    assert_eq!(size, [25, 25]);
    assert_eq!(net.layers, vec![625, 2000, 1000, 500, 30]);
    assert!(!net.bypass);
    assert_eq!(net.topk, 0);

    let bytes = cfg.read_weights(None).unwrap().bytes;
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut expected: Vec<String> = LAYERS
        .iter()
        .flat_map(|(l, _)| [format!("{l}.bias"), format!("{l}.weight")])
        .collect();
    expected.sort();
    assert_eq!(names, expected, "no bypass or other tensors");
    let mut params = 0;
    for (l, [o, i]) in LAYERS {
        let w = st.tensor(&format!("{l}.weight")).unwrap();
        assert_eq!(w.shape(), &[o, i], "{l}");
        assert_eq!(
            st.tensor(&format!("{l}.bias")).unwrap().shape(),
            &[o],
            "{l}"
        );
        params += o * i + o;
    }
    assert!(
        (7_500_000..7_700_000).contains(&params),
        "{params} parameters"
    );
    cfg.load_model(None, &candle_core::Device::Cpu)
        .expect("the shipped weights load");
}

/// The sample faces (persons s31-s40, never trained on), resized to 25×25 as the model sees
/// them.
fn sample_faces() -> Vec<Vec<f32>> {
    let mut paths: Vec<_> = std::fs::read_dir(samples().join("faces"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let f = read(p);
            aestream::frame::resize_plane(&f.planes[0], f.width, f.height, 25, 25)
        })
        .collect()
}

/// On faces of persons it never saw, the shipped model's reconstructions are far closer than
/// the trivial answer (the mean of those very faces); the montage is the lecture's figure:
/// a row of faces, one of the model's reconstructions and one of PCA's, each labelled.
#[test]
fn faces_deep_reconstructs_unseen_faces_and_draws_the_figure() {
    let faces = sample_faces();
    let n = faces.len() as f32;
    let mean: Vec<f32> = (0..625)
        .map(|i| faces.iter().map(|f| f[i]).sum::<f32>() / n)
        .collect();
    let trivial = faces
        .iter()
        .map(|f| aestream::metrics::mse(f, &mean))
        .sum::<f64>()
        / faces.len() as f64;

    let tmp = tempfile::tempdir().unwrap();
    let montage = tmp.path().join("figure.png");
    let dir = samples().join("faces");
    let out = ok(bin()
        .args(["eval", "faces-deep", "--json", "--data"])
        .arg(&dir)
        .arg("--pca-fit")
        .arg(&dir)
        .arg("--montage")
        .arg(&montage)
        .output()
        .unwrap());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["frames"], 10);
    assert_eq!(r["code_len"], 30);
    let mse = r["mse"].as_f64().unwrap();
    assert!(
        mse > 0.0 && mse < 0.4 * trivial,
        "MSE {mse}, mean face {trivial}"
    );

    let m = read(&montage);
    // Three rows of 75-pixel tiles (25 × 3) with 4-pixel gaps: faces, faces-deep, PCA-9.
    assert_eq!(m.height, 3 * (75 + 4) + 4);
    let strip = m.width - (10 * (75 + 4) + 4);
    assert!((40..160).contains(&strip), "label column {strip} wide");
    let p = &m.planes[0];
    for row in 0..3 {
        let y0 = 4 + row * (75 + 4);
        let ink = (y0..y0 + 75)
            .flat_map(|y| (0..strip).map(move |x| (x, y)))
            .filter(|&(x, y)| p[y * m.width + x] < 0.5)
            .count();
        assert!(ink > 20, "row {row}: no label");
    }
}

/// A tiny pipeline with layer-wise pretraining, stored in f16.
const TINY: &str = r#"name = "tiny-deep"
[normalise]
colour = "grey"
[model]
arch = "dense-ae"
weights = "tiny.safetensors"
size = [10, 10]
layers = [100, 40, 20, 5]
code_activation = "linear"
output_activation = "linear"
[output]
kinds = ["reconstruction", "latent"]
[train]
batch = 8
steps_per_epoch = 10
epochs = 1
lr = 3e-3
val_fraction = 0.2
hflip = true
pretrain_steps = 60
pretrain_noise = 0.2
weights_dtype = "f16"
"#;

/// `train` pretrains each of the three layer pairs (its loss on the probe falls, reported in
/// the output and the metadata) before the whole stack; the weights file is f16 and serves;
/// the same seed gives the same bytes.
#[test]
fn train_pretrains_each_layer_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("tiny.toml");
    std::fs::write(&toml, TINY).unwrap();
    let train = |out: &Path| -> serde_json::Value {
        let o = ok(bin()
            .args([
                "train",
                toml.to_str().unwrap(),
                "--seed",
                "4",
                "--device",
                "cpu",
            ])
            .arg("--data")
            .arg(samples().join("faces"))
            .arg("--out")
            .arg(out)
            .output()
            .unwrap());
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let a = tmp.path().join("a.safetensors");
    let r = train(&a);
    let layers = r["pretrain"].as_array().expect("a pretraining report");
    assert_eq!(layers.len(), 3);
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["layer"], i);
        let (before, after) = (
            l["loss_before"].as_f64().unwrap(),
            l["loss_after"].as_f64().unwrap(),
        );
        assert!(after < before, "layer {i}: {before} → {after}");
    }
    assert_eq!(layers[0]["widths"], serde_json::json!([100, 40]));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("a.safetensors.json")).unwrap())
            .unwrap();
    assert_eq!(meta["pretrain"], r["pretrain"]);

    let bytes = std::fs::read(&a).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in st.tensors() {
        assert_eq!(t.dtype(), safetensors::Dtype::F16, "{name}");
    }
    // The f16 file serves (converted to f32 on load).
    ok(bin()
        .args(["eval", toml.to_str().unwrap(), "--json", "--data"])
        .arg(samples().join("faces"))
        .arg("--weights")
        .arg(&a)
        .output()
        .unwrap());

    let b = tmp.path().join("b.safetensors");
    let again = train(&b);
    assert_eq!(again["pretrain"].as_array().unwrap().len(), 3);
    for l in 0..3 {
        for k in ["loss_before", "loss_after"] {
            assert_eq!(
                again["pretrain"][l][k], r["pretrain"][l][k],
                "layer {l} {k}"
            );
        }
    }
    assert_eq!(std::fs::read(&b).unwrap(), bytes, "same seed, same weights");
}
