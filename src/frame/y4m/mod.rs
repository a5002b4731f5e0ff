//! YUV4MPEG2 (`.y4m`): the raw-video format ffmpeg, x264, rav1e, SVT-AV1, mpv and vapoursynth
//! speak on pipes. A stream is one text header line (`YUV4MPEG2 W640 H480 F30000:1001 Ip A1:1
//! C420jpeg XCOLORRANGE=LIMITED`), then per frame a `FRAME` line and the raw planes: Y' at the
//! frame's size, then Cb and Cr at the chroma size (none for `mono`), 8-bit samples, or 16-bit
//! little-endian ones for the `p10`/`p16`… spellings.
//!
//! - [`Header`] is the stream header, typed: size, rate, interlacing, aspect, colour layout and
//!   the `X` tags (kept verbatim, in order), written back by [`Header::line`] as it came.
//! - [`reader`] cuts a byte stream into frames, with bounded memory and errors that name the
//!   frame and byte offset.
//! - [`planes`] turns one frame into float [`Planes`](super::Planes) (Y', Cb, Cr at their own
//!   sizes: the model denoises each plane as it is) and back, and converts to RGB.
//! - [`Video`] is what the stdin source and the stdout sink of one `--framing y4m` run share:
//!   the header to write back, and each input frame until its output is written.
//! - [`temporal`] is `--temporal N`: less flicker on still scenes, no ghosts on motion.
//!
//! Inside the pipeline one frame travels as a one-frame YUV4MPEG2 stream (its own header line,
//! `FRAME`, planes): a self-describing record the decode stage recognises by its signature,
//! like a PNG. A frame decoded from such a record is encoded back to one (YUV in, YUV out, as a
//! 16-bit PNG comes back 16-bit).

pub mod planes;
pub mod reader;
pub mod temporal;
mod video;

use std::fmt;

pub use planes::Yuv;
pub use video::Video;

/// The signature a YUV4MPEG2 stream (and a one-frame record) starts with.
pub const SIGNATURE: &[u8] = b"YUV4MPEG2 ";

/// The longest header line taken. Real ones are under 100 bytes; `X` tags make them longer,
/// a line without end is an attack.
pub const MAX_HEADER: usize = 16 * 1024;

/// The largest width or height taken (and the frame must be within the decode limits too).
pub const MAX_SIDE: usize = 1 << 16;

/// How chroma is subsampled (the `C` tag's first part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma {
    /// Cb and Cr at half width and half height.
    C420,
    /// Half width, full height.
    C422,
    /// Full size.
    C444,
    /// Quarter width, full height.
    C411,
    /// Y' only.
    Mono,
}

impl Chroma {
    /// Horizontal and vertical subsampling factors; `None` for mono.
    fn factors(self) -> Option<(usize, usize)> {
        match self {
            Chroma::C420 => Some((2, 2)),
            Chroma::C422 => Some((2, 1)),
            Chroma::C444 => Some((1, 1)),
            Chroma::C411 => Some((4, 1)),
            Chroma::Mono => None,
        }
    }
}

/// Where 4:2:0 chroma samples sit: the spellings `420jpeg` (centred), `420mpeg2` (left),
/// `420paldv` (top-left) and plain `420`. The planes are the same size whatever the siting;
/// it is kept so the header is written back as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Siting {
    /// `420` with no siting, and every layout that has none (422, 444, high depths).
    Plain,
    Jpeg,
    Mpeg2,
    Paldv,
}

/// The colour layout of a frame: subsampling, siting and bits per sample (8, 9, 10, 12, 14 or
/// 16; above 8 each sample takes two bytes, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub chroma: Chroma,
    pub siting: Siting,
    pub bits: u8,
}

impl Format {
    /// The layout a stream without a `C` tag has (the format's default).
    pub const DEFAULT: Format = Format {
        chroma: Chroma::C420,
        siting: Siting::Jpeg,
        bits: 8,
    };

    /// Parses a `C` tag's value (without the `C`).
    pub fn parse(s: &str) -> Result<Format, String> {
        let bad = || {
            format!(
                "colour layout C{s} is not supported (supported: 420jpeg, 420paldv, 420mpeg2, \
                 420, 422, 444, 411, mono, and 420/422/444/mono with p9, p10, p12, p14 or p16)"
            )
        };
        let (chroma, siting, rest) = if let Some(r) = s.strip_prefix("mono") {
            (Chroma::Mono, Siting::Plain, r)
        } else if let Some(base) = s.get(..3) {
            let chroma = match base {
                "420" => Chroma::C420,
                "422" => Chroma::C422,
                "444" => Chroma::C444,
                "411" => Chroma::C411,
                _ => return Err(bad()),
            };
            let rest = &s[3..];
            let siting = match (chroma, rest) {
                (Chroma::C420, "jpeg") => Siting::Jpeg,
                (Chroma::C420, "mpeg2") => Siting::Mpeg2,
                (Chroma::C420, "paldv") => Siting::Paldv,
                _ => Siting::Plain,
            };
            let rest = if siting == Siting::Plain { rest } else { "" };
            (chroma, siting, rest)
        } else {
            return Err(bad());
        };
        // What is left is the depth: nothing (8 bits), `pN` for 4:x:x or `N` for mono.
        let digits = if chroma == Chroma::Mono {
            rest
        } else if rest.is_empty() {
            ""
        } else {
            rest.strip_prefix('p').ok_or_else(bad)?
        };
        let bits = match digits {
            "" => 8,
            "9" => 9,
            "10" => 10,
            "12" => 12,
            "14" => 14,
            "16" => 16,
            _ => return Err(bad()),
        };
        if chroma == Chroma::C411 && bits != 8 {
            return Err(bad());
        }
        Ok(Format {
            chroma,
            siting,
            bits,
        })
    }

    /// Bytes one sample takes.
    pub fn sample_bytes(&self) -> usize {
        if self.bits > 8 {
            2
        } else {
            1
        }
    }

    /// The largest sample value: `2^bits - 1`.
    pub fn max_value(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// Size of the chroma planes of a `w`×`h` frame (rounded up, as ffmpeg does); `None` for
    /// mono.
    pub fn chroma_size(&self, w: usize, h: usize) -> Option<(usize, usize)> {
        self.chroma
            .factors()
            .map(|(sx, sy)| (w.div_ceil(sx), h.div_ceil(sy)))
    }

    /// Number of planes: 1 (mono) or 3.
    pub fn plane_count(&self) -> usize {
        if self.chroma == Chroma::Mono {
            1
        } else {
            3
        }
    }

    /// The size of plane `i` of a `w`×`h` frame.
    pub fn plane_size(&self, i: usize, w: usize, h: usize) -> (usize, usize) {
        match (i, self.chroma_size(w, h)) {
            (1.., Some(c)) => c,
            _ => (w, h),
        }
    }

    /// The bytes of one frame's planes, `None` if that does not fit in memory at all.
    pub fn frame_bytes(&self, w: usize, h: usize) -> Option<usize> {
        let luma = w.checked_mul(h)?;
        let chroma = self
            .chroma_size(w, h)
            .map_or(Some(0), |(cw, ch)| cw.checked_mul(ch)?.checked_mul(2))?;
        luma.checked_add(chroma)?.checked_mul(self.sample_bytes())
    }
}

impl fmt::Display for Format {
    /// The `C` tag's value, spelt as parsed (`420jpeg`, `420p10`, `mono16`…).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match self.chroma {
            Chroma::C420 => "420",
            Chroma::C422 => "422",
            Chroma::C444 => "444",
            Chroma::C411 => "411",
            Chroma::Mono => "mono",
        };
        f.write_str(base)?;
        match self.siting {
            Siting::Jpeg => f.write_str("jpeg")?,
            Siting::Mpeg2 => f.write_str("mpeg2")?,
            Siting::Paldv => f.write_str("paldv")?,
            Siting::Plain => {}
        }
        match (self.bits, self.chroma) {
            (8, _) => Ok(()),
            (b, Chroma::Mono) => write!(f, "{b}"),
            (b, _) => write!(f, "p{b}"),
        }
    }
}

/// A ratio as the header writes it, `N:D` (frame rate, pixel aspect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub num: u32,
    pub den: u32,
}

impl Ratio {
    fn parse(s: &str) -> Option<Ratio> {
        let (n, d) = s.split_once(':')?;
        Some(Ratio {
            num: n.parse().ok()?,
            den: d.parse().ok()?,
        })
    }

    /// As a number (`None` when the denominator is 0).
    pub fn value(&self) -> Option<f64> {
        (self.den != 0).then(|| self.num as f64 / self.den as f64)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.num, self.den)
    }
}

/// The `I` tag: how the frames are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interlace {
    /// `p`
    Progressive,
    /// `t`: top field first.
    TopFirst,
    /// `b`: bottom field first.
    BottomFirst,
    /// `m`: mixed, said per frame on its `FRAME` line (kept with each frame).
    Mixed,
    /// `?`
    Unknown,
}

impl Interlace {
    fn parse(s: &str) -> Option<Interlace> {
        Some(match s {
            "p" => Interlace::Progressive,
            "t" => Interlace::TopFirst,
            "b" => Interlace::BottomFirst,
            "m" => Interlace::Mixed,
            "?" => Interlace::Unknown,
            _ => return None,
        })
    }

    fn letter(self) -> char {
        match self {
            Interlace::Progressive => 'p',
            Interlace::TopFirst => 't',
            Interlace::BottomFirst => 'b',
            Interlace::Mixed => 'm',
            Interlace::Unknown => '?',
        }
    }
}

/// A stream header. Tags the stream did not give stay absent and are not written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub width: usize,
    pub height: usize,
    /// `F`: frames per second as a ratio (`30000:1001`).
    pub rate: Option<Ratio>,
    /// `I`
    pub interlace: Option<Interlace>,
    /// `A`: pixel aspect ratio (`0:0`: unknown).
    pub aspect: Option<Ratio>,
    /// `C`: the colour layout as given; [`Header::format`] is the one in effect.
    pub colour: Option<Format>,
    /// `X` tags (colour range, comments…) and any tag this parser does not know, verbatim
    /// with their letter, in the order they came.
    pub extra: Vec<String>,
}

impl Header {
    /// A header with only size and layout (what a one-frame record made by the encoder says).
    pub fn new(width: usize, height: usize, format: Format) -> Header {
        Header {
            width,
            height,
            rate: None,
            interlace: None,
            aspect: None,
            colour: Some(format),
            extra: Vec::new(),
        }
    }

    /// The colour layout in effect (`C420jpeg` when the stream gave none).
    pub fn format(&self) -> Format {
        self.colour.unwrap_or(Format::DEFAULT)
    }

    /// The bytes of one frame's planes (without its `FRAME` line).
    pub fn frame_bytes(&self) -> usize {
        // Checked when parsed: W and H are at most MAX_SIDE, so this cannot overflow.
        self.format()
            .frame_bytes(self.width, self.height)
            .unwrap_or(usize::MAX)
    }

    /// Whether the `XCOLORRANGE=FULL` tag says the samples use the full range (else the
    /// studio range, 16–235 for 8-bit luma).
    pub fn full_range(&self) -> bool {
        self.extra.iter().any(|t| t == "XCOLORRANGE=FULL")
    }

    /// Parses a header line (with or without its newline).
    pub fn parse(line: &[u8]) -> Result<Header, String> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let rest = line.strip_prefix(SIGNATURE).ok_or_else(|| {
            let shown = String::from_utf8_lossy(&line[..line.len().min(16)]).into_owned();
            format!("not a YUV4MPEG2 stream: it starts {shown:?}, not \"YUV4MPEG2 \"")
        })?;
        let text = std::str::from_utf8(rest)
            .map_err(|e| format!("header is not text: {e} (byte {})", e.valid_up_to() + 10))?;
        let (mut w, mut h) = (None, None);
        let mut hd = Header {
            width: 0,
            height: 0,
            rate: None,
            interlace: None,
            aspect: None,
            colour: None,
            extra: Vec::new(),
        };
        for tag in text.split(' ').filter(|t| !t.is_empty()) {
            // Split after the first character, which may take more than one byte.
            let first = tag.chars().next().map_or(1, char::len_utf8);
            let (letter, value) = tag.split_at(first);
            let bad = |what: &str| format!("bad {what} tag {tag:?}");
            match letter {
                "W" => w = Some(side(value).ok_or_else(|| bad("width"))?),
                "H" => h = Some(side(value).ok_or_else(|| bad("height"))?),
                "F" => {
                    let r = Ratio::parse(value)
                        .filter(|r| r.num > 0 && r.den > 0)
                        .ok_or_else(|| bad("frame rate"))?;
                    hd.rate = Some(r);
                }
                "A" => hd.aspect = Some(Ratio::parse(value).ok_or_else(|| bad("aspect"))?),
                "I" => {
                    hd.interlace = Some(Interlace::parse(value).ok_or_else(|| bad("interlace"))?)
                }
                "C" => hd.colour = Some(Format::parse(value)?),
                _ => hd.extra.push(tag.to_string()),
            }
        }
        hd.width = w.ok_or("no width (W) tag")?;
        hd.height = h.ok_or("no height (H) tag")?;
        Ok(hd)
    }

    /// The header line as it came (tags in the format's order, `X` tags last), with its
    /// newline.
    pub fn line(&self) -> String {
        use std::fmt::Write;
        let mut s = format!("YUV4MPEG2 W{} H{}", self.width, self.height);
        if let Some(r) = self.rate {
            let _ = write!(s, " F{r}");
        }
        if let Some(i) = self.interlace {
            let _ = write!(s, " I{}", i.letter());
        }
        if let Some(a) = self.aspect {
            let _ = write!(s, " A{a}");
        }
        if let Some(c) = self.colour {
            let _ = write!(s, " C{c}");
        }
        for x in &self.extra {
            s.push(' ');
            s.push_str(x);
        }
        s.push('\n');
        s
    }
}

/// A width or height: decimal, 1 to [`MAX_SIDE`].
fn side(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&v| (1..=MAX_SIDE).contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_colour_spelling_round_trips() {
        for s in [
            "420jpeg", "420paldv", "420mpeg2", "420", "422", "444", "411", "mono", "420p10",
            "422p10", "444p16", "420p9", "420p12", "420p14", "mono16", "mono10",
        ] {
            let f = Format::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(f.to_string(), s);
        }
        assert_eq!(Format::parse("420p10").unwrap().bits, 10);
        assert_eq!(Format::parse("420mpeg2").unwrap().siting, Siting::Mpeg2);
        for bad in [
            "444alpha",
            "420p11",
            "420jpegp10",
            "411p10",
            "yuv",
            "",
            "42",
        ] {
            let e = Format::parse(bad).unwrap_err();
            assert!(e.contains("not supported"), "{bad}: {e}");
        }
    }

    #[test]
    fn plane_sizes_round_up() {
        let f = Format::parse("420").unwrap();
        assert_eq!(f.plane_size(0, 7, 5), (7, 5));
        assert_eq!(f.plane_size(2, 7, 5), (4, 3));
        assert_eq!(f.frame_bytes(7, 5), Some(35 + 2 * 12));
        let f = Format::parse("422p10").unwrap();
        assert_eq!(f.frame_bytes(4, 2), Some((8 + 2 * 4) * 2));
        assert_eq!(Format::parse("mono").unwrap().frame_bytes(3, 3), Some(9));
        assert_eq!(
            Format::parse("411").unwrap().chroma_size(9, 2),
            Some((3, 2))
        );
    }

    #[test]
    fn header_keeps_every_field_and_writes_it_back() {
        let line = b"YUV4MPEG2 W640 H480 F30000:1001 It A10:11 C420mpeg2 XYSCSS=420MPEG2 \
                     XCOLORRANGE=FULL Zodd\n";
        let h = Header::parse(line).unwrap();
        assert_eq!((h.width, h.height), (640, 480));
        assert_eq!(
            h.rate,
            Some(Ratio {
                num: 30000,
                den: 1001
            })
        );
        assert_eq!(h.interlace, Some(Interlace::TopFirst));
        assert_eq!(h.aspect, Some(Ratio { num: 10, den: 11 }));
        assert_eq!(h.format().siting, Siting::Mpeg2);
        assert!(h.full_range());
        assert_eq!(h.extra, ["XYSCSS=420MPEG2", "XCOLORRANGE=FULL", "Zodd"]);
        assert_eq!(h.line().as_bytes(), line);
        // No C tag: 4:2:0 in effect, and none written back.
        let h = Header::parse(b"YUV4MPEG2 W2 H2").unwrap();
        assert_eq!(h.format(), Format::DEFAULT);
        assert_eq!(h.line(), "YUV4MPEG2 W2 H2\n");
        assert_eq!(h.frame_bytes(), 6);
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let cases: [(&[u8], &str); 10] = [
            (b"P5 3 3 255", "not a YUV4MPEG2 stream"),
            (b"YUV4MPEG2 H10", "no width"),
            (b"YUV4MPEG2 W10", "no height"),
            (b"YUV4MPEG2 W0 H10", "bad width"),
            (b"YUV4MPEG2 W99999999 H10", "bad width"),
            (b"YUV4MPEG2 W10 H-1", "bad height"),
            (b"YUV4MPEG2 W10 H10 F30:0", "bad frame rate"),
            (b"YUV4MPEG2 W10 H10 Ix", "bad interlace"),
            (b"YUV4MPEG2 W10 H10 C420\xff", "not text"),
            (b"YUV4MPEG2 W10 H10 C4\xc3\xa9", "not supported"),
        ];
        for (line, want) in cases {
            let e = Header::parse(line).unwrap_err();
            assert!(e.contains(want), "{line:?}: {e}");
        }
    }
}
