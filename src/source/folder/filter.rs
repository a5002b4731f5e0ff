//! What counts as an input of a folder source: files whose path (relative to the folder)
//! matches one of the `[source] include` globs and none of the `exclude` globs. By default
//! that is the image extensions (`*.png`, `*.jpg`, … see [`crate::frame::names::IMAGE_EXTENSIONS`]).
//!
//! Anything else (`labels.csv`, `notes.txt`) is not an input: it is left exactly where it is,
//! neither read nor quarantined, and logged once, so a user who drops an unexpected file in
//! sees why nothing happened to it. (A file with an image name that does not decode is still
//! quarantined: that is a broken input, not a stranger.)
//!
//! Globs follow `globset`: matched against the relative path ignoring case, `*` also crosses
//! folders (`*.png` matches `day1/a.png`), `**`, `?`, `[abc]` and `{png,jpg}` as usual.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::default_include;

/// Compiles globs as the filter matches them; the error names the glob.
pub fn compile(globs: &[String]) -> Result<GlobSet, globset::Error> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        set.add(GlobBuilder::new(g).case_insensitive(true).build()?);
    }
    set.build()
}

/// The include/exclude rule of one folder source, and the names it has already logged.
#[derive(Clone)]
pub struct InputFilter {
    include: GlobSet,
    exclude: GlobSet,
    /// Paths refused and logged, so each is logged once (forgotten past [`Self::TOLD_CAP`]
    /// names, so a folder churning strangers for months cannot grow it without bound).
    told: Arc<Mutex<HashSet<PathBuf>>>,
}

impl std::fmt::Debug for InputFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputFilter")
            .field("include", &self.include.len())
            .field("exclude", &self.exclude.len())
            .finish()
    }
}

impl Default for InputFilter {
    /// Image files by extension, nothing excluded.
    fn default() -> Self {
        Self::new(&default_include(), &[]).expect("the built-in globs compile")
    }
}

impl InputFilter {
    const TOLD_CAP: usize = 100_000;

    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, globset::Error> {
        Ok(Self {
            include: compile(include)?,
            exclude: compile(exclude)?,
            told: Arc::default(),
        })
    }

    /// Whether the file at `rel` (relative to the input folder) is an input; logs a refused
    /// one the first time it is seen.
    pub fn admits(&self, rel: &Path) -> bool {
        let excluded = self.exclude.is_match(rel);
        if !excluded && self.include.is_match(rel) {
            return true;
        }
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        if told.len() >= Self::TOLD_CAP {
            told.clear();
        }
        if told.insert(rel.to_path_buf()) {
            let why = if excluded {
                "it matches [source] exclude"
            } else {
                "not an image by name ([source] include)"
            };
            tracing::info!("{}: not an input ({why}); left where it is", rel.display());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_by_extension_and_nothing_else() {
        let f = InputFilter::default();
        for yes in [
            "a.png",
            "UPPER.PNG",
            "day1/b.jpeg",
            "scan.tiff",
            "x.gif",
            "y.bmp",
        ] {
            assert!(f.admits(Path::new(yes)), "{yes}");
        }
        for no in [
            "labels.csv",
            "notes.txt",
            "no-extension",
            "bad.png.error.txt",
            "a.png.zip",
        ] {
            assert!(!f.admits(Path::new(no)), "{no}");
            // Asked again (every rescan does): still no, and logged only the first time.
            assert!(!f.admits(Path::new(no)), "{no}");
        }
        assert_eq!(f.told.lock().unwrap().len(), 5);
    }

    #[test]
    fn include_and_exclude_globs() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let f = InputFilter::new(&s(&["*.png", "raw/**"]), &s(&["*-preview.png"])).unwrap();
        assert!(f.admits(Path::new("a.png")) && f.admits(Path::new("raw/frame")));
        assert!(!f.admits(Path::new("a-preview.png")) && !f.admits(Path::new("b.jpg")));
        assert!(InputFilter::new(&s(&["[unclosed"]), &[]).is_err());
    }
}
