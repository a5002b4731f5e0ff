//! Quarantine: an input file that cannot be decoded (truncated, not an image, corrupt, over the
//! decode limits) is moved out of the input folder into the quarantine folder, keeping its
//! relative path, with a sidecar `NAME.error.txt` saying what was wrong and when. Nothing is
//! deleted: a name already taken there gets a numbered suffix, and a move across filesystems
//! copies, syncs, then removes the original.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Quarantine {
    dir: PathBuf,
}

impl Quarantine {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves `abs` (whose path relative to the input folder is `rel`) into quarantine and
    /// writes its error sidecar; returns where it went.
    pub fn put(&self, abs: &Path, rel: &Path, error: &str) -> Result<PathBuf> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::Io { path, source: e }
        };
        let mut target = self.dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "input".into());
        let mut n = 1;
        while target.exists() {
            target.set_file_name(format!("{name}.{n}"));
            n += 1;
        }
        if std::fs::rename(abs, &target).is_err() {
            // Another filesystem: copy, make it durable, and only then remove the original.
            // Only a regular file (not a link) is copied: opening a FIFO waits for a writer
            // forever, and a link would copy what it points to (a /proc file reads without end).
            if !std::fs::symlink_metadata(abs).is_ok_and(|m| m.is_file()) {
                let e = std::io::Error::other("not a regular file: cannot copy it elsewhere");
                return Err(io(abs)(e));
            }
            std::fs::copy(abs, &target).map_err(io(&target))?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io(&target))?;
            std::fs::remove_file(abs).map_err(io(abs))?;
        }
        let mut side = target.as_os_str().to_owned();
        side.push(".error.txt");
        let side = PathBuf::from(side);
        let text = format!(
            "file: {}\ntime: {}\nerror: {error}\n",
            abs.display(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        let mut f = std::fs::File::create(&side).map_err(io(&side))?;
        f.write_all(text.as_bytes()).map_err(io(&side))?;
        f.sync_all().map_err(io(&side))?;
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
}
