//! The data that training and evaluation read, in one neutral place so that neither has to
//! import the other: whole-frame datasets (folders, MNIST-style CSV, IDX, image/mask pairs)
//! and the denoiser's patch sampler.
//!
//! It depends only on frame decoding, the configuration and the corruption stage; `train` and
//! `eval` both build on it, and it on neither.

pub mod dataset;
pub mod patches;
