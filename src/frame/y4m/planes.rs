//! One YUV4MPEG2 frame ↔ float [`Planes`].
//!
//! Decoding keeps the planes as they are, Y' at the frame's size and Cb, Cr at the chroma
//! size, each scaled to [0, 1] by its bit depth: by default the denoiser (a grey model run on
//! each plane with its own noise estimate) sees every plane at its own resolution and nothing
//! is resampled. On noise added to the planes this beats converting to RGB and back by 4 dB
//! in luma; on camera-like noise from RGB the RGB path is 1.4 dB better in RGB, at about twice
//! the model time (docs/video.md has the numbers). [`to_rgb`] and [`from_rgb`] convert for
//! `[normalise] colour = "rgb"`, for writing a decoded frame as PNG, and for that comparison.

use super::{Format, Header, MAX_HEADER, SIGNATURE};
use crate::frame::{resize_plane, BitDepth, Planes};

/// What a frame decoded from YUV4MPEG2 holds: its planes are Y', Cb, Cr (Y' alone for mono)
/// in this layout, with the samples on the studio range unless `full_range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yuv {
    pub format: Format,
    pub full_range: bool,
}

/// A one-frame record cut into its parts.
#[derive(Debug)]
pub struct Record<'a> {
    pub header: Header,
    /// The `FRAME` line without its newline (`FRAME` and any parameters).
    pub frame_line: &'a [u8],
    /// The planes.
    pub data: &'a [u8],
}

/// Cuts a one-frame record (header line, `FRAME` line, exactly one frame of planes).
pub fn split_record(bytes: &[u8]) -> Result<Record<'_>, String> {
    let line_end = |from: usize, max: usize| {
        bytes[from..bytes.len().min(from + max)]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| from + i)
    };
    let h_end = line_end(0, MAX_HEADER).ok_or("no end to the YUV4MPEG2 header line")?;
    let header = Header::parse(&bytes[..h_end])?;
    let f_end = line_end(h_end + 1, 4096).ok_or("no FRAME line after the header")?;
    let frame_line = &bytes[h_end + 1..f_end];
    if !frame_line.starts_with(b"FRAME") {
        return Err("no FRAME line after the header".into());
    }
    let data = &bytes[f_end + 1..];
    if data.len() != header.frame_bytes() {
        return Err(format!(
            "a {}x{} C{} frame has {} bytes of planes, not {}",
            header.width,
            header.height,
            header.format(),
            header.frame_bytes(),
            data.len()
        ));
    }
    Ok(Record {
        header,
        frame_line,
        data,
    })
}

/// Whether `bytes` start like a YUV4MPEG2 stream.
pub fn is_y4m(bytes: &[u8]) -> bool {
    bytes.starts_with(SIGNATURE)
}

/// Decodes a one-frame record into planes at their own sizes, refusing frames over
/// `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Planes, String> {
    let rec = split_record(bytes)?;
    let h = &rec.header;
    if (h.width as u64) * (h.height as u64) > max_pixels {
        return Err(format!(
            "{}x{} is over the limit of {max_pixels} pixels",
            h.width, h.height
        ));
    }
    let f = h.format();
    let scale = 1.0 / f.max_value() as f32;
    let mut at = 0;
    let planes = (0..f.plane_count())
        .map(|i| {
            let (pw, ph) = f.plane_size(i, h.width, h.height);
            let n = pw * ph * f.sample_bytes();
            let raw = &rec.data[at..at + n];
            at += n;
            if f.bits > 8 {
                raw.chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as f32 * scale)
                    .collect()
            } else {
                raw.iter().map(|&b| b as f32 * scale).collect()
            }
        })
        .collect();
    Ok(Planes {
        width: h.width,
        height: h.height,
        planes,
        alpha: None,
        depth: if f.bits > 8 {
            BitDepth::Sixteen
        } else {
            BitDepth::Eight
        },
        yuv: Some(Yuv {
            format: f,
            full_range: h.full_range(),
        }),
    })
}

/// Encodes planes decoded from YUV4MPEG2 back into a one-frame record at their layout and
/// depth, values clipped to [0, 1]. A frame turned grey on the way (`colour = "grey"`) gets
/// neutral chroma, so the stream keeps its layout.
pub fn encode(p: &Planes) -> Result<Vec<u8>, String> {
    let yuv = p.yuv.ok_or("not a YUV frame")?;
    let f = yuv.format;
    let mut header = Header::new(p.width, p.height, f);
    if yuv.full_range {
        header.extra.push("XCOLORRANGE=FULL".into());
    }
    let mut out = header.line().into_bytes();
    out.extend_from_slice(b"FRAME\n");
    out.reserve(header.frame_bytes());
    let max = f.max_value() as f32;
    let neutral = 1u32 << (f.bits - 1);
    for i in 0..f.plane_count() {
        let (pw, ph) = f.plane_size(i, p.width, p.height);
        let samples: Box<dyn Iterator<Item = u32>> = match p.planes.get(i) {
            Some(plane) if plane.len() == pw * ph => Box::new(
                plane
                    .iter()
                    .map(move |v| (v.clamp(0.0, 1.0) * max).round() as u32),
            ),
            Some(plane) => {
                return Err(format!(
                    "plane {i} has {} values, not {pw}x{ph}",
                    plane.len()
                ))
            }
            None if i > 0 => Box::new(std::iter::repeat_n(neutral, pw * ph)),
            None => return Err("no planes".into()),
        };
        if f.bits > 8 {
            samples.for_each(|v| out.extend_from_slice(&(v as u16).to_le_bytes()));
        } else {
            out.extend(samples.map(|v| v as u8));
        }
    }
    Ok(out)
}

/// The colour-matrix constants (Kr, Kb): BT.601 below 720 lines, BT.709 from 720 up (what
/// players assume when a stream says nothing, as YUV4MPEG2 streams do).
fn matrix(height: usize) -> (f32, f32) {
    if height >= 720 {
        (0.2126, 0.0722)
    } else {
        (0.299, 0.114)
    }
}

/// Offsets and spans of Y' and of Cb/Cr on the [0, 1] scale of a `bits`-bit sample.
fn levels(yuv: Yuv) -> ((f32, f32), (f32, f32)) {
    let max = yuv.format.max_value() as f32;
    let unit = (1u32 << (yuv.format.bits - 8)) as f32 / max;
    let mid = (1u32 << (yuv.format.bits - 1)) as f32 / max;
    if yuv.full_range {
        ((0.0, 1.0), (mid, 1.0))
    } else {
        ((16.0 * unit, 219.0 * unit), (mid, 224.0 * unit))
    }
}

/// Y'CbCr planes → RGB planes at the frame's size (grey for mono), chroma upsampled
/// bilinearly. Planes without a YUV layout come back as they are.
pub fn to_rgb(p: &Planes) -> Planes {
    let Some(yuv) = p.yuv else { return p.clone() };
    let (w, h) = (p.width, p.height);
    let ((yo, ys), (co, cs)) = levels(yuv);
    let y: Vec<f32> = p.planes[0].iter().map(|v| (v - yo) / ys).collect();
    let mut out = Planes {
        width: w,
        height: h,
        planes: vec![],
        alpha: p.alpha.clone(),
        depth: p.depth,
        yuv: None,
    };
    let Some((cw, ch)) = yuv.format.chroma_size(w, h).filter(|_| p.planes.len() == 3) else {
        out.planes = vec![y];
        return out;
    };
    // Resampled as stored (0–1): the resize clamps to that range, so centred values (±0.5)
    // would lose their negative half.
    let up = |c: &[f32]| -> Vec<f32> {
        let c = resize_plane(c, cw, ch, w, h);
        c.iter().map(|v| (v - co) / cs).collect()
    };
    let (cb, cr) = (up(&p.planes[1]), up(&p.planes[2]));
    let (kr, kb) = matrix(h);
    let kg = 1.0 - kr - kb;
    let mut rgb = [
        Vec::with_capacity(w * h),
        Vec::with_capacity(w * h),
        Vec::with_capacity(w * h),
    ];
    for ((y, cb), cr) in y.iter().zip(&cb).zip(&cr) {
        let r = y + 2.0 * (1.0 - kr) * cr;
        let b = y + 2.0 * (1.0 - kb) * cb;
        rgb[0].push(r);
        rgb[1].push((y - kr * r - kb * b) / kg);
        rgb[2].push(b);
    }
    out.planes = rgb.into();
    out
}

/// RGB (or grey) planes → Y'CbCr in layout `yuv`, chroma downsampled with the pipeline's
/// resize filter: the inverse of [`to_rgb`].
pub fn from_rgb(p: &Planes, yuv: Yuv) -> Planes {
    let (w, h) = (p.width, p.height);
    let ((yo, ys), (co, cs)) = levels(yuv);
    let luma: Vec<f32> = if p.planes.len() == 3 {
        let (kr, kb) = matrix(h);
        let kg = 1.0 - kr - kb;
        let (r, g, b) = (&p.planes[0], &p.planes[1], &p.planes[2]);
        (0..w * h)
            .map(|i| kr * r[i] + kg * g[i] + kb * b[i])
            .collect()
    } else {
        p.planes[0].clone()
    };
    let mut planes = vec![luma.iter().map(|v| v * ys + yo).collect::<Vec<f32>>()];
    if let Some((cw, ch)) = yuv.format.chroma_size(w, h) {
        let (kr, kb) = matrix(h);
        for (c, k) in [(2usize, kb), (0, kr)] {
            let diff: Vec<f32> = if p.planes.len() == 3 {
                p.planes[c]
                    .iter()
                    .zip(&luma)
                    .map(|(v, y)| (v - y) / (2.0 * (1.0 - k)))
                    .collect()
            } else {
                vec![0.0; w * h]
            };
            // Resampled as stored (0–1), as in `to_rgb`.
            let full: Vec<f32> = diff.iter().map(|v| v * cs + co).collect();
            planes.push(resize_plane(&full, w, h, cw, ch));
        }
    }
    Planes {
        width: w,
        height: h,
        planes,
        alpha: p.alpha.clone(),
        depth: p.depth,
        yuv: Some(yuv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str, data: &[u8]) -> Vec<u8> {
        let mut r = format!("{line}\nFRAME\n").into_bytes();
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn eight_bit_420_round_trips_exactly_at_its_own_sizes() {
        let data: Vec<u8> = (0..35 + 24).map(|i| (i * 37 % 256) as u8).collect();
        let rec = record("YUV4MPEG2 W7 H5 C420", &data);
        let p = decode(&rec, 1000).unwrap();
        assert_eq!((p.width, p.height, p.planes.len()), (7, 5, 3));
        assert_eq!((p.planes[0].len(), p.planes[1].len()), (35, 12));
        assert_eq!(p.plane_size(2), (4, 3));
        assert_eq!(p.depth, BitDepth::Eight);
        let back = encode(&p).unwrap();
        assert_eq!(split_record(&back).unwrap().data, &data[..]);
        assert!(decode(&rec, 34).unwrap_err().contains("over the limit"));
    }

    #[test]
    fn ten_and_sixteen_bit_samples_round_trip_exactly() {
        for (c, max) in [("420p10", 1023u16), ("444p16", 65535), ("mono12", 4095)] {
            let f = Format::parse(c).unwrap();
            let n = f.frame_bytes(3, 2).unwrap() / 2;
            let data: Vec<u8> = (0..n)
                .map(|i| ((i as u32 * 7919) % (max as u32 + 1)) as u16)
                .flat_map(u16::to_le_bytes)
                .collect();
            let rec = record(&format!("YUV4MPEG2 W3 H2 C{c}"), &data);
            let p = decode(&rec, 100).unwrap();
            assert_eq!(p.depth, BitDepth::Sixteen, "{c}");
            assert_eq!(p.planes.len(), f.plane_count());
            let back = encode(&p).unwrap();
            assert_eq!(split_record(&back).unwrap().data, &data[..], "{c}");
        }
    }

    #[test]
    fn a_grey_output_gets_neutral_chroma() {
        let mut p = decode(&record("YUV4MPEG2 W2 H2 C420jpeg", &[9; 6]), 100).unwrap();
        p.planes.truncate(1);
        let back = encode(&p).unwrap();
        assert_eq!(split_record(&back).unwrap().data, &[9, 9, 9, 9, 128, 128]);
    }

    #[test]
    fn records_of_the_wrong_size_are_refused() {
        let e = split_record(&record("YUV4MPEG2 W2 H2", &[0; 5])).unwrap_err();
        assert!(e.contains("not 5"), "{e}");
        assert!(split_record(b"YUV4MPEG2 W2 H2\nFRAMX\n\0\0\0\0\0\0").is_err());
        assert!(split_record(b"YUV4MPEG2 W2 H2").is_err());
    }

    /// 4:2:0 → RGB → 4:2:0 keeps chroma on both sides of neutral (the resize clamps to 0–1,
    /// so chroma is resampled as stored, not centred on 0).
    #[test]
    fn subsampled_chroma_survives_the_round_trip() {
        let data: Vec<u8> = (0..64)
            .map(|i| 60 + (i % 8) as u8 * 10)
            .chain((0..16).map(|i| 100 + (i % 4) as u8 * 20))
            .chain((0..16).map(|i| 160 - (i % 4) as u8 * 20))
            .collect();
        let p = decode(&record("YUV4MPEG2 W8 H8 C420", &data), 100).unwrap();
        let back = from_rgb(&to_rgb(&p), p.yuv.unwrap());
        for (a, b) in back.planes[1..]
            .concat()
            .iter()
            .zip(&p.planes[1..].concat())
        {
            assert!(
                (a - b).abs() < 12.0 / 255.0,
                "{} vs {}",
                a * 255.0,
                b * 255.0
            );
        }
    }

    /// RGB → YUV → RGB comes back within rounding on smooth content, both matrices and ranges.
    #[test]
    fn rgb_conversion_inverts() {
        for (h, full) in [(16, false), (720, true)] {
            let w = 16;
            let v = |c: usize| -> Vec<f32> {
                (0..w * h)
                    .map(|i| 0.2 + 0.6 * (((i % w) + c * 3) as f32 / (w + 6) as f32))
                    .collect()
            };
            let rgb = Planes {
                width: w,
                height: h,
                planes: vec![v(0), v(1), v(2)],
                alpha: None,
                depth: BitDepth::Eight,
                yuv: None,
            };
            let yuv = Yuv {
                format: Format::parse("444").unwrap(),
                full_range: full,
            };
            let back = to_rgb(&from_rgb(&rgb, yuv));
            for (a, b) in back.planes.concat().iter().zip(rgb.planes.concat()) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }
}
