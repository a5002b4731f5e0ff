//! Hostile settings and names against the real binary: a setting out of range exits 2 naming
//! the file and key (never aborts, panics or hangs); a file name cannot forge a log line; the
//! journal names a damaged line by its number in the file.

mod common;

use std::time::Duration;

use common::png;

/// The binary with a deadline: a setting that hangs it fails the test instead of the run.
fn aestream() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("aestream").unwrap();
    c.env("AESTREAM_LOG", "info")
        .timeout(Duration::from_secs(300));
    c
}

/// Runs `denoise-fast` with `line` added to `[section]` of a copy of it, on an empty folder.
fn run_with(section: &str, line: &str) -> (Option<i32>, String) {
    let t = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/denoise-fast.toml"),
    )
    .unwrap();
    // Drop the key where the file sets it, then set it in its section.
    let key = line.split('=').next().unwrap().trim();
    let mut out = String::new();
    let mut current = String::new();
    for l in text.lines() {
        if let Some(s) = l.strip_prefix('[') {
            current = s.trim_end_matches(']').to_string();
        }
        if current == section && l.split('=').next().unwrap().trim() == key {
            continue;
        }
        out.push_str(l);
        out.push('\n');
        if l == format!("[{section}]") {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.contains(&format!("[{section}]")) {
        out.push_str(&format!("[{section}]\n{line}\n"));
    }
    let p = t.path().join("hostile.toml");
    std::fs::write(&p, out).unwrap();
    let input = t.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.png"), png(16, 16, 1)).unwrap();
    let o = aestream()
        .args(["run", "--once", "--threads", "1"])
        .arg(&p)
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(t.path().join("out"))
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Each of these aborted, panicked or quarantined everything; now each is refused at load.
#[test]
fn out_of_range_settings_exit_2_naming_file_and_key() {
    for (section, line, key) in [
        ("channels", "capacity = 1000000000000", "channels.capacity"),
        ("infer", "workers = 100000", "infer.workers"),
        ("decode", "max_pixels = 0", "decode.max_pixels"),
    ] {
        let (code, log) = run_with(section, line);
        assert_eq!(code, Some(2), "{line}: {log}");
        assert!(
            log.contains("hostile.toml") && log.contains(&format!("`{key}`")),
            "{line}: {log}"
        );
    }
}

/// Numeric flags are bounded too: `--threads 100000` hung starting its pool.
#[test]
fn out_of_range_flags_exit_2_naming_the_flag() {
    let t = tempfile::tempdir().unwrap();
    for args in [
        &["--threads", "100000"][..],
        &["--quiet-ms", "99999999999"],
        &["--poll", "0"],
        &["--rescan", "1e12"],
        &["--ensemble", "3"],
    ] {
        let o = aestream()
            .args(["run", "denoise-fast", "--once", "-i"])
            .arg(t.path())
            .arg("-o")
            .arg(t.path().join("out"))
            .args(args)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {log}");
        assert!(log.contains(args[0]), "{args:?}: {log}");
    }
}

/// A file named with a newline is logged (quarantined, here) on one line: the human log has
/// no line the name started.
#[test]
fn a_newline_in_a_file_name_cannot_forge_a_log_line() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("x\nFORGED  INFO all good.png"), b"not an image").unwrap();
    let o = aestream()
        .args(["--log-format", "human", "run", "denoise-fast", "--once"])
        .args(["--threads", "1", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(t.path().join("out"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("x\\nFORGED"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
}

/// A damaged journal is refused naming the damaged line as the file numbers it (the header is
/// line 1); it was named one line too early.
#[test]
fn a_damaged_journal_line_is_named_by_its_number() {
    let t = tempfile::tempdir().unwrap();
    let (input, out) = (t.path().join("in"), t.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.png"), png(16, 16, 1)).unwrap();
    let run = || {
        aestream()
            .args(["run", "denoise-fast", "--once", "--threads", "1", "-i"])
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    let journal = out.join(".aestream/denoise-fast.journal.jsonl");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    // The header, the input's in-progress mark and its record.
    let lines = text.lines().count();
    assert_eq!(lines, 3, "{text}");
    text.push_str("damaged\n");
    std::fs::write(&journal, text).unwrap();
    let o = run();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(log.contains("line 4 is not a journal record"), "{log}");
}
