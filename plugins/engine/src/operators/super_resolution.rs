//! Super-resolution down-sampling by an integer factor `f` (docs/algorithm.md §4.2.3; official
//! `sr_averagepooling` and `bicubic`; §4.3 for the lift).
//!
//! - [`DownsampleMethod::AvgPool`] (the official `sr4`/`sr2`/`sr8` operator): the mean over each
//!   `f × f` block, exactly `avg_pool2d(x, f, stride f)`. Its rows are `1/f²` on a block, so the
//!   adjoint is nearest-neighbour replication divided by `f²` and the pseudo-inverse is plain
//!   nearest-neighbour replication.
//! - [`DownsampleMethod::Bicubic`] (present in the official code, unused by its scripts): the
//!   separable `Y = M_h X M_wᵀ` with the 1D `(n/f) × n` matrix `M` of the official `SRConv`:
//!   a `4f`-tap cubic kernel (`a = -0.5`) sampled at `x = (i - 2f + 0.5)/f`, normalised, rows
//!   centred at `f/2, f/2 + f, …`, reflective padding (`-1 → 0`, `n → n-1`). The adjoint is
//!   `M_hᵀ Y M_w`; the pseudo-inverse is the minimum-norm one of the 1D matrices (relative
//!   threshold [`BICUBIC_PINV_RTOL`]; `M` is well conditioned, so nothing is dropped in
//!   practice). The official class also zeroes 1D singular values below 3e-2; none of the
//!   cubic matrix's fall that low (tested), so the exact matrix is the official operator.
//!
//! Measurements are `(B, C, H/f, W/f)`. The lift to image space is bilinear up-sampling to
//! `(H, W)` with `align_corners = false` (the official `check_dims` resize; torchvision's
//! antialias flag has no effect when up-sampling).
use super::linalg::{expect_shape, to_device_f32, Frozen, HostMat, SeparablePinv};
use super::Operator;
use crate::error::Result;
use davi_sdk::spec::{DownsampleMethod, SuperResolution};
use tch::{Device, Tensor};

/// Relative 1D threshold of the bicubic pseudo-inverse (see [`SeparablePinv`]).
pub const BICUBIC_PINV_RTOL: f64 = 1e-6;

/// Keys' cubic convolution kernel with parameter `a`.
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        (a + 2.0) * x.powi(3) - (a + 3.0) * x.powi(2) + 1.0
    } else if x < 2.0 {
        a * x.powi(3) - 5.0 * a * x.powi(2) + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

/// The official `4f`-tap bicubic kernel, normalised to sum 1.
pub(crate) fn bicubic_kernel(factor: usize) -> Vec<f64> {
    let f = factor as f64;
    let k: Vec<f64> = (0..4 * factor)
        .map(|i| cubic((i as f64 - 2.0 * f + 0.5) / f, -0.5))
        .collect();
    let sum: f64 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Mirror an index into `0..n` the way the official code does (`-1 → 0`, `n → n - 1`),
/// extended periodically (period `2n`) for kernels wider than the image.
fn reflect(j: i64, n: i64) -> usize {
    let m = j.rem_euclid(2 * n);
    (if m >= n { 2 * n - 1 - m } else { m }) as usize
}

/// The official `SRConv` 1D matrix `(n/f) × n`.
pub(crate) fn bicubic_matrix(factor: usize, n: usize) -> HostMat {
    let k = bicubic_kernel(factor);
    let half = (k.len() / 2) as i64; // 2f
    let f = factor as i64;
    let mut m = HostMat::zeros(n / factor, n);
    let mut i = f / 2;
    while i < n as i64 + f / 2 {
        for j in (i - half)..(i + half) {
            *m.at_mut((i / f) as usize, reflect(j, n as i64)) += k[(j - i + half) as usize];
        }
        i += f;
    }
    m
}

enum Method {
    AvgPool,
    Bicubic {
        mh: Frozen,
        mw: Frozen,
        pinv: SeparablePinv,
    },
}

/// Down-sampling by `factor` (average pooling or bicubic).
pub struct SuperResolutionOp {
    c: i64,
    h: i64,
    w: i64,
    f: i64,
    method: Method,
}

impl SuperResolutionOp {
    /// `spec` must already be validated for the size (factor divides `h` and `w`).
    pub fn new(spec: &SuperResolution, c: i64, h: i64, w: i64, device: Device) -> Result<Self> {
        let f = spec.factor as i64;
        let method = match spec.method {
            DownsampleMethod::AvgPool => Method::AvgPool,
            DownsampleMethod::Bicubic => tch::no_grad(|| -> Result<Method> {
                let mh = bicubic_matrix(spec.factor, h as usize);
                let mw = bicubic_matrix(spec.factor, w as usize);
                Ok(Method::Bicubic {
                    pinv: SeparablePinv::new(&mh, &mw, BICUBIC_PINV_RTOL, device)?,
                    mh: to_device_f32(&mh.to_cpu_f64(), device)?,
                    mw: to_device_f32(&mw.to_cpu_f64(), device)?,
                })
            })?,
        };
        Ok(SuperResolutionOp { c, h, w, f, method })
    }

    fn expect_measurement(&self, y: &Tensor, what: &str) {
        expect_shape(y, what, self.c, self.h / self.f, self.w / self.f);
    }
}

impl Operator for SuperResolutionOp {
    fn forward(&self, x: &Tensor) -> Tensor {
        expect_shape(x, "super_resolution forward", self.c, self.h, self.w);
        match &self.method {
            Method::AvgPool => x.avg_pool2d(
                [self.f, self.f],
                [self.f, self.f],
                [0, 0],
                false,
                true,
                None,
            ),
            Method::Bicubic { mh, mw, .. } => mh.t().matmul(&x.matmul(&mw.t().tr())),
        }
    }

    fn adjoint(&self, y: &Tensor) -> Tensor {
        self.expect_measurement(y, "super_resolution adjoint");
        match &self.method {
            Method::AvgPool => {
                y.upsample_nearest2d([self.h, self.w], None, None) / ((self.f * self.f) as f64)
            }
            Method::Bicubic { mh, mw, .. } => mh.t().tr().matmul(&y.matmul(mw.t())),
        }
    }

    fn pinv(&self, y: &Tensor) -> Tensor {
        self.expect_measurement(y, "super_resolution pinv");
        match &self.method {
            Method::AvgPool => y.upsample_nearest2d([self.h, self.w], None, None),
            Method::Bicubic { pinv, .. } => pinv.apply(y),
        }
    }

    fn lift(&self, y: &Tensor) -> Tensor {
        self.expect_measurement(y, "super_resolution lift");
        y.upsample_bilinear2d([self.h, self.w], false, None, None)
    }

    fn measurement_shape(&self, c: i64, h: i64, w: i64) -> (i64, i64, i64) {
        (c, h / self.f, w / self.f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::test_util::{check_adjoint_and_pinv, randn, rel_diff, CPU};
    use tch::Kind;

    fn op(method: DownsampleMethod, factor: usize, c: i64, h: i64, w: i64) -> SuperResolutionOp {
        let spec = SuperResolution {
            factor,
            method,
            noise_sigma: None,
        };
        SuperResolutionOp::new(&spec, c, h, w, CPU).unwrap()
    }

    #[test]
    fn bicubic_kernel_matches_the_official_taps() {
        let k = bicubic_kernel(4);
        assert_eq!(k.len(), 16);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Taps at x = (i - 8 + 0.5)/4: symmetric, x = ±0.125 largest, x = ±1.875 negative.
        for i in 0..16 {
            assert!((k[i] - k[15 - i]).abs() < 1e-15);
        }
        let raw = |x: f64| cubic(x, -0.5);
        let sum: f64 = (0..16).map(|i| raw((i as f64 - 7.5) / 4.0)).sum();
        assert!((k[7] - raw(0.125) / sum).abs() < 1e-15);
        assert!(k[0] < 0.0 && k[7] > k[6]);
        assert_eq!(cubic(0.0, -0.5), 1.0);
        assert_eq!(cubic(1.0, -0.5), 0.0);
        assert_eq!(cubic(2.0, -0.5), 0.0);
    }

    #[test]
    fn bicubic_matrix_rows_and_reflection() {
        let m = bicubic_matrix(4, 24);
        assert_eq!((m.rows, m.cols), (6, 24));
        let k = bicubic_kernel(4);
        // Rows sum to 1 (reflection keeps every tap), row 2 is centred at pixel 10 and fully
        // interior: taps j = 2..=17 ↔ k[0..16].
        for i in 0..6 {
            let s: f64 = (0..24).map(|j| m.at(i, j)).sum();
            assert!((s - 1.0).abs() < 1e-12, "row {i} sums to {s}");
        }
        for j in 2..18 {
            assert!((m.at(2, j) - k[j - 2]).abs() < 1e-15);
        }
        // Row 0 (centre 2) reaches j = -6..=9: j = -1 reflects to 0, j = -6 to 5.
        let expect00 = k[6] + k[5]; // j = 0 and j = -1
        assert!((m.at(0, 0) - expect00).abs() < 1e-15);
        let expect05 = k[11] + k[0]; // j = 5 and j = -6
        assert!((m.at(0, 5) - expect05).abs() < 1e-15);
        // Reflection beyond one image width (factor 8 on 8 pixels) stays in range.
        let m8 = bicubic_matrix(8, 8);
        assert_eq!((m8.rows, m8.cols), (1, 8));
        assert!(((0..8).map(|j| m8.at(0, j)).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bicubic_singulars_pass_the_official_threshold() {
        // The official SRConv zeroes 1D singulars below 3e-2; none are that small, so the
        // exact matrix is the official operator.
        for (f, n) in [(2, 256), (4, 256), (8, 256), (4, 24), (4, 40)] {
            let s = crate::operators::linalg::svd_full(&bicubic_matrix(f, n))
                .unwrap()
                .s;
            let min = s.iter().cloned().fold(f64::INFINITY, f64::min);
            eprintln!(
                "bicubic factor {f}, n {n}: 1D singular values in [{min:.4}, {:.4}]",
                s[0]
            );
            assert!(min >= 3e-2, "factor {f}, n {n}: smallest singular {min}");
        }
    }

    #[test]
    fn avgpool_is_block_mean() {
        for f in [2, 4] {
            let o = op(DownsampleMethod::AvgPool, f, 3, 24, 40);
            let x = randn(31, &[2, 3, 24, 40]);
            let y = o.forward(&x);
            assert_eq!(y.size(), vec![2, 3, 24 / f as i64, 40 / f as i64]);
            let f = f as i64;
            let pooled = x.avg_pool2d([f, f], [f, f], [0, 0], false, true, None);
            assert_eq!(rel_diff(&y, &pooled), 0.0);
            let blocks = x.view([2, 3, 24 / f, f, 40 / f, f]).mean_dim(
                [3i64, 5].as_slice(),
                false,
                Kind::Float,
            );
            assert!(rel_diff(&y, &blocks) < 1e-6);
        }
    }

    #[test]
    fn adjoint_and_pinv_identities() {
        for method in [DownsampleMethod::AvgPool, DownsampleMethod::Bicubic] {
            for f in [2, 4] {
                for c in [1, 3] {
                    let o = op(method, f, c, 24, 40);
                    check_adjoint_and_pinv(&o, 2, c, 24, 40, 1e-5);
                }
            }
        }
    }

    #[test]
    fn avgpool_pinv_is_replication() {
        let o = op(DownsampleMethod::AvgPool, 4, 1, 24, 40);
        let y = randn(32, &[1, 1, 6, 10]);
        let p = o.pinv(&y);
        assert_eq!(
            p.double_value(&[0, 0, 7, 13]),
            y.double_value(&[0, 0, 1, 3])
        );
        assert!(rel_diff(&o.forward(&p), &y) < 1e-6);
    }

    #[test]
    fn bicubic_pinv_is_a_right_inverse() {
        // M has full row rank, so A A⁺ = I on measurements.
        let o = op(DownsampleMethod::Bicubic, 4, 3, 24, 40);
        let y = randn(33, &[2, 3, 6, 10]);
        assert!(rel_diff(&o.forward(&o.pinv(&y)), &y) < 1e-5);
    }

    #[test]
    fn bicubic_keeps_constants() {
        let o = op(DownsampleMethod::Bicubic, 4, 3, 24, 40);
        let x = Tensor::full([1, 3, 24, 40], 0.3, (Kind::Float, CPU));
        let y = o.forward(&x);
        assert!((y - 0.3).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn bilinear_lift_of_a_constant_is_constant() {
        for method in [DownsampleMethod::AvgPool, DownsampleMethod::Bicubic] {
            let o = op(method, 4, 3, 24, 40);
            let y = Tensor::full([2, 3, 6, 10], -0.7, (Kind::Float, CPU));
            let l = o.lift(&y);
            assert_eq!(l.size(), vec![2, 3, 24, 40]);
            assert!((l + 0.7).abs().max().double_value(&[]) < 1e-6);
        }
    }

    #[test]
    fn bilinear_lift_is_align_corners_false() {
        // 1×2 → 2×4, align_corners = false: [a, b] ↦ [a, 0.75a+0.25b, 0.25a+0.75b, b] per row.
        let o = op(DownsampleMethod::AvgPool, 2, 1, 2, 4);
        let y = Tensor::from_slice(&[0.0f32, 4.0]).view([1, 1, 1, 2]);
        let l = o.lift(&y);
        let v: Vec<f32> = Vec::try_from(l.view([-1])).unwrap();
        assert_eq!(v, vec![0.0, 1.0, 3.0, 4.0, 0.0, 1.0, 3.0, 4.0]);
    }
}
