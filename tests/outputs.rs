//! End-to-end tests of what each output kind writes, through the real binary: a 16-bit frame
//! comes back 16-bit, in its own intensity range and denoised (a dark microscopy-like frame is
//! not flattened to 0/1); and every record on a length-framed stream (latent JSON and PNG
//! images alike) carries its length prefix, while a mix that `concat` cannot frame is refused.

mod common;

use common::{bin, ok, samples};
use image::{DynamicImage, ImageBuffer, Luma};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

fn mse(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64
}

/// A dim 16-bit grey frame like a fluorescence micrograph: smooth blobs between about 20 and
/// 220 of 65535, and that frame with Gaussian noise (σ 10 of 65535) from a seeded generator.
fn dim_frame(w: u32, h: u32) -> (Vec<f64>, ImageBuffer<Luma<u16>, Vec<u16>>) {
    let clean: Vec<f64> = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            let blob = |cx: f64, cy: f64, r: f64| {
                (-((x - cx).powi(2) + (y - cy).powi(2)) / (2.0 * r * r)).exp()
            };
            20.0 + 200.0 * (blob(30.0, 30.0, 12.0) + blob(90.0, 60.0, 18.0)).min(1.0)
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let noise = Normal::new(0.0, 10.0).unwrap();
    let noisy = ImageBuffer::from_fn(w, h, |x, y| {
        let v = clean[(y * w + x) as usize] + noise.sample(&mut rng);
        Luma([v.round().clamp(0.0, 65535.0) as u16])
    });
    (clean, noisy)
}

/// A 16-bit grey frame in gives a 16-bit PNG out, in the input's range and closer to the clean
/// frame than the noisy input was. (Before: an 8-bit PNG of 0s and 1s.)
#[test]
fn sixteen_bit_frames_come_back_sixteen_bit_and_denoised() {
    let (w, h) = (128, 96);
    let (clean, noisy) = dim_frame(w, h);
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    DynamicImage::ImageLuma16(noisy.clone())
        .save(input.join("cells.png"))
        .unwrap();
    ok(bin()
        .args(["run", "denoise", "--once", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap());
    let out = image::open(output.join("cells.png")).unwrap();
    let DynamicImage::ImageLuma16(out) = out else {
        panic!("expected a 16-bit grey PNG, got {:?}", out.color());
    };
    assert_eq!(out.dimensions(), (w, h));
    let got: Vec<f64> = out.pixels().map(|p| p.0[0] as f64).collect();
    let given: Vec<f64> = noisy.pixels().map(|p| p.0[0] as f64).collect();
    let (lo, hi) = given
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let (olo, ohi) = got
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(
        olo >= lo - 5.0 && ohi <= hi + 5.0 && ohi - olo > 0.5 * (hi - lo),
        "output range {olo}..{ohi}, input {lo}..{hi}"
    );
    let (before, after) = (mse(&given, &clean), mse(&got, &clean));
    assert!(
        after < 0.5 * before,
        "not denoised: MSE to the clean frame {after:.1} (noisy input: {before:.1})"
    );
}

/// A 16-bit frame through an autoencoder: the reconstruction is 16-bit too.
#[test]
fn sixteen_bit_reconstructions_are_sixteen_bit() {
    let face = image::open(samples().join("faces/s31-1.png"))
        .unwrap()
        .to_luma16();
    // The face dimmed to a tenth of its range, as a dark camera frame would hold it.
    let dim = ImageBuffer::from_fn(face.width(), face.height(), |x, y| {
        Luma([face.get_pixel(x, y).0[0] / 10])
    });
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    DynamicImage::ImageLuma16(dim)
        .save(input.join("face.png"))
        .unwrap();
    ok(bin()
        .args([
            "run",
            "faces",
            "--once",
            "--emit",
            "reconstruction",
            "--input",
        ])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap());
    let rec = image::open(output.join("face.png")).unwrap();
    let DynamicImage::ImageLuma16(rec) = rec else {
        panic!("expected a 16-bit grey PNG, got {:?}", rec.color());
    };
    assert_eq!(rec.dimensions(), (25, 25));
    let max = rec.pixels().map(|p| p.0[0]).max().unwrap();
    assert!(
        (1000..=6600).contains(&max),
        "reconstruction brightest {max}, the input's range is 0..6553"
    );
}

/// Runs `aestream run ARGS` with `input` on stdin; returns its output.
fn run_stdin(args: &[&str], input: Vec<u8>) -> std::process::Output {
    common::run_with_stdin(&[&["run"], args].concat(), input)
}

const FACES: [&str; 3] = ["s31-1.png", "s34-1.png", "s40-1.png"];

/// A `--framing len` stream cut into its records, every one whole.
fn length_records(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "a torn length prefix");
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert!(
            rest.len() >= 4 + n,
            "record {} claims {n} bytes, {} left",
            records.len(),
            rest.len() - 4
        );
        records.push(&rest[4..4 + n]);
        rest = &rest[4 + n..];
    }
    records
}

/// `--framing len` with latent codes and reconstructions: the stream parses record by
/// record, every record length-prefixed; a latent is JSON (first byte `{`), an image a PNG,
/// and each frame's records come in `--emit` order.
#[test]
fn length_framing_frames_latents_and_images_alike() {
    let mut stream = Vec::new();
    for name in FACES {
        let bytes = std::fs::read(samples().join("faces").join(name)).unwrap();
        stream.extend((bytes.len() as u32).to_be_bytes());
        stream.extend(bytes);
    }
    let out = ok(run_stdin(
        &[
            "faces",
            "--input",
            "-",
            "--output",
            "-",
            "--framing",
            "len",
            "--emit",
            "latent,reconstruction",
        ],
        stream,
    ));
    let records = length_records(&out.stdout);
    assert_eq!(records.len(), 2 * FACES.len());
    for (i, pair) in records.chunks(2).enumerate() {
        assert_eq!(pair[0].first(), Some(&b'{'), "frame {i}: latent first");
        let code: serde_json::Value = serde_json::from_slice(pair[0]).expect("latent JSON");
        assert_eq!(code["seq"], i as u64);
        assert_eq!(code["shape"], serde_json::json!([30]));
        assert!(
            pair[1].starts_with(b"\x89PNG\r\n\x1a\n"),
            "frame {i}: then a PNG"
        );
        let rec = image::load_from_memory(pair[1]).unwrap();
        assert_eq!((rec.width(), rec.height()), (25, 25));
    }
}

/// Objects and probability on stdout: a nuclei frame on stdin gives, length-prefixed and in
/// `--emit` order, a 16-bit label map and a 16-bit probability map of its size.
#[test]
fn objects_and_probability_go_to_stdout() {
    let frame = std::fs::read(samples().join("nuclei/images/right-top.png")).unwrap();
    let mut stream = (frame.len() as u32).to_be_bytes().to_vec();
    stream.extend(frame);
    let out = ok(run_stdin(
        &[
            "segment-nuclei",
            "-i",
            "-",
            "-o",
            "-",
            "--framing",
            "len",
            "--emit",
            "instances,probability",
        ],
        stream,
    ));
    let images: Vec<DynamicImage> = length_records(&out.stdout)
        .into_iter()
        .map(|r| image::load_from_memory(r).unwrap())
        .collect();
    assert_eq!(images.len(), 2);
    for img in &images {
        assert_eq!(img.color(), image::ColorType::L16);
        assert_eq!((img.width(), img.height()), (256, 256));
    }
    let labels = images[0].to_luma16();
    let most = labels.pixels().map(|p| p.0[0]).max().unwrap();
    assert!(most > 20, "{most} objects");
    let prob = images[1].to_luma16();
    assert!(prob.pixels().any(|p| p.0[0] > 60_000) && prob.pixels().any(|p| p.0[0] < 5_000));
}

/// Back-to-back (`concat`) stdout cannot carry latent JSON lines between PNG images: refused
/// at start as a usage error, naming the way out.
#[test]
fn concat_refuses_latents_mixed_with_images() {
    let face = std::fs::read(samples().join("faces").join(FACES[0])).unwrap();
    let out = run_stdin(
        &[
            "faces",
            "--input",
            "-",
            "--output",
            "-",
            "--emit",
            "latent,reconstruction",
        ],
        face,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--framing len"), "{err}");
    assert!(out.stdout.is_empty());
}
