//! From pictures as users have them to measurements as the network needs them, and back.
//!
//! Users hold *observations*: a blurry photo, a small photo to enlarge, a photo with a hole,
//! a noisy photo, a gray photo — values in [0, 1]. The network works on measurements `y` in
//! the official [-1, 1] convention (docs/algorithm.md §4.5). This module is the one place that maps
//! between the two, so the CLI, the C API and the plugins agree:
//!
//! | operator | observation | measurement `y` | restored image |
//! |---|---|---|---|
//! | blur, denoising | C×H×W | `2·obs − 1` | C×H×W |
//! | super-resolution ×f | C×h×w | `2·obs − 1` | C×fh×fw |
//! | inpainting | C×H×W (hole content ignored) | masked `2·obs − 1` (zero-filled) | C×H×W |
//! | colorization | gray (or RGB, converted) | weighted gray | 3×H×W |
//!
//! Gray observations of the other tasks are replicated to the model's 3 channels and the
//! result is converted back to gray.
use crate::error::{EngineError, Result};
use crate::operators::{self, Operator};
use crate::restore::seeded_normal;
use davi_sdk::OperatorSpec;
use tch::{Device, Kind, Tensor};

/// Output size `(H, W)` for an observation of size `(h, w)`.
pub fn output_size(spec: &OperatorSpec, h: i64, w: i64) -> (i64, i64) {
    match spec {
        OperatorSpec::SuperResolution(s) => (h * s.factor as i64, w * s.factor as i64),
        _ => (h, w),
    }
}

/// A prepared restoration problem: the operator at output geometry and the measurement.
pub struct Problem {
    pub op: Box<dyn Operator>,
    pub y: Tensor,
    /// Whether the observation was gray and the result should be returned gray.
    pub gray_out: bool,
}

/// Turn an observation `(B, C, h, w)` in [0, 1] into a problem for a `model_channels` network.
pub fn problem_from_observation(
    spec: &OperatorSpec,
    obs: &Tensor,
    model_channels: i64,
    device: Device,
) -> Result<Problem> {
    let (_, c, h, w) = obs
        .size4()
        .map_err(|_| EngineError::InvalidInput("expected a (B, C, H, W) image".into()))?;
    if c != 1 && c != 3 {
        return Err(EngineError::InvalidInput(format!(
            "expected 1 or 3 colour channels, got {c}"
        )));
    }
    let (oh, ow) = output_size(spec, h, w);
    // `2·obs − 1`, the second step in place (same arithmetic, one image-sized buffer fewer).
    let mut u = (obs.to_device(device).to_kind(Kind::Float) * 2.0).detach();
    u -= 1.0;
    let op = operators::build(spec, model_channels, oh, ow, device)?;
    let (y, gray_out) = match spec {
        OperatorSpec::Colorization(cz) => {
            let y = if c == 3 {
                let wts = Tensor::from_slice(&cz.weights.map(|v| v as f32))
                    .to_device(device)
                    .view([1, 3, 1, 1]);
                (&u * wts).sum_dim_intlist(1, true, Kind::Float)
            } else {
                u
            };
            (y, false)
        }
        _ => {
            let gray = c == 1 && model_channels == 3;
            let u = if gray { u.repeat([1, 3, 1, 1]) } else { u };
            let y = if matches!(spec, OperatorSpec::Inpainting(_)) {
                op.forward(&u)
            } else {
                u
            };
            (y, gray)
        }
    };
    Ok(Problem { op, y, gray_out })
}

/// Convert a restored batch in [-1, 1] to an image in [0, 1] (gray again if asked).
pub fn to_picture(x_hat: &Tensor, gray_out: bool) -> Tensor {
    // ((x̂ + 1) / 2) clamped to [0, 1], the last two steps in place on the new tensor.
    let mut x = x_hat + 1.0;
    x /= 2.0;
    let _ = x.clamp_(0.0, 1.0);
    if gray_out {
        x.mean_dim(1, true, Kind::Float)
    } else {
        x
    }
}

/// Simulate an observation from a clean image `(B, C, H, W)` in [0, 1]:
/// `y = A(2x − 1) + σ·n` with `n` from `seed`, returned in [0, 1] units (not clamped; the
/// caller clamps when quantising). Zero-filled inpainting holes come out mid-gray plus noise.
pub fn simulate_observation(spec: &OperatorSpec, clean: &Tensor, seed: u64) -> Result<Tensor> {
    let (_, c, h, w) = clean
        .size4()
        .map_err(|_| EngineError::InvalidInput("expected a (B, C, H, W) image".into()))?;
    let op = operators::build(spec, c, h, w, clean.device())?;
    tch::no_grad(|| {
        let x = clean.to_kind(Kind::Float) * 2.0 - 1.0;
        let y = op.forward(&x);
        let sigma = spec.noise_sigma();
        let y = if sigma > 0.0 {
            &y + seeded_normal(&y.size(), seed).to_device(y.device()) * sigma
        } else {
            y
        };
        Ok((y + 1.0) / 2.0)
    })
}
