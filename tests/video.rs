//! `--framing y4m` end to end, with streams the tests write themselves (no ffmpeg needed):
//! a noisy natural scene comes back as the same stream, denoised; bad streams end with an
//! error naming the frame and byte offset after every complete frame before it is written;
//! pipelines that cannot make a video are refused at start.

mod common;

use common::{bin, run_with_stdin, samples};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use aestream::frame::y4m::{planes::from_rgb, Format, Yuv};
use aestream::frame::{read_image, DecodeLimits};

/// A stream's header line and its frames (each FRAME line and planes), cut by hand.
struct Stream {
    header: String,
    frames: Vec<(String, Vec<u8>)>,
}

/// Cuts a stream of `frame_bytes` planes per frame; panics on anything malformed.
fn cut(bytes: &[u8], frame_bytes: usize) -> Stream {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .expect("a header line");
    let header = String::from_utf8(bytes[..nl].to_vec()).unwrap();
    let mut rest = &bytes[nl + 1..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').expect("a FRAME line");
        let line = String::from_utf8(rest[..nl].to_vec()).unwrap();
        assert!(line.starts_with("FRAME"), "{line:?}");
        let data = rest[nl + 1..nl + 1 + frame_bytes].to_vec();
        frames.push((line, data));
        rest = &rest[nl + 1 + frame_bytes..];
    }
    Stream { header, frames }
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0 * 255.0 / mse.max(1e-12)).log10()
}

const HEADER: &str =
    "YUV4MPEG2 W192 H192 F30000:1001 Ip A1:1 C420jpeg XYSCSS=420JPEG XCOLORRANGE=LIMITED";

/// The clean 4:2:0 planes of the shipped colour sample (192×192), studio range.
fn clean_frame() -> Vec<u8> {
    let rgb = read_image(
        &samples().join("clean/flower-colour.png"),
        DecodeLimits::default(),
    )
    .unwrap();
    let yuv = Yuv {
        format: Format::parse("420jpeg").unwrap(),
        full_range: false,
    };
    from_rgb(&rgb, yuv)
        .planes
        .concat()
        .iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// `n` frames of `clean` with fresh Gaussian noise of σ 25 (0–255) on every plane, seeded.
fn noisy_stream(clean: &[u8], n: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let noise = Normal::new(0.0f64, 25.0).unwrap();
    let mut s = format!("{HEADER}\n").into_bytes();
    for i in 0..n {
        // One frame carries parameters on its FRAME line: they must come back with it.
        s.extend_from_slice(if i == 5 { b"FRAME Ip\n" } else { b"FRAME\n" });
        s.extend(clean.iter().map(|&v| {
            (v as f64 + noise.sample(&mut rng))
                .round()
                .clamp(0.0, 255.0) as u8
        }));
    }
    s
}

const Y_BYTES: usize = 192 * 192;
const FRAME_BYTES: usize = Y_BYTES + 2 * 96 * 96;

fn y4m_run(pipeline: &str, input: Vec<u8>) -> std::process::Output {
    run_with_stdin(
        &[
            "run",
            pipeline,
            "--input",
            "-",
            "--output",
            "-",
            "--framing",
            "y4m",
        ],
        input,
    )
}

/// The acceptance test: 12 frames of a σ 25 natural scene come back as YUV4MPEG2 with the
/// same header, 12 frames in order (a FRAME line's parameters kept), luma PSNR ≥ 5 dB above
/// the input's.
#[test]
fn a_noisy_natural_scene_comes_back_denoised_with_its_header() {
    let clean = clean_frame();
    assert_eq!(clean.len(), FRAME_BYTES);
    let input = noisy_stream(&clean, 12);
    let out = common::ok(y4m_run("denoise-fast", input.clone()));
    let (got, sent) = (cut(&out.stdout, FRAME_BYTES), cut(&input, FRAME_BYTES));
    assert_eq!(got.header, HEADER);
    assert_eq!(got.frames.len(), 12);
    let (mut p_in, mut p_out, mut c_in, mut c_out) = (0.0, 0.0, 0.0, 0.0);
    for (i, ((line, data), (sent_line, noisy))) in got.frames.iter().zip(&sent.frames).enumerate() {
        assert_eq!(line, sent_line, "frame {i}");
        p_in += psnr(&noisy[..Y_BYTES], &clean[..Y_BYTES]) / 12.0;
        p_out += psnr(&data[..Y_BYTES], &clean[..Y_BYTES]) / 12.0;
        c_in += psnr(&noisy[Y_BYTES..], &clean[Y_BYTES..]) / 12.0;
        c_out += psnr(&data[Y_BYTES..], &clean[Y_BYTES..]) / 12.0;
    }
    eprintln!("luma PSNR {p_in:.2} -> {p_out:.2} dB, chroma {c_in:.2} -> {c_out:.2} dB");
    assert!(p_out >= p_in + 5.0, "luma {p_in:.2} -> {p_out:.2} dB");
    assert!(c_out >= c_in + 5.0, "chroma {c_in:.2} -> {c_out:.2} dB");
}

/// 8 frames of 16x16 4:2:0 (384 bytes each): small, so the bad-stream tests are quick.
fn small_stream(n: usize) -> (Vec<u8>, Vec<usize>) {
    let mut s = b"YUV4MPEG2 W16 H16 F25:1 C420\n".to_vec();
    let mut starts = Vec::new();
    for i in 0..n {
        starts.push(s.len());
        s.extend_from_slice(b"FRAME\n");
        s.extend((0..384).map(|j| ((i * 31 + j * 7) % 200 + 20) as u8));
    }
    (s, starts)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_truncated_last_frame_is_named_and_the_frames_before_it_written() {
    let (mut s, starts) = small_stream(8);
    s.truncate(s.len() - 100);
    let out = y4m_run("denoise-fast", s);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("frame 7 at byte {}", starts[7]))
            && err.contains("284 of its 384 bytes"),
        "{err}"
    );
    let got = cut(&out.stdout, 384);
    assert_eq!(got.header, "YUV4MPEG2 W16 H16 F25:1 C420");
    assert_eq!(got.frames.len(), 7);
}

#[test]
fn garbage_between_frames_ends_the_stream_there() {
    let (s, starts) = small_stream(8);
    let mut bad = s[..starts[4]].to_vec();
    bad.extend_from_slice(b"this is not a frame\n");
    bad.extend_from_slice(&s[starts[4]..]);
    let out = y4m_run("denoise-fast", bad);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("frame 4 at byte {}", starts[4]))
            && err.contains("expected a FRAME line"),
        "{err}"
    );
    assert_eq!(cut(&out.stdout, 384).frames.len(), 4);
}

#[test]
fn bad_and_absurd_headers_are_refused_with_nothing_written() {
    for (input, want) in [
        (&b"\x89PNG\r\n\x1a\nabc"[..], "not a YUV4MPEG2 stream"),
        (b"YUV4MPEG2 W16 C420\nFRAME\n", "no height"),
        (b"YUV4MPEG2 W16 H16 C420p11\n", "not supported"),
        (b"", "empty"),
        // 65536 x 65536: refused from the header, before any frame is buffered.
        (
            b"YUV4MPEG2 W65536 H65536 C444p16\nFRAME\n",
            "over the limit",
        ),
    ] {
        let out = y4m_run("denoise-fast", input.to_vec());
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("header at byte 0") && err.contains(want),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
    // A header and no frames: the same header, no frames.
    let out = common::ok(y4m_run("denoise-fast", b"YUV4MPEG2 W8 H8 Cmono\n".to_vec()));
    assert_eq!(out.stdout, b"YUV4MPEG2 W8 H8 Cmono\n");
}

/// Latent codes, segmentations, fixed-size models and non-stdio ends cannot make a video of
/// the same frames: refused at start (exit 2), before reading anything.
#[test]
fn pipelines_that_cannot_make_the_video_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    for (args, want) in [
        (vec!["segment-nuclei", "-i", "-", "-o", "-"], "segmentation"),
        (
            vec!["conv-ae", "-i", "-", "-o", "-", "--emit", "latent"],
            "latent",
        ),
        (
            vec!["faces", "-i", "-", "-o", "-", "--emit", "reconstruction"],
            "works on",
        ),
        (vec!["denoise-fast", "-i", "-", "-o", folder], "--output -"),
    ] {
        let out = bin()
            .arg("run")
            .args(&args)
            .args(["--framing", "y4m"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--framing y4m") && err.contains(want),
            "{args:?}: {err}"
        );
    }
}

/// 10-bit 4:2:2 and 8-bit mono streams keep their layout and depth.
#[test]
fn ten_bit_and_mono_streams_keep_their_layout() {
    for (c, frame_bytes) in [("422p10", (32 * 16 + 2 * 16 * 16) * 2), ("mono", 32 * 16)] {
        let header = format!("YUV4MPEG2 W32 H16 F24:1 It A0:0 C{c} XCOMMENT=kept");
        let mut s = format!("{header}\n").into_bytes();
        for i in 0..3 {
            s.extend_from_slice(b"FRAME\n");
            if c == "mono" {
                s.extend((0..frame_bytes).map(|j| ((i * 13 + j * 5) % 220 + 16) as u8));
            } else {
                let samples = (0..frame_bytes / 2).map(|j| ((i * 13 + j * 5) % 876 + 64) as u16);
                s.extend(samples.flat_map(u16::to_le_bytes));
            }
        }
        let out = common::ok(y4m_run("denoise-fast", s));
        let got = cut(&out.stdout, frame_bytes);
        assert_eq!(got.header, header);
        assert_eq!(got.frames.len(), 3);
        if c != "mono" {
            let max = got.frames[0]
                .1
                .chunks(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .max()
                .unwrap();
            assert!(max > 255 && max <= 1023, "10-bit samples: max {max}");
        }
    }
}

/// Mean absolute difference of luma between consecutive frames (0–255).
fn flicker(s: &Stream) -> f64 {
    let n = s.frames.len() - 1;
    s.frames
        .windows(2)
        .map(|f| {
            let (a, b) = (&f[0].1[..Y_BYTES], &f[1].1[..Y_BYTES]);
            a.iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).abs())
                .sum::<f64>()
                / Y_BYTES as f64
        })
        .sum::<f64>()
        / n as f64
}

/// A still scene flickers less with `--temporal 3`, and is no further from the clean frame;
/// the header and frame count are unchanged. `--temporal` without y4m is a usage error.
#[test]
fn temporal_smoothing_reduces_flicker_on_a_still_scene() {
    let clean = clean_frame();
    let input = noisy_stream(&clean, 6);
    let plain = cut(
        &common::ok(y4m_run("denoise-fast", input.clone())).stdout,
        FRAME_BYTES,
    );
    let out = common::ok(run_with_stdin(
        &[
            "run",
            "denoise-fast",
            "-i",
            "-",
            "-o",
            "-",
            "--framing",
            "y4m",
            "--temporal",
            "3",
        ],
        input,
    ));
    let smooth = cut(&out.stdout, FRAME_BYTES);
    assert_eq!((smooth.header.as_str(), smooth.frames.len()), (HEADER, 6));
    let luma = |s: &Stream| {
        s.frames
            .iter()
            .map(|f| psnr(&f.1[..Y_BYTES], &clean[..Y_BYTES]))
            .sum::<f64>()
            / 6.0
    };
    let (f0, f1) = (flicker(&plain), flicker(&smooth));
    let (p0, p1) = (luma(&plain), luma(&smooth));
    eprintln!("flicker {f0:.2} -> {f1:.2}, luma PSNR {p0:.2} -> {p1:.2} dB");
    assert!(f1 < f0 * 0.8, "flicker {f0:.2} -> {f1:.2}");
    assert!(p1 >= p0, "PSNR {p0:.2} -> {p1:.2}");

    let out = bin()
        .args([
            "run",
            "denoise-fast",
            "-i",
            "-",
            "-o",
            "-",
            "--temporal",
            "2",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--temporal"));
}

/// `[normalise] colour = "rgb"`: the frames go through the model as RGB and come back in
/// their layout, denoised.
#[test]
fn the_rgb_colour_path_comes_back_in_the_stream_layout() {
    let dir = tempfile::tempdir().unwrap();
    let toml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/denoise-fast.toml"),
    )
    .unwrap()
    .replace("colour = \"per-channel\"", "colour = \"rgb\"");
    assert!(toml.contains("colour = \"rgb\""));
    let pipeline = dir.path().join("video-rgb.toml");
    std::fs::write(&pipeline, toml).unwrap();
    let clean = clean_frame();
    let input = noisy_stream(&clean, 3);
    let out = common::ok(y4m_run(pipeline.to_str().unwrap(), input.clone()));
    let (got, sent) = (cut(&out.stdout, FRAME_BYTES), cut(&input, FRAME_BYTES));
    assert_eq!((got.header.as_str(), got.frames.len()), (HEADER, 3));
    for ((_, data), (_, noisy)) in got.frames.iter().zip(&sent.frames) {
        let (before, after) = (
            psnr(&noisy[..Y_BYTES], &clean[..Y_BYTES]),
            psnr(&data[..Y_BYTES], &clean[..Y_BYTES]),
        );
        assert!(after >= before + 5.0, "luma {before:.2} -> {after:.2} dB");
    }
}
