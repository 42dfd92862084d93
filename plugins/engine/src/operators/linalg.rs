//! Shared building blocks of the operators: host-side f64 matrices, their SVD and separable
//! pseudo-inverses, read-only device constants, and input-shape checks.
//!
//! Every operator that is not diagonal in pixel space is *separable* (docs/algorithm.md §4.4):
//! it acts as `M_h X M_wᵀ` on each channel `X` (blur, bicubic down-sampling). Its matrices are
//! built on the host in f64 (exact tap sums, reflective indices, SVD), and only then stored as
//! f32 on the target device (the precision of the official code, which builds them in f32).
//!
//! Dense matrix products are used instead of convolutions on purpose: they are exact for any
//! kernel width relative to the image, their transpose is the exact adjoint, and on CUDA they
//! run in full f32 (libtorch's default `float32_matmul_precision` is "highest", whereas cuDNN
//! convolutions may use TF32). At 256×256 one blur costs two 256³ products per channel.
use crate::error::{EngineError, Result};
use tch::{Device, Kind, Tensor};

/// A tensor that is built once, never mutated and never requires grad, shared read-only
/// between threads (the [`Operator`](super::Operator) trait is `Send + Sync`; `tch::Tensor`
/// is only `Send`).
pub(crate) struct Frozen(Tensor);

// SAFETY: the wrapped tensor is created detached by `Frozen::new`, is never handed out as
// `&mut`, and is only read as an input of out-of-place libtorch operations; libtorch supports
// concurrent reads of one tensor from several threads (no autograd state is touched because
// the tensor does not require grad).
unsafe impl Sync for Frozen {}

impl Frozen {
    pub(crate) fn new(t: Tensor) -> Self {
        Frozen(t.detach())
    }

    pub(crate) fn t(&self) -> &Tensor {
        &self.0
    }
}

/// A dense row-major f64 matrix on the host.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HostMat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl HostMat {
    pub(crate) fn zeros(rows: usize, cols: usize) -> Self {
        HostMat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    #[cfg(test)]
    pub(crate) fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub(crate) fn at_mut(&mut self, i: usize, j: usize) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }

    /// The matrix as an f64 CPU tensor `(rows, cols)`.
    pub(crate) fn to_cpu_f64(&self) -> Tensor {
        Tensor::from_slice(&self.data).view([self.rows as i64, self.cols as i64])
    }
}

/// Store an f64 host tensor as an f32 constant on `device`.
pub(crate) fn to_device_f32(t: &Tensor, device: Device) -> Result<Frozen> {
    let t = t.f_to_kind(Kind::Float)?.f_to(device)?.f_contiguous()?;
    Ok(Frozen::new(t))
}

/// Store a host f64 buffer of the given shape as an f32 constant on `device`.
pub(crate) fn slice_to_device_f32(data: &[f64], shape: &[i64], device: Device) -> Result<Frozen> {
    to_device_f32(&Tensor::from_slice(data).f_view(shape)?, device)
}

/// A full singular value decomposition with `torch.svd(A, some=False)` semantics:
/// `A = U diag(s) Vᵀ`, `U` is `rows × rows`, `V` is `cols × cols`, `s` (length
/// `min(rows, cols)`) descending. Computed by libtorch in f64 on the CPU.
pub(crate) struct Svd {
    pub u: Tensor,
    pub s: Vec<f64>,
    pub v: Tensor,
}

pub(crate) fn svd_full(m: &HostMat) -> Result<Svd> {
    tch::no_grad(|| {
        let (u, s, v) = m.to_cpu_f64().f_svd(false, true)?;
        let s = Vec::<f64>::try_from(&s)?;
        Ok(Svd { u, s, v })
    })
}

/// The pseudo-inverse of a separable operator `X ↦ M_h X M_wᵀ`, applied in factored form
/// `A⁺ Y = V_h D_h (U_hᵀ Y U_w) D_w V_wᵀ` with `D = diag(1/s)` over the kept singulars.
///
/// A 1D singular value is kept when `s > rtol · s_max` (relative threshold, per 1D matrix);
/// the result is then the exact minimum-norm pseudo-inverse of `Ã_h ⊗ Ã_w`, the Kronecker
/// product of the 1D matrices with their dropped singular values set to zero (so 2D singular
/// values `s_i s_j` are kept when both factors pass the 1D test).
///
/// The factored form (rather than the dense `pinv(M)` matrices) keeps f32 rounding errors in
/// the directions of the small singular values, where the forward operator damps them again,
/// so `A A⁺ A x = A x` holds to f32 accuracy even for the very ill-conditioned Gaussian blur.
pub(crate) struct SeparablePinv {
    /// `U_hᵀ` restricted to the kept singulars: `(k_h, rows_h)`.
    uht: Frozen,
    /// `U_w` restricted: `(rows_w, k_w)`.
    uw: Frozen,
    /// `V_h D_h`: `(cols_h, k_h)`.
    vdh: Frozen,
    /// `(V_w D_w)ᵀ`: `(k_w, cols_w)`.
    vdwt: Frozen,
    pub kept: (usize, usize),
}

impl SeparablePinv {
    pub(crate) fn new(mh: &HostMat, mw: &HostMat, rtol: f64, device: Device) -> Result<Self> {
        tch::no_grad(|| {
            let (uh, vdh, kh) = factor(mh, rtol)?;
            let (uw, vdw, kw) = factor(mw, rtol)?;
            Ok(SeparablePinv {
                uht: to_device_f32(&uh.tr(), device)?,
                uw: to_device_f32(&uw, device)?,
                vdh: to_device_f32(&vdh, device)?,
                vdwt: to_device_f32(&vdw.tr(), device)?,
                kept: (kh, kw),
            })
        })
    }

    /// `A⁺ y` for a batch `(B, C, rows_h, rows_w)`, giving `(B, C, cols_h, cols_w)`.
    pub(crate) fn apply(&self, y: &Tensor) -> Tensor {
        let z = self.uht.t().matmul(y).matmul(self.uw.t());
        self.vdh.t().matmul(&z).matmul(self.vdwt.t())
    }
}

/// Reduced SVD factors of `m` restricted to the singulars above `rtol · s_max`:
/// `(U_k, V_k diag(1/s_k), k)`, f64 on the CPU.
fn factor(m: &HostMat, rtol: f64) -> Result<(Tensor, Tensor, usize)> {
    let (u, s, v) = m.to_cpu_f64().f_svd(true, true)?;
    let sv = Vec::<f64>::try_from(&s)?;
    let smax = sv.first().copied().unwrap_or(0.0);
    let k = sv
        .iter()
        .take_while(|&&x| x > rtol * smax && x > 0.0)
        .count();
    if k == 0 {
        // A zero matrix: its pseudo-inverse is zero. Keep one column with a zero gain so
        // the shapes stay valid.
        let u1 = u.f_narrow(1, 0, 1)?;
        let v1 = v.f_narrow(1, 0, 1)?.f_mul_scalar(0.0)?;
        return Ok((u1, v1, 0));
    }
    let inv: Vec<f64> = sv[..k].iter().map(|x| 1.0 / x).collect();
    let inv = Tensor::from_slice(&inv).f_view([1, k as i64])?;
    let uk = u.f_narrow(1, 0, k as i64)?;
    let vk = v.f_narrow(1, 0, k as i64)?.f_mul(&inv)?;
    Ok((uk, vk, k))
}

/// Panic with a clear message unless `x` is a batch `(B, c, h, w)`. The trait methods return
/// tensors, not results: a wrong shape is a programming error of the caller.
pub(crate) fn expect_shape(x: &Tensor, what: &str, c: i64, h: i64, w: i64) {
    let s = x.size();
    assert!(
        s.len() == 4 && s[1] == c && s[2] == h && s[3] == w,
        "{what}: expected a batch of shape (B, {c}, {h}, {w}), got {s:?}"
    );
}

/// `EngineError::InvalidInput` with a message.
pub(crate) fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidInput(msg.into())
}
