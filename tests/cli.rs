//! End-to-end tests of the real `aestream` binary with the shipped pipeline and weights.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aestream::frame::framing::{Framing, Split, Splitter};
use aestream::frame::{decode, DecodeLimits, Planes};
use aestream::metrics::psnr;
use common::{bin, read, samples};

/// Splits a stream of PNG frames (stdout of a run) into decoded frames.
fn split_frames(bytes: &[u8], framing: Framing) -> Vec<Planes> {
    let mut s = Splitter::new(framing);
    s.push(bytes);
    let mut out = Vec::new();
    while let Some(x) = s.next() {
        match x {
            Split::Frame(f) => {
                out.push(decode(&f.bytes, DecodeLimits::default(), "out").expect("output decodes"))
            }
            Split::Error(e) => panic!("bad output stream: {e:?}"),
        }
    }
    assert!(s.finish().is_none(), "trailing bytes on stdout");
    out
}

fn pgm_bytes(p: &Planes) -> Vec<u8> {
    let mut out = format!("P5\n{} {}\n255\n", p.width, p.height).into_bytes();
    out.extend(p.planes[0].iter().map(|v| (v * 255.0).round() as u8));
    out
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if path.is_file() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn folder_once_denoises_every_image_at_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let assert = bin()
        .args(["run", "denoise", "--once", "--threads", "1", "--output"])
        .arg(&out)
        .arg("--input")
        .arg(samples().join("noisy"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&assert.stderr);
    assert!(assert.status.success(), "{log}");
    assert!(log.contains("model threads: 1"), "{log}");
    // Without a GPU (CI never has one) `--device auto`, the default, says it runs on the CPU.
    assert!(log.contains("device: cpu (--device auto)"), "{log}");
    let mut gains = Vec::new();
    for name in ["china.png", "flower.png", "flower-colour.png"] {
        let noisy = read(&samples().join("noisy").join(name));
        let clean = read(&samples().join("clean").join(name));
        let den = read(&out.join(name));
        assert_eq!(
            (den.width, den.height),
            (noisy.width, noisy.height),
            "{name}"
        );
        assert_eq!(den.is_colour(), noisy.is_colour(), "{name}: colour kept");
        let (pn, pd) = (
            psnr(&noisy.planes.concat(), &clean.planes.concat()),
            psnr(&den.planes.concat(), &clean.planes.concat()),
        );
        // The shipped weights must really denoise (σ=25 input is ~20.5 dB); the china crop is
        // nearly all fine texture, the hardest case.
        assert!(
            pd > pn + 1.5,
            "{name}: denoised {pd:.2} dB vs noisy {pn:.2} dB"
        );
        gains.push(pd - pn);
    }
    let mean = gains.iter().sum::<f64>() / gains.len() as f64;
    assert!(mean > 4.0, "mean gain {mean:.2} dB ({gains:?})");
    // No temporary files are left behind; beside the outputs only the state folder (journal).
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".aestream")
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
}

#[test]
fn three_concatenated_frames_come_out_in_order() {
    let a = std::fs::read(samples().join("noisy/china.png")).unwrap();
    let b = std::fs::read(samples().join("noisy/flower-colour.png")).unwrap();
    let c_planes = read(&samples().join("noisy/flower.png"));
    // A smaller PGM so sizes differ frame to frame.
    let small = Planes::grey(
        40,
        24,
        (0..40 * 24)
            .map(|i| ((i * 37) % 256) as f32 / 255.0)
            .collect(),
    );
    let mut stream = a.clone();
    stream.extend(&b);
    stream.extend(pgm_bytes(&small));
    stream.extend(pgm_bytes(&c_planes));
    let out = run_stdin(&stream, &["--framing", "concat"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = split_frames(&out.stdout, Framing::Concat);
    let dims: Vec<_> = frames
        .iter()
        .map(|f| (f.width, f.height, f.is_colour()))
        .collect();
    assert_eq!(
        dims,
        vec![
            (256, 256, false),
            (192, 192, true),
            (40, 24, false),
            (256, 256, false)
        ]
    );
}

fn run_stdin(input: &[u8], extra: &[&str]) -> std::process::Output {
    let args = [&["run", "denoise", "--input", "-", "--output", "-"], extra].concat();
    common::run_with_stdin(&args, input.to_vec())
}

#[test]
fn a_broken_frame_is_reported_and_the_others_come_out() {
    let a = std::fs::read(samples().join("noisy/china.png")).unwrap();
    // A PNG whose pixel data is damaged (chunk structure intact, so the splitter keeps sync).
    let mut broken = std::fs::read(samples().join("noisy/flower.png")).unwrap();
    let idat = broken.windows(4).position(|w| w == b"IDAT").unwrap();
    for byte in &mut broken[idat + 10..idat + 60] {
        *byte ^= 0x5a;
    }
    let mut stream = a.clone();
    let broken_offset = stream.len();
    stream.extend(&broken);
    stream.extend(b"this is not an image at all");
    stream.extend(&a);
    let out = run_stdin(&stream, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("stdin frame 1 at byte {broken_offset}")),
        "{err}"
    );
    assert!(err.contains("stdin frame 2 at byte"), "{err}");
    let frames = split_frames(&out.stdout, Framing::Concat);
    assert_eq!(frames.len(), 2);
}

#[test]
fn length_framing_carries_jpeg() {
    let img = read(&samples().join("noisy/flower-colour.png"));
    let mut jpeg = Vec::new();
    img.to_dynamic()
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let png = std::fs::read(samples().join("noisy/china.png")).unwrap();
    let mut stream = Vec::new();
    for f in [&jpeg, &png] {
        stream.extend((f.len() as u32).to_be_bytes());
        stream.extend(f.iter());
    }
    let out = run_stdin(&stream, &["--framing", "len"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = split_frames(&out.stdout, Framing::Length);
    let dims: Vec<_> = frames
        .iter()
        .map(|f| (f.width, f.height, f.is_colour()))
        .collect();
    assert_eq!(dims, vec![(192, 192, true), (256, 256, false)]);
}

#[test]
fn unknown_pipeline_key_exits_2_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/denoise.toml"),
    )
    .unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, text.replace("[infer]", "[infer]\nmax_bacth = 4")).unwrap();
    let out = bin()
        .arg("run")
        .arg(&p)
        .args(["--input", "-", "--output", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_bacth") && err.contains("bad.toml"),
        "{err}"
    );
}

/// A pipeline file that is not there: an error naming it, with the system's reason
/// said once (anyhow's `{:#}` repeated it).
#[test]
fn a_missing_pipeline_file_is_named_and_the_reason_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("gone.toml");
    let out = bin()
        .arg("train")
        .arg(&p)
        .args(["--data", tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gone.toml"), "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
}

#[test]
fn a_bad_file_in_a_folder_is_reported_and_the_rest_processed() {
    let tmp = tempfile::tempdir().unwrap();
    let (inp, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&inp).unwrap();
    std::fs::copy(samples().join("noisy/china.png"), inp.join("good.png")).unwrap();
    std::fs::write(inp.join("bad.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(inp.join(".hidden.png"), b"ignored").unwrap();
    let o = bin()
        .args(["run", "--once", "--input"])
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.png") && err.contains("cannot decode"),
        "{err}"
    );
    assert!(out.join("good.png").is_file());
    assert!(!out.join("bad.png").exists() && !out.join(".hidden.png").exists());
    // Set aside, not deleted: moved to OUT/.failed with the reason beside it.
    assert!(!inp.join("bad.png").exists());
    let q = out.join(".failed");
    assert_eq!(
        std::fs::read(q.join("bad.png")).unwrap(),
        b"\x89PNG\r\n\x1a\nnot really"
    );
    let why = std::fs::read_to_string(q.join("bad.png.error.txt")).unwrap();
    assert!(
        why.contains("cannot decode") && why.contains("time:"),
        "{why}"
    );
    assert!(inp.join(".hidden.png").is_file());
}

#[test]
fn watch_mode_takes_files_written_in_place_and_renamed_in() {
    let tmp = tempfile::tempdir().unwrap();
    let (inp, out, stage) = (
        tmp.path().join("in"),
        tmp.path().join("out"),
        tmp.path().join("stage"),
    );
    for d in [&inp, &stage] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Already there at start (and maybe still "recent" for the initial scan).
    std::fs::copy(samples().join("noisy/flower.png"), inp.join("early.png")).unwrap();
    let mut child = bin()
        .args(["run", "denoise", "--quiet-ms", "10000", "--input"])
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it watches (it logs "watching" to stderr). The quiet period (10 s) is far
    // longer than the pause inside the in-place write below (300 ms), so a stalled machine
    // cannot make the half-written file look complete.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("watching") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("daemon starts watching");

    let png = std::fs::read(samples().join("noisy/china.png")).unwrap();
    // Written in place, slowly, in two parts: must be taken only once complete.
    {
        let mut f = std::fs::File::create(inp.join("inplace.png")).unwrap();
        f.write_all(&png[..png.len() / 2]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        f.write_all(&png[png.len() / 2..]).unwrap();
    }
    // Written elsewhere, then renamed in.
    std::fs::write(stage.join("moved.png"), &png).unwrap();
    std::fs::rename(stage.join("moved.png"), inp.join("moved.png")).unwrap();
    // Partial and hidden files are ignored.
    std::fs::write(inp.join("upload.png.part"), &png).unwrap();
    std::fs::write(inp.join(".dot.png"), &png).unwrap();

    let ok1 = wait_for(&out.join("inplace.png"), Duration::from_secs(60));
    let ok2 = wait_for(&out.join("moved.png"), Duration::from_secs(60));
    let ok3 = wait_for(&out.join("early.png"), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(ok1 && ok2 && ok3, "outputs missing; log:\n{log}");
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert_eq!(read(&out.join("inplace.png")).width, 256);
    assert!(!out.join("upload.png").exists() && !out.join(".dot.png").exists());
    assert!(
        !log.contains("cannot decode"),
        "a partial file was taken:\n{log}"
    );
}

#[test]
fn output_folder_equal_to_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["run", "--once", "--input"])
        .arg(tmp.path())
        .arg("--output")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("input folder"));
}

/// `bench` prints one JSON line with the fields an outside comparison reads, for the thread
/// count asked; a bad size is a usage error (exit 2).
#[test]
fn bench_prints_one_json_line() {
    let out = bin()
        .args(["bench", "conv-ae-ref", "--batch", "2", "--size", "16"])
        .args(["--threads", "1", "--seconds", "0.05", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["threads"], 1);
    assert_eq!(r["batch"], 2);
    for k in [
        "infer_images_per_s",
        "train_steps_per_s",
        "p50_ms",
        "p99_ms",
        "peak_rss_mb",
    ] {
        assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {text}");
    }
    let bad = bin()
        .args(["bench", "conv-ae-ref", "--size", "30", "--seconds", "0.05"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
