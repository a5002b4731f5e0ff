//! The one directory walker: the folder source's scans, the image lists of `train` and `eval`,
//! and the clean-up of stale temporary files all list folders the same way.
//!
//! Iterative (a stack, not recursion: a deep tree cannot overflow the stack), never follows a
//! symlink to a folder (a link loop cannot make it run forever), and reports the folders it
//! could not list instead of failing the whole walk, so each caller picks its own policy: a
//! daemon logs and goes on, a training run stops with the error.

use std::ffi::OsString;
use std::fs::FileType;
use std::path::{Path, PathBuf};

/// One entry found by a walk: anything that is not a folder we descended into.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub name: OsString,
    /// The entry's own type (a symlink is a symlink, not what it points to).
    pub file_type: FileType,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walked {
    /// Entries that are not folders, sorted by path.
    pub files: Vec<Entry>,
    /// Folders (or entries) that could not be read, with why.
    pub errors: Vec<super::PathError>,
}

/// Lists `root`'s entries; descends into each sub-folder for which `descend` says yes (it is
/// asked with the folder's entry). The root itself is always listed.
pub fn walk(root: &Path, mut descend: impl FnMut(&Entry) -> bool) -> Walked {
    let mut out = Walked::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) => {
                out.errors.push(super::PathError::new(d, e));
                continue;
            }
        };
        for entry in rd {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.errors.push(super::PathError::new(&d, e));
                    continue;
                }
            };
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let e = Entry {
                path: entry.path(),
                name: entry.file_name(),
                file_type,
            };
            if file_type.is_dir() {
                if descend(&e) {
                    stack.push(e.path);
                }
            } else {
                out.files.push(e);
            }
        }
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// A sort key that orders runs of digits by value, so `s2` comes before `s10`.
pub fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = c.to_digit(10).unwrap_or(0) as u64;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d as u64);
                chars.next();
            }
            out.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    out.push((text, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_the_tree_it_is_allowed_into() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::create_dir_all(dir.path().join(".hidden")).unwrap();
        for f in ["1.png", "a/2.png", "a/b/3.png", ".hidden/4.png"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let names = |w: Walked| -> Vec<String> {
            w.files
                .iter()
                .map(|e| {
                    e.path
                        .strip_prefix(dir.path())
                        .unwrap()
                        .display()
                        .to_string()
                })
                .collect()
        };
        let all = walk(dir.path(), |e| !e.name.to_string_lossy().starts_with('.'));
        assert!(all.errors.is_empty());
        assert_eq!(names(all), ["1.png", "a/2.png", "a/b/3.png"]);
        assert_eq!(names(walk(dir.path(), |_| false)), ["1.png"]);
        let missing = walk(&dir.path().join("nope"), |_| true);
        assert!(missing.files.is_empty());
        assert_eq!(missing.errors.len(), 1);
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["s10", "s2", "s1"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["s1", "s2", "s10"]);
    }
}
