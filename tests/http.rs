//! The HTTP server against the real binary: inference requests and their errors, concurrency,
//! overload and recovery, the status JSON, the page in headless Chromium, and the hardening
//! (a huge header, a thousand idle connections, a pipelining client that never reads) with
//! `/healthz` answering throughout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aestream::frame::Planes;
use common::*;

/// Tests that measure `/healthz` latency must not share the two cores with a test that is
/// denoising: they take turns.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `run PIPELINE --http 127.0.0.1:0` and returns it with the port it bound (read from
/// its log, so no port is picked and then raced for).
fn serve(dir: &Path, pipeline: &str, extra: &[&str]) -> (Daemon, u16) {
    let mut args = vec![pipeline, "--http", "127.0.0.1:0", "--threads", "2"];
    args.extend_from_slice(extra);
    let mut d = Daemon::start(&args, dir.join("daemon.log"), &[]);
    let mut port = None;
    let found = wait_until(Duration::from_secs(120), || {
        port = d
            .log()
            .lines()
            .find_map(|l| l.split("http on http://127.0.0.1:").nth(1))
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok());
        port.is_some() || !d.alive()
    });
    let port = port.unwrap_or_else(|| panic!("no port in the log ({found}):\n{}", d.log()));
    assert!(
        wait_until(Duration::from_secs(60), || http_get(port, "/readyz")
            .is_some_and(|r| r.0 == 200)),
        "never ready:\n{}",
        d.log()
    );
    (d, port)
}

/// A pipeline file: the built-in `denoise-fast` with `extra` TOML appended.
fn pipeline_with(dir: &Path, extra: &str) -> String {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/denoise-fast.toml");
    let text = std::fs::read_to_string(base).unwrap() + "\n" + extra;
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
fn request(port: u16, method: &str, path: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw[split + 4..].to_vec();
    // Bodies here are sent with Content-Length (no chunking) by axum for these routes.
    Answer {
        status,
        headers: head,
        body,
    }
}

/// A noisy 256² grey crop of a shipped sample photo (σ 25, seeded) and its clean original.
fn noisy_sample() -> (Vec<u8>, Planes) {
    let clean = read(&samples().join("clean/china.png"));
    let grey: Vec<f32> = (0..256 * 256)
        .map(|i| {
            let (x, y) = (i % 256, i / 256);
            let j = y * clean.width + x;
            clean.planes.iter().map(|p| p[j]).sum::<f32>() / clean.planes.len() as f32
        })
        .collect();
    let clean = Planes::grey(256, 256, grey);
    let mut state = 12345u64;
    let mut gauss = || {
        // Box–Muller from a seeded LCG: the same noise every run.
        let mut u = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (a, b) = (u(), u());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    };
    let noisy: Vec<f32> = clean.planes[0]
        .iter()
        .map(|v| (v + gauss() * 25.0 / 255.0).clamp(0.0, 1.0))
        .collect();
    let png = aestream::frame::encode_png(&Planes::grey(256, 256, noisy), "noisy").unwrap();
    (png, clean)
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    aestream::metrics::psnr(a, b)
}

#[test]
fn requests_are_answered_and_bad_ones_get_clear_errors() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    // A deadline far beyond what 16 frames take on a loaded 2-core machine.
    let p = pipeline_with(dir.path(), "[http]\ndeadline_ms = 600000\n");
    let (d, port) = serve(dir.path(), &p, &[]);
    let (png, clean) = noisy_sample();

    // A noisy 256² PNG comes back denoised, same size.
    let a = request(port, "POST", "/v1/infer", &png);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type").as_deref(), Some("image/png"));
    assert!(a.header("x-aestream-model").is_some());
    let out = read_bytes(&a.body);
    assert_eq!((out.width, out.height), (256, 256));
    let noisy = read_bytes(&png);
    let (before, after) = (
        psnr(&noisy.planes[0], &clean.planes[0]),
        psnr(&out.planes[0], &clean.planes[0]),
    );
    assert!(after > before + 3.0, "PSNR {before:.2} -> {after:.2} dB");

    // Text, an empty body, a kind the model cannot make, a truncated PNG: 4xx with JSON.
    for (body, path, want) in [
        (&b"hello, this is not an image"[..], "/v1/infer", 400),
        (&b""[..], "/v1/infer", 400),
        (&png[..], "/v1/infer?emit=latent", 400),
        (&png[..png.len() / 2], "/v1/infer", 400),
        (&png[..], "/v1/nothing", 404),
    ] {
        let a = request(port, "POST", path, body);
        assert_eq!(
            a.status,
            want,
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(a.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // A body declared over the cap is refused before it is read.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");

    // 16 at once: all answered.
    let answers: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|_| sc.spawn(|| request(port, "POST", "/v1/infer", &png).status))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, vec![200; 16]);

    // The status counts them and shows thumbnails of the last ones. A reply leaves inside the
    // sink's write and the frame is counted when the write returns, so a client can read the
    // status between the two: wait (bounded) for the count to settle.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = request(port, "GET", "/v1/status", b"").json();
        if s["frames"]["out"] == 17 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(s["pipeline"], "denoise-fast");
    assert_eq!(s["frames"]["out"], 17, "{}", s["frames"]);
    // The truncated PNG failed in the pipeline (the others were refused at the door).
    assert_eq!(s["frames"]["failed"], 1, "{}", s["frames"]);
    assert!(s["requests"]["answered"].as_u64().unwrap() >= 17);
    let recent = s["recent"].as_array().unwrap();
    assert!(!recent.is_empty());
    assert!(recent[0]["after"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    let failures = s["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0]["error"]
        .as_str()
        .unwrap()
        .contains("cannot decode"));
    let page = request(port, "GET", "/", b"");
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("data:image/png;base64,"));
    drop(d);
}

/// A segmenter answers `?emit=instances` with a 16-bit label map, and several kinds at once
/// as one JSON document, each image base64-encoded.
#[test]
fn nuclei_requests_get_objects_and_probability() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = serve(dir.path(), "segment-nuclei", &[]);
    let frame = std::fs::read(samples().join("nuclei/images/right-top.png")).unwrap();
    let a = request(port, "POST", "/v1/infer?emit=instances", &frame);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type").as_deref(), Some("image/png"));
    let labels = image::load_from_memory(&a.body).unwrap();
    assert_eq!(labels.color(), image::ColorType::L16);
    let most = labels.to_luma16().pixels().map(|p| p.0[0]).max().unwrap();
    assert!(most > 20, "{most} objects");

    let a = request(port, "POST", "/v1/infer?emit=instances,probability", &frame);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let j = a.json();
    for kind in ["instances", "probability"] {
        use base64::Engine;
        let b64 = j["outputs"][kind]["base64"].as_str().expect(kind);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!(
            (img.color(), img.width()),
            (image::ColorType::L16, 256),
            "{kind}"
        );
    }
    drop(d);
}

/// Over `max_pending`, a request gets 503 with Retry-After at once; when the pipeline has
/// room again, requests succeed.
#[test]
fn overload_gets_503_and_recovers() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_with(
        dir.path(),
        "[http]\nmax_pending = 1\ndeadline_ms = 600000\n",
    );
    let (d, port) = serve(dir.path(), &p, &[]);
    // A big frame keeps the pipeline busy for a while (seconds, on any machine here).
    let big = png(1024, 1024, 3);
    let slow = std::thread::spawn(move || request(port, "POST", "/v1/infer", &big).status);
    assert!(
        wait_until(Duration::from_secs(60), || {
            request(port, "GET", "/v1/status", b"").json()["requests"]["pending"] == 1
        }),
        "the big frame never showed as pending"
    );
    let small = png(64, 64, 1);
    let a = request(port, "POST", "/v1/infer", &small);
    assert_eq!(a.status, 503, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("retry-after").as_deref(), Some("1"));
    assert_eq!(slow.join().unwrap(), 200);
    let a = request(port, "POST", "/v1/infer", &small);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    drop(d);
}

/// `/healthz` on a fresh connection, timed.
fn health(port: u16) -> Duration {
    let t0 = Instant::now();
    let r = http_get(port, "/healthz");
    assert_eq!(r.map(|r| r.0), Some(200), "/healthz did not answer");
    t0.elapsed()
}

/// A 1 GiB header, a thousand idle connections and a pipelining client that never reads:
/// the daemon stays small, and `/healthz` answers throughout without waiting for any of them
/// to time out (its bound is half the server's timeouts: a starved probe would wait for one;
/// a fixed 1 s bound failed once at 1.02 s on two cores running four test jobs).
#[test]
fn hostile_clients_cannot_take_the_port_down() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_with(
        dir.path(),
        "[http]\nio_timeout_ms = 10000\nheader_timeout_ms = 10000\n",
    );
    let (d, port) = serve(dir.path(), &p, &[]);
    let mut worst = Duration::ZERO;

    // A header line that never ends: the server stops reading after its cap and closes.
    let sender = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-Long: ");
        let chunk = vec![b'a'; 1 << 20];
        let mut sent: u64 = 0;
        while sent < 1 << 30 {
            if s.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    for _ in 0..5 {
        worst = worst.max(health(port));
    }
    let sent = sender.join().unwrap();
    assert!(
        sent < 256 << 20,
        "the server read {sent} bytes of one header"
    );

    // A thousand connections that say nothing.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for _ in 0..5 {
        worst = worst.max(health(port));
    }

    // Pipelined requests whose answers are never read.
    let mut greedy = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let one = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    greedy
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = greedy.write_all(&one);
    for _ in 0..5 {
        worst = worst.max(health(port));
    }
    // The idle connections and the greedy one are closed by the server's timeouts.
    let mut probe = &idle[0];
    probe
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(
        matches!(probe.read(&mut buf), Ok(0) | Err(_)),
        "an idle connection was never closed"
    );
    drop(idle);
    assert!(worst < Duration::from_secs(5), "/healthz took {worst:?}");
    let status = request(port, "GET", "/v1/status", b"").json();
    assert!(status["connections"]["accepted"].as_u64().unwrap() >= 1000);
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", d.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(rss_kb < 1 << 20, "peak RSS {rss_kb} kB");
    drop(d);
}

/// The page renders in headless Chromium (Debian's `chromium`, which scripts/test.sh
/// installs) with thumbnails and without a script error.
#[test]
fn the_status_page_renders_in_chromium() {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no chromium on the PATH: scripts/test.sh installs Debian's `chromium`");
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = serve(dir.path(), "denoise-fast", &[]);
    let (png, _) = noisy_sample();
    assert_eq!(request(port, "POST", "/v1/infer", &png).status, 200);
    assert_eq!(
        request(port, "POST", "/v1/infer", b"not an image").status,
        400
    );
    let profile = dir.path().join("profile");
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    assert!(
        dom.contains("class=\"thumb\"") && dom.contains("src=\"data:image/png;base64,"),
        "no thumbnail in the DOM:\n{dom}"
    );
    assert!(
        dom.contains("<pre id=\"errors\"></pre>"),
        "script errors:\n{dom}"
    );
    assert!(!log.contains("Uncaught"), "console errors:\n{log}");
    assert!(dom.contains("denoise-fast"));
    drop(d);
}
