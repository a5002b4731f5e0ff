//! Reading one input file safely: the folder source and the Redis `path` reader take every
//! file through here, because a name handed to us from outside can point at anything.
//!
//! Checking a path and then opening it (`metadata`, then `read`) is a race: the file can be
//! swapped for a FIFO in between, and opening a FIFO for reading blocks until a writer comes —
//! forever. And a check can be lied to: a `/proc` file says it holds 0 bytes and then reads
//! without end (`/proc/self/pagemap`: 8 bytes per page of the address space, hundreds of GB), so
//! reading it "whole" grows memory by gigabytes a second until the kernel kills us. So:
//!
//! 1. open first, with `O_NONBLOCK` (opening a FIFO or a device does not wait) and `O_NOCTTY`;
//! 2. `fstat` the open handle — what we hold, not what the name meant a moment ago — and take
//!    regular files only;
//! 3. read at most the size it reports (never more than the cap), then probe a little past
//!    it: a file that reads more (or less) than it says while its size and mtime stay the same
//!    is not a file on disk and is refused; one whose size or mtime moved was still being
//!    written ([`ReadError::Changed`]: try again once it is quiet).
//!
//! Memory is bounded by the cap plus the probe whatever the file says. Symbolic links are the
//! caller's choice ([`Links`]): a watched folder may legitimately hold links to the files it
//! serves, while a path that was already resolved must not meet a link anywhere.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Component, Path};

/// How far past its reported size a file is probed: enough to see a lying `/proc` file (whose
/// reads must be whole 8-byte records for `pagemap`), small enough not to matter.
const PROBE: usize = 8192;

/// Whether symbolic links may be followed on the way to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow them, like any open: the file is judged by what the link points to.
    Follow,
    /// Refuse a link at any component of the path (the path must be absolute and hold no
    /// `..`): for a path already resolved and checked, so that nothing swapped in since can
    /// lead the open elsewhere.
    Never,
}

/// Why a file was not read. Only [`ReadError::Open`] and [`ReadError::Changed`] may go away
/// by themselves; the others are what the file is.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read: {0}")]
    Open(#[source] std::io::Error),
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    #[error("file of {size} bytes is over the limit of {cap}")]
    TooLarge { size: u64, cap: u64 },
    #[error(
        "not a plain file: it reports {reported} bytes but reads {} (a /proc or /sys file?)",
        if *more { "more" } else { "fewer" }
    )]
    SizeMismatch { reported: u64, more: bool },
    #[error("changed while being read")]
    Changed,
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
}

/// An open regular file, checked on its handle.
#[derive(Debug)]
pub struct RegularFile {
    file: File,
    meta: Metadata,
}

/// Size and mtime: what says a file changed under an open handle.
fn shape(m: &Metadata) -> (u64, i64, i64) {
    (m.len(), m.mtime(), m.mtime_nsec())
}

/// What a non-regular file is, for the error.
fn kind_of(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

const FLAGS: libc::c_int = libc::O_NONBLOCK | libc::O_NOCTTY;

/// `openat(dir, name, flags)` with close-on-exec.
fn open_at(dir: &File, name: &std::ffi::OsStr, flags: libc::c_int) -> std::io::Result<File> {
    let name = CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string, both alive for
    // the call; a non-negative result is a new descriptor that only the File below owns.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens an absolute `..`-free path one component at a time, each relative to the folder
/// opened before it with `O_NOFOLLOW`: a link anywhere (even one swapped in during the walk)
/// fails the open (`ELOOP` or `ENOTDIR`) instead of being followed.
fn open_without_links(path: &Path) -> std::io::Result<File> {
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let mut parts = path.components();
    if parts.next() != Some(Component::RootDir) {
        return Err(invalid());
    }
    let names: Vec<&std::ffi::OsStr> = parts
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(invalid()),
        })
        .collect::<std::io::Result<_>>()?;
    let Some((last, dirs)) = names.split_last() else {
        return Err(invalid());
    };
    let mut dir = File::open("/")?;
    for name in dirs {
        // O_PATH: we only walk through it (no read permission needed, as for any path lookup).
        dir = open_at(
            &dir,
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )?;
    }
    open_at(&dir, last, libc::O_RDONLY | libc::O_NOFOLLOW | FLAGS)
}

impl RegularFile {
    /// Opens `path` without waiting (`O_NONBLOCK`) and keeps it only if the open handle is a
    /// regular file.
    pub fn open(path: &Path, links: Links) -> Result<Self, ReadError> {
        let file = match links {
            Links::Follow => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(FLAGS)
                .open(path),
            Links::Never => open_without_links(path),
        }
        .map_err(ReadError::Open)?;
        let meta = file.metadata().map_err(ReadError::Read)?;
        if !meta.file_type().is_file() {
            return Err(ReadError::NotRegular(kind_of(&meta)));
        }
        // Reads of a regular file never wait anyway; clear the flag so that no filesystem
        // answers EAGAIN.
        // SAFETY: fcntl on a descriptor we own; F_SETFL with plain flags has no other effect.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) };
        Ok(Self { file, meta })
    }

    /// What the open handle said when it was opened.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Reads the file whole, if it is at most `cap` bytes and reads exactly as many bytes as
    /// it reports without changing meanwhile.
    pub fn read(self, cap: u64) -> Result<Vec<u8>, ReadError> {
        let size = self.meta.len();
        if size > cap {
            return Err(ReadError::TooLarge { size, cap });
        }
        // `size <= cap`: a bounded allocation, however large the file later claims to be.
        let mut bytes = Vec::with_capacity(size as usize);
        let mut file = &self.file;
        file.take(size)
            .read_to_end(&mut bytes)
            .map_err(ReadError::Read)?;
        let mut probe = vec![0u8; PROBE];
        let extra = loop {
            match file.read(&mut probe) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Read(e)),
            }
        };
        let after = self.file.metadata().map_err(ReadError::Read)?;
        if shape(&after) != shape(&self.meta) {
            return Err(ReadError::Changed);
        }
        if extra > 0 || (bytes.len() as u64) < size {
            return Err(ReadError::SizeMismatch {
                reported: size,
                more: extra > 0,
            });
        }
        Ok(bytes)
    }
}

/// Opens `path` (see [`RegularFile::open`]) and reads it through `cap` (see
/// [`RegularFile::read`]).
pub fn read_regular_file(path: &Path, cap: u64, links: Links) -> Result<Vec<u8>, ReadError> {
    RegularFile::open(path, links)?.read(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs `f` on a thread and fails the test if it has not answered within a minute: a
    /// blocking open must fail the test, not hang it.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the read blocked")
    }

    #[test]
    fn reads_a_regular_file_and_refuses_one_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(
            read_regular_file(&p, 10, Links::Follow).unwrap(),
            b"0123456789"
        );
        assert_eq!(
            read_regular_file(&p, 10, Links::Never).unwrap(),
            b"0123456789"
        );
        let e = read_regular_file(&p, 9, Links::Follow).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { size: 10, cap: 9 }), "{e}");
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        assert!(read_regular_file(&empty, 10, Links::Follow)
            .unwrap()
            .is_empty());
        let gone = read_regular_file(&dir.path().join("nope"), 10, Links::Follow).unwrap_err();
        assert!(matches!(gone, ReadError::Open(ref e) if e.kind() == std::io::ErrorKind::NotFound));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipe.png");
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        for links in [Links::Follow, Links::Never] {
            let p = p.clone();
            let e = within(move || read_regular_file(&p, 1 << 20, links)).unwrap_err();
            assert!(matches!(e, ReadError::NotRegular("a FIFO")), "{e}");
        }
    }

    #[test]
    fn a_proc_file_that_lies_about_its_size_is_refused_with_bounded_memory() {
        // Reports 0 bytes; reading it whole would mean hundreds of GB.
        let e =
            within(|| read_regular_file(Path::new("/proc/self/pagemap"), 1 << 30, Links::Follow))
                .unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::SizeMismatch {
                    reported: 0,
                    more: true
                }
            ),
            "{e}"
        );
        let e = read_regular_file(Path::new("/dev/zero"), 1 << 30, Links::Follow).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular("a character device")),
            "{e}"
        );
    }

    #[test]
    fn links_are_followed_or_refused_at_any_component() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::write(root.join("real/a.png"), b"abc").unwrap();
        std::os::unix::fs::symlink(root.join("real/a.png"), root.join("link.png")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("dirlink")).unwrap();
        for p in ["link.png", "dirlink/a.png"] {
            let p = root.join(p);
            assert_eq!(read_regular_file(&p, 10, Links::Follow).unwrap(), b"abc");
            let e = read_regular_file(&p, 10, Links::Never).unwrap_err();
            let code = match &e {
                ReadError::Open(e) => e.raw_os_error(),
                _ => None,
            };
            assert!(
                code == Some(libc::ELOOP) || code == Some(libc::ENOTDIR),
                "{}: {e}",
                p.display()
            );
        }
        // Not absolute, or with `..`: refused before any open.
        for p in ["real/a.png", "/tmp/../etc/passwd"] {
            let e = read_regular_file(Path::new(p), 10, Links::Never).unwrap_err();
            assert!(
                matches!(&e, ReadError::Open(e) if e.kind() == std::io::ErrorKind::InvalidInput),
                "{p}: {e}"
            );
        }
    }
}
