//! Colorization (docs/algorithm.md §4.2.6, §4.3 for the lift): the per-pixel weighted
//! channel sum `y = Σ_c w_c x_c` to one gray channel, official weights (0.3333, 0.3334,
//! 0.3333). Images must have 3 channels. Per pixel the operator is the row vector `wᵀ`, so the
//! adjoint is `y ↦ (w_c y)_c` and the pseudo-inverse `w y / ‖w‖²`. The measurement is
//! `(B, 1, H, W)`; the lift repeats the gray channel three times (the official `check_dims`).
use super::linalg::{expect_shape, invalid, slice_to_device_f32, Frozen};
use super::Operator;
use crate::error::Result;
use davi_sdk::spec::Colorization;
use tch::{Device, Tensor};

/// Weighted RGB → gray.
pub struct ColorizationOp {
    h: i64,
    w: i64,
    /// `(1, 3, 1, 1)`.
    weights: Frozen,
    /// `w / ‖w‖²`, `(1, 3, 1, 1)`.
    pinv_weights: Frozen,
}

impl ColorizationOp {
    pub fn new(spec: &Colorization, c: i64, h: i64, w: i64, device: Device) -> Result<Self> {
        if c != 3 {
            return Err(invalid(format!(
                "colorization needs 3-channel images, got {c} channels"
            )));
        }
        let wts = spec.weights;
        let norm2: f64 = wts.iter().map(|v| v * v).sum();
        let pw: Vec<f64> = wts.iter().map(|v| v / norm2).collect();
        let (weights, pinv_weights) = tch::no_grad(|| -> Result<_> {
            Ok((
                slice_to_device_f32(&wts, &[1, 3, 1, 1], device)?,
                slice_to_device_f32(&pw, &[1, 3, 1, 1], device)?,
            ))
        })?;
        Ok(ColorizationOp {
            h,
            w,
            weights,
            pinv_weights,
        })
    }
}

impl Operator for ColorizationOp {
    fn forward(&self, x: &Tensor) -> Tensor {
        expect_shape(x, "colorization forward", 3, self.h, self.w);
        (x * self.weights.t()).sum_dim_intlist(1i64, true, None::<tch::Kind>)
    }

    fn adjoint(&self, y: &Tensor) -> Tensor {
        expect_shape(y, "colorization adjoint", 1, self.h, self.w);
        y * self.weights.t()
    }

    fn pinv(&self, y: &Tensor) -> Tensor {
        expect_shape(y, "colorization pinv", 1, self.h, self.w);
        y * self.pinv_weights.t()
    }

    fn lift(&self, y: &Tensor) -> Tensor {
        expect_shape(y, "colorization lift", 1, self.h, self.w);
        y.repeat([1, 3, 1, 1])
    }

    fn measurement_shape(&self, _c: i64, h: i64, w: i64) -> (i64, i64, i64) {
        (1, h, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::test_util::{check_adjoint_and_pinv, randn, rel_diff, CPU};
    use tch::Kind;

    fn official() -> Colorization {
        Colorization {
            weights: [0.3333, 0.3334, 0.3333],
            noise_sigma: None,
        }
    }

    #[test]
    fn official_weights() {
        let op = ColorizationOp::new(&official(), 3, 24, 40, CPU).unwrap();
        for (ch, w) in [0.3333, 0.3334, 0.3333].into_iter().enumerate() {
            let x = Tensor::zeros([1, 3, 24, 40], (Kind::Float, CPU));
            let _ = x.narrow(1, ch as i64, 1).fill_(1.0);
            let y = op.forward(&x);
            assert_eq!(y.size(), vec![1, 1, 24, 40]);
            assert!((y.double_value(&[0, 0, 5, 7]) - w).abs() < 1e-7);
        }
        // 0.3333 R + 0.3334 G + 0.3333 B on a mixed pixel
        let x = randn(61, &[2, 3, 24, 40]);
        let y = op.forward(&x);
        let px = |c| x.double_value(&[1, c, 3, 4]);
        let want = 0.3333 * px(0) + 0.3334 * px(1) + 0.3333 * px(2);
        assert!((y.double_value(&[1, 0, 3, 4]) - want).abs() < 1e-6);
    }

    #[test]
    fn identities_and_pinv_formula() {
        let op = ColorizationOp::new(&official(), 3, 24, 40, CPU).unwrap();
        check_adjoint_and_pinv(&op, 2, 3, 24, 40, 1e-6);
        let y = randn(62, &[2, 1, 24, 40]);
        // A A⁺ = I on gray images, and A⁺ y = w y / ‖w‖².
        assert!(rel_diff(&op.forward(&op.pinv(&y)), &y) < 1e-6);
        let n2 = 0.3333f64.powi(2) + 0.3334f64.powi(2) + 0.3333f64.powi(2);
        let p = op.pinv(&y);
        assert!(
            (p.double_value(&[0, 1, 2, 3]) - 0.3334 / n2 * y.double_value(&[0, 0, 2, 3])).abs()
                < 1e-6
        );
        let other = Colorization {
            weights: [0.299, 0.587, 0.114],
            noise_sigma: None,
        };
        let op2 = ColorizationOp::new(&other, 3, 24, 40, CPU).unwrap();
        check_adjoint_and_pinv(&op2, 2, 3, 24, 40, 1e-6);
    }

    #[test]
    fn lift_repeats_the_gray_channel() {
        let op = ColorizationOp::new(&official(), 3, 24, 40, CPU).unwrap();
        let y = randn(63, &[2, 1, 24, 40]);
        let l = op.lift(&y);
        assert_eq!(l.size(), vec![2, 3, 24, 40]);
        for c in 0..3 {
            assert_eq!(rel_diff(&l.narrow(1, c, 1), &y), 0.0);
        }
    }

    #[test]
    fn needs_three_channels() {
        for c in [1, 4] {
            let e = ColorizationOp::new(&official(), c, 24, 40, CPU)
                .err()
                .expect("must fail");
            assert!(
                matches!(e, crate::error::EngineError::InvalidInput(_)),
                "{e}"
            );
        }
    }
}
