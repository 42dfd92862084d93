//! Mixed precision for CUDA training: autocast plus dynamic loss scaling, the recipe of
//! PyTorch's `torch.amp` (`autocast` + `GradScaler`) written out so its state lives in our
//! checkpoints.
//!
//! Under `run.precision = "fp16"` the forward passes run inside libtorch's CUDA autocast
//! (matrix products and convolutions in float16, reductions and losses in float32; weights and
//! optimiser moments stay float32). Float16 gradients underflow, so every loss is multiplied
//! by `scale` before `backward`; the gradients are divided by it again before the optimiser
//! sees them. A step whose gradients hold an inf or NaN is skipped and the scale halves; after
//! `growth_interval` clean steps it doubles (PyTorch's defaults: 2^16, ×2, ×0.5, 2000).
//!
//! Why fp16 and not bf16: tch's autocast switch turns on libtorch's CUDA autocast with its
//! default dtype, float16; the dtype setter is not part of the C API tch wraps. bf16 would
//! need no loss scaling, and the scaler costs one device sync per optimiser step.
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Numeric precision of training.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float32 everywhere (the default, and the only choice on a CPU).
    #[default]
    Fp32,
    /// CUDA autocast (float16) with dynamic loss scaling.
    Fp16,
}

/// Dynamic loss scaling (PyTorch's `GradScaler` rules).
#[derive(Clone, Debug, PartialEq)]
pub struct GradScaler {
    /// Factor the losses are multiplied by before `backward`.
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub growth_tracker: i64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_tracker: 0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

impl GradScaler {
    /// Divide the gradients of `params` by the scale, in place; true if any gradient holds an
    /// inf or NaN (the caller then skips the optimiser step). One device sync in all.
    pub fn unscale(&self, params: &[Tensor]) -> bool {
        let inv = 1.0 / self.scale;
        let mut bad: Option<Tensor> = None;
        for p in params {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = g.g_mul_scalar_(inv);
            let here = g.isfinite().logical_not().any();
            bad = Some(match bad {
                Some(b) => b.logical_or(&here),
                None => here,
            });
        }
        bad.is_some_and(|b| b.to_kind(Kind::Int64).int64_value(&[]) != 0)
    }

    /// Adjust the scale after a step: back off when it overflowed, grow after
    /// `growth_interval` clean steps in a row.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn unscale_divides_and_detects_overflow() {
        let s = GradScaler {
            scale: 8.0,
            ..Default::default()
        };
        let p = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(&[8.0f32, 16.0, 24.0]))
            .sum(Kind::Float)
            .backward();
        assert!(!s.unscale(std::slice::from_ref(&p)));
        assert_eq!(
            Vec::<f32>::try_from(&p.grad()).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        let q = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&q * Tensor::from_slice(&[f32::INFINITY, 1.0]))
            .sum(Kind::Float)
            .backward();
        let untouched = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(s.unscale(&[p, untouched, q]));
    }

    #[test]
    fn scale_backs_off_and_grows() {
        let mut s = GradScaler {
            growth_interval: 3,
            ..Default::default()
        };
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        for _ in 0..2 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 2));
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
    }

    #[test]
    fn precision_reads_from_toml_names() {
        #[derive(Deserialize)]
        struct W {
            p: Precision,
        }
        let w: W = toml::from_str("p = \"fp16\"").unwrap();
        assert_eq!(w.p, Precision::Fp16);
        assert!(toml::from_str::<W>("p = \"bf16\"").is_err());
    }
}
