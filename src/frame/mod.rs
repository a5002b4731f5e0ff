//! Frames and images as they travel through the pipeline.
//!
//! A [`FrameId`] carries a frame's identity (source path, stream sequence number, queue entry)
//! from the source to the sink; [`Planes`] is the decoded image as float planes in [0, 1],
//! which every stage after decode works on, with the bit depth it came in ([`BitDepth`]) so
//! that it goes out at that depth. Beside them: the codecs ([`codec`]), which files
//! are images ([`files`]), how frames are cut out of a byte stream ([`framing`]), and raw
//! video in YUV4MPEG2 ([`y4m`]).

pub mod codec;
pub mod entry;
pub mod files;
pub mod framing;
pub mod names;
pub mod y4m;

use std::path::PathBuf;

use image::DynamicImage;

pub use codec::{
    decode, encode_png, header, percentile, read_image, resize_plane, stretch_percentiles,
    DecodeLimits, Header,
};
pub use files::{is_image_name, list_images, list_images_recursive};

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
    Entry(entry::Entry),
    /// The body of an HTTP inference request, numbered from 0 by the server; its answer goes
    /// back to the waiting client, not to a sink.
    Request { n: u64 },
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

/// `s` with each control character written as Rust escapes it (`\n`, `\u{1b}`), the rest as
/// it is. A file name may hold a newline or a terminal escape; written raw into a log line it
/// would start a forged line of its own.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

impl std::fmt::Display for FrameId {
    /// Names the frame for logs and notes, with control characters in file names escaped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameId::File { abs, .. } => f.write_str(&escape_controls(&abs.to_string_lossy())),
            FrameId::Stream { seq, offset } => write!(f, "stdin frame {seq} at byte {offset}"),
            FrameId::Entry(e) => write!(f, "{e}"),
            FrameId::Request { n } => write!(f, "HTTP request {n}"),
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
    /// The depth the frame was decoded from, and so the depth its images are written at.
    pub depth: BitDepth,
    /// Set for a frame decoded from YUV4MPEG2: the planes are Y', Cb, Cr, the chroma ones at
    /// their own size ([`Planes::plane_size`]), and it is written back as YUV4MPEG2.
    pub yuv: Option<y4m::Yuv>,
}

/// Bits per channel of an image file. Decoding records it; encoding writes it back, so a
/// 16-bit frame (a microscope's or a scientific camera's) keeps its precision end to end
/// instead of being squeezed into 256 levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BitDepth {
    #[default]
    Eight,
    /// 16 bits per channel; also how float images (32-bit TIFF) are written, PNG having no
    /// float format.
    Sixteen,
}

impl BitDepth {
    /// The depth to write a decoded image of colour type `c` at.
    pub fn of(c: image::ColorType) -> Self {
        if c.bytes_per_pixel() > c.channel_count() {
            BitDepth::Sixteen
        } else {
            BitDepth::Eight
        }
    }
}

/// Rec. 709 luma, as scikit-image's `rgb2gray`.
pub const LUMA: [f32; 3] = [0.2125, 0.7154, 0.0721];

impl Planes {
    /// An 8-bit grey image of these values.
    pub fn grey(width: usize, height: usize, data: Vec<f32>) -> Self {
        Self {
            width,
            height,
            planes: vec![data],
            alpha: None,
            depth: BitDepth::Eight,
            yuv: None,
        }
    }

    /// The size of plane `i`: the frame's, except a YUV frame's subsampled chroma planes.
    pub fn plane_size(&self, i: usize) -> (usize, usize) {
        match &self.yuv {
            Some(y) => y.format.plane_size(i, self.width, self.height),
            None => (self.width, self.height),
        }
    }

    /// The same image, to be written at `depth`.
    pub fn with_depth(self, depth: BitDepth) -> Self {
        Self { depth, ..self }
    }

    pub fn is_colour(&self) -> bool {
        self.planes.len() == 3
    }

    /// The luma plane (the plane itself for grey images, Y' for YUV ones).
    pub fn luma(&self) -> Vec<f32> {
        if !self.is_colour() || self.yuv.is_some() {
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
        let depth = BitDepth::of(img.color());
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
                depth,
                yuv: None,
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
                depth,
                yuv: None,
            }
        }
    }

    /// Back to an image at the frame's [`BitDepth`]: grey, grey+alpha, RGB or RGBA, values
    /// clipped to [0, 1]. A YUV frame is converted to RGB first.
    pub fn to_dynamic(&self) -> DynamicImage {
        if self.yuv.is_some() {
            return y4m::planes::to_rgb(self).to_dynamic();
        }
        let (w, h) = (self.width as u32, self.height as u32);
        let mut chans: Vec<&[f32]> = self.planes.iter().map(Vec::as_slice).collect();
        if let Some(a) = &self.alpha {
            chans.push(a);
        }
        let n = self.width * self.height;
        // Interleaved samples, quantised by `q`: pixel by pixel, channel by channel.
        fn interleave<T>(chans: &[&[f32]], n: usize, q: impl Fn(f32) -> T) -> Vec<T> {
            (0..n)
                .flat_map(|i| chans.iter().map(move |p| p[i]))
                .map(|v| q(v.clamp(0.0, 1.0)))
                .collect()
        }
        const SIZE: &str = "buffer size matches";
        match self.depth {
            BitDepth::Eight => {
                let buf = interleave(&chans, n, |v| (v * 255.0).round() as u8);
                match chans.len() {
                    1 => DynamicImage::ImageLuma8(
                        image::ImageBuffer::from_raw(w, h, buf).expect(SIZE),
                    ),
                    2 => DynamicImage::ImageLumaA8(
                        image::ImageBuffer::from_raw(w, h, buf).expect(SIZE),
                    ),
                    3 => DynamicImage::ImageRgb8(
                        image::ImageBuffer::from_raw(w, h, buf).expect(SIZE),
                    ),
                    _ => DynamicImage::ImageRgba8(
                        image::ImageBuffer::from_raw(w, h, buf).expect(SIZE),
                    ),
                }
            }
            BitDepth::Sixteen => {
                let buf = interleave(&chans, n, |v| (v * 65535.0).round() as u16);
                match chans.len() {
                    1 => DynamicImage::ImageLuma16(
                        image::ImageBuffer::from_raw(w, h, buf).expect(SIZE),
                    ),
                    2 => DynamicImage::ImageLumaA16(
                        image::ImageBuffer::from_raw(w, h, buf).expect(SIZE),
                    ),
                    3 => DynamicImage::ImageRgb16(
                        image::ImageBuffer::from_raw(w, h, buf).expect(SIZE),
                    ),
                    _ => DynamicImage::ImageRgba16(
                        image::ImageBuffer::from_raw(w, h, buf).expect(SIZE),
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newline in a file name cannot start a line of its own where the frame is named.
    #[test]
    fn frame_names_escape_control_characters() {
        let id = FrameId::File {
            rel: "a\nb.png".into(),
            abs: "in/a\nINFO x\u{1b}[2J\tb.png".into(),
            stamp: FileStamp::default(),
        };
        assert_eq!(id.to_string(), "in/a\\nINFO x\\u{1b}[2J\\tb.png");
        assert_eq!(escape_controls("plain ü.png"), "plain ü.png");
    }
    use image::ImageFormat;
    use std::io::Cursor;

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
        assert_eq!(p.depth, BitDepth::Sixteen);
        assert!((p.planes[0][1] - 1000.0 / 65535.0).abs() < 1e-7);
        assert!((p.planes[0][4 + 3] - 3007.0 / 65535.0).abs() < 1e-7);
        // And back out at 16 bits, every value exact.
        let again = decode(&encode_png(&p, "t").unwrap(), DecodeLimits::default(), "t").unwrap();
        assert_eq!(again, p);
    }

    /// Each layout keeps its depth through encode and decode: 8-bit stays 8-bit (no larger
    /// files for ordinary photos), 16-bit stays 16-bit.
    #[test]
    fn every_layout_round_trips_at_its_depth() {
        let v = |c: usize| (0..6).map(move |i| ((i * 9000 + c * 7000) % 65536) as f32 / 65535.0);
        for depth in [BitDepth::Eight, BitDepth::Sixteen] {
            for (chans, alpha) in [(1, false), (1, true), (3, false), (3, true)] {
                let p = Planes {
                    width: 3,
                    height: 2,
                    planes: (0..chans).map(|c| v(c).collect()).collect(),
                    alpha: alpha.then(|| v(5).collect()),
                    depth,
                    yuv: None,
                };
                let back =
                    decode(&encode_png(&p, "t").unwrap(), DecodeLimits::default(), "t").unwrap();
                assert_eq!(back.depth, depth, "{chans} channels, alpha {alpha}");
                let step = if depth == BitDepth::Eight {
                    0.5 / 255.0
                } else {
                    1e-7
                };
                let all = |p: &Planes| {
                    p.planes
                        .concat()
                        .into_iter()
                        .chain(p.alpha.clone().into_iter().flatten())
                        .collect::<Vec<_>>()
                };
                for (a, b) in all(&back).iter().zip(all(&p)) {
                    assert!((a - b).abs() <= step, "{depth:?}: {a} vs {b}");
                }
                assert_eq!((back.planes.len(), back.alpha.is_some()), (chans, alpha));
            }
        }
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
