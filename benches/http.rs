//! HTTP inference against the folder path, on the same frames: requests/s and latency
//! percentiles at concurrency 1, 8 and 32 with `denoise-fast` on 256² grey frames, beside the
//! folder→folder rate of the same frames. A benchmark, not a test: it prints a table
//! (`cargo bench --bench http`; `AESTREAM_BENCH_FRAMES=N` sets the frames per run, default 48).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aestream::frame::{decode, encode_png, DecodeLimits, Planes};

const BIN: &str = env!("CARGO_BIN_EXE_aestream");

/// `n` noisy (σ 25, seeded) 256² grey frames of the two shipped 256² sample photos, every
/// other pair mirrored; the noise differs in every frame.
fn frames(n: usize) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/clean");
    let photos: Vec<Planes> = ["china.png", "flower.png"]
        .iter()
        .map(|f| {
            let b = std::fs::read(dir.join(f)).unwrap();
            let p = decode(&b, DecodeLimits::default(), f).unwrap();
            assert_eq!((p.width, p.height), (256, 256), "{f}");
            p
        })
        .collect();
    let mut state = 7u64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|k| {
            let p = &photos[k % 2];
            let mirror = (k / 2) % 2 == 1;
            let data = (0..256 * 256)
                .map(|i| {
                    let (x, y) = (i % 256, i / 256);
                    let x = if mirror { 255 - x } else { x };
                    let v = p.planes[0][y * 256 + x];
                    let (a, b) = (uniform(), uniform());
                    let g = (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos();
                    (v + g as f32 * 25.0 / 255.0).clamp(0.0, 1.0)
                })
                .collect();
            encode_png(&Planes::grey(256, 256, data), "bench").unwrap()
        })
        .collect()
}

/// Frames/s of `run --once` folder→folder, as the run reports it (model loading excluded).
fn folder_rate(frames: &[Vec<u8>], dir: &Path) -> f64 {
    let (input, output) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&input).unwrap();
    for (i, f) in frames.iter().enumerate() {
        std::fs::write(input.join(format!("f{i:03}.png")), f).unwrap();
    }
    let out = Command::new(BIN)
        .args(["run", "denoise-fast", "--once", "--threads", "2", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .env("AESTREAM_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines()
        .find_map(|l| {
            let rest = l.split(" s (").nth(1)?;
            rest.split(" frames/s").next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no rate in the log:\n{log}"))
}

fn post(port: u16, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /v1/infer HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut r = Vec::new();
    s.read_to_end(&mut r).unwrap();
    String::from_utf8_lossy(&r[..12.min(r.len())])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// (requests/s, p50 ms, p99 ms, non-200 answers) for `frames` sent by `c` clients at once.
fn http_rate(port: u16, frames: &[Vec<u8>], c: usize) -> (f64, f64, f64, usize) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    let mut lat: Vec<(f64, u16)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..c)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(f) = frames.get(i) else { break };
                        let t = Instant::now();
                        let code = post(port, f);
                        mine.push((t.elapsed().as_secs_f64() * 1e3, code));
                    }
                    mine
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let bad = lat.iter().filter(|l| l.1 != 200).count();
    lat.sort_by(|a, b| a.0.total_cmp(&b.0));
    let at = |q: f64| lat[((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1].0;
    (frames.len() as f64 / secs, at(0.5), at(0.99), bad)
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let n: usize = std::env::var("AESTREAM_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let frames = frames(n);
    let dir = tempfile::tempdir().unwrap();
    let folder = folder_rate(&frames, dir.path());

    let log = dir.path().join("http.log");
    let mut child = Command::new(BIN)
        .args([
            "run",
            "denoise-fast",
            "--http",
            "127.0.0.1:0",
            "--threads",
            "2",
        ])
        .env("AESTREAM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let port: u16 = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(p) = text
            .lines()
            .find_map(|l| l.split("http on http://127.0.0.1:").nth(1))
            .and_then(|r| r.split('/').next()?.parse().ok())
        {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no port:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Warm up (first batches allocate).
    http_rate(port, &frames[..4.min(n)], 1);
    println!("denoise-fast, 256² grey, {n} frames, --threads 2\n");
    println!("| path | concurrency | frames/s | p50 ms | p99 ms | vs folder |");
    println!("|---|---|---|---|---|---|");
    println!("| folder → folder | – | {folder:.2} | – | – | 1.00 |");
    for c in [1, 8, 32] {
        let (rate, p50, p99, bad) = http_rate(port, &frames, c);
        let note = if bad > 0 {
            format!(" ({bad} not 200)")
        } else {
            String::new()
        };
        println!(
            "| HTTP /v1/infer | {c} | {rate:.2}{note} | {p50:.0} | {p99:.0} | {:.2} |",
            rate / folder
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
