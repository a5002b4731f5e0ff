//! Files in a watched folder that cannot be read safely, against the real binary: a link to a
//! `/proc` file that reports 0 bytes and reads without end, a link to a character device and
//! a FIFO. Each is quarantined with its reason (the link or the FIFO itself moves, never what
//! it points to), the good files are done, the run ends without hanging or growing without
//! bound, and a second run does no work again.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::process::Command;

#[test]
fn files_that_cannot_be_read_safely_are_quarantined_with_their_reason() {
    let t = tempfile::tempdir().unwrap();
    let (inp, out) = (t.path().join("in"), t.path().join("out"));
    std::fs::create_dir_all(&inp).unwrap();
    for i in 0..2 {
        std::fs::write(inp.join(format!("good-{i}.png")), common::png(40, 30, i)).unwrap();
    }
    std::os::unix::fs::symlink("/proc/self/pagemap", inp.join("proc.png")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", inp.join("zero.png")).unwrap();
    let fifo = Command::new("mkfifo")
        .arg(inp.join("pipe.png"))
        .status()
        .unwrap();
    assert!(fifo.success());

    let log = common::run_once("denoise-fast", &inp, &out, &t.path().join("1.log"));
    for i in 0..2 {
        let name = format!("good-{i}.png");
        assert_eq!(common::read(&out.join(&name)).width, 40, "{log}");
        assert!(inp.join(&name).is_file(), "an input stays without --done");
    }
    let q = out.join(".failed");
    for (name, why) in [
        ("proc.png", "reports 0 bytes but reads more"),
        ("zero.png", "not a regular file (a character device)"),
        ("pipe.png", "not a regular file (a FIFO)"),
    ] {
        assert!(
            inp.join(name).symlink_metadata().is_err(),
            "{name} left in the input\n{log}"
        );
        assert!(!out.join(name).exists(), "{name} gave an output");
        let moved = q.join(name).symlink_metadata().expect("in quarantine");
        let kind = moved.file_type();
        if name == "pipe.png" {
            assert!(kind.is_fifo(), "{name}: {kind:?}");
        } else {
            // The link itself moved, not what it points to.
            assert!(kind.is_symlink(), "{name}: {kind:?}");
        }
        let note = std::fs::read_to_string(q.join(format!("{name}.error.txt"))).unwrap();
        assert!(note.contains(why), "{name}: {note}");
    }

    // Nothing is done twice, nothing is tried again.
    let log = common::run_once("denoise-fast", &inp, &out, &t.path().join("2.log"));
    assert!(log.contains("done: 0 frames in"), "{log}");
    let peak = common::peak_rss_of_children();
    assert!(peak < 2 << 30, "peak RSS {} MiB", peak >> 20);
}
