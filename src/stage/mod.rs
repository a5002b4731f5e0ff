//! The pipeline's processing stages: decode, corrupt, normalise (pad/tile), infer, post-process.

pub mod corrupt;
pub mod decode;
pub mod infer;
pub mod normalise;
pub mod postprocess;
pub mod sure;
pub mod tiling;
