//! Shared checks for the operator unit tests (CPU, small non-square sizes).
use super::Operator;
use tch::{Device, Kind, Tensor};

pub(crate) const CPU: Device = Device::Cpu;

/// Standard normal tensor in f32 on the CPU from a fixed seed. Drawn on the host
/// (xorshift64* + Box-Muller), so values do not depend on libtorch's global generator, which
/// tests running in parallel threads would share.
pub(crate) fn randn(seed: u64, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Tensor::from_slice(&v).view(shape)
}

/// `Σ a b` in f64.
pub(crate) fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) * b.to_kind(Kind::Double))
        .sum(Kind::Double)
        .double_value(&[])
}

pub(crate) fn norm(a: &Tensor) -> f64 {
    dot(a, a).sqrt()
}

/// `‖a - b‖ / ‖b‖`.
pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    norm(&(a.to_kind(Kind::Double) - b.to_kind(Kind::Double))) / norm(b)
}

/// `|⟨A x, y⟩ - ⟨x, Aᵀ y⟩| / (‖A x‖ ‖y‖)` for random `x`, `y` (a wrong adjoint gives
/// about `1/sqrt(dim)`, f32 rounding about 1e-7).
pub(crate) fn adjoint_mismatch(op: &dyn Operator, b: i64, c: i64, h: i64, w: i64) -> f64 {
    let x = randn(11, &[b, c, h, w]);
    let (mc, mh, mw) = op.measurement_shape(c, h, w);
    let y = randn(12, &[b, mc, mh, mw]);
    let ax = op.forward(&x);
    assert_eq!(
        ax.size(),
        y.size(),
        "forward output shape vs measurement_shape"
    );
    let aty = op.adjoint(&y);
    assert_eq!(aty.size(), x.size(), "adjoint output shape");
    (dot(&ax, &y) - dot(&x, &aty)).abs() / (norm(&ax) * norm(&y))
}

/// `‖A A⁺ A x - A x‖ / ‖A x‖` for a random `x`.
pub(crate) fn pinv_mismatch(op: &dyn Operator, b: i64, c: i64, h: i64, w: i64) -> f64 {
    let x = randn(13, &[b, c, h, w]);
    let ax = op.forward(&x);
    let p = op.pinv(&ax);
    assert_eq!(p.size(), x.size(), "pinv output shape");
    rel_diff(&op.forward(&p), &ax)
}

/// Assert both identities with the tolerances used throughout.
pub(crate) fn check_adjoint_and_pinv(
    op: &dyn Operator,
    b: i64,
    c: i64,
    h: i64,
    w: i64,
    pinv_tol: f64,
) {
    let adj = adjoint_mismatch(op, b, c, h, w);
    assert!(
        adj < 1e-5,
        "adjoint identity off by {adj:e} (c={c}, {h}x{w})"
    );
    let pin = pinv_mismatch(op, b, c, h, w);
    assert!(
        pin < pinv_tol,
        "A A+ A x != A x: relative error {pin:e} (c={c}, {h}x{w})"
    );
}
