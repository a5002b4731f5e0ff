//! aestream: a streaming image daemon that denoises images (and, later, emits latent codes and
//! segmentation maps) with autoencoders it trains itself.
//!
//! The library holds everything but the command line: pipeline configuration, the staged
//! pipeline, its sources, stages and sinks, the models and the training loop.

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
