//! Diffusion Posterior Sampling (DPS; Chung, Kim, Mccann, Klasky and Ye, "Diffusion Posterior
//! Sampling for General Noisy Inverse Problems", ICLR 2023, arXiv 2209.14687): the many-step
//! baseline DAVI is measured against in `davi eval`.
//!
//! The sampler follows docs/algorithm.md §8 (the official code at
//! `DPS2022/diffusion-posterior-sampling` `effbde7`) step for step, with a diffusion prior from
//! a model file (role `prior`: ε-prediction with learned-range variance, on its own
//! `meta.schedule` / `meta.diffusion_steps`). Starting from `x_T ~ N(0, I)`, each step at
//! timestep `t` does:
//!
//! 1. `out = UNet(x_t, t)` with autograd on; `ε = out[:, :C]`, `v = out[:, C:2C]`;
//! 2. `x̂0 = clamp(√(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε, −1, 1)` (Tweedie; the clamp is in the graph);
//! 3. `μ = c1_t·x̂0 + c2_t·x_t` (the posterior mean of `q(x_{t−1} | x_t, x̂0)`);
//! 4. `log σ² = f·log β_t + (1 − f)·log σ̃²_t` with `f = (v + 1)/2` (learned range);
//! 5. `x' = μ + σ·z`, fresh `z`, no noise at the last step;
//! 6. `r = y − A(x̂0)` in f32, loss `Σ_b ‖r_b‖₂` (plain, not squared, norm per sample: a
//!    batch of one is exactly the official single norm, larger batches are independent runs);
//! 7. `g = ∂ loss / ∂ x_t`, back-propagated through `A`, the clamp and the U-Net;
//! 8. `x_{t−1} = x' − scale·g`, detached.
//!
//! The result is the official code's return value, `x` after the last step (not clamped; the
//! caller clamps for display and metrics).
//!
//! **Step size.** The official rule is the paper's `ζ_i = ζ'/‖y − A(x̂0)‖` applied to
//! `∇‖y − A(x̂0)‖²`, which equals `2ζ'·∇‖y − A(x̂0)‖`; the code multiplies `∇‖r‖` by its config
//! value `scale` and normalises nothing else. [`DpsOptions::scale`] is that code `scale`
//! (= 2ζ'). [`default_scale`] gives the official repository's per-task values (SR and blur
//! 0.3, inpainting 0.5); denoising and colorization are not DPS tasks, for them 0.5 (the
//! middle of the 0.3 / 0.5 / 1.0 sweep of docs/algorithm.md §8.3) is used.
//!
//! **Respacing.** With `nfe < T` the sampler runs on a subset of the prior's timesteps, the
//! way guided diffusion's `SpacedDiffusion` does it (`space_timesteps(T, "N")`): the kept
//! timesteps are `round(k·(T−1)/(N−1))`, `k = 0..N` (cumulative fractional stride, ties to
//! even, so `t = 0` and `t = T−1` are always kept), the betas are rebuilt from the kept
//! cumulative products, `β'_k = 1 − ᾱ_{t_k}/ᾱ_{t_{k−1}}`, every coefficient (posterior mean,
//! clipped posterior variance, learned-range bounds) comes from those betas, and the network
//! is still given the original integer timestep `t_k`. `N = T` is exactly the official
//! 1000-step sampler; `N = 1` keeps only `t = T−1` (a single guided Tweedie step).
//! DPS was tuned for the full ancestral chain; fewer steps are a cost/quality knob
//! (docs/algorithm.md §8.4), and the DPS paper reports that it falls behind at 100 NFE or fewer.
//!
//! **NFE** is the number of network evaluations, one per step; each also costs a backward
//! pass to the input (roughly two to three forwards in time, docs/algorithm.md §8.5).
//!
//! Noise (`x_T` and every `z`) comes from [`seeded_normal`] generators derived from the
//! caller's seed, independent of tch's global RNG, so a run is reproducible on the CPU.
use crate::diffusion::schedule::timesteps;
use crate::diffusion::Diffusion;
use crate::error::{EngineError, Result};
use crate::operators::Operator;
use crate::restore::{seeded_normal, SplitMix64};
use crate::weights::{LoadedModel, ModelRole};
use davi_sdk::OperatorSpec;
use tch::{Device, Kind, Tensor};

/// Network evaluations of the official sampler (all 1000 steps, no respacing).
pub const DEFAULT_NFE: usize = 1000;

/// The official repository's `scale` for an operator kind (docs/algorithm.md §8.3); 0.5 for the two
/// kinds DPS never ran (denoising, colorization).
pub fn default_scale(spec: &OperatorSpec) -> f64 {
    match spec {
        OperatorSpec::SuperResolution(_) | OperatorSpec::GaussianBlur(_) => 0.3,
        OperatorSpec::Inpainting(_) => 0.5,
        OperatorSpec::Denoising(_) | OperatorSpec::Colorization(_) => 0.5,
    }
}

/// Options of one DPS run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpsOptions {
    /// Number of sampling steps = network evaluations (1..=T of the prior).
    pub nfe: usize,
    /// The code's `scale`: the step is `scale · ∇_{x_t} ‖y − A(x̂0)‖` (= 2ζ' of the paper).
    pub scale: f64,
    /// Seed of `x_T` and of every step's noise.
    pub seed: u64,
}

impl DpsOptions {
    /// The official setting for an operator: 1000 steps and the repository's `scale`.
    pub fn official(spec: &OperatorSpec, seed: u64) -> Self {
        DpsOptions {
            nfe: DEFAULT_NFE,
            scale: default_scale(spec),
            seed,
        }
    }
}

/// The timesteps `space_timesteps(total, [count])` keeps, increasing. `count` must lie in
/// `1..=total`. For `count ≥ 2` the stride `(total − 1)/(count − 1)` is accumulated in f64 and
/// each position rounded half to even (Python's `round`); `count = 1` keeps `total − 1`.
pub fn space_timesteps(total: usize, count: usize) -> Result<Vec<usize>> {
    if total == 0 || count == 0 || count > total {
        return Err(EngineError::InvalidInput(format!(
            "DPS needs between 1 and {total} steps (the prior's diffusion steps), got {count}"
        )));
    }
    if count == 1 {
        return Ok(vec![total - 1]);
    }
    let stride = (total - 1) as f64 / (count - 1) as f64;
    let mut position = 0.0f64;
    let mut kept = Vec::with_capacity(count);
    for _ in 0..count {
        kept.push(position.round_ties_even() as usize);
        position += stride;
    }
    // A stride ≥ 1 keeps the positions distinct; check rather than trust the float sum.
    debug_assert!(kept.windows(2).all(|w| w[0] < w[1]));
    debug_assert_eq!(*kept.last().expect("count >= 2"), total - 1);
    Ok(kept)
}

/// A diffusion restricted to a subset of its timesteps.
#[derive(Clone, Debug)]
pub struct Respacing {
    /// The DDPM arrays of the kept steps (index `k` = the `k`-th kept timestep).
    pub diffusion: Diffusion,
    /// The original timestep behind each index, fed to the network.
    pub timesteps: Vec<i64>,
}

/// Respace `full` to `count` steps (see the module documentation). `count = T` returns the
/// original arrays.
pub fn respace(full: &Diffusion, count: usize) -> Result<Respacing> {
    let kept = space_timesteps(full.num_steps(), count)?;
    let mut betas = Vec::with_capacity(kept.len());
    let mut previous = 1.0f64;
    for &t in &kept {
        let abar = full.alphas_cumprod[t];
        betas.push(1.0 - abar / previous);
        previous = abar;
    }
    Ok(Respacing {
        diffusion: Diffusion::from_betas(full.schedule, betas),
        timesteps: kept.into_iter().map(|t| t as i64).collect(),
    })
}

/// The result of [`Dps::sample`].
#[derive(Debug)]
pub struct DpsOutput {
    /// `x` after the last step, `(B, C, H, W)` in [-1, 1] units, not clamped.
    pub sample: Tensor,
    /// Network evaluations spent (one per step).
    pub nfe: usize,
    /// The prior timesteps visited, in sampling order (decreasing).
    pub timesteps: Vec<i64>,
    /// `Σ_b ‖y_b − A(x̂0_b)‖` at each step, in sampling order.
    pub residual_norms: Vec<f64>,
}

/// A DPS sampler around a diffusion prior.
pub struct Dps {
    pub model: LoadedModel,
    /// The prior's full schedule.
    pub diffusion: Diffusion,
    pub device: Device,
}

impl Dps {
    /// Wrap a prior (role `prior`, `out_channels = 2 × in_channels`). Its weights are frozen:
    /// gradients are only ever taken with respect to the sample.
    pub fn new(mut model: LoadedModel) -> Result<Self> {
        let meta = &model.meta;
        if meta.role != ModelRole::Prior {
            return Err(EngineError::InvalidInput(
                "DPS needs a diffusion prior (a model file with role `prior`), not a one-step \
                    generator"
                    .into(),
            ));
        }
        if meta.unet.out_channels != 2 * meta.unet.in_channels {
            return Err(EngineError::InvalidInput(format!(
                "DPS needs a prior with learned-range variance ({} output channels for {} input \
                    channels), this one has {}",
                2 * meta.unet.in_channels,
                meta.unet.in_channels,
                meta.unet.out_channels
            )));
        }
        if meta.diffusion_steps == 0 {
            return Err(EngineError::InvalidInput(
                "the prior has zero diffusion steps".into(),
            ));
        }
        let diffusion = Diffusion::new(meta.schedule, meta.diffusion_steps);
        model.vs.freeze();
        let device = model.vs.device();
        Ok(Dps {
            model,
            diffusion,
            device,
        })
    }

    /// Sample `x` given the measurement `y` of `op` (built for `C × height × width` images,
    /// `C` = the prior's input channels). The batch size is `y`'s. `height` and `width` must
    /// be multiples of the network's size multiple. `progress(fraction)` is called after each
    /// step; returning false cancels ([`EngineError::Cancelled`]).
    pub fn sample(
        &self,
        op: &dyn Operator,
        y: &Tensor,
        (height, width): (i64, i64),
        opts: &DpsOptions,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<DpsOutput> {
        let cfg = &self.model.meta.unet;
        let c = cfg.in_channels;
        let m = cfg.size_multiple();
        if height <= 0 || width <= 0 || height % m != 0 || width % m != 0 {
            return Err(EngineError::InvalidInput(format!(
                "DPS samples whole images whose sides are multiples of {m}, got {height}x{width}"
            )));
        }
        if !opts.scale.is_finite() || opts.scale < 0.0 {
            return Err(EngineError::InvalidInput(format!(
                "DPS scale must be finite and >= 0, got {}",
                opts.scale
            )));
        }
        let dims = y.size();
        let (mc, mh, mw) = op.measurement_shape(c, height, width);
        if dims.len() != 4 || dims[0] < 1 || dims[1..] != [mc, mh, mw] {
            return Err(EngineError::InvalidInput(format!(
                "the measurement has shape {dims:?}, the operator makes (B, {mc}, {mh}, {mw}) from \
                    {c}x{height}x{width} images"
            )));
        }
        let spaced = respace(&self.diffusion, opts.nfe)?;
        let b = dims[0];
        let shape = [b, c, height, width];
        let y = y.to_device(self.device).to_kind(Kind::Float).detach();
        let mut seeds = SplitMix64(opts.seed);
        let mut x = seeded_normal(&shape, seeds.next()).to_device(self.device);
        let n = spaced.timesteps.len();
        let mut norms = Vec::with_capacity(n);
        let mut visited = Vec::with_capacity(n);
        for (done, k) in (0..n).rev().enumerate() {
            let z = if k > 0 {
                Some(seeded_normal(&shape, seeds.next()).to_device(self.device))
            } else {
                None
            };
            let (next, norm) = self.step(op, &y, &x, &spaced, k, z.as_ref(), opts.scale);
            x = next;
            norms.push(norm);
            visited.push(spaced.timesteps[k]);
            if !progress((done + 1) as f32 / n as f32) {
                return Err(EngineError::Cancelled);
            }
        }
        let residual_norms = Vec::<f64>::try_from(
            Tensor::stack(&norms, 0)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )
        .map_err(EngineError::Torch)?;
        Ok(DpsOutput {
            sample: x,
            nfe: n,
            timesteps: visited,
            residual_norms,
        })
    }

    /// One guided ancestral step at spaced index `k`: returns `x_{k−1}` (detached) and the
    /// residual norm that guided it (a detached scalar tensor).
    #[allow(clippy::too_many_arguments)] // the sampler's state, spelled out for one step
    fn step(
        &self,
        op: &dyn Operator,
        y: &Tensor,
        x: &Tensor,
        spaced: &Respacing,
        k: usize,
        z: Option<&Tensor>,
        scale: f64,
    ) -> (Tensor, Tensor) {
        let d = &spaced.diffusion;
        let c = self.model.meta.unet.in_channels;
        let b = x.size()[0];
        let index = timesteps(k as i64, b, self.device);
        let prior_t = timesteps(spaced.timesteps[k], b, self.device);
        tch::with_grad(|| {
            let x_t = x.detach().set_requires_grad(true);
            let out = self.model.net.forward(&x_t, &prior_t).to_kind(Kind::Float);
            let eps = out.narrow(1, 0, c);
            let v = out.narrow(1, c, c);
            let x0 = d.pred_xstart_from_eps(&x_t, &index, &eps).clamp(-1.0, 1.0);
            let residual = y - op.forward(&x0);
            let per_sample =
                residual
                    .flatten(1, -1)
                    .norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
            let loss = per_sample.sum(Kind::Float);
            let grad = Tensor::run_backward(&[&loss], &[&x_t], false, false)
                .pop()
                .expect("one input, one gradient");
            tch::no_grad(|| {
                let (x0, v, x_t) = (x0.detach(), v.detach(), x_t.detach());
                let (mean, _) = d.q_posterior_mean_logvar(&x0, &x_t, &index);
                let noisy = match z {
                    Some(z) => mean + (d.learned_range_log_variance(&v, &index) * 0.5).exp() * z,
                    None => mean,
                };
                ((noisy - grad * scale).detach(), loss.detach())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::BetaSchedule;

    #[test]
    fn spacing_keeps_both_ends_and_the_right_count() {
        assert_eq!(
            space_timesteps(1000, 1000).unwrap(),
            (0..1000).collect::<Vec<_>>()
        );
        assert_eq!(space_timesteps(1000, 1).unwrap(), vec![999]);
        assert_eq!(space_timesteps(1000, 2).unwrap(), vec![0, 999]);
        assert_eq!(
            space_timesteps(1000, 10).unwrap(),
            (0..10).map(|k| 111 * k).collect::<Vec<_>>()
        );
        for n in [3usize, 7, 50, 100, 250, 333, 999] {
            let s = space_timesteps(1000, n).unwrap();
            assert_eq!(s.len(), n);
            assert_eq!((s[0], s[n - 1]), (0, 999));
            assert!(s.windows(2).all(|w| w[0] < w[1]), "n = {n}");
        }
        // Ties go to even, as Python's round does: stride 2.5 puts 2.5 -> 2 and 7.5 -> 8.
        assert_eq!(space_timesteps(11, 5).unwrap(), vec![0, 2, 5, 8, 10]);
        assert!(space_timesteps(1000, 0).is_err());
        assert!(space_timesteps(1000, 1001).is_err());
    }

    #[test]
    fn full_respacing_is_the_identity_and_partial_keeps_cumulative_products() {
        let full = Diffusion::new(BetaSchedule::Linear, 1000);
        let same = respace(&full, 1000).unwrap();
        for t in [0usize, 1, 500, 999] {
            assert!((same.diffusion.betas[t] - full.betas[t]).abs() < 1e-15);
            assert!(
                (same.diffusion.posterior_log_variance_clipped[t]
                    - full.posterior_log_variance_clipped[t])
                    .abs()
                    < 1e-9
            );
        }
        let r = respace(&full, 25).unwrap();
        for (k, &t) in r.timesteps.iter().enumerate() {
            let rel = (r.diffusion.alphas_cumprod[k] - full.alphas_cumprod[t as usize]).abs()
                / full.alphas_cumprod[t as usize];
            assert!(rel < 1e-9, "abar at k = {k}, t = {t}");
        }
        // The last step maps x̂0 to itself: c1 = 1, c2 = 0.
        assert!((r.diffusion.posterior_mean_coef1[0] - 1.0).abs() < 1e-12);
        assert!(r.diffusion.posterior_mean_coef2[0].abs() < 1e-12);
        // Check value of docs/algorithm.md §3.5: sqrt(1/abar_999) of the linear schedule.
        assert!((r.diffusion.sqrt_recip_alphas_cumprod[24] - 157.410).abs() < 1e-2);
    }

    #[test]
    fn default_scales_follow_the_official_configs() {
        assert_eq!(default_scale(&OperatorSpec::for_task("sr4").unwrap()), 0.3);
        assert_eq!(
            default_scale(&OperatorSpec::for_task("deblur").unwrap()),
            0.3
        );
        assert_eq!(
            default_scale(&OperatorSpec::for_task("inpaint").unwrap()),
            0.5
        );
        let o = DpsOptions::official(&OperatorSpec::for_task("sr4").unwrap(), 3);
        assert_eq!((o.nfe, o.seed), (1000, 3));
    }
}
