//! The pipeline's processing stages, one file each: decode, corrupt, normalise (pad/tile),
//! infer (with the SURE blend and tiling it uses), post-process and encode, and the object
//! labelling that `instances` outputs are cut with (instances, on a watershed). Each is a function
//! of a frame and its settings; the threads and channels that run them are `serving`'s.

pub mod corrupt;
pub mod cost;
pub mod decode;
pub mod encode;
pub mod infer;
pub mod instances;
pub mod normalise;
pub mod postprocess;
pub mod sure;
pub mod tiling;
pub mod watershed;
