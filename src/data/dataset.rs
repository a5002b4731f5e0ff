//! Datasets of whole frames for the autoencoders and the segmentation net, shared by `train` and
//! `eval`: folders of images (recursive), MNIST-style CSV rows (`.csv` / `.csv.gz`, 784 pixels
//! then the label), IDX files (Fashion-MNIST), and image/mask pairs. Augmentation for small
//! datasets: random rotation, scale, shift and flips, applied before the resize to the model's
//! size, exactly as the pipeline resizes frames.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::config::{NormaliseConfig, Stretch, TrainConfig};
use crate::error::{Error, Result};
use crate::frame::{
    list_images_recursive, read_image, resize_plane, stretch_percentiles, BitDepth, Planes,
};

/// One grey frame at its own size, with its class label where the data has labels.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub w: usize,
    pub h: usize,
    pub data: Vec<f32>,
    pub label: Option<u8>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(io(path))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io(path))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn name_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Loads every sample of `path`: a folder of images, a CSV file or an IDX images file (or a
/// folder holding `train-images-idx3-ubyte[.gz]`). Path components in `exclude` are skipped.
pub fn load_samples(path: &Path, exclude: &[String]) -> Result<Vec<Sample>> {
    let s = name_str(path);
    if path.is_dir() {
        for idx in ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"] {
            if path.join(idx).is_file() {
                return load_idx(&path.join(idx));
            }
        }
        let files = list_images_recursive(path, exclude)?;
        if files.is_empty() {
            return Err(Error::Other(format!("{s}: no images found")));
        }
        return files
            .iter()
            .map(|f| {
                let p = read_image(f, Default::default())?;
                let rel = f.strip_prefix(path).unwrap_or(f);
                Ok(Sample {
                    name: name_str(rel),
                    w: p.width,
                    h: p.height,
                    data: p.luma(),
                    label: None,
                })
            })
            .collect();
    }
    if s.ends_with(".csv") || s.ends_with(".csv.gz") {
        return load_csv(path);
    }
    if s.contains("idx3-ubyte") {
        return load_idx(path);
    }
    Err(Error::Other(format!(
        "{s}: not a folder of images, a .csv[.gz] file or an IDX images file"
    )))
}

/// MNIST-style CSV: each row 784 pixel values (0–255, a 28×28 image) then the label.
fn load_csv(path: &Path) -> Result<Vec<Sample>> {
    let text = String::from_utf8(read_maybe_gz(path)?)
        .map_err(|_| Error::Other(format!("{}: not UTF-8 text", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: &str| Error::Other(format!("{} line {}: {m}", path.display(), i + 1));
        let vals: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad("not a number"))?;
        let n = vals.len().saturating_sub(1);
        let side = (n as f64).sqrt() as usize;
        if n == 0 || side * side != n {
            return Err(bad(
                "expected a square image's pixels followed by the label",
            ));
        }
        out.push(Sample {
            name: format!("row{:05}", i + 1),
            w: side,
            h: side,
            data: vals[..n].iter().map(|v| v / 255.0).collect(),
            label: Some(vals[n] as u8),
        });
    }
    Ok(out)
}

/// IDX (MNIST / Fashion-MNIST) images, with labels from the matching `*labels-idx1*` file if it
/// is there.
fn load_idx(path: &Path) -> Result<Vec<Sample>> {
    let bytes = read_maybe_gz(path)?;
    let bad = |m: &str| Error::Other(format!("{}: {m}", path.display()));
    if bytes.len() < 16 || bytes[..4] != [0, 0, 8, 3] {
        return Err(bad("not an IDX file of u8 images"));
    }
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let (n, h, w) = (be(4) as usize, be(8) as usize, be(12) as usize);
    if bytes.len() < 16 + n * h * w {
        return Err(bad("truncated"));
    }
    let label_path = PathBuf::from(name_str(path).replace("images-idx3", "labels-idx1"));
    let labels = if label_path.is_file() {
        let lb = read_maybe_gz(&label_path)?;
        (lb.len() >= 8 + n && lb[..4] == [0, 0, 8, 1]).then(|| lb[8..8 + n].to_vec())
    } else {
        None
    };
    Ok((0..n)
        .map(|i| Sample {
            name: format!("{i:05}"),
            w,
            h,
            data: bytes[16 + i * h * w..16 + (i + 1) * h * w]
                .iter()
                .map(|&v| v as f32 / 255.0)
                .collect(),
            label: labels.as_ref().map(|l| l[i]),
        })
        .collect())
}

/// Splits samples into training and validation: per class (the first `per_class` of each class
/// train) for labelled data when `per_class` > 0, else every k-th sample validates.
pub fn split(
    samples: Vec<Sample>,
    per_class: usize,
    val_fraction: f64,
) -> (Vec<Sample>, Vec<Sample>) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    if per_class > 0 && samples.iter().all(|s| s.label.is_some()) {
        let mut seen = [0usize; 256];
        for s in samples {
            let c = s.label.unwrap_or(0) as usize;
            seen[c] += 1;
            if seen[c] <= per_class {
                train.push(s)
            } else {
                val.push(s)
            }
        }
        return (train, val);
    }
    every_kth(samples, val_fraction)
}

/// Holds out every k-th item (k from `val_fraction`, at least one item) for validation; if that
/// would leave nothing to train on, everything trains and nothing validates.
pub fn every_kth<T>(items: Vec<T>, val_fraction: f64) -> (Vec<T>, Vec<T>) {
    let k = ((1.0 / val_fraction.max(1e-3)).round() as usize).max(2);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        if i % k == k - 1 {
            val.push(item)
        } else {
            train.push(item)
        }
    }
    if train.is_empty() {
        std::mem::swap(&mut train, &mut val);
    }
    (train, val)
}

/// The sample as the model sees it: resized to `(w, h)`.
pub fn resized(s: &Sample, size: (usize, usize)) -> Vec<f32> {
    resize_plane(&s.data, s.w, s.h, size.0, size.1)
}

/// Whether the training settings ask for any geometric augmentation.
pub fn augments(tc: &TrainConfig) -> bool {
    tc.rotate_deg > 0.0
        || tc.scale_jitter > 0.0
        || tc.shift > 0.0
        || tc.hflip
        || tc.intensity_jitter > 0.0
}

/// A randomly rotated, scaled, shifted and flipped copy of the sample, resized to `size`.
/// The warp is done at the sample's own resolution (bilinear, edges clamped), then resized.
pub fn augmented<R: Rng>(
    s: &Sample,
    size: (usize, usize),
    tc: &TrainConfig,
    rng: &mut R,
) -> Vec<f32> {
    let (w, h) = (s.w, s.h);
    let ang = (rng.random::<f32>() * 2.0 - 1.0) * tc.rotate_deg.to_radians();
    let scale = 1.0 + (rng.random::<f32>() * 2.0 - 1.0) * tc.scale_jitter;
    let tx = (rng.random::<f32>() * 2.0 - 1.0) * tc.shift * w as f32;
    let ty = (rng.random::<f32>() * 2.0 - 1.0) * tc.shift * h as f32;
    let flip = tc.hflip && rng.random::<bool>();
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (sin, cos) = ang.sin_cos();
    let mut out = vec![0f32; w * h];
    let at = |x: isize, y: isize| {
        let x = x.clamp(0, w as isize - 1) as usize;
        let y = y.clamp(0, h as isize - 1) as usize;
        s.data[y * w + x]
    };
    for y in 0..h {
        for x in 0..w {
            // Inverse map: output pixel → source position.
            let mut dx = x as f32 - cx - tx;
            let dy = y as f32 - cy - ty;
            if flip {
                dx = -dx;
            }
            let sx = (cos * dx + sin * dy) / scale + cx;
            let sy = (-sin * dx + cos * dy) / scale + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            out[y * w + x] = (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x0 + 1, y0))
                + fy * ((1.0 - fx) * at(x0, y0 + 1) + fx * at(x0 + 1, y0 + 1));
        }
    }
    let mut small = resize_plane(&out, w, h, size.0, size.1);
    if tc.intensity_jitter > 0.0 {
        // Lighting: contrast about the mean, and brightness, each within ± the jitter.
        let j = tc.intensity_jitter;
        let gain = 1.0 + (rng.random::<f32>() * 2.0 - 1.0) * j;
        let offset = (rng.random::<f32>() * 2.0 - 1.0) * j * 0.5;
        let mean = small.iter().sum::<f32>() / small.len().max(1) as f32;
        small
            .iter_mut()
            .for_each(|v| *v = ((*v - mean) * gain + mean + offset).clamp(0.0, 1.0));
    }
    small
}

/// An image and its binary foreground mask (1 = foreground), both `w × h`.
#[derive(Debug, Clone)]
pub struct Pair {
    pub name: String,
    pub w: usize,
    pub h: usize,
    pub image: Vec<f32>,
    pub mask: Vec<f32>,
}

/// The files paired with `data`'s images: `data` and `other` both files, or folders with the
/// same relative file names. One order for every kind of pairing (masks, object labels).
fn paired_paths(data: &Path, other: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let pairs: Vec<(PathBuf, PathBuf)> = if data.is_file() {
        vec![(data.to_path_buf(), other.to_path_buf())]
    } else {
        list_images_recursive(data, &[])?
            .into_iter()
            .map(|f| {
                let rel = f.strip_prefix(data).unwrap_or(&f).to_path_buf();
                (f, other.join(rel))
            })
            .collect()
    };
    if pairs.is_empty() {
        return Err(Error::Other(format!("{}: no images found", data.display())));
    }
    Ok(pairs)
}

/// `other`, read as the companion of the `w × h` image `img`: an error naming both when the
/// sizes differ.
fn companion(img: &Path, other: &Path, w: usize, h: usize) -> Result<Planes> {
    let o = read_image(other, Default::default())?;
    if (o.width, o.height) != (w, h) {
        return Err(Error::Other(format!(
            "{}: is {}×{}, its image {} is {w}×{h}",
            other.display(),
            o.width,
            o.height,
            img.display()
        )));
    }
    Ok(o)
}

/// Loads image/mask pairs: `data` and `masks` both files, or folders with the same file names.
/// Images get the pipeline's normalisation (grey, percentile stretch) as frames would.
pub fn load_pairs(data: &Path, masks: &Path, norm: &NormaliseConfig) -> Result<Vec<Pair>> {
    paired_paths(data, masks)?
        .into_iter()
        .map(|(img, m)| {
            let p = read_image(&img, Default::default())?;
            let mk = companion(&img, &m, p.width, p.height)?;
            let mut image = p.luma();
            if norm.stretch == Stretch::Percentile {
                stretch_percentiles(&mut image, norm.percentiles[0], norm.percentiles[1]);
            }
            Ok(Pair {
                name: name_str(img.file_name().map(Path::new).unwrap_or(&img)),
                w: p.width,
                h: p.height,
                image,
                mask: mk.luma().iter().map(|&v| f32::from(v > 0.0)).collect(),
            })
        })
        .collect()
}

/// Object label maps for the `pairs` that [`load_pairs`] made of `data`, in their order:
/// `labels` a file, or a folder of files named as the images. A label image is grey, 8 or 16
/// bits, each object one value (0 = background), as `--emit instances` writes them.
pub fn load_instance_labels(data: &Path, labels: &Path, pairs: &[Pair]) -> Result<Vec<Vec<u32>>> {
    paired_paths(data, labels)?
        .into_iter()
        .zip(pairs)
        .map(|((img, l), pair)| {
            let map = companion(&img, &l, pair.w, pair.h)?;
            if map.is_colour() {
                return Err(Error::Other(format!(
                    "{}: an object label map must be grey (one value per object), not colour",
                    l.display()
                )));
            }
            // Decoding spreads 8-bit values over 16 bits (× 257); undone to get the ids back.
            let per_id = match map.depth {
                BitDepth::Eight => 257.0,
                BitDepth::Sixteen => 1.0,
            };
            Ok(map.planes[0]
                .iter()
                .map(|&v| ((v * 65535.0).round() / per_id).round() as u32)
                .collect())
        })
        .collect()
}

/// Whether pixel `(x, y)` lies in `region` (`[x, y, w, h]`; `None` = everywhere).
pub fn in_region(region: Option<[usize; 4]>, x: usize, y: usize) -> bool {
    match region {
        None => true,
        Some([rx, ry, rw, rh]) => x >= rx && x < rx + rw && y >= ry && y < ry + rh,
    }
}

/// A random `p × p` patch (image, mask) from inside `region` of a random pair, under one of the
/// 8 symmetries of the square, with a random brightness gain.
pub fn pair_patch<R: Rng>(
    pairs: &[Pair],
    region: Option<[usize; 4]>,
    p: usize,
    rng: &mut R,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let pair = &pairs[rng.random_range(0..pairs.len())];
    let [rx, ry, rw, rh] = region.unwrap_or([0, 0, pair.w, pair.h]);
    let (rw, rh) = (
        rw.min(pair.w.saturating_sub(rx)),
        rh.min(pair.h.saturating_sub(ry)),
    );
    if rw < p || rh < p {
        return Err(Error::Other(format!(
            "{}: the training region is smaller than the {p}×{p} patch",
            pair.name
        )));
    }
    let x0 = rx + rng.random_range(0..=rw - p);
    let y0 = ry + rng.random_range(0..=rh - p);
    let t = rng.random_range(0..8u8);
    let gain = 0.8 + 0.4 * rng.random::<f32>();
    let (mut img, mut msk) = (vec![0f32; p * p], vec![0f32; p * p]);
    for y in 0..p {
        for x in 0..p {
            let (sx, sy) = super::patches::symmetry(t, x, y, p);
            let i = (y0 + sy) * pair.w + x0 + sx;
            img[y * p + x] = pair.image[i] * gain;
            msk[y * p + x] = pair.mask[i];
        }
    }
    Ok((img, msk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_split_takes_the_first_of_each_class() {
        let s: Vec<Sample> = (0..10)
            .map(|i| Sample {
                name: i.to_string(),
                w: 1,
                h: 1,
                data: vec![0.0],
                label: Some((i / 5) as u8),
            })
            .collect();
        let (t, v) = split(s, 3, 0.1);
        let names = |v: &[Sample]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&t), ["0", "1", "2", "5", "6", "7"]);
        assert_eq!(names(&v), ["3", "4", "8", "9"]);
    }

    #[test]
    fn identity_augmentation_is_a_plain_resize() {
        let s = Sample {
            name: "x".into(),
            w: 8,
            h: 6,
            data: (0..48).map(|v| v as f32 / 48.0).collect(),
            label: None,
        };
        let tc = TrainConfig::default();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
        let a = augmented(&s, (4, 3), &tc, &mut rng);
        let b = resized(&s, (4, 3));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
    }
}
