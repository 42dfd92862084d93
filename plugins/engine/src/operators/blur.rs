//! Gaussian blur, [`davi_sdk::spec::BlurMode::ZeroPadded`]: the true separable blur
//! (docs/algorithm.md §4.2.1, and the "true blur" option of quirk Q6).
//!
//! The 1D kernel has `size` taps `k(x) = exp(-x²/2σ²)`, `x = -(size-1)/2 ..= (size-1)/2`,
//! normalised to sum 1. The blur is the 'same'-size correlation with this kernel along rows
//! and columns, with zero padding and no renormalisation at the borders: per channel
//! `Y = B_h X B_wᵀ` with `B[i, j] = k[j - i + r]` for `|j - i| ≤ r`, `r = (size-1)/2`. The
//! kernel is symmetric, so `B` is symmetric and the adjoint is the same blur (the correlation
//! with the same kernel). The measurement is the blurred image `(B, C, H, W)`; the lift is the
//! identity.
//!
//! The pseudo-inverse is the minimum-norm one of `B_h ⊗ B_w`, formed from the SVDs of the 1D
//! matrices (see [`SeparablePinv`]) with 1D singular values below [`PINV_RTOL`] times the
//! largest treated as zero. It is built on first use and cached: training only needs the
//! forward map and its adjoint.
//!
//! The operator the official code actually applies differs (dropped last tap, thresholded and
//! mis-tiled singular values); it lives in [`super::blur_ddrm`] behind
//! [`davi_sdk::spec::BlurMode::Ddrm`].
use super::linalg::{expect_shape, to_device_f32, Frozen, HostMat, SeparablePinv};
use super::Operator;
use crate::error::Result;
use davi_sdk::spec::GaussianBlur;
use std::sync::OnceLock;
use tch::{Device, Tensor};

/// Relative threshold of the zero-padded blur's pseudo-inverse, per 1D matrix: singular values
/// `s ≤ 1e-4 · s_max` are treated as zero (2D gains `1/(s_i s_j)` stay below 1e8 / s_max²).
///
/// A Gaussian blur is severely ill-conditioned (σ = 3, 61 taps on 256 pixels: 1D singular
/// values fall to ~3e-17), and f32 data carry relative rounding of ~6e-8, so the threshold
/// trades exactness against rounding noise. Measured at σ = 3, 61 taps, 256×256 (f32, random
/// image; the figures for a smooth image in brackets), relative error of `A A⁺ A x` vs `A x`:
/// rtol 1e-3: 5.6e-4 (2e-5); **1e-4: 5.4e-5 (5e-7)**, 118 of 256 1D values kept; 1e-5: 5e-6
/// (4e-7) but rounding noise already inflates `A⁺ A x` threefold; 1e-6 and below: `A⁺ A x` is
/// dominated by amplified rounding (max |·| ~ 8e2 for |x| ~ 4). For comparison, the official
/// absolute 3e-2 threshold keeps 73 values.
pub const PINV_RTOL: f64 = 1e-4;

/// The normalised 1D Gaussian kernel of `size` taps (odd), computed in f64.
pub(crate) fn gaussian_kernel(sigma: f64, size: usize) -> Vec<f64> {
    let r = (size as f64 - 1.0) / 2.0;
    let k: Vec<f64> = (0..size)
        .map(|i| {
            let x = i as f64 - r;
            (-x * x / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// The `n × n` zero-padded 'same' blur matrix `B[i, j] = k[j - i + r]` for `|j - i| ≤ r`.
pub(crate) fn blur_matrix(kernel: &[f64], n: usize) -> HostMat {
    let r = (kernel.len() / 2) as i64;
    let mut m = HostMat::zeros(n, n);
    for i in 0..n as i64 {
        for j in (i - r).max(0)..=(i + r).min(n as i64 - 1) {
            *m.at_mut(i as usize, j as usize) = kernel[(j - i + r) as usize];
        }
    }
    m
}

/// [`davi_sdk::spec::BlurMode::ZeroPadded`] Gaussian blur.
pub struct ZeroPaddedBlur {
    c: i64,
    h: i64,
    w: i64,
    device: Device,
    /// `B_h` and `B_w` on the host (f64), kept for the lazily built pseudo-inverse.
    host: (HostMat, HostMat),
    /// `B_h` (symmetric) on the device.
    bh: Frozen,
    /// `B_wᵀ = B_w` on the device.
    bw: Frozen,
    pinv: OnceLock<std::result::Result<SeparablePinv, String>>,
}

impl ZeroPaddedBlur {
    pub fn new(spec: &GaussianBlur, c: i64, h: i64, w: i64, device: Device) -> Result<Self> {
        let k = gaussian_kernel(spec.sigma, spec.size);
        let (mh, mw) = (blur_matrix(&k, h as usize), blur_matrix(&k, w as usize));
        let (bh, bw) = tch::no_grad(|| -> Result<_> {
            Ok((
                to_device_f32(&mh.to_cpu_f64(), device)?,
                to_device_f32(&mw.to_cpu_f64(), device)?,
            ))
        })?;
        Ok(ZeroPaddedBlur {
            c,
            h,
            w,
            device,
            host: (mh, mw),
            bh,
            bw,
            pinv: OnceLock::new(),
        })
    }

    fn blur(&self, x: &Tensor) -> Tensor {
        // B_h X B_wᵀ; both matrices are symmetric.
        self.bh.t().matmul(&x.matmul(self.bw.t()))
    }

    /// How many 1D singular values (rows, columns) the pseudo-inverse keeps under
    /// [`PINV_RTOL`] (builds the pseudo-inverse if it was not built yet).
    pub fn pinv_rank(&self) -> (usize, usize) {
        self.pinv_factors().kept
    }

    fn pinv_factors(&self) -> &SeparablePinv {
        let built = self.pinv.get_or_init(|| {
            SeparablePinv::new(&self.host.0, &self.host.1, PINV_RTOL, self.device)
                .map_err(|e| e.to_string())
        });
        match built {
            Ok(p) => p,
            Err(e) => panic!("gaussian blur pseudo-inverse could not be built: {e}"),
        }
    }
}

impl Operator for ZeroPaddedBlur {
    fn forward(&self, x: &Tensor) -> Tensor {
        expect_shape(x, "gaussian_blur forward", self.c, self.h, self.w);
        self.blur(x)
    }

    fn adjoint(&self, y: &Tensor) -> Tensor {
        expect_shape(y, "gaussian_blur adjoint", self.c, self.h, self.w);
        self.blur(y)
    }

    fn pinv(&self, y: &Tensor) -> Tensor {
        expect_shape(y, "gaussian_blur pinv", self.c, self.h, self.w);
        self.pinv_factors().apply(y)
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
    use crate::operators::test_util::{check_adjoint_and_pinv, randn, rel_diff, CPU};
    use tch::Kind;

    fn spec(sigma: f64, size: usize) -> GaussianBlur {
        GaussianBlur {
            sigma,
            size,
            mode: davi_sdk::spec::BlurMode::ZeroPadded,
            noise_sigma: None,
        }
    }

    #[test]
    fn kernel_is_normalised_symmetric_gaussian() {
        let k = gaussian_kernel(2.0, 9);
        assert_eq!(k.len(), 9);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for i in 0..9 {
            assert!((k[i] - k[8 - i]).abs() < 1e-15);
        }
        // k(4) / k(0) = exp(-16 / 8)
        assert!((k[8] / k[4] - (-2.0f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn forward_is_the_zero_padded_separable_convolution() {
        // Independent reference: a depthwise 2D convolution with the outer-product kernel
        // and zero padding (tch conv2d), which does not renormalise at the borders.
        let (b, c, h, w) = (2, 3, 16, 20);
        let op = ZeroPaddedBlur::new(&spec(2.0, 9), c, h, w, CPU).unwrap();
        let k = Tensor::from_slice(&gaussian_kernel(2.0, 9)).to_kind(Kind::Float);
        let k2 = k
            .view([9, 1])
            .matmul(&k.view([1, 9]))
            .view([1, 1, 9, 9])
            .repeat([c, 1, 1, 1]);
        let x = randn(1, &[b, c, h, w]);
        let reference = x.conv2d(&k2, None::<Tensor>, [1, 1], [4, 4], [1, 1], c);
        let e = rel_diff(&op.forward(&x), &reference);
        assert!(e < 1e-6, "blur differs from conv2d by {e:e}");
        // A constant image darkens at the borders (zero padding, no renormalisation) but not
        // in the interior.
        let ones = Tensor::ones([1, 1, h, w], (Kind::Float, CPU));
        let op1 = ZeroPaddedBlur::new(&spec(2.0, 9), 1, h, w, CPU).unwrap();
        let y = op1.forward(&ones);
        assert!((y.double_value(&[0, 0, 8, 10]) - 1.0).abs() < 1e-6);
        assert!(y.double_value(&[0, 0, 0, 0]) < 0.5);
    }

    #[test]
    fn adjoint_and_pinv_identities() {
        for c in [1, 3] {
            let op = ZeroPaddedBlur::new(&spec(2.0, 9), c, 16, 20, CPU).unwrap();
            check_adjoint_and_pinv(&op, 2, c, 16, 20, 1e-4);
        }
    }

    #[test]
    fn pinv_matches_pseudo_inverse_of_the_1d_matrices() {
        // Independent reference: libtorch's pinverse (f64) of each 1D matrix with the same
        // relative cut-off, applied as P_h Y P_wᵀ.
        let (h, w) = (16, 20);
        let op = ZeroPaddedBlur::new(&spec(2.0, 9), 1, h, w, CPU).unwrap();
        let k = gaussian_kernel(2.0, 9);
        let ph = blur_matrix(&k, h as usize).to_cpu_f64().pinverse(PINV_RTOL);
        let pw = blur_matrix(&k, w as usize).to_cpu_f64().pinverse(PINV_RTOL);
        let y = randn(2, &[2, 1, h, w]);
        let reference = ph.matmul(&y.to_kind(Kind::Double)).matmul(&pw.tr());
        let e = rel_diff(&op.pinv(&y), &reference);
        assert!(e < 1e-4, "pinv differs from pinverse by {e:e}");
    }

    #[test]
    fn pinv_of_the_official_blur_is_consistent() {
        // σ = 3, 61 taps at 64×48: the 1D singular values fall far below the threshold, so
        // this exercises the truncation; A A⁺ A x must still equal A x closely.
        let op = ZeroPaddedBlur::new(&spec(3.0, 61), 3, 64, 48, CPU).unwrap();
        let kept = op.pinv_rank();
        assert!(
            kept.0 < 64 && kept.1 < 48,
            "expected truncation, kept {kept:?}"
        );
        check_adjoint_and_pinv(&op, 2, 3, 64, 48, 2e-4);
    }

    #[test]
    fn lift_is_the_measurement() {
        let op = ZeroPaddedBlur::new(&spec(2.0, 9), 3, 16, 20, CPU).unwrap();
        let y = randn(3, &[2, 3, 16, 20]);
        assert_eq!(rel_diff(&op.lift(&y), &y), 0.0);
    }
}
