//! Output names: what a frame's outputs are called, as a documented, deterministic function of
//! its input alone, so a restart names everything the same way, and *injective*, so two inputs
//! never get one name and no output can overwrite another's (`photo.jpg`, `photo.png` and
//! `photo` in one folder used to all become `photo.png`).
//!
//! A file keeps its whole name, plus the output kind's extension, unless that would only double
//! `.png`; a queue entry's name is escaped (see [`super::entry::safe_name`]) and gets the
//! extension appended. The sink still checks at write time for what no name can rule out (see
//! `sink::folder`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// File extensions taken as images (compared ignoring case): the decoded formats. The folder
/// source's default `[source] include` is `*.EXT` for each.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp", "gif", "pnm", "pgm", "ppm", "pbm",
];

/// The extension an input may drop: the image outputs' own (`china.png` → `china.png`).
const KEPT: &[u8] = b".png";

/// Whether `name` ends with `.EXT` for one of [`IMAGE_EXTENSIONS`] (any case).
fn has_image_extension(name: &[u8]) -> bool {
    IMAGE_EXTENSIONS.iter().any(|e| {
        let e = e.as_bytes();
        name.len() > e.len()
            && name[name.len() - e.len() - 1] == b'.'
            && name[name.len() - e.len()..].eq_ignore_ascii_case(e)
    })
}

/// Whether a stem may stand for `STEM.png` on its own: not empty, not ending in `.`, and
/// without an image extension of its own. Plain stems are exactly the names that neither of
/// the other two rules of [`file_base`] produces, which is what keeps the rules apart.
fn is_plain(stem: &[u8]) -> bool {
    !stem.is_empty() && !stem.ends_with(b".") && !has_image_extension(stem)
}

/// The base of a file input's output name (the output kind's extension is added to it):
///
/// 1. `STEM.png` with a plain stem (see [`is_plain`]) → `STEM`: `china.png` → `china.png`.
/// 2. any other name with an image extension → the whole name: `photo.jpg` → `photo.jpg.png`,
///    `UPPER.PNG` → `UPPER.PNG.png`, `photo.jpg.png` → `photo.jpg.png.png`.
/// 3. anything else (only taken with a custom `[source] include`) → the name and a dot:
///    `photo` → `photo..png`, `notes.txt` → `notes.txt..png`.
///
/// Rule 1 gives plain names, rule 2 names ending in an image extension, rule 3 names ending
/// in a dot: no two rules give the same base, and each rule alone is one-to-one, so the
/// function is injective.
pub fn file_base(name: &OsStr) -> OsString {
    let b = name.as_bytes();
    if let Some(stem) = b.strip_suffix(KEPT) {
        if is_plain(stem) {
            return OsStr::from_bytes(stem).to_owned();
        }
    }
    if has_image_extension(b) {
        return name.to_owned();
    }
    let mut v = b.to_vec();
    v.push(b'.');
    OsString::from_vec(v)
}

/// `base.ext` (`ext` without its dot).
pub fn with_extension(base: &OsStr, ext: &str) -> OsString {
    let mut s = base.to_owned();
    s.push(".");
    s.push(ext);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn out(name: &str) -> String {
        with_extension(&file_base(OsStr::new(name)), "png")
            .into_string()
            .unwrap()
    }

    #[test]
    fn names_are_kept_and_never_shared() {
        for (input, want) in [
            ("china.png", "china.png"),
            ("cam1.000040.png", "cam1.000040.png"),
            ("photo.jpg", "photo.jpg.png"),
            ("UPPER.PNG", "UPPER.PNG.png"),
            ("scan.tiff", "scan.tiff.png"),
            ("photo", "photo..png"),
            ("photo.jpg.png", "photo.jpg.png.png"),
            ("photo.png.png", "photo.png.png.png"),
            ("photo..png", "photo..png.png"),
            ("photo.", "photo...png"),
            ("notes.txt", "notes.txt..png"),
        ] {
            assert_eq!(out(input), want, "{input}");
        }
        // The cases the issue names: one folder, one stem.
        let names = [
            "photo.jpg",
            "photo.png",
            "photo",
            "photo.png.png",
            "photo.jpg.png",
        ];
        let outs: std::collections::HashSet<_> = names.iter().map(|n| out(n)).collect();
        assert_eq!(outs.len(), names.len(), "{outs:?}");
    }

    /// Names built from the characters that matter to the rules (dots, the image extensions in
    /// both cases, anything else), so that near-collisions are common.
    fn tricky_name() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            Just(".".to_string()),
            Just(".png".to_string()),
            Just(".PNG".to_string()),
            Just(".jpg".to_string()),
            Just(".tiff".to_string()),
            Just("png".to_string()),
            "[a-zA-Z0-9 _%~-]{1,3}",
            "\\PC{1,2}",
        ];
        proptest::collection::vec(part, 1..6).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, rng_seed: proptest::test_runner::RngSeed::Fixed(14), ..ProptestConfig::default() })]

        #[test]
        fn file_names_are_injective(a in tricky_name(), b in tricky_name()) {
            prop_assume!(a != b);
            prop_assert_ne!(out(&a), out(&b));
        }

        #[test]
        fn a_name_and_its_output_suffix_stay_apart(a in tricky_name()) {
            // The collision a "keep or replace the extension" rule runs into: X vs X.png.
            let b = format!("{a}.png");
            prop_assert_ne!(out(&a), out(&b));
        }
    }
}
