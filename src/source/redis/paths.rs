//! Which files a Redis `path` entry may name: only files under the folders the operator allowed
//! (`--allow-path DIR`, `[source] allow_paths`). Anyone who can add to the stream would
//! otherwise have the worker read any file it can (`/etc/shadow` when run as root) and get a
//! denoised copy back in the results.
//!
//! - No allowed folder: every `path` entry is refused (dead-lettered); inline `data` still works.
//! - The path is made absolute (relative to the working folder) and its `..` are taken by name
//!   (`a/b/../c` is `a/c`), before the filesystem is asked anything: otherwise
//!   `/etc/secret/../../in/x.png` would be served exactly when `/etc/secret` exists, telling the
//!   producer so.
//! - Then symbolic links are resolved (`canonicalize`) and the real path must lie under a root
//!   (roots are resolved too, once, at start). A link inside a root that points outside is
//!   refused like any outside path.
//! - A path under a root that does not exist (yet: shared storage may lag) is retried as
//!   before. For that, the deepest part of the path that exists is resolved: if it lies outside
//!   every root, the entry is refused with the same words whether the rest exists or not, so a
//!   dead-letter reason never tells whether an outside path exists.
//! - The resolved path is then opened with no symbolic link followed at any component
//!   ([`Links::Never`]): a folder swapped for a link between the check and the open fails the
//!   open instead of leading it outside. Reasons never show the resolved path (it would reveal
//!   where a link points).

use std::path::{Component, Path, PathBuf};

use crate::runtime::{Links, PathError, ReadError, RegularFile};

/// The resolved folders `path` entries may read from.
#[derive(Debug, Clone, Default)]
pub struct AllowedRoots {
    roots: Vec<PathBuf>,
}

/// Why a `path` entry's file was not read.
#[derive(Debug, thiserror::Error)]
pub enum PathRefused {
    #[error(
        "`path` entries are refused: no folder is allowed (--allow-path, [source] allow_paths)"
    )]
    NoRoots,
    #[error("the path is not under an allowed folder (--allow-path, [source] allow_paths)")]
    Outside,
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl PathRefused {
    /// Whether trying again later may succeed: the file is missing or unreadable for now (not
    /// there yet on shared storage), or was being written.
    pub fn may_pass_later(&self) -> bool {
        matches!(self, Self::Read(ReadError::Open(_) | ReadError::Changed))
    }
}

/// `p` made absolute with `.` and `..` taken by name; `None` for an empty path.
fn lexical(p: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(p).ok()?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::RootDir => out.push(Component::RootDir),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

impl AllowedRoots {
    /// Resolves each folder; one that does not exist is an error (a typo, or storage not
    /// mounted yet: order the unit after the mount).
    pub fn new(dirs: &[PathBuf]) -> Result<Self, PathError> {
        let roots = dirs
            .iter()
            .map(|d| match d.canonicalize() {
                Ok(r) if r.is_dir() => Ok(r),
                Ok(_) => Err(PathError::new(d, std::io::Error::other("not a folder"))),
                Err(e) => Err(PathError::new(d, e)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { roots })
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    fn inside(&self, real: &Path) -> bool {
        self.roots.iter().any(|r| real.starts_with(r))
    }

    /// The real path `p` names, if it lies under a root (see the module's notes).
    fn resolve(&self, p: &Path) -> Result<PathBuf, PathRefused> {
        if self.roots.is_empty() {
            return Err(PathRefused::NoRoots);
        }
        let p = lexical(p).ok_or(PathRefused::Outside)?;
        // `/` always resolves, so this returns from inside the loop.
        for (up, part) in p.ancestors().enumerate() {
            let Ok(real) = part.canonicalize() else {
                continue;
            };
            if !self.inside(&real) {
                return Err(PathRefused::Outside);
            }
            if up == 0 {
                return Ok(real);
            }
            let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
            return Err(ReadError::Open(missing).into());
        }
        Err(PathRefused::Outside)
    }

    /// Where the file `p` names lies, if under a root: its real path, and that path below the
    /// outermost root holding it (what its outputs are named by: `ROOT/cam1/0001.png` is
    /// `cam1/0001.png`, so two cameras' `0001.png` get two outputs).
    pub fn name_of(&self, p: &Path) -> Option<(PathBuf, PathBuf)> {
        let real = self.resolve(p).ok()?;
        self.named(real)
    }

    /// `real` with its path below the outermost root holding it.
    fn named(&self, real: PathBuf) -> Option<(PathBuf, PathBuf)> {
        let root = self
            .roots
            .iter()
            .filter(|r| real.starts_with(r))
            .min_by_key(|r| r.components().count())?;
        let rel = real.strip_prefix(root).ok()?.to_path_buf();
        Some((real, rel))
    }

    /// Reads the file `p` names if it lies under a root, is a regular file and is at most
    /// `cap` bytes.
    pub fn read(&self, p: &Path, cap: u64) -> Result<Vec<u8>, PathRefused> {
        self.read_named(p, cap).map(|(b, _)| b)
    }

    /// [`Self::read`], with the file's [`Self::name_of`] as found by that same read (a file
    /// that appears or changes between two lookups cannot get a name of another).
    pub fn read_named(
        &self,
        p: &Path,
        cap: u64,
    ) -> Result<(Vec<u8>, (PathBuf, PathBuf)), PathRefused> {
        let real = self.resolve(p)?;
        let named = self.named(real.clone()).ok_or(PathRefused::Outside)?;
        let file = RegularFile::open(&real, Links::Never).map_err(|e| match e {
            // A folder or the file became a link since it was resolved: refused as outside.
            ReadError::Open(io)
                if matches!(io.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) =>
            {
                PathRefused::Outside
            }
            e => e.into(),
        })?;
        Ok((file.read(cap)?, named))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root `in` with a file, a sub-folder, a link to inside and links to outside; a
    /// `secret` folder beside it.
    fn tree() -> (tempfile::TempDir, PathBuf, AllowedRoots) {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        let (inp, secret) = (base.join("in"), base.join("secret"));
        std::fs::create_dir_all(inp.join("sub")).unwrap();
        std::fs::create_dir_all(secret.join("hidden")).unwrap();
        std::fs::write(inp.join("a.png"), b"a").unwrap();
        std::fs::write(inp.join("sub/b.png"), b"b").unwrap();
        std::fs::write(secret.join("s.png"), b"s").unwrap();
        let link = |to: &Path, at: &str| std::os::unix::fs::symlink(to, inp.join(at)).unwrap();
        link(&inp.join("a.png"), "alias.png");
        link(&secret.join("s.png"), "leak.png");
        link(&secret, "door");
        link(Path::new("/proc/self/pagemap"), "proc.png");
        let roots = AllowedRoots::new(&[inp]).unwrap();
        (t, base, roots)
    }

    fn outcome(roots: &AllowedRoots, p: &Path) -> String {
        match roots.read(p, 1 << 20) {
            Ok(b) => format!("read {}", String::from_utf8_lossy(&b)),
            Err(e) => format!(
                "{}: {e}",
                if e.may_pass_later() {
                    "retry"
                } else {
                    "refused"
                }
            ),
        }
    }

    #[test]
    fn only_files_under_a_root_are_read() {
        let (_t, base, roots) = tree();
        let at = |p: &str| outcome(&roots, &base.join(p));
        assert_eq!(at("in/a.png"), "read a");
        assert_eq!(at("in/sub/b.png"), "read b");
        assert_eq!(at("in/alias.png"), "read a");
        assert_eq!(at("in/sub/../a.png"), "read a");
        // Not there yet: tried again later.
        assert!(
            at("in/later.png").starts_with("retry"),
            "{}",
            at("in/later.png")
        );
        assert!(at("in/new/later.png").starts_with("retry"));
        let outside = outcome(&roots, &base.join("secret/s.png"));
        assert!(outside.starts_with("refused") && outside.contains("not under an allowed"));
        for p in [
            "in/../secret/s.png",
            "in/leak.png",
            "in/door/s.png",
            "in/proc.png",
            "secret/missing.png",
            "secret/nowhere/missing.png",
            "in/door/missing.png",
            "in/../secret",
        ] {
            assert_eq!(at(p), outside, "{p}");
        }
        for p in [
            "/etc/passwd",
            "/etc/no-such-file",
            "/",
            "",
            "relative/x.png",
        ] {
            assert_eq!(outcome(&roots, Path::new(p)), outside, "{p}");
        }
    }

    #[test]
    fn files_are_named_below_the_outermost_root() {
        let (_t, base, _) = tree();
        let roots = AllowedRoots::new(&[base.join("in/sub"), base.join("in")]).unwrap();
        let rel = |p: &str| roots.name_of(&base.join(p)).map(|(_, r)| r);
        assert_eq!(rel("in/a.png"), Some("a.png".into()));
        assert_eq!(rel("in/sub/b.png"), Some("sub/b.png".into()));
        // Two spellings of one file are one name; outside or missing files have none.
        assert_eq!(rel("in/alias.png"), Some("a.png".into()));
        assert_eq!(rel("in/sub/../a.png"), Some("a.png".into()));
        assert_eq!(rel("in/leak.png"), None);
        assert_eq!(rel("in/later.png"), None);
    }

    #[test]
    fn going_up_through_an_outside_folder_tells_nothing_about_it() {
        let (_t, base, roots) = tree();
        // Whether secret/hidden exists must not change the outcome.
        let a = outcome(&roots, &base.join("secret/hidden/../../in/a.png"));
        let b = outcome(&roots, &base.join("secret/absent/../../in/a.png"));
        assert_eq!(a, "read a");
        assert_eq!(a, b);
    }

    #[test]
    fn without_roots_every_path_is_refused() {
        let (_t, base, _) = tree();
        let none = AllowedRoots::new(&[]).unwrap();
        let e = none.read(&base.join("in/a.png"), 10).unwrap_err();
        assert!(
            matches!(e, PathRefused::NoRoots) && !e.may_pass_later(),
            "{e}"
        );
        assert!(AllowedRoots::new(&[base.join("nope")]).is_err());
        assert!(AllowedRoots::new(&[base.join("in/a.png")]).is_err());
    }

    #[test]
    fn a_fifo_under_a_root_is_refused_at_once() {
        let (_t, base, roots) = tree();
        let p = base.join("in/pipe.png");
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let got = outcome(&roots, &p);
        assert!(got.starts_with("refused") && got.contains("FIFO"), "{got}");
    }
}
