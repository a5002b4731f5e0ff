//! Atomic file writes: a reader (a user, the next pipeline stage, a restart after `kill -9`)
//! sees either the old file or the whole new one, never a torn one.
//!
//! The bytes go to a dot-prefixed temporary file in the target's folder (same filesystem, so
//! the rename is atomic), are fsync'd, renamed into place, and the folder is fsync'd so the
//! rename itself survives a power cut before anyone (the journal) relies on it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O error with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PathError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    pub fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            path: path.into(),
            source,
        }
    }
}

/// The prefix of our temporary files: `.aestream-PID-N.tmp`.
const TEMP_PREFIX: &str = ".aestream-";

/// Writes `bytes` to `path` atomically: temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PathError> {
    // A bare file name has an empty parent: that is the current folder.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| PathError::new(dir, e))?;
    // Short (a long input name must not make it too long), unique, dot-prefixed and
    // .tmp-suffixed, so our own folder source (and most others) ignore it.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{TEMP_PREFIX}{}-{n}.tmp", std::process::id()));
    let res = (|| {
        let io = |e| PathError::new(&tmp, e);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| PathError::new(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    res
}

/// Removes our own temporary files left in `dir`'s tree by a process that was killed
/// mid-write; returns how many. Only those of processes no longer running: another daemon
/// writing into the same folder keeps its own.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let walked = super::walk::walk(dir, |_| true);
    let mut removed = 0;
    for e in walked.files {
        let name = e.name.to_string_lossy();
        let Some(pid) = name
            .strip_prefix(TEMP_PREFIX)
            .and_then(|r| r.strip_suffix(".tmp"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(&e.path).is_ok() {
            removed += 1;
        }
    }
    removed
}
