//! The folder sink: each output at the input's relative path with the output kind's extension,
//! written to a temporary file in the same folder and renamed into place, so no reader ever
//! sees a partial file.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Output, Payload, Sink};
use crate::config::OutputKind;
use crate::error::{Error, Result};
use crate::frame::FrameId;

pub struct FolderSink {
    dir: PathBuf,
    written: u64,
    /// With several output kinds each goes to its own sub-folder, `OUT/KIND/NAME.EXT`.
    per_kind: bool,
}

impl FolderSink {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        remove_stale_temps(dir);
        Ok(Self {
            dir: dir.to_path_buf(),
            written: 0,
            per_kind: false,
        })
    }

    /// Puts each output kind in its own sub-folder (used when a run emits several kinds).
    pub fn per_kind(mut self, yes: bool) -> Self {
        self.per_kind = yes;
        self
    }

    /// Where a frame's output of a kind goes.
    pub fn target(&self, id: &FrameId, kind: OutputKind) -> PathBuf {
        let dir = if self.per_kind {
            self.dir.join(kind.name())
        } else {
            self.dir.clone()
        };
        let ext = kind.extension();
        match id {
            FrameId::File { rel, .. } => dir.join(rel).with_extension(ext),
            FrameId::Stream { seq, .. } => dir.join(format!("frame-{seq:08}.{ext}")),
            // Named by the frame, not the delivery: a re-delivered entry replaces its own
            // output (atomically), so a folder never holds two outputs for one frame.
            FrameId::Entry(e) => dir.join(&e.name).with_extension(ext),
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // A bare file name has an empty parent: that is the current folder.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    // Short (a long input name must not make it too long), unique, dot-prefixed and
    // .tmp-suffixed, so our own folder source (and most others) ignore it.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".aestream-{}-{n}.tmp", std::process::id()));
    let io = |e| Error::Io {
        path: tmp.clone(),
        source: e,
    };
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else if let Ok(d) = std::fs::File::open(dir) {
        // The rename itself must survive a power cut before anyone (the journal) relies on it.
        let _ = d.sync_all();
    }
    res
}

/// Removes our own temporary files (`.aestream-PID-N.tmp`) left in `dir`'s tree by a process
/// that was killed mid-write. Only those of processes no longer running: another daemon
/// writing into the same folder keeps its own.
fn remove_stale_temps(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut removed = 0;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
                continue;
            }
            let Some(pid) = name
                .strip_prefix(".aestream-")
                .and_then(|r| r.strip_suffix(".tmp"))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
            if !alive && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            "{}: removed {removed} temporary files of an interrupted run",
            dir.display()
        );
    }
}

/// Whether a write error means no later write can succeed either.
fn is_fatal(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        StorageFull | ReadOnlyFilesystem | QuotaExceeded | BrokenPipe
    )
}

impl Sink for FolderSink {
    fn write(&mut self, out: Output) -> Result<()> {
        for (kind, payload) in &out.files {
            let path = self.target(&out.id, *kind);
            let npy;
            let bytes = match payload {
                Payload::Bytes(b) => b,
                Payload::Code(c) => {
                    npy = c.to_npy()?;
                    &npy
                }
            };
            match write_atomic(&path, bytes) {
                Ok(()) => tracing::debug!("{} -> {}", out.id, path.display()),
                Err(Error::Io { path: p, source }) if !is_fatal(&source) => {
                    return Err(Error::FrameFailed(format!(
                        "{}: cannot write {}: {source}",
                        out.id,
                        p.display()
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        self.written += 1;
        Ok(())
    }

    fn skip(&mut self, _seq: u64) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
