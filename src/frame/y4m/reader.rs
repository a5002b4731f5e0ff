//! Cuts a YUV4MPEG2 byte stream into frames.
//!
//! The header is read and checked first: its size must be within the decode limits before
//! anything of a frame is buffered, so a header claiming a 60000×60000 frame costs nothing.
//! Each frame is then its `FRAME` line (bounded) and exactly the bytes the header's size and
//! layout give, read straight into one buffer of that size: memory per frame is its own size.
//!
//! Unlike the image framings, a bad stretch is not skipped: raw planes carry no signature to
//! resynchronise on (pixel data can spell `FRAME`), so the first error ends the stream. It
//! names the frame number and the byte offset where the frame (or the garbage in its place)
//! starts; every complete frame before it has been handed on.

use std::io::{BufRead, Read};

use super::{Header, MAX_HEADER};

/// The longest `FRAME` line taken (frame parameters are rare and short).
const MAX_FRAME_LINE: usize = 4096;

/// What is wrong with a stream, and where.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("YUV4MPEG2 header at byte {offset}: {message}")]
    Header { offset: u64, message: String },
    #[error("YUV4MPEG2 frame {frame} at byte {offset}: {message}")]
    Frame {
        frame: u64,
        offset: u64,
        message: String,
    },
    #[error("reading the stream at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

/// One frame, as a one-frame YUV4MPEG2 record: the stream's header line, its `FRAME` line
/// (parameters kept), its planes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its number in the stream, from 0.
    pub seq: u64,
    /// Stream offset of its `FRAME` line.
    pub offset: u64,
    pub record: Vec<u8>,
}

/// Limits on what a stream may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most pixels (W×H) per frame.
    pub max_pixels: u64,
    /// Most bytes of planes per frame.
    pub max_frame_bytes: usize,
}

/// Reads a stream's header, then its frames one by one.
pub struct Reader<R> {
    r: R,
    header: Header,
    head: Vec<u8>,
    /// Bytes read so far.
    pos: u64,
    seq: u64,
    line: Vec<u8>,
}

/// How reading a line ended.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The input ended before its first byte.
    Eof,
    /// At the newline (not kept).
    Done,
    /// The input ended inside it.
    Cut,
    /// It is longer than allowed (what was read is kept).
    TooLong,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn open(mut r: R, limits: Limits) -> Result<Self, StreamError> {
        let mut line = Vec::new();
        let header_err = |message: String| StreamError::Header { offset: 0, message };
        let end = read_line(&mut r, MAX_HEADER, &mut line)
            .map_err(|source| StreamError::Io { offset: 0, source })?;
        match end {
            Line::Eof => return Err(header_err("the input is empty".into())),
            Line::TooLong if !line.starts_with(super::SIGNATURE) => {}
            Line::TooLong => {
                return Err(header_err(format!(
                    "header line longer than {MAX_HEADER} bytes"
                )))
            }
            Line::Cut | Line::Done => {}
        }
        let header = Header::parse(&line).map_err(header_err)?;
        if end == Line::Cut {
            return Err(header_err("the stream ended inside the header".into()));
        }
        let pixels = header.width as u64 * header.height as u64;
        if pixels > limits.max_pixels {
            return Err(header_err(format!(
                "{}x{} is over the limit of {} pixels per frame ([decode] max_pixels)",
                header.width, header.height, limits.max_pixels
            )));
        }
        if header.frame_bytes() > limits.max_frame_bytes {
            return Err(header_err(format!(
                "a {}x{} C{} frame takes {} bytes, over the limit of {} ([decode] max_alloc_mib)",
                header.width,
                header.height,
                header.format(),
                header.frame_bytes(),
                limits.max_frame_bytes
            )));
        }
        let pos = line.len() as u64 + 1;
        let head = header_line_bytes(&line);
        Ok(Self {
            r,
            header,
            head,
            pos,
            seq: 0,
            line,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next frame; `None` at the end of the stream (which must fall between frames).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, StreamError> {
        let (frame, offset) = (self.seq, self.pos);
        let err = |message: String| StreamError::Frame {
            frame,
            offset,
            message,
        };
        self.line.clear();
        let end = read_line(&mut self.r, MAX_FRAME_LINE, &mut self.line)
            .map_err(|source| StreamError::Io { offset, source })?;
        let l = &self.line;
        let marker = l.starts_with(b"FRAME") && (l.len() == 5 || l[5] == b' ');
        // A line cut short by the end of the input may be the start of a marker.
        let could_be = marker || (end == Line::Cut && b"FRAME".starts_with(l));
        match end {
            Line::Eof => return Ok(None),
            _ if !could_be => {
                return Err(err(format!(
                    "expected a FRAME line, found {:?}",
                    String::from_utf8_lossy(&l[..l.len().min(24)])
                )))
            }
            Line::Cut => return Err(err("the stream ended inside the FRAME line".into())),
            Line::TooLong => {
                return Err(err(format!(
                    "FRAME line longer than {MAX_FRAME_LINE} bytes"
                )))
            }
            Line::Done => {}
        }
        let n = self.header.frame_bytes();
        let mut record = Vec::with_capacity(self.head.len() + self.line.len() + 1 + n);
        record.extend_from_slice(&self.head);
        record.extend_from_slice(&self.line);
        record.push(b'\n');
        let start = record.len();
        let data_at = self.pos + self.line.len() as u64 + 1;
        (&mut self.r)
            .take(n as u64)
            .read_to_end(&mut record)
            .map_err(|source| StreamError::Io {
                offset: data_at,
                source,
            })?;
        let got = record.len() - start;
        if got < n {
            return Err(err(format!(
                "the stream ended inside the frame: {got} of its {n} bytes came"
            )));
        }
        self.pos = data_at + n as u64;
        self.seq += 1;
        Ok(Some(Frame {
            seq: frame,
            offset,
            record,
        }))
    }
}

/// The header line with its newline, as each record starts.
fn header_line_bytes(line: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(line.len() + 1);
    head.extend_from_slice(line);
    head.push(b'\n');
    head
}

/// Reads up to a newline into `out`, at most `max` bytes of it.
fn read_line(r: &mut impl BufRead, max: usize, out: &mut Vec<u8>) -> std::io::Result<Line> {
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if out.is_empty() { Line::Eof } else { Line::Cut });
        }
        let room = max - out.len();
        let (take, end) = match buf.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => (i + 1, Some(Line::Done)),
            None if buf.len() >= room => (room, Some(Line::TooLong)),
            None => (buf.len(), None),
        };
        let keep = if end == Some(Line::Done) {
            take - 1
        } else {
            take
        };
        out.extend_from_slice(&buf[..keep]);
        r.consume(take);
        if let Some(e) = end {
            return Ok(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_pixels: 1 << 20,
        max_frame_bytes: 1 << 20,
    };

    /// A 4x2 4:2:0 stream: 8 + 2 + 2 bytes a frame.
    fn stream(frames: usize) -> Vec<u8> {
        let mut s = b"YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED\n".to_vec();
        for i in 0..frames {
            s.extend_from_slice(if i == 1 { b"FRAME Ixyz\n" } else { b"FRAME\n" });
            s.extend((0..12).map(|j| (i * 12 + j) as u8));
        }
        s
    }

    fn read_all(bytes: &[u8]) -> (Vec<Frame>, Option<StreamError>) {
        // A tiny buffer: every read boundary is exercised.
        let r = std::io::BufReader::with_capacity(3, bytes);
        let mut reader = match Reader::open(r, LIMITS) {
            Ok(r) => r,
            Err(e) => return (vec![], Some(e)),
        };
        let mut frames = Vec::new();
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    }

    #[test]
    fn reads_every_frame_with_its_parameters() {
        let s = stream(3);
        let (frames, err) = read_all(&s);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(frames.len(), 3);
        let head = b"YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420jpeg XCOLORRANGE=LIMITED\n";
        assert!(frames[1].record.starts_with(head));
        assert_eq!(
            &frames[1].record[head.len()..head.len() + 11],
            b"FRAME Ixyz\n"
        );
        assert_eq!(frames[2].record.len(), head.len() + 6 + 12);
        assert_eq!(frames[1].offset, head.len() as u64 + 18);
        assert_eq!(frames[2].record.last(), Some(&35));
        assert_eq!(frames[2].record.capacity(), frames[2].record.len());
    }

    #[test]
    fn a_truncated_last_frame_is_named_with_its_offset() {
        let mut s = stream(3);
        s.truncate(s.len() - 5);
        let (frames, err) = read_all(&s);
        assert_eq!(frames.len(), 2);
        let e = err.unwrap().to_string();
        let at = stream(2).len();
        assert!(
            e.contains(&format!("frame 2 at byte {at}")) && e.contains("7 of its 12 bytes"),
            "{e}"
        );
        // Cut inside the FRAME line.
        let mut s = stream(1);
        s.extend(b"FRA");
        let (frames, err) = read_all(&s);
        assert_eq!(frames.len(), 1);
        assert!(err.unwrap().to_string().contains("inside the FRAME line"));
    }

    #[test]
    fn garbage_between_frames_is_an_error_at_its_offset() {
        let mut s = stream(2);
        let at = s.len();
        s.extend(b"garbage\n");
        s.extend(stream(1).split_off(stream(0).len()));
        let (frames, err) = read_all(&s);
        assert_eq!(frames.len(), 2);
        let e = err.unwrap().to_string();
        assert!(
            e.contains(&format!("frame 2 at byte {at}")) && e.contains("expected a FRAME line"),
            "{e}"
        );
        // Binary junk with no newline is refused after a bounded read.
        let mut s = stream(1);
        s.extend(vec![0xAB; 100_000]);
        let (frames, err) = read_all(&s);
        assert_eq!(frames.len(), 1);
        assert!(err.unwrap().to_string().contains("expected a FRAME line"));
        // "FRAMES" is not "FRAME".
        let mut s = stream(0);
        s.extend(b"FRAMES\n");
        assert!(read_all(&s).1.is_some());
    }

    #[test]
    fn bad_or_huge_headers_are_refused_before_any_frame_is_buffered() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "empty"),
            (b"\x89PNG\r\n\x1a\n", "not a YUV4MPEG2 stream"),
            (b"YUV4MPEG2 W4 H2", "ended inside the header"),
            (
                b"YUV4MPEG2 W60000 H60000 C420\nFRAME\n",
                "over the limit of",
            ),
            (b"YUV4MPEG2 W1000 H1000 C444p16\n", "max_alloc_mib"),
        ];
        for (bytes, want) in cases {
            let e = read_all(bytes).1.unwrap().to_string();
            assert!(e.contains("header at byte 0") && e.contains(want), "{e}");
        }
        let mut endless = b"YUV4MPEG2 W4 H2 X".to_vec();
        endless.extend(vec![b'a'; 100_000]);
        let e = read_all(&endless).1.unwrap().to_string();
        assert!(e.contains("longer than"), "{e}");
    }

    #[test]
    fn a_stream_with_no_frames_is_fine() {
        let (frames, err) = read_all(&stream(0));
        assert!(frames.is_empty() && err.is_none());
    }
}
