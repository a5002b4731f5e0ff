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

/// The prefix of our temporary files: `.aestream-HOST-PID-N.tmp`, HOST being 8 hex digits of a
/// hash of the host name. Daemons on several hosts (or in containers, each PID 1) may write
/// into one shared output folder: the host keeps their names apart, and a start removes only
/// its own host's leftovers.
const TEMP_PREFIX: &str = ".aestream-";

/// This host's part of temporary names.
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let h = xxhash_rust::xxh3::xxh3_64(super::host::host_name().as_bytes());
        format!("{:08x}", h as u32)
    })
}

/// Creates a new temporary file in `dir`. Never one that exists (`create_new`): should a name
/// be taken after all (a leftover of a killed process with our PID, a host of the same name),
/// the next number is tried, so no one else's file is ever truncated.
fn create_temp(dir: &Path) -> Result<(PathBuf, std::fs::File), PathError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tries = 0;
    loop {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Short (a long input name must not make it too long), dot-prefixed and .tmp-suffixed,
        // so our own folder source (and most others) ignore it.
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{n}.tmp",
            host_tag(),
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 10_000 => tries += 1,
            Err(e) => return Err(PathError::new(tmp, e)),
        }
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PathError> {
    // A bare file name has an empty parent: that is the current folder.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| PathError::new(dir, e))?;
    let (tmp, f) = create_temp(dir)?;
    let res = (|| {
        let io = |e| PathError::new(&tmp, e);
        let mut f = f;
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
        let Some(parts) = name
            .strip_prefix(TEMP_PREFIX)
            .and_then(|r| r.strip_suffix(".tmp"))
            .map(|r| r.split('-').collect::<Vec<_>>())
        else {
            continue;
        };
        // `HOST-PID-N`, or `PID-N` as named before hosts were: another host's are not ours to
        // judge (its PIDs mean nothing here).
        let pid = match parts[..] {
            [host, pid, _] if host == host_tag() => pid,
            [pid, _] => pid,
            _ => continue,
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(&e.path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_never_truncates_a_file_that_has_its_temporary_name() {
        let t = tempfile::tempdir().unwrap();
        // Files at the next temporary names (as another host's daemon with our PID and host
        // name might have made): each must keep its bytes.
        let next = {
            let (tmp, _) = create_temp(t.path()).unwrap();
            std::fs::remove_file(&tmp).unwrap();
            let s = tmp.file_name().unwrap().to_string_lossy().into_owned();
            let n: u64 = s
                .rsplit('-')
                .next()
                .unwrap()
                .trim_end_matches(".tmp")
                .parse()
                .unwrap();
            (s, n)
        };
        let stem = next.0.rsplit_once('-').unwrap().0.to_string();
        let theirs: Vec<PathBuf> = (next.1 + 1..next.1 + 200)
            .map(|n| t.path().join(format!("{stem}-{n}.tmp")))
            .collect();
        for p in &theirs {
            std::fs::write(p, b"theirs").unwrap();
        }
        write_atomic(&t.path().join("out.png"), b"ours").unwrap();
        assert_eq!(std::fs::read(t.path().join("out.png")).unwrap(), b"ours");
        for p in &theirs {
            assert_eq!(std::fs::read(p).unwrap(), b"theirs", "{}", p.display());
        }
    }

    #[test]
    fn a_start_removes_only_its_own_hosts_dead_leftovers() {
        let t = tempfile::tempdir().unwrap();
        // PID 4194304 is above Linux's largest (pid_max ≤ 2^22): never a live process.
        let dead = 4_194_304u32;
        let ours = format!("{TEMP_PREFIX}{}-{dead}-0.tmp", host_tag());
        let legacy = format!("{TEMP_PREFIX}{dead}-1.tmp");
        let other_host = format!("{TEMP_PREFIX}0000beef-{dead}-2.tmp");
        let other_host = if other_host.contains(host_tag()) {
            format!("{TEMP_PREFIX}0000dead-{dead}-2.tmp")
        } else {
            other_host
        };
        let live = format!("{TEMP_PREFIX}{}-1-3.tmp", host_tag());
        for n in [&ours, &legacy, &other_host, &live] {
            std::fs::write(t.path().join(n), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(t.path()), 2);
        assert!(!t.path().join(&ours).exists() && !t.path().join(&legacy).exists());
        assert!(t.path().join(&other_host).exists(), "another host's");
        assert!(t.path().join(&live).exists(), "PID 1 is alive");
    }
}
