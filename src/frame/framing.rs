//! Splits a byte stream into image frames.
//!
//! Two framings:
//! - `Concat`: PNG and binary PNM (P5/P6) files back to back, each split by walking its own
//!   structure (PNG chunks up to IEND; the PNM header gives the raster size);
//! - `Length`: each frame is prefixed by its length as a 4-byte big-endian integer, so any format
//!   (JPEG, TIFF, WebP…) can travel.
//!
//! The splitter is incremental: feed it reads of any size and it yields the same frames. Bytes
//! that start no known frame are reported (with their offset) and skipped up to the next frame
//! signature, so one bad frame never ends the stream.

/// How frames are delimited on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Concat,
    Length,
}

/// One complete frame: its bytes, sequence number and the offset of its first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStreamFrame {
    pub seq: u64,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Something on the stream that is not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    pub seq: u64,
    pub offset: u64,
    pub message: String,
}

/// What the splitter yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    Frame(RawStreamFrame),
    Error(StreamError),
}

const NOT_A_FRAME: &str = "not the start of a PNG or PNM (P5/P6) frame";
const PNG_SIG: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
/// A frame larger than this is taken as a corrupt length.
const MAX_FRAME: usize = 1 << 31;

/// Incremental splitter. `push` bytes, then drain with `next`; `finish` at end of stream.
///
/// Cost and memory: every byte is looked at a bounded number of times however the stream is
/// cut into reads (the walk of a PNG's chunks resumes where the last read left it), and a
/// length-prefixed frame is read straight into a buffer of exactly its declared length, which
/// is refused before anything is buffered when it is over the cap: one frame costs its own
/// size in memory (plus one read), never a multiple of it.
pub struct Splitter {
    framing: Framing,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Start of unconsumed data in `buf` (compacted lazily).
    pos: usize,
    seq: u64,
    max_frame: usize,
    /// Inside a bad stretch (already reported): skipping to the next frame signature.
    skipping: bool,
    /// Concat: how far the frame at `pos` has been walked.
    walk: Walk,
    /// Length: the frame being read (its bytes go here directly, not through `buf`).
    body: Option<Body>,
    /// Length: bytes of a refused (over-long) frame still to skip.
    discard: u64,
}

/// How far the walk of the frame at the front of the buffer got on earlier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Nothing known yet.
    Start,
    /// A PNG whose chunks up to this frame byte were walked (the next chunk header is here).
    Png { at: usize },
    /// A frame of this many bytes (a PNM whose header was read).
    Sized(usize),
}

/// A length-prefixed frame being read: its bytes so far, its declared length, where it began.
struct Body {
    bytes: Vec<u8>,
    len: usize,
    offset: u64,
}

enum Parse {
    /// A complete frame of this many bytes.
    Complete(usize),
    /// Need more bytes.
    Incomplete,
    /// Not a frame here.
    Invalid(String),
}

impl Splitter {
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            seq: 0,
            max_frame: MAX_FRAME,
            skipping: false,
            walk: Walk::Start,
            body: None,
            discard: 0,
        }
    }

    /// Caps one frame's size; larger ones are errors (and skipped).
    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max;
        self
    }

    pub fn push(&mut self, mut data: &[u8]) {
        // A length-prefixed frame or a refused one takes the bytes that belong to it first;
        // either exists only while `buf` holds nothing unread.
        if let Some(b) = &mut self.body {
            let k = (b.len - b.bytes.len()).min(data.len());
            b.bytes.extend_from_slice(&data[..k]);
            data = &data[k..];
            self.base += k as u64;
        }
        if self.discard > 0 {
            let k = (self.discard.min(data.len() as u64)) as usize;
            self.discard -= k as u64;
            data = &data[k..];
            self.base += k as u64;
        }
        if data.is_empty() {
            return;
        }
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Forgets what `buf` holds (all of it consumed), keeping the stream offset right.
    fn clear_buf(&mut self) {
        self.base += self.buf.len() as u64;
        self.buf.clear();
        self.pos = 0;
    }

    /// The next frame or error, if the buffered bytes hold one.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Split> {
        match self.framing {
            Framing::Length => self.next_length(),
            Framing::Concat => self.next_concat(),
        }
    }

    fn next_length(&mut self) -> Option<Split> {
        if let Some(b) = &self.body {
            if b.bytes.len() < b.len {
                return None;
            }
            let b = self.body.take()?;
            let f = RawStreamFrame {
                seq: self.seq,
                offset: b.offset,
                bytes: b.bytes,
            };
            self.seq += 1;
            return Some(Split::Frame(f));
        }
        if self.discard > 0 {
            self.skip_refused();
            if self.discard > 0 {
                return None;
            }
        }
        let data = &self.buf[self.pos..];
        if data.len() < 4 {
            return None;
        }
        let n = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if n > self.max_frame {
            // Refused before a byte of it is buffered; the length says where the next frame
            // starts, so only this one is lost.
            let err = self.error(format!(
                "frame length {n} is over the limit of {} bytes; its bytes are skipped",
                self.max_frame
            ));
            self.pos += 4;
            self.discard = n as u64;
            self.skip_refused();
            return Some(err);
        }
        let offset = self.offset() + 4;
        let have = (data.len() - 4).min(n);
        let mut bytes = Vec::with_capacity(n);
        bytes.extend_from_slice(&data[4..4 + have]);
        self.pos += 4 + have;
        self.body = Some(Body {
            bytes,
            len: n,
            offset,
        });
        if have < n {
            // The rest of the frame goes straight into `bytes`.
            self.clear_buf();
        }
        self.next_length()
    }

    /// Skips what is buffered of a refused frame; `push` skips the rest as it comes.
    fn skip_refused(&mut self) {
        let k = (self.discard.min((self.buf.len() - self.pos) as u64)) as usize;
        self.pos += k;
        self.discard -= k as u64;
        if self.discard > 0 {
            self.clear_buf();
        }
    }

    fn next_concat(&mut self) -> Option<Split> {
        let data = &self.buf[self.pos..];
        if data.is_empty() {
            return None;
        }
        if self.skipping {
            match next_signature(data) {
                Some(i) => {
                    self.pos += i;
                    self.skipping = false;
                }
                // Keep the last bytes: they may be the start of a signature.
                None => self.pos += data.len().saturating_sub(PNG_SIG.len() - 1),
            }
            return if self.skipping {
                None
            } else {
                self.next_concat()
            };
        }
        match parse_concat(data, self.max_frame, &mut self.walk) {
            Parse::Complete(n) => {
                self.walk = Walk::Start;
                let f = RawStreamFrame {
                    seq: self.seq,
                    offset: self.offset(),
                    bytes: self.take(n),
                };
                self.seq += 1;
                Some(Split::Frame(f))
            }
            Parse::Incomplete => None,
            Parse::Invalid(msg) => {
                // Report the bad stretch once, then skip to the next frame signature.
                self.walk = Walk::Start;
                let err = self.error(msg);
                self.pos += 1;
                self.skipping = true;
                Some(err)
            }
        }
    }

    /// The next `n` unread bytes, consumed. When they are most of the buffer, the buffer
    /// itself becomes the frame and only the few bytes after it are copied: a large frame is
    /// never held twice.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let end = self.pos + n;
        if self.buf.len() - end > n {
            let bytes = self.buf[self.pos..end].to_vec();
            self.pos = end;
            return bytes;
        }
        let rest = self.buf[end..].to_vec();
        let mut bytes = std::mem::replace(&mut self.buf, rest);
        bytes.truncate(end);
        bytes.drain(..self.pos);
        self.base += end as u64;
        self.pos = 0;
        bytes
    }

    /// Call at end of stream: reports a trailing partial frame, if any.
    pub fn finish(&mut self) -> Option<Split> {
        if let Some(b) = self.body.take() {
            let offset = b.offset - 4;
            self.seq += 1;
            return Some(Split::Error(StreamError {
                seq: self.seq - 1,
                offset,
                message: format!(
                    "stream ended inside a frame ({} of its {} bytes came)",
                    b.bytes.len(),
                    b.len
                ),
            }));
        }
        let left = self.buf.len() - self.pos;
        if left == 0 || self.skipping || self.discard > 0 {
            return None;
        }
        let err = self.error(format!("stream ended inside a frame ({left} bytes left)"));
        self.pos = self.buf.len();
        Some(err)
    }

    fn error(&mut self, message: String) -> Split {
        let e = StreamError {
            seq: self.seq,
            offset: self.offset(),
            message,
        };
        // A bad stretch takes a sequence number so the frames after it keep theirs in order.
        self.seq += 1;
        Split::Error(e)
    }
}

/// Where in `data` the next PNG or P5/P6 signature starts.
fn next_signature(data: &[u8]) -> Option<usize> {
    (0..data.len()).find(|&i| {
        let d = &data[i..];
        d.starts_with(PNG_SIG)
            || (d.len() >= 3
                && d[0] == b'P'
                && (d[1] == b'5' || d[1] == b'6')
                && d[2].is_ascii_whitespace())
    })
}

/// Walks the frame at the start of `data`, resuming from `walk` (what earlier calls on the same
/// frame found) and leaving there what this call found.
fn parse_concat(data: &[u8], max: usize, walk: &mut Walk) -> Parse {
    match *walk {
        Walk::Start => {}
        Walk::Png { at } => return parse_png(data, max, at, walk),
        Walk::Sized(n) => return sized(data, n),
    }
    if data.len() < 2 {
        return if PNG_SIG.starts_with(data) || data == b"P" {
            Parse::Incomplete
        } else {
            Parse::Invalid(NOT_A_FRAME.into())
        };
    }
    if data[0] == 0x89 {
        let n = data.len().min(8);
        if data[..n] != PNG_SIG[..n] {
            return Parse::Invalid("bad PNG signature".into());
        }
        if n < 8 {
            // The walk starts only after the whole signature was checked (found by the
            // fuzzer: a resumed walk skipped a signature broken in a later read).
            return Parse::Incomplete;
        }
        return parse_png(data, max, 8, walk);
    }
    if data[0] == b'P' && (data[1] == b'5' || data[1] == b'6') {
        return match parse_pnm(data, max) {
            Ok(total) => {
                *walk = Walk::Sized(total);
                sized(data, total)
            }
            Err(p) => p,
        };
    }
    Parse::Invalid(NOT_A_FRAME.into())
}

/// A frame of `total` bytes: complete once that many are there.
fn sized(data: &[u8], total: usize) -> Parse {
    if data.len() < total {
        Parse::Incomplete
    } else {
        Parse::Complete(total)
    }
}

/// Walks a PNG's chunks from the chunk header at frame byte `at` (8: the first) up to IEND.
fn parse_png(data: &[u8], max: usize, mut at: usize, walk: &mut Walk) -> Parse {
    loop {
        // Chunks before `at` are whole and checked: the next read starts here.
        *walk = Walk::Png { at };
        if data.len() < at + 8 {
            return Parse::Incomplete;
        }
        let len = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let kind = &data[at + 4..at + 8];
        if len > 0x7fff_ffff || !kind.iter().all(u8::is_ascii_alphabetic) {
            return Parse::Invalid(format!("corrupt PNG chunk header at frame byte {at}"));
        }
        let end = at + 12 + len;
        if end > max {
            return Parse::Invalid(format!("PNG frame over the limit of {max} bytes"));
        }
        if data.len() < end {
            return Parse::Incomplete;
        }
        if kind == b"IEND" {
            return Parse::Complete(end);
        }
        at = end;
    }
}

/// The whole length of the binary PNM (P5/P6) frame at the start of `data` from its header, at
/// most `max`: `Ok(None)` while the header is unfinished, `Err` when it is not a PNM header or
/// the frame would be over `max`. Exposed for the fuzzer.
pub fn pnm_frame_len(data: &[u8], max: usize) -> Result<Option<usize>, String> {
    if data.len() < 2 || data[0] != b'P' || !(data[1] == b'5' || data[1] == b'6') {
        return Err(NOT_A_FRAME.into());
    }
    match parse_pnm(data, max) {
        Ok(n) => Ok(Some(n)),
        Err(Parse::Invalid(m)) => Err(m),
        Err(_) => Ok(None),
    }
}

/// The frame's whole length from its PNM header (`Err`: incomplete or invalid).
fn parse_pnm(data: &[u8], max: usize) -> Result<usize, Parse> {
    // Header: magic, width, height, maxval, separated by whitespace and #-comments, then one
    // whitespace byte, then the raster.
    let channels = if data[1] == b'5' { 1 } else { 3 };
    // Whitespace and comments are unbounded in the format; a real header is short.
    const MAX_HEADER: usize = 4096;
    let data = &data[..data.len().min(MAX_HEADER)];
    let full = data.len() == MAX_HEADER;
    let incomplete = |why: &str| {
        if full {
            Err(Parse::Invalid(format!(
                "PNM header longer than {MAX_HEADER} bytes ({why})"
            )))
        } else {
            Err(Parse::Incomplete)
        }
    };
    let mut at = 2;
    let mut fields = [0u64; 3];
    for field in fields.iter_mut() {
        // Skip whitespace and comments.
        loop {
            match data.get(at) {
                None => return incomplete("unfinished header"),
                Some(c) if c.is_ascii_whitespace() => at += 1,
                Some(b'#') => match data[at..].iter().position(|&c| c == b'\n' || c == b'\r') {
                    Some(nl) => at += nl + 1,
                    None => return incomplete("unfinished comment"),
                },
                Some(_) => break,
            }
        }
        let start = at;
        while let Some(c) = data.get(at) {
            if !c.is_ascii_digit() {
                break;
            }
            at += 1;
            if at - start > 10 {
                return Err(Parse::Invalid("PNM header number too long".into()));
            }
        }
        if at == data.len() {
            return incomplete("unfinished number");
        }
        if at == start {
            return Err(Parse::Invalid("bad PNM header".into()));
        }
        *field = std::str::from_utf8(&data[start..at])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
    }
    match data.get(at) {
        None => return incomplete("unfinished header"),
        Some(c) if c.is_ascii_whitespace() => at += 1,
        Some(_) => return Err(Parse::Invalid("bad PNM header".into())),
    }
    let [w, h, maxval] = fields;
    if w == 0 || h == 0 || maxval == 0 || maxval > 65535 {
        return Err(Parse::Invalid(format!(
            "bad PNM header ({w}x{h}, maxval {maxval})"
        )));
    }
    let bytes_per = if maxval > 255 { 2 } else { 1 };
    let raster = w.saturating_mul(h).saturating_mul(channels * bytes_per);
    let total = (at as u64).saturating_add(raster);
    if total > max as u64 {
        return Err(Parse::Invalid(format!(
            "PNM frame {w}x{h} over the limit of {max} bytes"
        )));
    }
    Ok(total as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
        let img = image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([(x as u8).wrapping_mul(seed) ^ y as u8])
        });
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn pgm(w: usize, h: usize) -> Vec<u8> {
        let mut out = format!("P5\n# a comment\n{w} {h}\n255\n").into_bytes();
        out.extend((0..w * h).map(|i| (i * 7) as u8));
        out
    }

    fn ppm16(w: usize, h: usize) -> Vec<u8> {
        let mut out = format!("P6 {w} {h} 65535\n").into_bytes();
        out.extend((0..w * h * 6).map(|i| (i * 3) as u8));
        out
    }

    fn drain(s: &mut Splitter, out: &mut Vec<Split>) {
        while let Some(x) = s.next() {
            out.push(x);
        }
    }

    fn split_all(stream: &[u8], cuts: &[usize], framing: Framing) -> Vec<Split> {
        let mut s = Splitter::new(framing);
        let mut out = Vec::new();
        let mut last = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort();
        for c in cuts.into_iter().chain([stream.len()]) {
            s.push(&stream[last..c]);
            drain(&mut s, &mut out);
            last = c;
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn splits_png_pgm_ppm_and_reports_garbage() {
        let frames = [png(5, 3, 3), pgm(4, 2), ppm16(2, 2), png(1, 1, 9)];
        let mut stream = Vec::new();
        stream.extend(&frames[0]);
        stream.extend(&frames[1]);
        stream.extend(b"garbage!");
        stream.extend(&frames[2]);
        stream.extend(&frames[3]);
        let out = split_all(&stream, &[], Framing::Concat);
        assert_eq!(out.len(), 5, "{out:?}");
        let Split::Frame(f0) = &out[0] else { panic!() };
        assert_eq!((f0.seq, f0.offset, &f0.bytes), (0, 0, &frames[0]));
        let Split::Frame(f1) = &out[1] else { panic!() };
        assert_eq!(f1.bytes, frames[1]);
        let Split::Error(e) = &out[2] else { panic!() };
        assert_eq!(
            (e.seq, e.offset),
            (2, (frames[0].len() + frames[1].len()) as u64)
        );
        let Split::Frame(f3) = &out[3] else { panic!() };
        assert_eq!((f3.seq, &f3.bytes), (3, &frames[2]));
        let Split::Frame(f4) = &out[4] else { panic!() };
        assert_eq!(f4.bytes, frames[3]);
    }

    #[test]
    fn endless_pnm_header_is_refused_not_buffered() {
        let mut s = Splitter::new(Framing::Concat);
        s.push(b"P5 #");
        assert_eq!(s.next(), None);
        s.push(&vec![b'y'; 5000]);
        assert!(matches!(s.next(), Some(Split::Error(e)) if e.message.contains("header longer")));
        // Skipping: the rest of the junk raises nothing more, and memory is released.
        s.push(&vec![b'y'; 100_000]);
        assert_eq!(s.next(), None);
        assert!(s.buf.len() - s.pos < 16);
    }

    #[test]
    fn trailing_partial_frame_is_reported() {
        let mut f = png(3, 3, 1);
        f.truncate(f.len() - 5);
        let out = split_all(&f, &[], Framing::Concat);
        assert!(
            matches!(&out[..], [Split::Error(e)] if e.message.contains("ended")),
            "{out:?}"
        );
    }

    #[test]
    fn length_framing_carries_any_bytes() {
        let payloads: [&[u8]; 3] = [b"\xff\xd8jpeg?", b"", b"abc"];
        let mut stream = Vec::new();
        for p in payloads {
            stream.extend((p.len() as u32).to_be_bytes());
            stream.extend(p);
        }
        let out = split_all(&stream, &[3, 9], Framing::Length);
        let got: Vec<_> = out
            .iter()
            .map(|s| match s {
                Split::Frame(f) => f.bytes.clone(),
                Split::Error(e) => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(got, payloads.iter().map(|p| p.to_vec()).collect::<Vec<_>>());
    }

    /// A PNG of many small chunks arriving in small reads: each read resumes the chunk walk
    /// where the last one stopped instead of starting again at the signature (which made
    /// splitting quadratic in the frame's size).
    #[test]
    fn chunk_walk_resumes_across_reads() {
        let mut frame = png(4, 4, 3);
        let iend = frame.split_off(frame.len() - 12);
        // Many ancillary chunks of 16 bytes each before IEND.
        for i in 0..1000u32 {
            frame.extend(4u32.to_be_bytes());
            frame.extend(b"teXt");
            frame.extend(i.to_be_bytes());
            frame.extend([0u8; 4]);
        }
        frame.extend(&iend);
        let mut s = Splitter::new(Framing::Concat);
        let half = frame.len() / 2;
        s.push(&frame[..half]);
        assert_eq!(s.next(), None);
        let Walk::Png { at } = s.walk else {
            panic!("{:?}", s.walk)
        };
        assert!(
            at > half - 16 && at <= half,
            "walk stopped at {at} of {half}"
        );
        s.push(&frame[half..]);
        let Some(Split::Frame(f)) = s.next() else {
            panic!()
        };
        assert_eq!(f.bytes, frame);
        assert_eq!(s.walk, Walk::Start);
    }

    /// `--framing len`: a declared length over the cap is refused before anything of it is
    /// buffered, reported at its offset, and its bytes skipped; the frame after it is read.
    /// A frame within the cap is read into a buffer of exactly its length.
    #[test]
    fn over_long_length_is_skipped_without_buffering() {
        let mut s = Splitter::new(Framing::Length).with_max_frame(100);
        let mut stream = Vec::new();
        stream.extend(3u32.to_be_bytes());
        stream.extend(b"abc");
        stream.extend(5000u32.to_be_bytes());
        let big_at = stream.len() as u64 - 4;
        s.push(&stream);
        let Some(Split::Frame(a)) = s.next() else {
            panic!()
        };
        assert_eq!(a.bytes, b"abc");
        let Some(Split::Error(e)) = s.next() else {
            panic!()
        };
        assert_eq!((e.seq, e.offset), (1, big_at), "{e:?}");
        assert!(e.message.contains("over the limit of 100"), "{e:?}");
        // Its 5000 bytes come in reads; none of them is kept.
        for _ in 0..50 {
            s.push(&[0xAB; 100]);
            assert_eq!(s.next(), None);
            assert!(s.buf.capacity() <= 64, "{}", s.buf.capacity());
        }
        let mut tail = 60u32.to_be_bytes().to_vec();
        tail.extend([7u8; 30]);
        s.push(&tail);
        assert_eq!(s.next(), None);
        assert_eq!(s.body.as_ref().map(|b| b.bytes.capacity()), Some(60));
        s.push(&[7u8; 30]);
        let Some(Split::Frame(c)) = s.next() else {
            panic!()
        };
        assert_eq!(
            (c.seq, c.offset, c.bytes.len()),
            (2, big_at + 4 + 5000 + 4, 60)
        );
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn length_frame_cut_short_is_reported() {
        let mut s = Splitter::new(Framing::Length);
        s.push(&10u32.to_be_bytes());
        s.push(b"abc");
        assert_eq!(s.next(), None);
        let Some(Split::Error(e)) = s.finish() else {
            panic!()
        };
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("ended inside a frame"), "{e:?}");
    }

    #[test]
    fn pnm_header_gives_the_frame_length() {
        assert_eq!(pnm_frame_len(b"P5 3 2 255\n", 100), Ok(Some(11 + 6)));
        assert_eq!(pnm_frame_len(b"P6 1 1 65535 ", 100), Ok(Some(13 + 6)));
        assert_eq!(pnm_frame_len(b"P5 3 2", 100), Ok(None));
        assert!(pnm_frame_len(b"P5 300 200 255\n", 100).is_err());
        assert!(pnm_frame_len(b"P7 3 2 255\n", 100).is_err());
    }

    /// A signature broken after the first read is still a bad signature, however it is cut.
    #[test]
    fn signature_is_checked_whole_before_the_walk() {
        let stream = b"\x89PNG\r\n\x03\x08\0\0\0\0sC\xeac\0\0\0\x14IDAT";
        let whole = split_all(stream, &[], Framing::Concat);
        let cuts: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(whole, split_all(stream, &cuts, Framing::Concat));
        assert!(matches!(&whole[0], Split::Error(e) if e.message == "bad PNG signature"));
    }

    proptest! {
        /// Any split of the byte stream into reads gives the same frames and errors.
        #[test]
        fn any_read_split_gives_the_same_frames(cuts in proptest::collection::vec(0usize..10_000, 0..12), garbage in proptest::collection::vec(any::<u8>(), 0..20)) {
            let mut stream = Vec::new();
            stream.extend(png(7, 5, 5));
            stream.extend(pgm(6, 3));
            // Garbage that cannot be mistaken for a signature.
            stream.extend(garbage.iter().map(|b| if *b == 0x89 || *b == b'P' { b'x' } else { *b }));
            stream.extend(ppm16(3, 2));
            stream.extend(png(2, 9, 1));
            let whole = split_all(&stream, &[], Framing::Concat);
            let pieces = split_all(&stream, &cuts, Framing::Concat);
            prop_assert_eq!(&whole, &pieces);
            let n = whole.iter().filter(|s| matches!(s, Split::Frame(_))).count();
            prop_assert_eq!(n, 4);

            let mut framed = Vec::new();
            for f in whole.iter().filter_map(|s| match s { Split::Frame(f) => Some(&f.bytes), _ => None }) {
                framed.extend((f.len() as u32).to_be_bytes());
                framed.extend(f);
            }
            let a = split_all(&framed, &[], Framing::Length);
            let b = split_all(&framed, &cuts, Framing::Length);
            prop_assert_eq!(a, b);
        }
    }
}
