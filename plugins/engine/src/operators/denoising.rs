//! Denoising (docs/algorithm.md §4.2.5; official `deno`): the identity operator; only the
//! measurement noise (σ = 0.20 by default, §4.3) degrades the image. Every map returns its
//! input unchanged, as a shallow clone sharing storage (callers add noise out of place, see
//! [`super::measure`]).
use super::linalg::expect_shape;
use super::Operator;
use tch::Tensor;

/// The identity operator on `(B, C, H, W)` batches.
pub struct DenoisingOp {
    c: i64,
    h: i64,
    w: i64,
}

impl DenoisingOp {
    pub fn new(c: i64, h: i64, w: i64) -> Self {
        DenoisingOp { c, h, w }
    }

    fn same(&self, x: &Tensor, what: &str) -> Tensor {
        expect_shape(x, what, self.c, self.h, self.w);
        x.shallow_clone()
    }
}

impl Operator for DenoisingOp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.same(x, "denoising forward")
    }

    fn adjoint(&self, y: &Tensor) -> Tensor {
        self.same(y, "denoising adjoint")
    }

    fn pinv(&self, y: &Tensor) -> Tensor {
        self.same(y, "denoising pinv")
    }

    fn lift(&self, y: &Tensor) -> Tensor {
        y.shallow_clone()
    }

    fn measurement_shape(&self, c: i64, h: i64, w: i64) -> (i64, i64, i64) {
        (c, h, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::test_util::{check_adjoint_and_pinv, randn, rel_diff};

    #[test]
    fn identity_everywhere() {
        for c in [1, 3] {
            let op = DenoisingOp::new(c, 24, 40);
            check_adjoint_and_pinv(&op, 2, c, 24, 40, 1e-7);
            let x = randn(51, &[2, c, 24, 40]);
            for y in [op.forward(&x), op.adjoint(&x), op.pinv(&x), op.lift(&x)] {
                assert_eq!(rel_diff(&y, &x), 0.0);
            }
        }
    }
}
