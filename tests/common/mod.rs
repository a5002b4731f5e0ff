//! Helpers shared by the end-to-end tests: the sample folder, the binary, reading an image.
#![allow(dead_code)] // each test binary uses only some of the helpers

use std::path::{Path, PathBuf};
use std::process::Command;

use aestream::frame::{decode, DecodeLimits, Planes};
use assert_cmd::cargo::cargo_bin;

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// The `aestream` binary, logging at info (some tests read its log lines).
pub fn bin() -> Command {
    let mut c = Command::new(cargo_bin("aestream"));
    c.env("AESTREAM_LOG", "info");
    c
}

pub fn read(p: &Path) -> Planes {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    decode(&bytes, DecodeLimits::default(), &p.display().to_string()).expect("decodes")
}
