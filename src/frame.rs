//! Frames and images as they travel through the pipeline.
//!
//! A [`Frame`] carries its identity (source path or stream sequence number) from the source to
//! the sink; [`Planes`] is the decoded image as float planes in [0, 1], which every stage after
//! decode works on.

use std::io::Cursor;
use std::path::PathBuf;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::error::{Error, Result};

/// Where a frame came from; kept end to end so outputs and errors can name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FrameId {
    /// A file from a folder source: its path relative to the folder, the full path, and
    /// what the file was when it was read (for the journal and the changed-since check).
    File {
        rel: PathBuf,
        abs: PathBuf,
        stamp: FileStamp,
    },
    /// A frame of a byte stream: its sequence number (from 0) and byte offset.
    Stream { seq: u64, offset: u64 },
    /// An entry of a queue (a Redis stream).
    Entry(crate::queue::Entry),
}

/// A file's size, modification time and content hash (xxh3-128, hex) as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub size: u64,
    /// Nanoseconds since the Unix epoch (0 when the filesystem gives none).
    pub mtime_ns: u64,
    pub hash: String,
}

impl FileStamp {
    /// Size and mtime of `meta`; the hash is filled in once the bytes are read.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            size: meta.len(),
            mtime_ns,
            hash: String::new(),
        }
    }

    /// The content hash of `bytes` as stored in stamps and the journal.
    pub fn hash_of(bytes: &[u8]) -> String {
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
    }

    /// Same size and mtime (the cheap check, without reading the file).
    pub fn same_file_state(&self, other: &FileStamp) -> bool {
        self.size == other.size && self.mtime_ns == other.mtime_ns
    }
}

impl std::fmt::Display for FrameId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameId::File { abs, .. } => write!(f, "{}", abs.display()),
            FrameId::Stream { seq, offset } => write!(f, "stdin frame {seq} at byte {offset}"),
            FrameId::Entry(e) => write!(f, "{e}"),
        }
    }
}

/// A decoded image: one float plane per colour channel (1 or 3), plus alpha if it had one.
#[derive(Debug, Clone, PartialEq)]
pub struct Planes {
    pub width: usize,
    pub height: usize,
    /// Row-major planes of `width * height` values in [0, 1].
    pub planes: Vec<Vec<f32>>,
    /// Alpha, passed through untouched.
    pub alpha: Option<Vec<f32>>,
}

/// Rec. 709 luma, as scikit-image's `rgb2gray`.
pub const LUMA: [f32; 3] = [0.2125, 0.7154, 0.0721];

impl Planes {
    pub fn grey(width: usize, height: usize, data: Vec<f32>) -> Self {
        Self {
            width,
            height,
            planes: vec![data],
            alpha: None,
        }
    }

    pub fn is_colour(&self) -> bool {
        self.planes.len() == 3
    }

    /// The luma plane (the plane itself for grey images).
    pub fn luma(&self) -> Vec<f32> {
        if !self.is_colour() {
            return self.planes[0].clone();
        }
        let (r, g, b) = (&self.planes[0], &self.planes[1], &self.planes[2]);
        r.iter()
            .zip(g)
            .zip(b)
            .map(|((r, g), b)| LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)
            .collect()
    }

    /// From any decoded image: 8/16-bit grey, grey+alpha, RGB, RGBA, float.
    pub fn from_dynamic(img: DynamicImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let has_alpha = img.color().has_alpha();
        let colour = img.color().has_color();
        // Go through 16 bits so 16-bit inputs keep their precision until the model.
        let scale = 1.0 / 65535.0;
        if colour {
            let buf = img.to_rgba16();
            let mut planes: Vec<Vec<f32>> = (0..3).map(|_| Vec::with_capacity(w * h)).collect();
            let mut alpha = Vec::with_capacity(if has_alpha { w * h } else { 0 });
            for p in buf.pixels() {
                for (c, plane) in planes.iter_mut().enumerate() {
                    plane.push(p.0[c] as f32 * scale);
                }
                if has_alpha {
                    alpha.push(p.0[3] as f32 * scale);
                }
            }
            Self {
                width: w,
                height: h,
                planes,
                alpha: has_alpha.then_some(alpha),
            }
        } else {
            let buf = img.to_luma_alpha16();
            let mut plane = Vec::with_capacity(w * h);
            let mut alpha = Vec::with_capacity(if has_alpha { w * h } else { 0 });
            for p in buf.pixels() {
                plane.push(p.0[0] as f32 * scale);
                if has_alpha {
                    alpha.push(p.0[1] as f32 * scale);
                }
            }
            Self {
                width: w,
                height: h,
                planes: vec![plane],
                alpha: has_alpha.then_some(alpha),
            }
        }
    }

    /// Back to an 8-bit image: grey, grey+alpha, RGB or RGBA, values clipped to [0, 1].
    pub fn to_dynamic(&self) -> DynamicImage {
        let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        let (w, h) = (self.width as u32, self.height as u32);
        let n = self.width * self.height;
        match (self.is_colour(), &self.alpha) {
            (false, None) => DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w, h, self.planes[0].iter().map(|&v| q(v)).collect())
                    .expect("buffer size matches"),
            ),
            (false, Some(a)) => {
                let mut buf = Vec::with_capacity(2 * n);
                for (v, a) in self.planes[0].iter().zip(a) {
                    buf.extend([q(*v), q(*a)]);
                }
                DynamicImage::ImageLumaA8(
                    image::GrayAlphaImage::from_raw(w, h, buf).expect("buffer size matches"),
                )
            }
            (true, None) => {
                let mut buf = Vec::with_capacity(3 * n);
                for i in 0..n {
                    buf.extend([
                        q(self.planes[0][i]),
                        q(self.planes[1][i]),
                        q(self.planes[2][i]),
                    ]);
                }
                DynamicImage::ImageRgb8(
                    image::RgbImage::from_raw(w, h, buf).expect("buffer size matches"),
                )
            }
            (true, Some(a)) => {
                let mut buf = Vec::with_capacity(4 * n);
                for (i, a) in a.iter().enumerate() {
                    buf.extend([
                        q(self.planes[0][i]),
                        q(self.planes[1][i]),
                        q(self.planes[2][i]),
                        q(*a),
                    ]);
                }
                DynamicImage::ImageRgba8(
                    image::RgbaImage::from_raw(w, h, buf).expect("buffer size matches"),
                )
            }
        }
    }
}

/// Decoder limits for one frame.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 64_000_000,
            max_alloc_bytes: 1 << 30,
        }
    }
}

/// Decodes PNG, JPEG, PNM, TIFF or WebP bytes (format sniffed from the content) within `limits`.
pub fn decode(bytes: &[u8], limits: DecodeLimits, what: &str) -> Result<Planes> {
    let err = |message: String| Error::Decode {
        what: what.to_string(),
        message,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    let format = reader
        .format()
        .ok_or_else(|| err("unknown image format".into()))?;
    if !matches!(
        format,
        ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::Pnm
            | ImageFormat::Tiff
            | ImageFormat::WebP
            | ImageFormat::Bmp
            | ImageFormat::Gif
    ) {
        return Err(err(format!("unsupported format {format:?}")));
    }
    // Check the header's size before allocating anything for the pixels.
    let (w, h) = reader.into_dimensions().map_err(|e| err(e.to_string()))?;
    if (w as u64) * (h as u64) > limits.max_pixels {
        return Err(err(format!(
            "{w}x{h} is over the limit of {} pixels",
            limits.max_pixels
        )));
    }
    if w == 0 || h == 0 {
        return Err(err("empty image".into()));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut lim = Limits::default();
    lim.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(lim);
    let img = reader.decode().map_err(|e| err(e.to_string()))?;
    Ok(Planes::from_dynamic(img))
}

/// Reads and decodes an image file.
pub fn read_image(path: &std::path::Path, limits: DecodeLimits) -> Result<Planes> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    decode(&bytes, limits, &path.display().to_string())
}

/// Encodes as PNG (8-bit).
pub fn encode_png(planes: &Planes, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    planes
        .to_dynamic()
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .map_err(|e| Error::Encode {
            what: what.to_string(),
            message: e.to_string(),
        })?;
    Ok(out)
}

/// Image files in a folder (non-recursive, sorted), skipping dot-files and partial files.
pub fn list_images(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let p = entry.path();
        if p.is_file() && is_image_name(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Resizes a plane with a triangle (bilinear, anti-aliased when shrinking) filter: the one
/// resize used by the pipeline, training and eval, so they all see the same pixels.
pub fn resize_plane(data: &[f32], w: usize, h: usize, nw: usize, nh: usize) -> Vec<f32> {
    if (w, h) == (nw, nh) {
        return data.to_vec();
    }
    let Some(img) = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
        w as u32,
        h as u32,
        data.to_vec(),
    ) else {
        return vec![0.0; nw * nh];
    };
    image::imageops::resize(
        &img,
        nw as u32,
        nh as u32,
        image::imageops::FilterType::Triangle,
    )
    .into_raw()
}

/// Maps the `lo`/`hi` percentiles of a plane to 0/1 in place (values outside go beyond 0–1).
pub fn stretch_percentiles(plane: &mut [f32], lo: f32, hi: f32) {
    if plane.is_empty() {
        return;
    }
    let mut sorted: Vec<f32> = plane.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f32| {
        let pos = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f32;
        let (i, f) = (pos.floor() as usize, pos.fract());
        let j = (i + 1).min(sorted.len() - 1);
        sorted[i] * (1.0 - f) + sorted[j] * f
    };
    let (a, b) = (at(lo), at(hi));
    let scale = 1.0 / (b - a).max(1e-6);
    plane.iter_mut().for_each(|v| *v = (*v - a) * scale);
}

/// Image files under `dir`, recursively, sorted; paths with a component in `exclude` are
/// left out.
pub fn list_images_recursive(dir: &std::path::Path, exclude: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| Error::Io {
            path: d.clone(),
            source: e,
        })?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::Io {
                path: d.clone(),
                source: e,
            })?;
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if exclude.contains(&name) || name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if is_image_name(&p) {
                out.push(p);
            }
        }
    }
    // Natural order, so s2 comes before s10 and 2.pgm before 10.pgm.
    out.sort_by_key(|p| natural_key(&p.to_string_lossy()));
    Ok(out)
}

/// A sort key that orders runs of digits by value.
pub fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = c.to_digit(10).unwrap_or(0) as u64;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d as u64);
                chars.next();
            }
            out.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    out.push((text, 0));
    out
}

/// Whether a file name looks like an image we take (by extension, not a dot-file or partial).
pub fn is_image_name(p: &std::path::Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        ext.as_str(),
        "png" | "jpg" | "jpeg" | "pgm" | "ppm" | "pnm" | "pbm" | "tif" | "tiff" | "webp"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: DynamicImage, fmt: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), fmt).unwrap();
        out
    }

    #[test]
    fn sixteen_bit_grey_keeps_its_precision() {
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(4, 2, |x, y| {
            image::Luma([(x * 1000 + y * 7) as u16])
        });
        let bytes = encode(DynamicImage::ImageLuma16(img), ImageFormat::Png);
        let p = decode(&bytes, DecodeLimits::default(), "t").unwrap();
        assert!(!p.is_colour() && p.alpha.is_none());
        assert!((p.planes[0][1] - 1000.0 / 65535.0).abs() < 1e-7);
        assert!((p.planes[0][4 + 3] - 3007.0 / 65535.0).abs() < 1e-7);
    }

    #[test]
    fn rgba_round_trips_with_its_alpha() {
        let img = image::RgbaImage::from_fn(3, 3, |x, y| {
            image::Rgba([x as u8 * 80, y as u8 * 80, 7, 200 - x as u8])
        });
        let bytes = encode(DynamicImage::ImageRgba8(img.clone()), ImageFormat::Png);
        let p = decode(&bytes, DecodeLimits::default(), "t").unwrap();
        assert!(p.is_colour() && p.alpha.is_some());
        assert_eq!(p.to_dynamic().to_rgba8(), img);
    }

    #[test]
    fn oversized_frames_are_refused_before_decoding() {
        let img = image::GrayImage::new(100, 100);
        let bytes = encode(DynamicImage::ImageLuma8(img), ImageFormat::Png);
        let limits = DecodeLimits {
            max_pixels: 5_000,
            ..DecodeLimits::default()
        };
        let err = decode(&bytes, limits, "big.png").unwrap_err().to_string();
        assert!(
            err.contains("big.png") && err.contains("over the limit"),
            "{err}"
        );
    }

    #[test]
    fn pnm_tiff_webp_jpeg_decode() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(8, 6, |x, y| {
            image::Rgb([x as u8 * 30, y as u8 * 40, 90])
        }));
        for fmt in [
            ImageFormat::Pnm,
            ImageFormat::Tiff,
            ImageFormat::WebP,
            ImageFormat::Jpeg,
        ] {
            let bytes = encode(img.clone(), fmt);
            let p = decode(&bytes, DecodeLimits::default(), "t")
                .unwrap_or_else(|e| panic!("{fmt:?}: {e}"));
            assert_eq!((p.width, p.height, p.is_colour()), (8, 6, true), "{fmt:?}");
        }
    }
}
