//! Image codecs: bytes to [`Planes`] within decode limits, and planes back to PNG; the one
//! resize and percentile stretch that the pipeline, training and eval share, so they all see
//! the same pixels.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits};

use super::Planes;
use crate::error::{Error, Result};

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

/// What an image's header says, read before any pixel is decoded: enough to know what the
/// frame will cost (`stage::cost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Width and height in pixels.
    pub size: (u32, u32),
    /// Samples per pixel as stored (grey 1, grey+alpha 2, RGB 3, RGBA 4).
    pub channels: u8,
    /// Bytes per decoded pixel as stored (channels × 1, 2 or 4).
    pub bytes_per_pixel: u8,
    pub colour: bool,
    pub alpha: bool,
}

/// Reads an image's header (format sniffed from the content) without decoding its pixels.
pub fn header(bytes: &[u8], what: &str) -> Result<Header> {
    if super::y4m::planes::is_y4m(bytes) {
        // A video frame: every plane counted at the luma's size (an upper bound for 4:2:0).
        let r = super::y4m::planes::split_record(bytes).map_err(|message| Error::Decode {
            what: what.to_string(),
            message,
        })?;
        let f = r.header.format();
        let channels = f.plane_count() as u8;
        return Ok(Header {
            size: (r.header.width as u32, r.header.height as u32),
            channels,
            bytes_per_pixel: channels * f.sample_bytes() as u8,
            colour: channels > 1,
            alpha: false,
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Decode {
            what: what.to_string(),
            message: e.to_string(),
        })?;
    header_of(reader, what)
}

fn header_of<R: std::io::BufRead + std::io::Seek>(
    reader: ImageReader<R>,
    what: &str,
) -> Result<Header> {
    use image::ImageDecoder;
    let d = reader.into_decoder().map_err(|e| Error::Decode {
        what: what.to_string(),
        message: e.to_string(),
    })?;
    let c = d.color_type();
    Ok(Header {
        size: d.dimensions(),
        channels: c.channel_count(),
        bytes_per_pixel: c.bytes_per_pixel(),
        colour: c.has_color(),
        alpha: c.has_alpha(),
    })
}

/// Decodes PNG, JPEG, PNM, TIFF or WebP bytes, or a one-frame YUV4MPEG2 record (format sniffed
/// from the content) within `limits`.
pub fn decode(bytes: &[u8], limits: DecodeLimits, what: &str) -> Result<Planes> {
    let err = |message: String| Error::Decode {
        what: what.to_string(),
        message,
    };
    if super::y4m::planes::is_y4m(bytes) {
        return super::y4m::planes::decode(bytes, limits.max_pixels).map_err(err);
    }
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
    let (w, h) = header_of(reader, what)?.size;
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

/// Encodes as PNG at the planes' depth: 8 bits per channel, or 16 for a 16-bit frame.
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

/// The `p`-th percentile (0–100) of `plane`, interpolated between neighbours; 0 when empty.
pub fn percentile(plane: &[f32], p: f32) -> f32 {
    percentiles(plane, [p])[0]
}

/// Several percentiles of `plane` from one sort.
fn percentiles<const N: usize>(plane: &[f32], ps: [f32; N]) -> [f32; N] {
    if plane.is_empty() {
        return [0.0; N];
    }
    let mut sorted: Vec<f32> = plane.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    ps.map(|p| {
        let pos = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f32;
        let (i, f) = (pos.floor() as usize, pos.fract());
        let j = (i + 1).min(sorted.len() - 1);
        sorted[i] * (1.0 - f) + sorted[j] * f
    })
}

/// Maps the `lo`/`hi` percentiles of a plane to 0/1 in place (values outside go beyond 0–1).
/// Returns the map applied, `(offset, gain)`: a value `v` became `(v - offset) * gain`.
pub fn stretch_percentiles(plane: &mut [f32], lo: f32, hi: f32) -> (f32, f32) {
    let [a, b] = percentiles(plane, [lo, hi]);
    let gain = 1.0 / (b - a).max(1e-6);
    plane.iter_mut().for_each(|v| *v = (*v - a) * gain);
    (a, gain)
}
