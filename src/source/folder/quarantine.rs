//! Quarantine: an input file that cannot be decoded (truncated, not an image, corrupt, over the
//! decode limits) is moved out of the input folder into the quarantine folder, keeping its
//! relative path, with a note `NAME.error.txt` beside it saying what was wrong and when.
//!
//! Quarantine never overwrites and never deletes: the file and its note are each created under
//! a name that is free at that moment, atomically (a hard link, or a copy opened with
//! `create_new`), so not even a file that appears there meanwhile is replaced. A name already
//! taken gets a number: the file `NAME.1`, `NAME.2`, …, the note `NAME.error.1.txt`, … (an
//! input that was itself called `bad.png.error.txt` keeps that name, and the note of `bad.png`
//! goes beside it as `bad.png.error.1.txt`). A move across filesystems copies, syncs, then
//! removes the original.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Quarantine {
    dir: PathBuf,
}

/// `path` with `suffix` appended to its file name.
fn appended(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Moves `from` to `to` unless `to` exists (then `AlreadyExists`, and `from` is untouched).
/// `rename` would replace `to`; a hard link cannot. Where links are not possible (another
/// filesystem, or one without them) the bytes are copied into a file created with
/// `create_new`, made durable, and only then is the original removed.
fn move_new(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(e),
        Err(_) => {
            // Another filesystem: copy. Only a regular file (not a link) is copied: opening a
            // FIFO waits for a writer forever, and a link would copy what it points to (a /proc
            // file reads without end).
            if !std::fs::symlink_metadata(from).is_ok_and(|m| m.is_file()) {
                return Err(std::io::Error::other(
                    "not a regular file: cannot copy it to another filesystem",
                ));
            }
            let mut src = std::fs::File::open(from)?;
            let mut dst = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)?;
            std::io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
        }
    }
    std::fs::remove_file(from)
}

/// Makes a file (`make`) at the first free name of `name(0)`, `name(1)`, …; returns that name.
fn create_first_free(
    mut make: impl FnMut(&Path) -> std::io::Result<()>,
    name: impl Fn(u32) -> PathBuf,
) -> std::io::Result<PathBuf> {
    let mut n = 0;
    loop {
        let p = name(n);
        match make(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100_000 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Moves `from` to `first`, or if that is taken to `first.1`, `first.2`, … (the first free
/// name); never replaces a file. Returns where it went. (Also `--done`'s move.)
pub(super) fn move_to_free_name(from: &Path, first: &Path) -> std::io::Result<PathBuf> {
    create_first_free(
        |to| move_new(from, to),
        |n| match n {
            0 => first.to_path_buf(),
            n => appended(first, &format!(".{n}")),
        },
    )
}

impl Quarantine {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves `abs` (whose path relative to the input folder is `rel`) into quarantine and
    /// writes its note; returns where it went.
    pub fn put(&self, abs: &Path, rel: &Path, error: &str) -> Result<PathBuf> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::Io { path, source: e }
        };
        let first = self.dir.join(rel);
        if let Some(parent) = first.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let target = move_to_free_name(abs, &first).map_err(io(&first))?;
        let text = format!(
            "file: {}\ntime: {}\nerror: {error}\n",
            abs.display(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        let note = |to: &Path| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        create_first_free(note, |n| match n {
            0 => appended(&target, ".error.txt"),
            n => appended(&target, &format!(".error.{n}.txt")),
        })
        .map_err(io(&appended(&target, ".error.txt")))?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_keeps_both_of_two_same_names_and_writes_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let (inp, q) = (tmp.path().join("in"), tmp.path().join("q"));
        std::fs::create_dir_all(inp.join("sub")).unwrap();
        let qq = Quarantine::new(q.clone());
        for round in 0..2 {
            let f = inp.join("sub/bad.png");
            std::fs::write(&f, format!("junk {round}")).unwrap();
            let to = qq
                .put(&f, Path::new("sub/bad.png"), "not an image")
                .unwrap();
            assert!(!f.exists());
            assert_eq!(
                std::fs::read_to_string(&to).unwrap(),
                format!("junk {round}")
            );
        }
        assert!(q.join("sub/bad.png").is_file() && q.join("sub/bad.png.1").is_file());
        let why = std::fs::read_to_string(q.join("sub/bad.png.error.txt")).unwrap();
        assert!(
            why.contains("not an image") && why.contains("time: 20"),
            "{why}"
        );
    }

    #[test]
    fn never_overwrites_a_file_already_there_with_a_note() {
        let tmp = tempfile::tempdir().unwrap();
        let (inp, q) = (tmp.path().join("in"), tmp.path().join("q"));
        std::fs::create_dir_all(&inp).unwrap();
        std::fs::create_dir_all(&q).unwrap();
        // An earlier input that happened to be called like bad.png's note, and was set aside.
        std::fs::write(q.join("bad.png.error.txt"), "an input, not a note").unwrap();
        let f = inp.join("bad.png");
        std::fs::write(&f, "junk").unwrap();
        let qq = Quarantine::new(q.clone());
        let to = qq.put(&f, Path::new("bad.png"), "not an image").unwrap();
        assert_eq!(to, q.join("bad.png"));
        assert_eq!(
            std::fs::read_to_string(q.join("bad.png.error.txt")).unwrap(),
            "an input, not a note"
        );
        let why = std::fs::read_to_string(q.join("bad.png.error.1.txt")).unwrap();
        assert!(why.contains("not an image"), "{why}");
    }
}
