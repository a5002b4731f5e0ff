//! Which files are images, and the image lists of `train` and `eval` (through the one
//! directory walker, [`crate::runtime::walk`]).

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::runtime::walk::{natural_key, walk};

/// Image files in a folder (non-recursive, sorted), skipping dot-files and partial files.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let w = walk(dir, |_| false);
    if let Some(e) = w.errors.into_iter().next() {
        return Err(e.into());
    }
    Ok(w.files
        .into_iter()
        .map(|e| e.path)
        .filter(|p| p.is_file() && is_image_name(p))
        .collect())
}

/// Image files under `dir`, recursively, in natural order (s2 before s10, 2.pgm before
/// 10.pgm); folders named in `exclude` and dot-folders are left out.
pub fn list_images_recursive(dir: &Path, exclude: &[String]) -> Result<Vec<PathBuf>> {
    let skip = |name: &str| exclude.iter().any(|x| x == name) || name.starts_with('.');
    let w = walk(dir, |e| !skip(&e.name.to_string_lossy()));
    if let Some(e) = w.errors.into_iter().next() {
        return Err(e.into());
    }
    let mut out: Vec<PathBuf> = w
        .files
        .into_iter()
        .filter(|e| !skip(&e.name.to_string_lossy()) && is_image_name(&e.path))
        .map(|e| e.path)
        .collect();
    out.sort_by_key(|p| natural_key(&p.to_string_lossy()));
    Ok(out)
}

/// Whether a file name looks like an image we take (by extension, not a dot-file or partial).
pub fn is_image_name(p: &std::path::Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    let ext = p
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        ext.as_str(),
        "png" | "jpg" | "jpeg" | "pgm" | "ppm" | "pnm" | "pbm" | "tif" | "tiff" | "webp"
    )
}
