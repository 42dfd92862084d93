//! Training, in tch: the diffusion prior (DDPM with the hybrid loss, as guided diffusion
//! trains the official teachers) and DAVI's amortised training (docs/algorithm.md §5), both
//! resumable from atomic checkpoints.
//!
//! - [`config`]: TOML run configs, presets and overrides;
//! - [`data`]: image folders, official and patch preprocessing, prefetching;
//! - [`losses`]: hybrid ε-MSE + VB loss;
//! - [`discriminator`]: PatchGAN, hinge and feature-matching losses;
//! - [`optim`]: AdamW with visible state, ema_pytorch's EMA;
//! - [`amp`]: CUDA mixed precision (autocast + dynamic loss scaling);
//! - [`prior`], [`davi`]: one training step of each kind;
//! - [`runner`]: the loop — data, logging, evaluation, checkpoints, resume, export; an open
//!   run is a [`runner::Session`], which `davi train` and libdavi's `davi_training_*` share;
//! - [`monitor`]: progress line, JSONL log, grids, plots.
pub mod amp;
pub mod config;
pub mod data;
pub mod davi;
pub mod discriminator;
pub mod losses;
pub mod monitor;
pub mod optim;
pub mod prior;
pub mod runner;

use std::collections::BTreeMap;

/// Loss terms of one step, by name.
pub type Terms = BTreeMap<String, f64>;

/// Seed libtorch's generator for one step: every random draw of step `s` depends only on
/// `(seed, s)`, which is what makes a resumed run reproduce the uninterrupted one.
pub fn seed_step(seed: u64, step: u64) -> crate::restore::SplitMix64 {
    let mut r = crate::restore::SplitMix64(seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ step);
    tch::manual_seed((r.next() >> 1) as i64);
    r
}
