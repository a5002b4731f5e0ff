//! Memory and time budgets against the real binary.
//!
//! - A watched folder of hostile files (a `/proc` link, a FIFO, and PNG, GIF, BMP-RLE and
//!   TIFF-deflate files of a few dozen bytes to a few KB that declare 64-megapixel frames, all
//!   within the pixel limit of the old default) and good files: the run ends, its peak RSS
//!   stays under 2 GB, the good files are done, each bad one is quarantined with its reason,
//!   nothing is overwritten, and a second run does nothing again.
//! - A frame in progress when the process is killed (`kill -9`, standing in for the kernel's
//!   OOM killer or a crash) is tried again, alone, and finishes; one that is in progress at
//!   two kills is set aside with a note saying so on the next start.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use flate2::write::ZlibEncoder;

const SIDE: u32 = 8000;

/// zlib of `rows` rows of `row` zero bytes (each PNG row led by its filter byte when `png`).
fn zeros_zlib(rows: u32, row: usize, png: bool) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let line = vec![0u8; row + usize::from(png)];
    for _ in 0..rows {
        z.write_all(&line).unwrap();
    }
    z.finish().unwrap()
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend(kind);
    out.extend(data);
    out.extend(crc.sum().to_be_bytes());
}

/// A grey PNG of zeros, `SIDE`×`SIDE`: about 60 KB.
fn png_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(SIDE.to_be_bytes());
    ihdr.extend(SIDE.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit grey, deflate, no filter, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zeros_zlib(SIDE, SIDE as usize, true));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A GIF whose one frame is `SIDE`×`SIDE` and whose LZW data is a clear and an end code:
/// 35 bytes.
fn gif_bomb() -> Vec<u8> {
    let s = (SIDE as u16).to_le_bytes();
    let mut g = b"GIF89a".to_vec();
    g.extend(s);
    g.extend(s);
    g.extend([0x80, 0, 0]); // a global table of 2 colours
    g.extend([0, 0, 0, 255, 255, 255]);
    g.extend([0x2c, 0, 0, 0, 0]);
    g.extend(s);
    g.extend(s);
    g.push(0);
    // LZW, minimum code size 2: clear (4) and end (5) as 3-bit codes, LSB first.
    g.extend([2, 1, 0b0010_1100, 0, 0x3b]);
    g
}

/// An 8-bit BMP, RLE8-compressed, `SIDE`×`SIDE`, whose data is one end-of-bitmap: 64 bytes.
fn bmp_bomb() -> Vec<u8> {
    let data = [0u8, 1];
    let offset = 14 + 40 + 8;
    let mut b = b"BM".to_vec();
    b.extend((offset + data.len() as u32).to_le_bytes());
    b.extend([0; 4]);
    b.extend(offset.to_le_bytes());
    b.extend(40u32.to_le_bytes());
    b.extend((SIDE as i32).to_le_bytes());
    b.extend((SIDE as i32).to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(8u16.to_le_bytes());
    b.extend(1u32.to_le_bytes()); // BI_RLE8
    b.extend((data.len() as u32).to_le_bytes());
    b.extend([0; 8]);
    b.extend(2u32.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend([0, 0, 0, 0, 255, 255, 255, 0]);
    b.extend(data);
    b
}

/// A grey TIFF, deflate-compressed zeros in one strip, `SIDE`×`SIDE`: about 60 KB.
fn tiff_bomb() -> Vec<u8> {
    let strip = zeros_zlib(SIDE, SIDE as usize, false);
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, SIDE),               // width
        (257, 4, SIDE),               // height
        (258, 3, 8),                  // bits per sample
        (259, 3, 8),                  // deflate
        (262, 3, 1),                  // black is zero
        (273, 4, 0),                  // strip offset: filled in below
        (277, 3, 1),                  // samples per pixel
        (278, 4, SIDE),               // rows per strip
        (279, 4, strip.len() as u32), // strip bytes
    ];
    let ifd_len = 2 + entries.len() * 12 + 4;
    let data_at = (8 + ifd_len) as u32;
    let mut t = b"II*\0".to_vec();
    t.extend(8u32.to_le_bytes());
    t.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, v) in entries {
        let v = if tag == 273 { data_at } else { v };
        t.extend(tag.to_le_bytes());
        t.extend(kind.to_le_bytes());
        t.extend(1u32.to_le_bytes());
        if kind == 3 {
            t.extend((v as u16).to_le_bytes());
            t.extend([0, 0]);
        } else {
            t.extend(v.to_le_bytes());
        }
    }
    t.extend(0u32.to_le_bytes());
    t.extend(strip);
    t
}

/// A pipeline that lets 64-megapixel frames through its pixel limit (the old default), and
/// keeps the default budgets.
fn pipeline(dir: &Path) -> std::path::PathBuf {
    let (_, text) = aestream::config::BUILTIN_PIPELINES
        .iter()
        .find(|(n, _)| *n == "denoise-fast")
        .unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.starts_with("max_pixels") {
            true => "max_pixels = 64_000_000 # the old default\n".to_string(),
            false => format!("{l}\n"),
        })
        .collect();
    let p = dir.join("p.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_hostile_folder_is_done_within_memory_and_a_restart_does_nothing_twice() {
    let t = tempfile::tempdir().unwrap();
    let (inp, out) = (t.path().join("in"), t.path().join("out"));
    std::fs::create_dir_all(&inp).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let pipe = pipeline(t.path());
    for i in 0..3 {
        std::fs::write(inp.join(format!("good-{i}.png")), common::png(48, 32, i)).unwrap();
    }
    let bombs = [
        ("bomb.png", png_bomb()),
        ("bomb.gif", gif_bomb()),
        ("bomb.bmp", bmp_bomb()),
        ("bomb.tif", tiff_bomb()),
    ];
    for (name, bytes) in &bombs {
        assert!(bytes.len() < 100 << 10, "{name}: {} bytes", bytes.len());
        std::fs::write(inp.join(name), bytes).unwrap();
    }
    std::os::unix::fs::symlink("/proc/self/status", inp.join("status.png")).unwrap();
    std::os::unix::fs::symlink("/proc/self/pagemap", inp.join("pagemap.png")).unwrap();
    let fifo = Command::new("mkfifo")
        .arg(inp.join("pipe.png"))
        .status()
        .unwrap();
    assert!(fifo.success());
    // A file of the user's in the output folder, named like an output: never overwritten.
    std::fs::write(out.join("bomb.png"), b"mine").unwrap();

    let log = common::run_once(&pipe, &inp, &out, &t.path().join("1.log"));
    for i in 0..3 {
        let name = format!("good-{i}.png");
        assert_eq!(common::read(&out.join(&name)).width, 48, "{name}\n{log}");
    }
    assert_eq!(std::fs::read(out.join("bomb.png")).unwrap(), b"mine");
    let q = out.join(".failed");
    let budget = "over the per-frame budget of 1024 MiB";
    for (name, why) in [
        ("bomb.png", budget),
        ("bomb.gif", budget),
        ("bomb.bmp", budget),
        ("bomb.tif", budget),
        ("status.png", "reports 0 bytes but reads more"),
        ("pagemap.png", "reports 0 bytes but reads more"),
        ("pipe.png", "not a regular file (a FIFO)"),
    ] {
        assert!(
            inp.join(name).symlink_metadata().is_err(),
            "{name} left in the input\n{log}"
        );
        let note = std::fs::read_to_string(q.join(format!("{name}.error.txt")))
            .unwrap_or_else(|e| panic!("{name}: no note ({e})\n{log}"));
        assert!(note.contains(why), "{name}: {note}");
    }
    // The bombs are refused on their header: the estimate is in the note.
    let note = std::fs::read_to_string(q.join("bomb.gif.error.txt")).unwrap();
    assert!(note.contains("8000x8000") && note.contains("MiB"), "{note}");

    let log = common::run_once(&pipe, &inp, &out, &t.path().join("2.log"));
    assert!(log.contains("done: 0 frames in"), "{log}");
    let peak = common::peak_rss_of_children();
    assert!(peak < 2 << 30, "peak RSS {} MiB", peak >> 20);
}

/// A pipe whose buffer is already full: (read end, write end). Its writer blocks until the
/// read end is read (or closed), however little it writes.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two descriptors, which we then own; fcntl and write act on the
    // write end only, with a buffer that outlives the calls.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let (r, w) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        let flags = libc::fcntl(w.as_raw_fd(), libc::F_GETFL);
        assert!(libc::fcntl(w.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0);
        let chunk = [0u8; 4096];
        while libc::write(w.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) > 0 {}
        assert_eq!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert!(libc::fcntl(w.as_raw_fd(), libc::F_SETFL, flags) == 0);
        (r, w)
    }
}

/// Starts `aestream run --once` on `inp` writing to a stdout pipe that is full and never
/// read (so no frame can finish), waits until the journal in `state` holds `marks` `begun`
/// marks of `name`, and kills it with SIGKILL.
fn kill_when_begun(inp: &Path, state: &Path, name: &str, marks: usize, log: &Path) {
    let (_unread, w) = full_pipe();
    let mut child = common::bin()
        .args(["run", "denoise-fast", "--once", "-o", "-", "-i"])
        .arg(inp)
        .arg("--state")
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let journal = state.join("denoise-fast.journal.jsonl");
    let begun = || {
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .matches(&format!("\"begun\":\"{name}\""))
            .count()
    };
    let seen = common::wait_until(Duration::from_secs(120), || begun() >= marks);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen,
        "no begun mark\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn a_frame_in_progress_at_one_kill_is_redone_at_two_it_is_set_aside() {
    let t = tempfile::tempdir().unwrap();
    let (inp, out, state) = (
        t.path().join("in"),
        t.path().join("out"),
        t.path().join("state"),
    );
    std::fs::create_dir_all(&inp).unwrap();
    std::fs::write(inp.join("frame.png"), common::png(64, 48, 7)).unwrap();

    // Killed once while the frame is in progress (a power loss): tried again, alone, done.
    kill_when_begun(&inp, &state, "frame.png", 1, &t.path().join("1.log"));
    let mut cmd = common::bin();
    cmd.args(["run", "denoise-fast", "--once", "-i"])
        .arg(&inp)
        .arg("-o")
        .arg(&out)
        .arg("--state")
        .arg(&state);
    let run = common::ok(cmd.output().unwrap());
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(log.contains("trying it again, alone"), "{log}");
    assert_eq!(common::read(&out.join("frame.png")).width, 64, "{log}");
    assert!(inp.join("frame.png").is_file());

    // Another file, in progress at two kills in a row: set aside on the next start, unread.
    std::fs::write(inp.join("killer.png"), common::png(64, 48, 8)).unwrap();
    kill_when_begun(&inp, &state, "killer.png", 1, &t.path().join("2.log"));
    kill_when_begun(&inp, &state, "killer.png", 2, &t.path().join("3.log"));
    let mut cmd = common::bin();
    cmd.args(["run", "denoise-fast", "--once", "-i"])
        .arg(&inp)
        .arg("-o")
        .arg(&out)
        .arg("--state")
        .arg(&state);
    let run = common::ok(cmd.output().unwrap());
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(!out.join("killer.png").exists(), "{log}");
    let note = std::fs::read_to_string(out.join(".failed/killer.png.error.txt")).unwrap();
    assert!(
        note.contains("the process ended 2 times while this file was in progress"),
        "{note}"
    );
    // The finished one was not touched again.
    assert!(log.contains("done: 1 frames in"), "{log}");
}
