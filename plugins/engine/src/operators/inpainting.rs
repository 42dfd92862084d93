//! Box inpainting (docs/algorithm.md §4.2.4, §4.3, quirks Q7 and Q27).
//!
//! The official operator keeps the pixels outside the missing rectangles (all channels) and
//! stores / feeds the *zero-filled image* `Aᵀ A x` as the measurement, shape `(B, C, H, W)`.
//! In that image space the operator is the diagonal 0/1 keep-mask `M`, so forward, adjoint and
//! pseudo-inverse are all `M ⊙ ·` (a projector), and the lift is the identity. The mask is
//! derived directly from the rectangles (the official index lists, in pixel·3+channel order,
//! select the same pixels; Q27). Boxes come from [`Inpainting::boxes_for`]: the official
//! centred half-size box (rows and columns 64..191 of a 256×256 image) unless given.
//! Measurement noise is added after zero-filling by [`super::measure`], as officially (Q7).
use super::linalg::{expect_shape, slice_to_device_f32, Frozen};
use super::Operator;
use crate::error::Result;
use davi_sdk::spec::Inpainting;
use tch::{Device, Tensor};

/// Keep-mask inpainting in image space.
pub struct InpaintingOp {
    c: i64,
    h: i64,
    w: i64,
    /// `(1, 1, H, W)`: 1 where the pixel is kept, 0 where it is missing.
    mask: Frozen,
}

/// The keep-mask, row-major `H × W`: 0 inside any box, 1 elsewhere.
pub(crate) fn keep_mask(spec: &Inpainting, h: usize, w: usize) -> Vec<f64> {
    let mut m = vec![1.0; h * w];
    for r in spec.boxes_for(h, w) {
        for i in r.top..(r.top + r.height).min(h) {
            for j in r.left..(r.left + r.width).min(w) {
                m[i * w + j] = 0.0;
            }
        }
    }
    m
}

impl InpaintingOp {
    /// `spec` must already be validated for the size (boxes inside the image).
    pub fn new(spec: &Inpainting, c: i64, h: i64, w: i64, device: Device) -> Result<Self> {
        let m = keep_mask(spec, h as usize, w as usize);
        let mask = tch::no_grad(|| slice_to_device_f32(&m, &[1, 1, h, w], device))?;
        Ok(InpaintingOp { c, h, w, mask })
    }

    fn masked(&self, x: &Tensor, what: &str) -> Tensor {
        expect_shape(x, what, self.c, self.h, self.w);
        x * self.mask.t()
    }
}

impl Operator for InpaintingOp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.masked(x, "inpainting forward")
    }

    fn adjoint(&self, y: &Tensor) -> Tensor {
        self.masked(y, "inpainting adjoint")
    }

    fn pinv(&self, y: &Tensor) -> Tensor {
        self.masked(y, "inpainting pinv")
    }

    fn lift(&self, y: &Tensor) -> Tensor {
        y.shallow_clone()
    }

    fn keep_mask(&self) -> Option<Tensor> {
        Some(self.mask.t().shallow_clone())
    }

    fn measurement_shape(&self, c: i64, h: i64, w: i64) -> (i64, i64, i64) {
        (c, h, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::test_util::{check_adjoint_and_pinv, randn, rel_diff, CPU};
    use davi_sdk::spec::Rect;
    use tch::Kind;

    #[test]
    fn default_box_is_rows_and_columns_64_to_191() {
        let op = InpaintingOp::new(&Inpainting::default(), 3, 256, 256, CPU).unwrap();
        let y = op.forward(&Tensor::ones([1, 3, 256, 256], (Kind::Float, CPU)));
        let expected = Tensor::ones([1, 3, 256, 256], (Kind::Float, CPU));
        let _ = expected.narrow(2, 64, 128).narrow(3, 64, 128).fill_(0.0);
        assert_eq!(rel_diff(&y, &expected), 0.0);
        assert_eq!(
            y.sum(Kind::Double).double_value(&[]),
            (3 * (65536 - 16384)) as f64
        );
        assert_eq!(y.double_value(&[0, 2, 64, 64]), 0.0);
        assert_eq!(y.double_value(&[0, 0, 191, 191]), 0.0);
        assert_eq!(y.double_value(&[0, 1, 63, 100]), 1.0);
        assert_eq!(y.double_value(&[0, 1, 192, 100]), 1.0);
        assert_eq!(y.double_value(&[0, 1, 100, 192]), 1.0);
    }

    #[test]
    fn identities_and_custom_boxes() {
        let spec = Inpainting {
            boxes: vec![
                Rect {
                    top: 2,
                    left: 30,
                    height: 5,
                    width: 10,
                },
                Rect {
                    top: 10,
                    left: 0,
                    height: 3,
                    width: 3,
                },
            ],
            noise_sigma: None,
        };
        for c in [1, 3] {
            let op = InpaintingOp::new(&spec, c, 24, 40, CPU).unwrap();
            check_adjoint_and_pinv(&op, 2, c, 24, 40, 1e-7);
            let def = InpaintingOp::new(&Inpainting::default(), c, 24, 40, CPU).unwrap();
            check_adjoint_and_pinv(&def, 2, c, 24, 40, 1e-7);
        }
        let m = keep_mask(&spec, 24, 40);
        assert_eq!(m.iter().filter(|&&v| v == 0.0).count(), 50 + 9);
        assert_eq!(m[2 * 40 + 30], 0.0);
        assert_eq!(m[6 * 40 + 39], 0.0);
        assert_eq!(m[7 * 40 + 39], 1.0);
        assert_eq!(m[12 * 40 + 2], 0.0);
    }

    #[test]
    fn measurement_is_zero_filled_and_lift_is_identity() {
        let op = InpaintingOp::new(&Inpainting::default(), 3, 24, 40, CPU).unwrap();
        let x = randn(41, &[2, 3, 24, 40]);
        let y = op.forward(&x);
        assert_eq!(y.size(), x.size());
        assert_eq!(y.double_value(&[1, 2, 12, 20]), 0.0);
        assert_eq!(y.double_value(&[1, 2, 0, 0]), x.double_value(&[1, 2, 0, 0]));
        assert_eq!(rel_diff(&op.lift(&y), &y), 0.0);
    }
}
