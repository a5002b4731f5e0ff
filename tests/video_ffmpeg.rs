//! `--framing y4m` between real ffmpeg processes (Debian's `ffmpeg` package, which
//! scripts/test.sh installs): a `testsrc2` clip with noise goes through aestream in a shell
//! pipe and comes back with the same frame count, size and rate, much closer to the clean clip
//! than the noisy one was; a truncated stream gives ffmpeg every complete frame before the cut.

mod common;

use std::path::Path;
use std::process::Command;

use common::bin;

fn ffmpeg_tool(name: &str) -> Command {
    let probe = Command::new(name).arg("-version").output();
    if !matches!(probe, Ok(o) if o.status.success()) {
        panic!("{name} not found: install ffmpeg (Debian: apt-get install ffmpeg), as scripts/test.sh does");
    }
    Command::new(name)
}

/// Runs a command that must succeed; its stderr.
fn run(mut c: Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{c:?}: {err}");
    err
}

/// Width, height, frame rate and frame count of a clip, as ffprobe reads them.
fn probe(clip: &Path) -> String {
    let mut c = ffmpeg_tool("ffprobe");
    c.args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=width,height,r_frame_rate,nb_read_frames",
        ])
        .args(["-of", "csv=p=0"])
        .arg(clip);
    let out = c.output().unwrap();
    assert!(out.status.success(), "ffprobe {}", clip.display());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Average PSNR (all planes) of `a` against `b`, from ffmpeg's psnr filter.
fn psnr(a: &Path, b: &Path) -> f64 {
    let mut c = ffmpeg_tool("ffmpeg");
    c.args(["-hide_banner", "-i"])
        .arg(a)
        .arg("-i")
        .arg(b)
        .args(["-lavfi", "psnr", "-f", "null", "-"]);
    let err = run(c);
    let avg = err
        .split("average:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok());
    avg.unwrap_or_else(|| panic!("no PSNR in: {err}"))
}

#[test]
fn a_noisy_testsrc2_clip_round_trips_through_ffmpeg_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let (clean, noisy, out) = (
        dir.path().join("clean.y4m"),
        dir.path().join("noisy.y4m"),
        dir.path().join("out.y4m"),
    );
    let mut c = ffmpeg_tool("ffmpeg");
    c.args(["-v", "error", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=160x120:rate=25")
        .args([
            "-frames:v",
            "12",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "yuv4mpegpipe",
        ])
        .arg(&clean);
    run(c);
    // Temporal Gaussian-like noise on every plane, seeded (the filter's default seed).
    let mut c = ffmpeg_tool("ffmpeg");
    c.args(["-v", "error", "-i"])
        .arg(&clean)
        .args(["-vf", "noise=alls=25:allf=t", "-f", "yuv4mpegpipe"])
        .arg(&noisy);
    run(c);
    // The recipe of the README: ffmpeg | aestream | ffmpeg.
    let aestream = bin().get_program().to_owned();
    let script = format!(
        "ffmpeg -v error -i {noisy} -f yuv4mpegpipe - \
         | {ae} run denoise-fast --input - --output - --framing y4m \
         | ffmpeg -v error -f yuv4mpegpipe -i - -f yuv4mpegpipe {out}",
        noisy = noisy.display(),
        ae = Path::new(&aestream).display(),
        out = out.display()
    );
    let mut c = Command::new("bash");
    c.args(["-c", &format!("set -o pipefail; {script}")]);
    run(c);
    let want = "160,120,25/1,12";
    assert_eq!(probe(&clean), want);
    assert_eq!(probe(&out), want);
    let (before, after) = (psnr(&noisy, &clean), psnr(&out, &clean));
    eprintln!("PSNR against the clean clip: noisy {before:.2} dB, denoised {after:.2} dB");
    assert!(after >= before + 4.0, "{before:.2} -> {after:.2} dB");
}

#[test]
fn a_truncated_stream_gives_ffmpeg_every_complete_frame() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.y4m");
    let mut c = ffmpeg_tool("ffmpeg");
    c.args(["-v", "error", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=64x48:rate=30000/1001")
        .args([
            "-frames:v",
            "6",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "yuv4mpegpipe",
        ])
        .arg(&clip);
    run(c);
    let mut bytes = std::fs::read(&clip).unwrap();
    bytes.truncate(bytes.len() - 1000);
    let out = common::run_with_stdin(
        &[
            "run",
            "denoise-fast",
            "-i",
            "-",
            "-o",
            "-",
            "--framing",
            "y4m",
        ],
        bytes,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("frame 5 at byte"), "{err}");
    let got = dir.path().join("got.y4m");
    std::fs::write(&got, &out.stdout).unwrap();
    assert_eq!(probe(&got), "64,48,30000/1001,5");
}
