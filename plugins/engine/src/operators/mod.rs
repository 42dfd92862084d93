//! Degradation operators `A` of the inverse problem `y = A(x) + n` (docs/algorithm.md §4).
//!
//! Every operator works on image batches `(B, C, H, W)` in [-1, 1] of any size and channel
//! count, and offers the forward map, its adjoint, a pseudo-inverse, and the *lift* of a
//! measurement back to image space that the network consumes (the official `check_dims`:
//! bilinear up-sampling for super-resolution, channel repetition for colorization, identity
//! otherwise; inpainting measurements are already zero-filled images).
//!
//! Measurements keep the official shapes: `(B, C, H/f, W/f)` for super-resolution,
//! `(B, 1, H, W)` for colorization, and `(B, C, H, W)` for blur, denoising and inpainting
//! (the inpainting measurement is the zero-filled image `Aᵀ A x`, exactly as the official
//! code stores and feeds it).
//!
//! One file per operator kind: [`ZeroPaddedBlur`] (`blur.rs`), [`DdrmBlur`] (`blur_ddrm.rs`,
//! the official DDRM operator of quirk Q6), [`SuperResolutionOp`], [`InpaintingOp`],
//! [`DenoisingOp`], [`ColorizationOp`]; `linalg.rs` holds the shared f64 host matrices, SVDs
//! and separable pseudo-inverses. Conventions: inputs are f32 batches on the device the
//! operator was built for; constants (matrices, masks, gains) are built in f64 on the host
//! and stored as f32 on that device, without grad; every map is an ordinary differentiable
//! libtorch expression of its input (usable inside training graphs). A batch of the wrong
//! shape is a caller bug and panics with the expected shape. Identity maps (denoising, the
//! blur and inpainting lifts) return a shallow clone that shares the input's storage.
use crate::error::Result;
use davi_sdk::spec::BlurMode;
use davi_sdk::OperatorSpec;
use tch::{Device, Tensor};

mod blur;
mod blur_ddrm;
mod colorization;
mod denoising;
mod inpainting;
mod linalg;
mod super_resolution;
#[cfg(test)]
mod test_util;

pub use blur::{ZeroPaddedBlur, PINV_RTOL as BLUR_PINV_RTOL};
pub use blur_ddrm::{DdrmBlur, DDRM_ZERO};
pub use colorization::ColorizationOp;
pub use denoising::DenoisingOp;
pub use inpainting::InpaintingOp;
pub use super_resolution::{SuperResolutionOp, BICUBIC_PINV_RTOL};

/// A linear degradation operator bound to an image geometry.
pub trait Operator: Send + Sync {
    /// `A x`: image batch `(B, C, H, W)` to measurement batch.
    fn forward(&self, x: &Tensor) -> Tensor;
    /// `Aᵀ y`: measurement batch to image batch, the adjoint of [`Operator::forward`].
    fn adjoint(&self, y: &Tensor) -> Tensor;
    /// `A⁺ y`: a pseudo-inverse (minimum-norm least squares where it can be formed exactly).
    fn pinv(&self, y: &Tensor) -> Tensor;
    /// The measurement lifted to image space, as the network sees it (official `check_dims`).
    fn lift(&self, y: &Tensor) -> Tensor;
    /// Measurement shape `(C, H, W)` for an image of shape `(C, H, W)`.
    fn measurement_shape(&self, c: i64, h: i64, w: i64) -> (i64, i64, i64);
    /// For operators that drop pixels (inpainting): the `(1, 1, H, W)` keep-mask, 1 where a
    /// pixel is observed. Restoration fills only where it is 0 ([`crate::windows`]).
    fn keep_mask(&self) -> Option<Tensor> {
        None
    }
}

/// Build the operator a spec describes for images of `channels × height × width` on a device.
/// The spec is validated against the size first.
///
/// Errors: [`EngineError::Spec`](crate::error::EngineError::Spec) when the spec does not fit
/// the size (or is out of range),
/// [`EngineError::InvalidInput`](crate::error::EngineError::InvalidInput) for non-positive
/// dimensions, colorization of non-RGB images, or a one-tap [`BlurMode::Ddrm`] blur (the official
/// matrix drops its only tap), and [`EngineError::Torch`](crate::error::EngineError::Torch) when
/// the device cannot hold the operator's constants. Operators built from dense per-side matrices
/// refuse sides above their limit ([`max_dense_side`]) as `InvalidInput`.
pub fn build(
    spec: &OperatorSpec,
    channels: i64,
    height: i64,
    width: i64,
    device: Device,
) -> Result<Box<dyn Operator>> {
    if channels <= 0 || height <= 0 || width <= 0 {
        return Err(linalg::invalid(format!(
            "image size must be positive, got {channels} channels, {height}x{width}"
        )));
    }
    spec.validate_for_size(height as usize, width as usize)?;
    if let Some(limit) = max_dense_side(spec) {
        if height.max(width) > limit {
            let gib = (height as f64).powi(2) + (width as f64).powi(2);
            return Err(linalg::invalid(format!(
                "{} works on images of at most {limit} pixels a side: it builds dense side x side \
                 matrices, which for this {width}x{height} image would take {:.1} GiB (restore it \
                 in parts)",
                spec.kind_name(),
                gib * 12.0 / f64::from(1u32 << 30)
            )));
        }
    }
    let (c, h, w) = (channels, height, width);
    Ok(match spec {
        OperatorSpec::GaussianBlur(b) => match b.mode {
            BlurMode::ZeroPadded => Box::new(ZeroPaddedBlur::new(b, c, h, w, device)?),
            BlurMode::Ddrm => {
                if b.size < 3 {
                    return Err(linalg::invalid(format!(
                        "gaussian_blur mode ddrm needs size >= 3 (the official matrix drops the \
                         last tap), got {}",
                        b.size
                    )));
                }
                Box::new(DdrmBlur::new(b.sigma, b.size, c, h, w, device)?)
            }
        },
        OperatorSpec::SuperResolution(s) => Box::new(SuperResolutionOp::new(s, c, h, w, device)?),
        OperatorSpec::Inpainting(p) => Box::new(InpaintingOp::new(p, c, h, w, device)?),
        OperatorSpec::Denoising(_) => Box::new(DenoisingOp::new(c, h, w)),
        OperatorSpec::Colorization(k) => Box::new(ColorizationOp::new(k, c, h, w, device)?),
    })
}

/// The largest image side (`max(height, width)`, of the full-resolution image) an operator
/// built from dense per-side matrices accepts, `None` for the others. The Gaussian blurs hold
/// `side × side` matrices (f64 on the host, f32 on the device: 12 bytes per entry) and take
/// an SVD of them (for the pseudo-inverse; DDRM's eagerly, a full SVD, at O(side³)), bicubic
/// super-resolution `side/f × side` ones; without a bound a 65536 × 1 image (64 KiB of
/// pixels) asked 34 GiB of memory and aborted the process (a fuzz finding,
/// docs/fuzzing.md). The limits keep the memory under 1.6 GiB and the SVDs to minutes.
pub fn max_dense_side(spec: &OperatorSpec) -> Option<i64> {
    match spec {
        OperatorSpec::GaussianBlur(b) => Some(match b.mode {
            BlurMode::ZeroPadded => 8192,
            BlurMode::Ddrm => 4096,
        }),
        OperatorSpec::SuperResolution(s)
            if s.method == davi_sdk::spec::DownsampleMethod::Bicubic =>
        {
            Some(8192)
        }
        _ => None,
    }
}

/// Simulate a measurement: `A x + noise_sigma · n`, `n ~ N(0, I)` drawn from tch's generator
/// (seed it with `tch::manual_seed` for reproducible draws). The noise is added after
/// zero-filling for inpainting, as the official code does (quirk Q7).
pub fn measure(op: &dyn Operator, x: &Tensor, noise_sigma: f64) -> Tensor {
    let y = op.forward(x);
    if noise_sigma > 0.0 {
        &y + y.randn_like() * noise_sigma
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{randn, rel_diff, CPU};
    use super::*;
    use crate::error::EngineError;
    use tch::Kind;

    fn specs() -> Vec<OperatorSpec> {
        let mut v: Vec<OperatorSpec> = davi_sdk::spec::TASKS
            .iter()
            .map(|t| OperatorSpec::for_task(t).unwrap())
            .collect();
        v.push(
            OperatorSpec::parse("kind = \"gaussian_blur\"\nsigma = 2.0\nsize = 9\nmode = \"ddrm\"")
                .unwrap(),
        );
        v.push(OperatorSpec::parse("kind = \"gaussian_blur\"\nsigma = 2.0\nsize = 9").unwrap());
        v.push(
            OperatorSpec::parse("kind = \"super_resolution\"\nfactor = 4\nmethod = \"bicubic\"")
                .unwrap(),
        );
        v
    }

    /// Fuzz finding (the `restore` target, docs/fuzzing.md): a 65536 x 1 gray image asked
    /// the dense blur for 34 GiB and aborted the process; the side is now checked first.
    #[test]
    fn dense_operators_refuse_sides_above_their_limit() {
        for spec in specs() {
            match max_dense_side(&spec) {
                Some(limit) => {
                    for (h, w) in [(8, limit + 8), (limit + 8, 8), (8, 65536)] {
                        let e = build(&spec, 3, h, w, CPU)
                            .err()
                            .unwrap_or_else(|| panic!("{spec}: {w}x{h} built"));
                        assert!(matches!(e, EngineError::InvalidInput(_)), "{spec}: {e}");
                        assert!(
                            e.to_string()
                                .contains(&format!("at most {limit} pixels a side")),
                            "{e}"
                        );
                    }
                }
                None => assert!(build(&spec, 3, 8, 65536, CPU).is_ok(), "{spec}"),
            }
        }
        assert!(build(&OperatorSpec::for_task("deblur").unwrap(), 3, 8, 512, CPU).is_ok());
    }

    #[test]
    fn every_spec_builds_with_consistent_shapes_and_gradients() {
        let (b, c, h, w) = (2, 3, 24, 40);
        for spec in specs() {
            let op = build(&spec, c, h, w, CPU).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let (mc, mh, mw) = op.measurement_shape(c, h, w);
            let x = randn(71, &[b, c, h, w]).set_requires_grad(true);
            let y = op.forward(&x);
            assert_eq!(y.size(), vec![b, mc, mh, mw], "{spec}");
            assert_eq!(op.lift(&y).size(), vec![b, c, h, w], "{spec}");
            // Autograd through forward: the gradient of ⟨A x, r⟩ is Aᵀ r.
            let r = randn(72, &[b, mc, mh, mw]);
            (&y * &r).sum(Kind::Float).backward();
            let g = x.grad();
            let e = rel_diff(&g, &op.adjoint(&r));
            assert!(
                e < 1e-5,
                "{spec}: autograd gradient differs from the adjoint by {e:e}"
            );
            // And through the adjoint, pseudo-inverse and lift.
            let yr = randn(73, &[b, mc, mh, mw]).set_requires_grad(true);
            (op.adjoint(&yr).sum(Kind::Float)
                + op.pinv(&yr).sum(Kind::Float)
                + op.lift(&yr).sum(Kind::Float))
            .backward();
            assert_eq!(yr.grad().size(), yr.size(), "{spec}");
        }
    }

    #[test]
    fn one_channel_images() {
        for spec in specs()
            .into_iter()
            .filter(|s| s.kind_name() != "colorization")
        {
            let op = build(&spec, 1, 24, 40, CPU).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let x = randn(74, &[2, 1, 24, 40]);
            let (mc, mh, mw) = op.measurement_shape(1, 24, 40);
            assert_eq!(op.forward(&x).size(), vec![2, mc, mh, mw], "{spec}");
        }
    }

    #[test]
    fn build_errors() {
        let sr = OperatorSpec::for_task("sr4").unwrap();
        assert!(matches!(
            build(&sr, 3, 30, 40, CPU),
            Err(EngineError::Spec(_))
        ));
        assert!(matches!(
            build(&sr, 3, 0, 40, CPU),
            Err(EngineError::InvalidInput(_))
        ));
        assert!(matches!(
            build(&sr, -1, 24, 40, CPU),
            Err(EngineError::InvalidInput(_))
        ));
        let color = OperatorSpec::for_task("colorize").unwrap();
        assert!(matches!(
            build(&color, 1, 24, 40, CPU),
            Err(EngineError::InvalidInput(_))
        ));
        let boxed = OperatorSpec::parse(
            "kind = \"inpainting\"\n[[boxes]]\ntop = 20\nleft = 0\nheight = 10\nwidth = 5\n",
        )
        .unwrap();
        assert!(matches!(
            build(&boxed, 3, 24, 40, CPU),
            Err(EngineError::Spec(_))
        ));
        // The spec itself refuses a one-tap DDRM blur now; build keeps its own check for
        // specs constructed in code.
        assert!(
            OperatorSpec::parse("kind = \"gaussian_blur\"\nsize = 1\nmode = \"ddrm\"").is_err()
        );
        let one_tap_true = OperatorSpec::parse("kind = \"gaussian_blur\"\nsize = 1").unwrap();
        let op = build(&one_tap_true, 3, 24, 40, CPU).unwrap();
        let x = randn(75, &[1, 3, 24, 40]);
        assert!(
            rel_diff(&op.forward(&x), &x) < 1e-7,
            "a one-tap blur is the identity"
        );
    }

    #[test]
    fn measure_adds_noise_of_the_requested_level() {
        let op = build(&OperatorSpec::for_task("sr4").unwrap(), 3, 64, 64, CPU).unwrap();
        let x = randn(76, &[4, 3, 64, 64]);
        let _rng = crate::test_rng::seeded(0);
        let y = measure(op.as_ref(), &x, 0.2);
        let n = &y - op.forward(&x);
        let std = n.std(true).double_value(&[]);
        assert!((std - 0.2).abs() < 0.01, "noise std {std}");
        assert_eq!(
            rel_diff(&measure(op.as_ref(), &x, 0.0), &op.forward(&x)),
            0.0
        );
    }

    #[test]
    fn operators_are_shareable_between_threads() {
        let op: std::sync::Arc<dyn Operator> = std::sync::Arc::from(
            build(&OperatorSpec::for_task("deblur").unwrap(), 3, 24, 40, CPU).unwrap(),
        );
        let x = randn(77, &[1, 3, 24, 40]);
        let want = op.pinv(&x);
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let op = op.clone();
                std::thread::spawn(move || {
                    let x = randn(77, &[1, 3, 24, 40]);
                    Vec::<f32>::try_from(op.pinv(&x).view([-1])).unwrap()
                })
            })
            .collect();
        let want = Vec::<f32>::try_from(want.view([-1])).unwrap();
        for h in handles {
            assert_eq!(h.join().unwrap(), want);
        }
    }
}
