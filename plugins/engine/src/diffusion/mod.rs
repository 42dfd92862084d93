//! Diffusion and bridge maths (docs/algorithm.md §3), all in f64.
//!
//! - [`schedule`]: beta schedules (`linear`, `cosine`, and the quadratic `i2sb` one DAVI
//!   uses for every coefficient, quirk Q1) and the derived DDPM arrays;
//! - [`bridge`]: the I2SB-style bridge arrays (`std_fwd`, `std_bwd`, `mu_x0`, `mu_x1`) and
//!   the tensor operations built on both (q_sample, the perturbed bridge interpolation,
//!   pred_x0 from a network output, learned-range variance).
pub mod bridge;
pub mod schedule;

pub use bridge::Bridge;
pub use schedule::{BetaSchedule, Diffusion};
