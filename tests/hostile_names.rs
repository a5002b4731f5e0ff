//! Hostile names against the real binary (issue 14, items 3 and 4): inputs that share a stem
//! get outputs of their own, each journaled; quarantine never overwrites a file; files that are
//! not images are left exactly where they are. Every file here is made by the test itself.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{bin, png, read_bytes};

/// Every file under `dir` (relative path → bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn encode(img: image::DynamicImage, fmt: image::ImageFormat) -> Vec<u8> {
    let mut c = std::io::Cursor::new(Vec::new());
    img.write_to(&mut c, fmt).unwrap();
    c.into_inner()
}

fn grey(w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([(x * 5 + y * 3) as u8])
    }))
}

/// `aestream run PIPELINE --once` from `inp` to `out`, state and quarantine in `t`.
fn run_once(pipeline: &str, inp: &Path, out: &Path, t: &Path) -> std::process::Output {
    bin()
        .args(["run", pipeline, "--once", "--input"])
        .arg(inp)
        .arg("--output")
        .arg(out)
        .arg("--state")
        .arg(t.join("state"))
        .arg("--quarantine")
        .arg(t.join("q"))
        .output()
        .unwrap()
}

fn ok(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{:?}\n{err}", o.status);
    err
}

/// The shipped `denoise-fast` pipeline plus `extra` lines (its weights are found by name).
fn pipeline_with(dir: &Path, extra: &str) -> String {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/denoise-fast.toml"),
    )
    .unwrap();
    let p = dir.join("denoise-custom.toml");
    std::fs::write(&p, format!("{base}\n{extra}\n")).unwrap();
    p.to_str().unwrap().to_string()
}

/// `photo.png`, `photo.jpg`, `photo.tiff` (and `PHOTO.PNG`) in one folder used to give one
/// `photo.png`, every input journaled as done. Now each has its own output, of its own size,
/// a restart names them the same and does nothing twice.
#[test]
fn same_stem_inputs_get_outputs_of_their_own_each_journaled() {
    let t = tempfile::tempdir().unwrap();
    let (inp, out) = (t.path().join("in"), t.path().join("out"));
    std::fs::create_dir_all(&inp).unwrap();
    let inputs = [
        ("photo.png", png(24, 16, 1), "photo.png", 24),
        (
            "photo.jpg",
            encode(grey(32, 16), image::ImageFormat::Jpeg),
            "photo.jpg.png",
            32,
        ),
        (
            "photo.tiff",
            encode(grey(40, 16), image::ImageFormat::Tiff),
            "photo.tiff.png",
            40,
        ),
        ("PHOTO.PNG", png(48, 16, 2), "PHOTO.PNG.png", 48),
    ];
    for (name, bytes, _, _) in &inputs {
        std::fs::write(inp.join(name), bytes).unwrap();
    }
    ok(&run_once("denoise-fast", &inp, &out, t.path()));
    let made = files(&out);
    let names: Vec<_> = made.keys().map(|p| p.display().to_string()).collect();
    let want: Vec<_> = {
        let mut v: Vec<_> = inputs.iter().map(|i| i.2.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(names, want);
    for (name, _, output, width) in &inputs {
        assert_eq!(
            read_bytes(&made[Path::new(output)]).width,
            *width,
            "{name} -> {output}"
        );
    }
    let journal =
        std::fs::read_to_string(t.path().join("state/denoise-fast.journal.jsonl")).unwrap();
    for (name, ..) in &inputs {
        assert!(
            journal.contains(&format!("\"path\":\"{name}\"")),
            "{name} not journaled:\n{journal}"
        );
    }
    // A restart: nothing to do, and the outputs are the same files with the same bytes.
    let err = ok(&run_once("denoise-fast", &inp, &out, t.path()));
    assert!(err.contains("4 inputs are already finished"), "{err}");
    assert_eq!(files(&out), made);
}

/// The note of a quarantined `bad.png` is `bad.png.error.txt`; a file of that name already in
/// quarantine (an earlier input, a note of the user's) used to be overwritten by it.
#[test]
fn a_quarantine_note_never_overwrites_a_file() {
    let t = tempfile::tempdir().unwrap();
    let (inp, out, q) = (
        t.path().join("in"),
        t.path().join("out"),
        t.path().join("q"),
    );
    std::fs::create_dir_all(&inp).unwrap();
    std::fs::create_dir_all(&q).unwrap();
    std::fs::write(q.join("bad.png.error.txt"), b"set aside earlier").unwrap();
    std::fs::write(inp.join("bad.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    ok(&run_once("denoise-fast", &inp, &out, t.path()));
    let got = files(&q);
    assert_eq!(
        got.get(Path::new("bad.png.error.txt")).map(Vec::as_slice),
        Some(b"set aside earlier".as_slice()),
        "{:?}",
        got.keys()
    );
    assert_eq!(
        got.get(Path::new("bad.png")).map(Vec::as_slice),
        Some(b"\x89PNG\r\n\x1a\nnot really".as_slice())
    );
    let note = String::from_utf8_lossy(&got[Path::new("bad.png.error.1.txt")]).into_owned();
    assert!(
        note.contains("error:") && note.contains("bad.png"),
        "{note}"
    );
}

/// With every file an input (`include = ["*"]`), an input named `bad.png.error.txt` and an
/// input `bad.png` are both quarantined, in whatever order the workers finish: both inputs and
/// both notes are there afterwards, none overwritten.
#[test]
fn an_input_named_like_a_note_survives_quarantine() {
    let t = tempfile::tempdir().unwrap();
    let (inp, out, q) = (
        t.path().join("in"),
        t.path().join("out"),
        t.path().join("q"),
    );
    std::fs::create_dir_all(&inp).unwrap();
    std::fs::write(inp.join("bad.png.error.txt"), b"I am an input").unwrap();
    std::fs::write(inp.join("bad.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let p = pipeline_with(t.path(), "[source]\ninclude = [\"*\"]");
    ok(&run_once(&p, &inp, &out, t.path()));
    let got = files(&q);
    assert_eq!(got.len(), 4, "{:?}", got.keys());
    let holding = |bytes: &[u8]| got.values().filter(|v| v.as_slice() == bytes).count();
    assert_eq!(holding(b"I am an input"), 1, "{:?}", got.keys());
    assert_eq!(holding(b"\x89PNG\r\n\x1a\nbroken"), 1, "{:?}", got.keys());
    let notes = got
        .values()
        .filter(|v| v.starts_with(b"file: ") && String::from_utf8_lossy(v).contains("error:"))
        .count();
    assert_eq!(notes, 2, "{:?}", got.keys());
    assert!(files(&inp).is_empty());
}

/// `labels.csv`, `notes.txt` and an extension-less file beside the images used to be
/// "quarantined" out of the user's folder. Now they are not inputs: left where they are,
/// untouched, and logged once; the image beside them is processed.
#[test]
fn files_that_are_not_images_stay_where_they_are() {
    let t = tempfile::tempdir().unwrap();
    let (inp, out) = (t.path().join("in"), t.path().join("out"));
    std::fs::create_dir_all(&inp).unwrap();
    let strangers: [(&str, Vec<u8>); 3] = [
        ("labels.csv", b"file,label\nphoto.png,cat\n".to_vec()),
        ("notes.txt", b"shot on tuesday\n".to_vec()),
        // Image bytes, but not an image *name*: the name decides.
        ("no-extension", png(8, 8, 3)),
    ];
    for (name, bytes) in &strangers {
        std::fs::write(inp.join(name), bytes).unwrap();
    }
    std::fs::write(inp.join("photo.png"), png(16, 16, 4)).unwrap();
    let err = ok(&run_once("denoise-fast", &inp, &out, t.path()));
    let left = files(&inp);
    for (name, bytes) in &strangers {
        assert_eq!(
            left.get(Path::new(name)),
            Some(bytes),
            "{name} moved or changed"
        );
        assert_eq!(
            err.matches(&format!("{name}: not an input")).count(),
            1,
            "{name}: {err}"
        );
    }
    assert_eq!(
        files(&out).keys().collect::<Vec<_>>(),
        [Path::new("photo.png")]
    );
    assert!(files(&t.path().join("q")).is_empty());
}

/// A bad glob in `[source] include` is refused at load (exit 2), naming the key.
#[test]
fn a_bad_include_glob_exits_2_and_names_the_key() {
    let t = tempfile::tempdir().unwrap();
    let inp = t.path().join("in");
    std::fs::create_dir_all(&inp).unwrap();
    let p = pipeline_with(t.path(), "[source]\ninclude = [\"[unclosed\"]");
    let o = run_once(&p, &inp, &t.path().join("out"), t.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("source.include"), "{err}");
}
