//! aestream: a streaming image daemon that turns images into denoised images, latent codes and
//! segmentation maps with autoencoders it trains itself.
//!
//! The library holds everything but the command line; `docs/architecture.md` maps its modules
//! (leaves first: `runtime`, `frame`, `config`, `kernels`, `model`; then `stage`, `source`,
//! `sink`; the wiring in `serving`; `train`, `eval` and `data` beside it).

pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod frame;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod serving;
pub mod sink;
pub mod source;
pub mod stage;
pub mod train;

pub use error::{Error, Result};
