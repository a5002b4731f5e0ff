//! Helpers shared by the end-to-end tests: the sample folder, the binary, reading an image.
#![allow(dead_code)] // each test binary uses only some of the helpers

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aestream::frame::{decode, encode_png, DecodeLimits, Planes};
use assert_cmd::cargo::cargo_bin;

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// The `aestream` binary, logging at info (some tests read its log lines).
pub fn bin() -> Command {
    let mut c = Command::new(cargo_bin("aestream"));
    c.env("AESTREAM_LOG", "info");
    c
}

/// Decodes an encoded image held in memory.
pub fn read_bytes(b: &[u8]) -> Planes {
    decode(b, DecodeLimits::default(), "bytes").expect("decodes")
}

pub fn read(p: &Path) -> Planes {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    decode(&bytes, DecodeLimits::default(), &p.display().to_string()).expect("decodes")
}

pub fn frame(w: usize, h: usize, seed: usize) -> Planes {
    Planes::grey(
        w,
        h,
        (0..w * h)
            .map(|i| (((i * 7919 + seed * 104_729) % 251) as f32) / 255.0)
            .collect(),
    )
}

pub fn png(w: usize, h: usize, seed: usize) -> Vec<u8> {
    encode_png(&frame(w, h, seed), "test").unwrap()
}

/// The output of a command that must have succeeded (its stderr shown if not).
pub fn ok(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the binary with `args`, `input` written to its stdin (from a thread, so a full stdout
/// pipe cannot deadlock the two); its output once it exits.
pub fn run_with_stdin(args: &[&str], input: Vec<u8>) -> std::process::Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

pub fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -s {sig} failed");
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A running daemon; killed if a test fails before it stops it. Its log goes to a file.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(args: &[&str], log: PathBuf, env: &[(&str, &str)]) -> Self {
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = bin();
        cmd.arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare HTTP/1.0 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// The largest resident set any waited-for child of this test had, in bytes.
pub fn peak_rss_of_children() -> u64 {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss as u64 * 1024
}

/// `aestream run PIPELINE --once -i INP -o OUT`, its stderr in `log`, under an 8 GiB
/// address-space limit (a run that over-commits, or reads a never-ending file whole, fails
/// on an allocation instead of taking the machine's memory). Returns the log; panics with it
/// if the run fails or has not ended within 5 minutes (which bound a hang, not a speed).
pub fn run_once(
    pipeline: impl AsRef<std::ffi::OsStr>,
    inp: &Path,
    out: &Path,
    log: &Path,
) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = bin();
    cmd.arg("run")
        .arg(pipeline)
        .args(["--once", "-i"])
        .arg(inp)
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 8 << 30,
                rlim_max: 8 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    let Some(st) = wait_exit(&mut child, Duration::from_secs(300)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the run did not end\n{}", text());
    };
    assert!(st.success(), "{st:?}\n{}", text());
    text()
}

/// Writes `bytes` beside `dir/name` under a dot name, then renames it in: a complete arrival.
pub fn rename_in(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".incoming-{name}"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// `n` distinct `size`² frames arriving in `dir` as `fNNNN.png`.
pub fn frames_into(dir: &Path, n: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        rename_in(dir, &format!("f{i:04}.png"), &png(size, size, i));
    }
}

/// The shipped `denoise-fast` pipeline file under another name.
pub fn fast_pipeline(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/denoise-fast.toml"),
    )
    .unwrap()
    .replace("name = \"denoise-fast\"", &format!("name = \"{name}\""))
}

/// All files under `dir` (relative paths), dot-folders included.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Output images: files in `dir` that are not hidden (no dot component).
pub fn outputs(dir: &Path) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|p| {
            !p.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        })
        .collect()
}

/// Temporary files (`*.tmp`) under `dir`.
pub fn temps(dir: &Path) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}
